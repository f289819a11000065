"""Tests for the dns prober against a real local DNS server speaking UDP, TCP and TLS."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
import trustme
from cryptography import x509

from exporter.allowlist import Allowlist
from exporter.modules import DNSProbe, DNSRRValidator, Module, TLSConfig
from exporter.probes.dns import KIND
from exporter.probes.dns_probe import _from_wire, check_rrs, rr_texts
from exporter.result import FailureReason
from exporter.types import HostPattern, Regex
from tests.conftest import ProbeRunner

ZONE = "example.test."
SERIAL = 2024061501

# What the fake server sends back for a query: wire bytes, or None to stay silent.
Responder = Callable[[dns.message.Message], bytes | None]


def answer(query: dns.message.Message) -> bytes | None:
    """A tiny authoritative server for example.test, with a few misbehaving names."""
    name = query.question[0].name.to_text()
    rdtype = query.question[0].rdtype
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    if name == f"www.{ZONE}":
        response.answer.append(dns.rrset.from_text(name, 300, "IN", "A", "127.0.0.1", "127.0.0.2"))
        response.authority.append(dns.rrset.from_text(ZONE, 3600, "IN", "NS", f"ns.{ZONE}"))
        response.additional.append(dns.rrset.from_text(f"ns.{ZONE}", 3600, "IN", "A", "127.0.0.53"))
    elif name == ZONE and rdtype == dns.rdatatype.SOA:
        response.answer.append(
            dns.rrset.from_text(
                ZONE, 3600, "IN", "SOA", f"ns.{ZONE} hostmaster.{ZONE} {SERIAL} 7200 900 1209600 300"
            )
        )
    elif name == f"empty.{ZONE}":
        response.authority.append(
            dns.rrset.from_text(
                ZONE, 3600, "IN", "SOA", f"ns.{ZONE} hostmaster.{ZONE} {SERIAL} 7200 900 1209600 300"
            )
        )
    elif name == f"fail.{ZONE}":
        response.set_rcode(dns.rcode.SERVFAIL)
    elif name == f"garbage.{ZONE}":
        return b"\x13\x37 this is not a DNS message"
    elif name == f"wrong-id.{ZONE}":
        response.id = (query.id + 1) % 65536
        response.answer.append(dns.rrset.from_text(name, 300, "IN", "A", "127.0.0.1"))
    elif name == f"truncated.{ZONE}":
        response.flags |= dns.flags.TC
        response.answer.append(dns.rrset.from_text(name, 300, "IN", "A", "127.0.0.1"))
    elif name == f"silent.{ZONE}":
        return None
    else:
        response.set_rcode(dns.rcode.NXDOMAIN)
    return response.to_wire()


@dataclass
class DNSServer:
    host: str
    udp_port: int
    tcp_port: int
    # The queries the server received, to check what the prober asked.
    queries: list[dns.message.Message] = field(default_factory=list)

    def udp(self) -> str:
        return f"[{self.host}]:{self.udp_port}" if ":" in self.host else f"{self.host}:{self.udp_port}"

    def tcp(self) -> str:
        return f"[{self.host}]:{self.tcp_port}" if ":" in self.host else f"{self.host}:{self.tcp_port}"


class _UDPHandler(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer, respond: Responder) -> None:
        self.server = server
        self.respond = respond
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector transport does not subclass DatagramTransport, though it is one.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        self.server.queries.append(query)
        reply = self.respond(query)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


ServerFactory = Callable[..., Awaitable[DNSServer]]


@pytest.fixture
async def dns_server() -> AsyncIterator[ServerFactory]:
    """Starts DNS servers (UDP and TCP, optionally TLS on the TCP side) on port 0."""
    closers: list[Callable[[], Awaitable[None]]] = []
    handlers: set[asyncio.Task[None]] = set()

    async def start(
        host: str = "127.0.0.1", respond: Responder = answer, tls: ssl.SSLContext | None = None
    ) -> DNSServer:
        loop = asyncio.get_running_loop()
        server = DNSServer(host, 0, 0)

        async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                while True:
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    query = dns.message.from_wire(await reader.readexactly(length))
                    server.queries.append(query)
                    reply = respond(query)
                    if reply is None:
                        continue
                    writer.write(struct.pack("!H", len(reply)) + reply)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError, ssl.SSLError):
                    await writer.wait_closed()

        tcp = await asyncio.start_server(stream, host, 0, ssl=tls)
        server.tcp_port = tcp.sockets[0].getsockname()[1]
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UDPHandler(server, respond), local_addr=(host, 0)
        )
        server.udp_port = transport.get_extra_info("sockname")[1]

        async def close() -> None:
            transport.close()
            tcp.close()
            await tcp.wait_closed()

        closers.append(close)
        return server

    yield start
    for close in closers:
        await close()
    for task in handlers:
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)


def dns_module(query_name: str = f"www.{ZONE}", query_type: str = "A", **settings: object) -> Module:
    probe = DNSProbe(query_name=query_name, query_type=query_type, **settings)  # type: ignore[arg-type]
    return Module(prober="dns", sections={"dns": probe})


def regexes(*sources: str) -> tuple[Regex, ...]:
    return tuple(Regex.from_yaml(source) for source in sources)


async def test_udp_query_counts_records(dns_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """An A query over UDP succeeds and counts answer, authority and additional records."""
    server = await dns_server()
    result = await run_probe(server.udp(), dns_module())
    assert result.success, result.message
    assert result.value("probe_dns_answer_rrs") == 2
    assert result.value("probe_dns_authority_rrs") == 1
    assert result.value("probe_dns_additional_rrs") == 1
    assert result.value("probe_dns_query_succeeded") == 1
    assert result.value("probe_ip_protocol") == 4
    assert result.value("probe_dns_serial") is None
    assert set(result.phases) == {"resolve", "connect", "request"}
    assert result.phases["request"] > 0
    assert sum(result.phases.values()) <= result.duration


async def test_tcp_query(dns_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """transport_protocol: tcp sends the same query over a TCP connection."""
    server = await dns_server()
    result = await run_probe(server.tcp(), dns_module(transport_protocol="tcp"))
    assert result.success, result.message
    assert result.value("probe_dns_answer_rrs") == 2
    assert len(server.queries) == 1


async def test_ipv6_server(dns_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """A server at ``[::1]:port`` is queried over IPv6."""
    server = await dns_server(host="::1")
    result = await run_probe(server.udp(), dns_module())
    assert result.success, result.message
    assert result.value("probe_ip_protocol") == 6


async def test_query_as_configured(dns_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """The question uses query_name/type/class, and recursion_desired: false clears RD."""
    server = await dns_server()
    module = dns_module(query_type="AAAA", query_class="CH", recursion_desired=False)
    await run_probe(server.udp(), module)
    (query,) = server.queries
    assert query.question[0].to_text() == f"www.{ZONE} CH AAAA"
    assert not query.flags & dns.flags.RD
    await run_probe(server.udp(), dns_module())
    assert server.queries[1].flags & dns.flags.RD


async def test_soa_serial(dns_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """An SOA in the answer exports its serial as probe_dns_serial."""
    server = await dns_server()
    result = await run_probe(server.udp(), dns_module(ZONE, "SOA"))
    assert result.success, result.message
    assert result.value("probe_dns_serial") == SERIAL
    assert result.value("probe_dns_answer_rrs") == 1


async def test_nxdomain_fails_unless_valid(dns_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """NXDOMAIN fails with reason protocol by default and passes when listed in valid_rcodes."""
    server = await dns_server()
    result = await run_probe(server.udp(), dns_module(f"nope.{ZONE}"))
    assert result.reason is FailureReason.PROTOCOL
    assert result.message == "rcode NXDOMAIN is not one of valid_rcodes (NOERROR)"
    assert result.value("probe_dns_query_succeeded") == 1
    assert result.value("probe_dns_answer_rrs") == 0
    allowed = dns_module(f"nope.{ZONE}", valid_rcodes=("NOERROR", "NXDOMAIN"))
    assert (await run_probe(server.udp(), allowed)).success


async def test_servfail(dns_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """SERVFAIL is a protocol failure naming the rcode."""
    server = await dns_server()
    result = await run_probe(server.tcp(), dns_module(f"fail.{ZONE}", transport_protocol="tcp"))
    assert result.reason is FailureReason.PROTOCOL
    assert result.message == "rcode SERVFAIL is not one of valid_rcodes (NOERROR)"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_garbage_answer(dns_server: ServerFactory, run_probe: ProbeRunner, transport: str) -> None:
    """Bytes that are not a DNS message fail with reason protocol; the query did not succeed."""
    server = await dns_server()
    target = server.udp() if transport == "udp" else server.tcp()
    result = await run_probe(target, dns_module(f"garbage.{ZONE}", transport_protocol=transport))
    assert result.reason is FailureReason.PROTOCOL
    assert result.message.startswith(f"{target} sent a malformed answer:")
    assert result.value("probe_dns_query_succeeded") == 0


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_wrong_message_id(dns_server: ServerFactory, run_probe: ProbeRunner, transport: str) -> None:
    """An answer whose id differs from the query's fails with reason protocol."""
    server = await dns_server()
    target = server.udp() if transport == "udp" else server.tcp()
    result = await run_probe(target, dns_module(f"wrong-id.{ZONE}", transport_protocol=transport))
    assert result.reason is FailureReason.PROTOCOL
    assert result.message == (
        f"{target} answered with a message that does not match the query (wrong id or question)"
    )


async def test_truncated_answer_is_reported(dns_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """A TC answer counts what arrived and succeeds, as in blackbox, with a note in the message."""
    server = await dns_server()
    result = await run_probe(server.udp(), dns_module(f"truncated.{ZONE}"))
    assert result.success
    assert result.message == "the answer was truncated: TC bit set"
    assert result.value("probe_dns_answer_rrs") == 1


async def test_truncated_answer_still_validated(dns_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """A truncated answer that fails a check says it was truncated."""
    server = await dns_server()
    validator = DNSRRValidator(fail_if_none_matches_regexp=regexes("127.0.0.9"))
    module = dns_module(f"truncated.{ZONE}", validate_answer_rrs=validator)
    result = await run_probe(server.udp(), module)
    assert result.reason is FailureReason.PROTOCOL
    assert result.message == (
        "no answer record matches fail_if_none_matches_regexp '127.0.0.9'"
        " (the answer was truncated: TC bit set)"
    )


async def test_closed_udp_port_is_refused(run_probe: ProbeRunner) -> None:
    """With nobody on the UDP port the kernel's port-unreachable fails the probe with connect."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await run_probe(f"127.0.0.1:{port}", dns_module())
    assert result.reason is FailureReason.CONNECT
    assert result.message == f"127.0.0.1:{port}: Connection refused"


async def test_silent_server_times_out(dns_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """A server that swallows the query ends in reason timeout through the runner."""
    server = await dns_server()
    result = await run_probe(server.udp(), dns_module(f"silent.{ZONE}"), timeout=0.3)
    assert result.reason is FailureReason.TIMEOUT
    assert result.value("probe_dns_query_succeeded") == 0


async def test_source_address(dns_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """source_ip_address binds the query's socket, over UDP and TCP."""
    server = await dns_server()
    udp = await run_probe(server.udp(), dns_module(source_ip_address="127.0.0.1"))
    tcp = await run_probe(server.tcp(), dns_module(source_ip_address="127.0.0.1", transport_protocol="tcp"))
    assert udp.success and tcp.success, (udp.message, tcp.message)


async def test_dns_over_tls(
    dns_server: ServerFactory,
    run_probe: ProbeRunner,
    server_cert: trustme.LeafCert,
    ca_file: Path,
) -> None:
    """dns_over_tls verifies the server with tls_config and records its certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    server = await dns_server(tls=context)
    module = dns_module(
        transport_protocol="tcp", dns_over_tls=True, tls_config=TLSConfig(ca_file=str(ca_file))
    )
    result = await run_probe(f"localhost:{server.tcp_port}", module)
    assert result.success, result.message
    assert result.value("probe_dns_answer_rrs") == 2
    leaf = x509.load_pem_x509_certificate(server_cert.cert_chain_pems[0].bytes())
    assert result.value("probe_ssl_earliest_cert_expiry") == leaf.not_valid_after_utc.timestamp()


async def test_dns_over_tls_untrusted(
    dns_server: ServerFactory, run_probe: ProbeRunner, server_cert: trustme.LeafCert
) -> None:
    """A DoT server whose certificate we cannot verify fails with reason tls."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    server = await dns_server(tls=context)
    module = dns_module(transport_protocol="tcp", dns_over_tls=True)
    result = await run_probe(server.tcp(), module)
    assert result.reason is FailureReason.TLS
    assert result.message == ("certificate verification failed: unable to get local issuer certificate")


VALIDATION_CASES = [
    # (validator, passes, failure message)
    (DNSRRValidator(fail_if_matches_regexp=regexes(".*127.0.0.2")), False,
     "answer record 'www.example.test.\\t300\\tIN\\tA\\t127.0.0.2' matches "
     "fail_if_matches_regexp '.*127.0.0.2'"),
    (DNSRRValidator(fail_if_matches_regexp=regexes(".*127.0.0.9")), True, ""),
    # Checked against blackbox_exporter 0.23: it fails when NOT every record matches.
    (DNSRRValidator(fail_if_all_match_regexp=regexes("127.0.0.1$")), False,
     "not every answer record matches fail_if_all_match_regexp '127.0.0.1$'"),
    (DNSRRValidator(fail_if_all_match_regexp=regexes("\tIN\tA\t127\\.0\\.0\\.")), True, ""),
    (DNSRRValidator(fail_if_all_match_regexp=regexes("127.0.0.", "nomatch")), False,
     "not every answer record matches fail_if_all_match_regexp '127.0.0.', 'nomatch'"),
    (DNSRRValidator(fail_if_not_matches_regexp=regexes("127.0.0.1$")), False,
     "answer record 'www.example.test.\\t300\\tIN\\tA\\t127.0.0.2' does not match "
     "fail_if_not_matches_regexp '127.0.0.1$'"),
    (DNSRRValidator(fail_if_not_matches_regexp=regexes("^www.example.test.\t300\tIN\tA\t")),
     True, ""),
    (DNSRRValidator(fail_if_none_matches_regexp=regexes("127.0.0.9", "127.0.0.8")), False,
     "no answer record matches fail_if_none_matches_regexp '127.0.0.9', '127.0.0.8'"),
    (DNSRRValidator(fail_if_none_matches_regexp=regexes("127.0.0.9", "127.0.0.2")), True, ""),
]  # fmt: skip


@pytest.mark.parametrize(("validator", "passes", "message"), VALIDATION_CASES)
async def test_answer_validation(
    dns_server: ServerFactory,
    run_probe: ProbeRunner,
    validator: DNSRRValidator,
    passes: bool,
    message: str,
) -> None:
    """blackbox's four regex checks on the answer records, each passing and failing."""
    server = await dns_server()
    result = await run_probe(server.udp(), dns_module(validate_answer_rrs=validator))
    assert result.success is passes
    assert result.message == message
    if not passes:
        assert result.reason is FailureReason.PROTOCOL


async def test_authority_and_additional_validation(dns_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """The authority and additional sections have their own validators."""
    server = await dns_server()
    ns = DNSRRValidator(fail_if_not_matches_regexp=regexes("\tNS\tns[.]example[.]test[.]$"))
    glue = DNSRRValidator(fail_if_matches_regexp=regexes("127[.]0[.]0[.]53"))
    ok = await run_probe(server.udp(), dns_module(validate_authority_rrs=ns))
    assert ok.success, ok.message
    bad = await run_probe(server.udp(), dns_module(validate_additional_rrs=glue))
    assert bad.reason is FailureReason.PROTOCOL
    assert bad.message.startswith("additional record 'ns.example.test.\\t3600\\tIN\\tA\\t127.0.0.53'")


async def test_no_records_fail_required_matches(dns_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """An empty answer fails fail_if_not_matches_regexp, as blackbox does."""
    server = await dns_server()
    validator = DNSRRValidator(fail_if_not_matches_regexp=regexes(".*"))
    result = await run_probe(server.udp(), dns_module(f"empty.{ZONE}", validate_answer_rrs=validator))
    assert result.reason is FailureReason.PROTOCOL
    assert result.message == "no answer records, but fail_if_not_matches_regexp needs some"
    assert result.value("probe_dns_authority_rrs") == 1


def test_empty_section_passes_all_match() -> None:
    """With no records fail_if_all_match_regexp passes (as blackbox's does), unlike not_matches."""
    assert check_rrs([], DNSRRValidator(fail_if_all_match_regexp=regexes("x")), "answer") is None
    assert check_rrs([], DNSRRValidator(fail_if_matches_regexp=regexes("x")), "answer") is None
    assert check_rrs([], DNSRRValidator(fail_if_none_matches_regexp=regexes("x")), "authority") == (
        "no authority records, but fail_if_none_matches_regexp needs some"
    )


def test_record_text_matches_miekg_format() -> None:
    """Records are tab-separated name, TTL, class, type and data, one line per record."""
    rrset = dns.rrset.from_text(
        "mx.example.test.", 60, "IN", "MX", "10 a.example.test.", "20 b.example.test."
    )
    assert rr_texts([rrset]) == [
        "mx.example.test.\t60\tIN\tMX\t10 a.example.test.",
        "mx.example.test.\t60\tIN\tMX\t20 b.example.test.",
    ]


async def test_unresolvable_server_name(run_probe: ProbeRunner) -> None:
    """A server name that does not resolve fails with reason dns."""
    result = await run_probe("no-such-host.invalid", dns_module())
    assert result.reason is FailureReason.DNS
    assert result.message.startswith("cannot resolve no-such-host.invalid:")
    assert result.value("probe_dns_query_succeeded") == 0


def test_kind_exports_blackbox_phases() -> None:
    """The phases are blackbox's probe_dns_duration_seconds labels."""
    assert KIND.phase_metric == "probe_dns_duration_seconds"
    assert KIND.phases == ("resolve", "connect", "request")


async def test_probe_allowlist_is_enforced(dns_server: ServerFactory, run_probe: ProbeRunner) -> None:
    """An on-demand probe may not query a server outside the allowlist."""
    server = await dns_server()
    guard = Allowlist([HostPattern.from_yaml("10.0.0.0/8")])
    result = await run_probe(server.udp(), dns_module(), guard=guard)
    assert result.reason is FailureReason.OTHER
    assert result.message == "target host 127.0.0.1 is outside probe_allowlist"
    assert server.queries == []


def _answer_with(count_field: int, claimed: int, tail: bytes = b"") -> bytes:
    query = dns.message.make_query(f"www.{ZONE}", "A")
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text(f"www.{ZONE}", 300, "IN", "A", "127.0.0.1"))
    wire = bytearray(response.to_wire() + tail)
    struct.pack_into("!H", wire, count_field, claimed)
    return bytes(wire)


def test_lying_counts_read_as_miekg_reads_them() -> None:
    """Counts above the records there give those records; bytes after them are ignored."""
    for field_offset in (6, 8, 10):  # answer, authority, additional count
        message = _from_wire(_answer_with(field_offset, 1 if field_offset == 6 else 4))
        assert [len(s) for s in (message.answer, message.authority, message.additional)] == [1, 0, 0]
    assert len(_from_wire(_answer_with(6, 1, tail=b"\x00\x01junk")).answer) == 1
    assert len(_from_wire(_answer_with(6, 0)).answer) == 0  # fewer counted: the rest is ignored


def test_a_record_cut_off_is_still_an_error() -> None:
    """A message that ends inside a record is broken, as miekg says too."""
    with pytest.raises(dns.exception.FormError):
        _from_wire(_answer_with(6, 2)[:-2])
