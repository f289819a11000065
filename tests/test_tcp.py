"""Tests for the tcp prober against real local TCP and TLS listeners."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from exporter.allowlist import Allowlist
from exporter.config import parse_config
from exporter.errors import ConfigError
from exporter.modules import Module, QueryResponse, TCPProbe, TLSConfig
from exporter.probes.net import ProbeFailure, expand, split_host_port
from exporter.result import FailureReason, ProbeResult
from exporter.types import HostPattern, Regex
from tests.conftest import ProbeRunner, wait_for

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

# The tcp modules of Debian's /etc/prometheus/blackbox.yml, verbatim.
BLACKBOX_YML = r"""
modules:
  tcp_connect:
    prober: tcp
  ssh_banner:
    prober: tcp
    tcp:
      query_response:
      - expect: "^SSH-2.0-"
      - send: "SSH-2.0-blackbox-ssh-check"
  irc_banner:
    prober: tcp
    tcp:
      query_response:
      - send: "NICK prober"
      - send: "USER prober prober prober :prober"
      - expect: "PING :([^ ]+)"
        send: "PONG ${1}"
      - expect: "^:[^ ]+ 001"
"""


@dataclass
class Peer:
    """What a fake server saw from the prober."""

    lines: list[bytes] = field(default_factory=list)


@dataclass
class Listener:
    port: int
    peer: Peer


ServerFactory = Callable[..., Awaitable[Listener]]


@pytest.fixture
async def tcp_server() -> AsyncIterator[ServerFactory]:
    """Starts asyncio TCP servers on port 0 running a handler; stops them and their handlers after."""
    servers: list[asyncio.Server] = []
    handlers: set[asyncio.Task[None]] = set()
    failures: list[Exception] = []

    async def start(
        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter, Peer], Awaitable[None]],
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
    ) -> Listener:
        peer = Peer()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                await handler(reader, writer, peer)
            except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
                pass
            except Exception as err:  # a broken fake must fail the test, not just log
                failures.append(err)
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError, ssl.SSLError):
                    await writer.wait_closed()

        server = await asyncio.start_server(serve, host, 0, ssl=tls)
        servers.append(server)
        return Listener(server.sockets[0].getsockname()[1], peer)

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()
    for task in handlers:
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)
    assert not failures, failures


@pytest.fixture
def server_context(server_cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    return context


def leaf_expiry(cert: trustme.LeafCert) -> float:
    leaf = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    return leaf.not_valid_after_utc.timestamp()


def tcp_module(*steps: QueryResponse, **settings: object) -> Module:
    return Module(prober="tcp", sections={"tcp": TCPProbe(query_response=steps, **settings)})  # type: ignore[arg-type]


def step(expect: str | None = None, send: str = "", starttls: bool = False) -> QueryResponse:
    regex = Regex.from_yaml(expect) if expect is not None else None
    return QueryResponse(expect=regex, send=send, starttls=starttls)


async def read_line(reader: asyncio.StreamReader, peer: Peer) -> bytes:
    line = await reader.readline()
    peer.lines.append(line)
    return line


async def heard(listener: Listener, lines: list[bytes]) -> None:
    """Wait until the listener has read exactly ``lines``: it may still be reading them."""
    await wait_for(lambda: listener.peer.lines == lines, what=f"the server to hear {lines}")
    assert listener.peer.lines == lines


async def until_closed(reader: asyncio.StreamReader, peer: Peer) -> None:
    while line := await reader.readline():
        peer.lines.append(line)


async def listen_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
    """A server that accepts, says nothing and notes what it hears until the prober leaves."""
    await until_closed(reader, peer)


def assert_phases_fit(result: ProbeResult) -> None:
    assert sum(result.phases.values()) <= result.duration


async def test_connect_only_succeeds(tcp_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """blackbox's tcp_connect: a listener that accepts is a success, over IPv4."""
    listener = await tcp_server(listen_only)
    module = parse_config(BLACKBOX_YML).modules["tcp_connect"]
    result = await run_probe(f"127.0.0.1:{listener.port}", module)
    assert result.success, result.message
    assert result.value("probe_ip_protocol") == 4
    assert result.value("probe_failed_due_to_regex") == 0
    assert set(result.phases) == {"resolve", "connect"}
    assert_phases_fit(result)


async def test_ipv6_target_in_brackets(tcp_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """A ``[::1]:port`` target connects over IPv6 and says so in probe_ip_protocol."""
    listener = await tcp_server(listen_only, host="::1")
    result = await run_probe(f"[::1]:{listener.port}", tcp_module())
    assert result.success, result.message
    assert result.value("probe_ip_protocol") == 6


async def test_ssh_banner_module(tcp_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """blackbox.yml's ssh_banner matches an SSH greeting and answers with its own, newline-ended."""

    async def ssh(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
        await until_closed(reader, peer)

    listener = await tcp_server(ssh)
    module = parse_config(BLACKBOX_YML).modules["ssh_banner"]
    result = await run_probe(f"localhost:{listener.port}", module)
    assert result.success, result.message
    await heard(listener, [b"SSH-2.0-blackbox-ssh-check\n"])
    assert result.value("probe_failed_due_to_regex") == 0


async def test_irc_banner_module(tcp_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """blackbox.yml's irc_banner: registers, answers PING with the captured token, sees 001."""

    async def irc(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        await read_line(reader, peer)
        await read_line(reader, peer)
        writer.write(b":irc.test NOTICE * :*** Looking up your hostname\r\nPING :c0ffee42\r\n")
        if await read_line(reader, peer) == b"PONG c0ffee42\n":
            writer.write(b":irc.test 001 prober :Welcome to the test network\r\n")
        await until_closed(reader, peer)

    listener = await tcp_server(irc)
    module = parse_config(BLACKBOX_YML).modules["irc_banner"]
    result = await run_probe(f"127.0.0.1:{listener.port}", module)
    assert result.success, result.message
    await heard(
        listener,
        [b"NICK prober\n", b"USER prober prober prober :prober\n", b"PONG c0ffee42\n"],
    )


async def test_named_capture_feeds_later_sends(tcp_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """``${name}`` expands from the last match, also in a later send-only step; ``$$`` is a dollar."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        writer.write(b"HELLO session=ab12 node=n7\n")
        await until_closed(reader, peer)

    listener = await tcp_server(echo)
    module = tcp_module(
        step(expect=r"session=(?P<session>\w+) node=(\w+)", send="JOIN ${session} $2 $$5"),
        step(send="AGAIN ${session}${missing}"),
    )
    result = await run_probe(f"127.0.0.1:{listener.port}", module)
    assert result.success, result.message
    await heard(listener, [b"JOIN ab12 n7 $5\n", b"AGAIN ab12\n"])


async def test_expect_info_labels_are_filled_from_the_match(
    tcp_server: ServerFactory, run_probe: ProbeRunner
) -> None:
    """``labels`` on a step become probe_expect_info, expanded from that step's match."""

    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
        await until_closed(reader, peer)

    listener = await tcp_server(banner)
    config = parse_config(
        "modules: {ssh: {prober: tcp, tcp: {query_response: [{expect: '^SSH-2.0-(?P<soft>[^ ]+)',"
        " labels: [{name: software, value: '${soft}'}, {name: kind, value: ssh}]}]}}}"
    )
    result = await run_probe(f"127.0.0.1:{listener.port}", config.modules["ssh"])
    assert result.success, result.message
    samples = {s.labels: s.value for s in result.samples if s.name == "probe_expect_info"}
    assert samples == {(("software", "OpenSSH_9.2p1"), ("kind", "ssh")): 1.0}


async def test_expect_bytes_matches_the_next_bytes(tcp_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """expect_bytes passes on the exact next bytes, fails on others and on a short answer."""

    async def greeting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        writer.write(b"\x00\x01PING")
        await until_closed(reader, peer)

    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        writer.write(b"\x00")
        writer.close()

    good, short_server = await tcp_server(greeting), await tcp_server(short)

    def module(expected: str) -> Module:
        return tcp_module(QueryResponse(expect_bytes=expected))

    result = await run_probe(f"127.0.0.1:{good.port}", module("\x00\x01PING"))
    assert result.success, result.message
    assert result.value("probe_failed_due_to_bytes") == 0
    wrong = await run_probe(f"127.0.0.1:{good.port}", module("\x00\x01PONG"))
    assert wrong.reason == FailureReason.PROTOCOL and wrong.value("probe_failed_due_to_bytes") == 1
    cut = await run_probe(f"127.0.0.1:{short_server.port}", module("\x00\x01"))
    assert cut.reason == FailureReason.PROTOCOL and "1 of the 2 bytes" in cut.message


def test_expect_and_expect_bytes_are_exclusive_and_labels_need_expect() -> None:
    """The loader refuses both on one step, and labels without an expect to fill them."""
    with pytest.raises(ConfigError) as info:
        parse_config(
            "modules: {t: {prober: tcp, tcp: {query_response: [{expect: x, expect_bytes: y},"
            " {labels: [{name: a, value: b}]}, {expect: z, labels: [{name: 'b-c'}]}]}}}"
        )
    at = "modules.t.tcp.query_response"
    assert [str(issue) for issue in info.value.issues] == [
        f"{at}[0].expect_bytes (line 1): expect and expect_bytes are mutually exclusive",
        f"{at}[1].labels (line 1): labels are filled from expect's match: set expect too",
        f"{at}[2].labels[0].name (line 1): invalid label name 'b-c': must match [a-zA-Z_][a-zA-Z0-9_]*",
    ]


async def test_expect_reads_lines_until_one_matches(
    tcp_server: ServerFactory, run_probe: ProbeRunner
) -> None:
    """Lines before the match are skipped; a CR before the LF is not part of the line."""

    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        writer.write(b"* noise\r\n* more noise\r\n+OK ready\r\n")
        await until_closed(reader, peer)

    listener = await tcp_server(chatty)
    result = await run_probe(f"127.0.0.1:{listener.port}", tcp_module(step(expect=r"^\+OK ready$")))
    assert result.success, result.message


async def test_expect_fails_when_peer_closes_first(tcp_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """No matching line before the peer closes: reason protocol, probe_failed_due_to_regex 1."""

    async def wrong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        writer.write(b"220 smtp.test ESMTP\r\n")

    listener = await tcp_server(wrong)
    result = await run_probe(f"127.0.0.1:{listener.port}", tcp_module(step(expect="^SSH-2.0-")))
    assert not result.success
    assert result.reason is FailureReason.PROTOCOL
    assert result.value("probe_failed_due_to_regex") == 1
    assert result.message == (
        "query_response step 1: the server closed the connection before a line matched "
        "expect '^SSH-2.0-'; the last line was '220 smtp.test ESMTP'"
    )


async def test_peer_closes_without_a_word(tcp_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """A peer that accepts and hangs up at once fails an expect with reason protocol."""

    async def rude(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        return

    listener = await tcp_server(rude)
    result = await run_probe(f"127.0.0.1:{listener.port}", tcp_module(step(expect="^220")))
    assert result.reason is FailureReason.PROTOCOL
    assert result.message.endswith("expect '^220'; it sent no line")


async def test_garbage_without_newline_is_one_last_line(
    tcp_server: ServerFactory, run_probe: ProbeRunner
) -> None:
    """Binary junk ended by a close is matched as a final line, and fails the expect."""

    async def junk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        writer.write(b"\x00\xff\xfe\x16\x03\x01 junk")

    listener = await tcp_server(junk)
    result = await run_probe(f"127.0.0.1:{listener.port}", tcp_module(step(expect="^SSH-")))
    assert result.reason is FailureReason.PROTOCOL
    assert result.value("probe_failed_due_to_regex") == 1
    assert "the last line was '\\x00\\udcff\\udcfe\\x16\\x03\\x01 junk'" in result.message


async def test_final_line_without_newline_can_match(
    tcp_server: ServerFactory, run_probe: ProbeRunner
) -> None:
    """As with Go's scanner, text before the close counts as a line even without LF."""

    async def terse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        writer.write(b"READY")

    listener = await tcp_server(terse)
    result = await run_probe(f"127.0.0.1:{listener.port}", tcp_module(step(expect="^READY$")))
    assert result.success, result.message


async def test_overlong_line_is_refused(tcp_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """A line beyond 64 KiB fails with reason protocol instead of growing the buffer."""

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        writer.write(b"A" * (70 * 1024))
        await writer.drain()
        await until_closed(reader, peer)

    listener = await tcp_server(flood)
    result = await run_probe(f"127.0.0.1:{listener.port}", tcp_module(step(expect="^B")))
    assert result.reason is FailureReason.PROTOCOL
    assert result.message == "the server sent a line longer than 64 KiB"


async def test_silent_server_times_out(tcp_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """A server that never speaks ends in reason timeout through the runner's deadline."""
    listener = await tcp_server(listen_only)
    result = await run_probe(f"127.0.0.1:{listener.port}", tcp_module(step(expect="^SSH-")), timeout=0.3)
    assert result.reason is FailureReason.TIMEOUT
    assert result.message == "no answer within 300ms"


async def test_refused_connection(run_probe: ProbeRunner, unused_tcp_port: int) -> None:
    """Nobody listening: reason connect with the system's words."""
    port = unused_tcp_port
    result = await run_probe(f"127.0.0.1:{port}", tcp_module())
    assert result.reason is FailureReason.CONNECT
    assert result.message.startswith(f"cannot connect to 127.0.0.1:{port}: ")


async def test_target_needs_a_port(run_probe: ProbeRunner) -> None:
    """A target without a port is a configuration problem, reason other."""
    result = await run_probe("localhost", tcp_module())
    assert result.reason is FailureReason.OTHER
    assert result.message == "target 'localhost' must be host:port or [ipv6]:port"


async def test_tls_records_certificate_and_version(
    tcp_server: ServerFactory,
    run_probe: ProbeRunner,
    server_context: ssl.SSLContext,
    server_cert: trustme.LeafCert,
    ca_file: Path,
) -> None:
    """``tls: true`` verifies with the CA and records the leaf's expiry and the TLS version."""

    async def pop3(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        writer.write(b"+OK POP3 ready\r\n")
        await until_closed(reader, peer)

    listener = await tcp_server(pop3, tls=server_context)
    module = tcp_module(step(expect="^[+]OK"), tls=True, tls_config=TLSConfig(ca_file=str(ca_file)))
    result = await run_probe(f"localhost:{listener.port}", module)
    assert result.success, result.message
    assert result.value("probe_ssl_earliest_cert_expiry") == leaf_expiry(server_cert)
    versions = [s for s in result.samples if s.name == "probe_tls_version_info"]
    assert [(s.labels, s.value) for s in versions] == [((("version", "TLS 1.3"),), 1.0)]
    assert result.phases["tls"] > 0


async def test_tls_untrusted_certificate(
    tcp_server: ServerFactory, run_probe: ProbeRunner, server_context: ssl.SSLContext
) -> None:
    """A certificate from a CA we do not trust fails with reason tls."""
    listener = await tcp_server(listen_only, tls=server_context)
    result = await run_probe(f"127.0.0.1:{listener.port}", tcp_module(tls=True))
    assert result.reason is FailureReason.TLS
    assert result.message == ("certificate verification failed: unable to get local issuer certificate")


async def test_tls_wrong_server_name(
    tcp_server: ServerFactory,
    run_probe: ProbeRunner,
    server_context: ssl.SSLContext,
    ca_file: Path,
) -> None:
    """tls_config.server_name is checked against the certificate."""
    listener = await tcp_server(listen_only, tls=server_context)
    tls_config = TLSConfig(ca_file=str(ca_file), server_name="other.test")
    result = await run_probe(f"127.0.0.1:{listener.port}", tcp_module(tls=True, tls_config=tls_config))
    assert result.reason is FailureReason.TLS
    assert "other.test" in result.message


async def test_starttls_mid_dialogue(
    tcp_server: ServerFactory,
    run_probe: ProbeRunner,
    server_context: ssl.SSLContext,
    server_cert: trustme.LeafCert,
    ca_file: Path,
) -> None:
    """An SMTP-style STARTTLS step upgrades the connection and the dialogue goes on encrypted."""

    async def smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        writer.write(b"220 mail.test ESMTP\r\n")
        if await read_line(reader, peer) != b"STARTTLS\n":
            return
        writer.write(b"220 2.0.0 Ready to start TLS\r\n")
        await writer.drain()
        await writer.start_tls(server_context)
        writer.write(b"250 secured\r\n")
        await read_line(reader, peer)
        await until_closed(reader, peer)

    listener = await tcp_server(smtp)
    module = tcp_module(
        step(expect="^220 ", send="STARTTLS"),
        step(expect="^220 2.0.0", starttls=True),
        step(expect="^250 secured$", send="QUIT"),
        tls_config=TLSConfig(ca_file=str(ca_file)),
    )
    result = await run_probe(f"localhost:{listener.port}", module)
    assert result.success, result.message
    await heard(listener, [b"STARTTLS\n", b"QUIT\n"])
    assert result.value("probe_ssl_earliest_cert_expiry") == leaf_expiry(server_cert)
    assert result.value("probe_failed_due_to_regex") == 0


async def test_starttls_refused_by_plain_server(
    tcp_server: ServerFactory, run_probe: ProbeRunner, ca_file: Path
) -> None:
    """A server that answers the handshake with plain text fails with reason tls."""

    async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        writer.write(b"220 go ahead\r\n")
        await reader.read(1)
        writer.write(b"500 what is this\r\n" * 10)

    listener = await tcp_server(liar)
    module = tcp_module(step(expect="^220", starttls=True), tls_config=TLSConfig(ca_file=str(ca_file)))
    result = await run_probe(f"127.0.0.1:{listener.port}", module)
    assert result.reason is FailureReason.TLS
    assert result.message.startswith("TLS handshake failed:")


async def test_unreadable_ca_file_fails_before_connecting(run_probe: ProbeRunner) -> None:
    """A missing ca_file is reported as reason tls without any traffic."""
    module = tcp_module(tls=True, tls_config=TLSConfig(ca_file="/nonexistent/ca.pem"))
    result = await run_probe("127.0.0.1:1", module)
    assert result.reason is FailureReason.TLS
    assert result.message.startswith("cannot load ca_file:")
    assert "resolve" not in result.phases


def test_expand_follows_go_template_rules() -> None:
    """``$1x`` names group "1x" (empty), ``${1}x`` is group 1 then x, ``$`` alone stays."""
    match = re.search(r"(?P<word>\w+)-(\d+)", "abc-42")
    assert match is not None
    assert expand("$1x|${1}x|${word}|$word|$$|$|${bad|$01|$9", match) == "|abcx|abc|abc|$|$|${bad||"


@pytest.mark.parametrize(
    ("target", "default", "expected"),
    [
        ("example.test:25", None, ("example.test", 25)),
        ("[::1]:853", None, ("::1", 853)),
        ("example.test", 53, ("example.test", 53)),
        ("::1", 53, ("::1", 53)),
        ("[::1]", 53, ("::1", 53)),
    ],
)
def test_split_host_port(target: str, default: int | None, expected: tuple[str, int]) -> None:
    """Targets split as Go's net.SplitHostPort does, with an optional default port."""
    assert split_host_port(target, default) == expected


@pytest.mark.parametrize("target", ["example.test", "host:", "host:http", "host:70000", "[::1]x"])
def test_split_host_port_rejects(target: str) -> None:
    """Malformed targets raise a ProbeFailure with reason other."""
    with pytest.raises(ProbeFailure) as info:
        split_host_port(target)
    assert info.value.reason is FailureReason.OTHER


async def test_probe_allowlist_is_enforced(tcp_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """An on-demand probe reaches only hosts and addresses the allowlist covers."""
    listener = await tcp_server(listen_only)
    elsewhere = Allowlist([HostPattern.from_yaml("10.0.0.0/8")])
    refused = await run_probe(f"127.0.0.1:{listener.port}", tcp_module(), guard=elsewhere)
    assert refused.reason is FailureReason.OTHER
    assert refused.message == "target host 127.0.0.1 is outside probe_allowlist"
    by_name = await run_probe(
        f"localhost:{listener.port}", tcp_module(preferred_ip_protocol="ip4"), guard=elsewhere
    )
    assert by_name.message == "localhost resolves to 127.0.0.1, outside probe_allowlist"
    loopback = Allowlist([HostPattern.from_yaml("127.0.0.0/8")])
    allowed = await run_probe(f"127.0.0.1:{listener.port}", tcp_module(), guard=loopback)
    assert allowed.success, allowed.message
