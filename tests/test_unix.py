"""Tests for the unix prober against real unix stream sockets, plain and TLS."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme

from exporter.allowlist import Allowlist
from exporter.config import parse_config
from exporter.errors import ConfigError
from exporter.modules import Module, QueryResponse, TLSConfig
from exporter.probes.unix import UnixProbe
from exporter.result import FailureReason
from exporter.types import HostPattern, Regex
from tests.conftest import ProbeRunner

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Serve = Callable[..., Awaitable[str]]


@pytest.fixture
async def unix_server(tmp_path: Path) -> AsyncIterator[Serve]:
    """Starts unix socket servers running a handler; returns each one's path."""
    servers: list[asyncio.Server] = []

    async def start(handler: Handler, name: str = "app.sock", tls: ssl.SSLContext | None = None) -> str:
        path = name if name.startswith("\0") else str(tmp_path / name)
        servers.append(await asyncio.start_unix_server(handler, path, ssl=tls))
        return path

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture(scope="module")
def unix_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("app.internal").configure_cert(context)
    return context


def unix_module(*steps: QueryResponse, **settings: object) -> Module:
    return Module(prober="unix", sections={"unix": UnixProbe(query_response=steps, **settings)})  # type: ignore[arg-type]


def step(expect: str | None = None, send: str = "", **more: object) -> QueryResponse:
    return QueryResponse(expect=Regex.from_yaml(expect) if expect is not None else None, send=send, **more)  # type: ignore[arg-type]


async def greeter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A line protocol: greets, answers PING with PONG and the token, then waits to be hung up on."""
    writer.write(b"+OK app ready v2.1\r\n")
    await writer.drain()
    while line := await reader.readline():
        if line.startswith(b"PING "):
            writer.write(b"PONG " + line[5:])
            await writer.drain()
    writer.close()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()
    writer.close()


async def test_connects_without_any_address_metric(unix_server: Serve, run_probe: ProbeRunner) -> None:
    """A bare connect succeeds; there is no resolving, so no address or lookup gauges."""
    path = await unix_server(silent)
    result = await run_probe(path, unix_module())
    assert result.success, result.message
    names = {sample.name for sample in result.samples}
    assert {"probe_failed_due_to_regex", "probe_failed_due_to_bytes"} <= names
    assert not names & {"probe_ip_protocol", "probe_ip_addr_hash", "probe_dns_lookup_time_seconds"}
    assert "connect" in result.phases


async def test_query_response_expands_and_labels(unix_server: Serve, run_probe: ProbeRunner) -> None:
    """The tcp prober's dialogue: expect, labels from the match, a send expanded from it."""
    path = await unix_server(greeter)
    module = unix_module(
        step(expect=r"^\+OK app ready v(?P<version>[0-9.]+)", labels=()),
        step(send="PING t0k3n"),
        step(expect="^PONG t0k3n$"),
    )
    result = await run_probe(path, module)
    assert result.success, result.message
    assert result.value("probe_failed_due_to_regex") == 0


async def test_expect_info_labels(unix_server: Serve, run_probe: ProbeRunner) -> None:
    config = parse_config(
        "modules:\n  m:\n    prober: unix\n    unix:\n      query_response:\n"
        "        - expect: '^\\+OK app ready v(?P<version>[0-9.]+)'\n"
        "          labels: [{name: version, value: '${version}'}]\n"
    )
    path = await unix_server(greeter)
    result = await run_probe(path, config.modules["m"])
    assert result.success, result.message
    info = [s for s in result.samples if s.name == "probe_expect_info"]
    assert [(s.labels, s.value) for s in info] == [((("version", "2.1"),), 1.0)]


async def banner_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"+OK app ready v2.1\r\n")
    await writer.drain()
    writer.close()


async def test_expect_that_never_matches(unix_server: Serve, run_probe: ProbeRunner) -> None:
    path = await unix_server(banner_then_close)
    result = await run_probe(path, unix_module(step(expect="^-ERR")))
    assert (result.success, result.reason) == (False, FailureReason.PROTOCOL)
    assert result.value("probe_failed_due_to_regex") == 1
    assert "'+OK app ready v2.1'" in result.message


async def test_no_socket_at_the_path(tmp_path: Path, run_probe: ProbeRunner) -> None:
    result = await run_probe(str(tmp_path / "missing.sock"), unix_module())
    assert (result.reason, result.message) == (FailureReason.CONNECT, "no socket at this path")


async def test_stale_socket_nobody_listens(tmp_path: Path, run_probe: ProbeRunner) -> None:
    """A socket file left behind by a process that died: connection refused, reason connect."""
    path = str(tmp_path / "stale.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.close()
    assert Path(path).is_socket()  # noqa: ASYNC240 (a local stat, before any probing)
    result = await run_probe(path, unix_module())
    assert result.reason is FailureReason.CONNECT
    assert result.message == "connection refused: nothing listens on this path"


async def test_not_a_socket(tmp_path: Path, run_probe: ProbeRunner) -> None:
    path = tmp_path / "plain-file"
    path.write_text("not a socket")
    result = await run_probe(str(path), unix_module())
    assert result.reason is FailureReason.CONNECT
    assert result.message.startswith("connection refused") or "cannot connect" in result.message


async def test_path_too_long(tmp_path: Path, run_probe: ProbeRunner) -> None:
    result = await run_probe("/" + "x" * 200, unix_module())
    assert (result.reason, result.message) == (
        FailureReason.CONNECT,
        "the socket path is longer than 107 bytes",
    )


async def test_abstract_socket(unix_server: Serve, run_probe: ProbeRunner) -> None:
    """``@name`` is a Linux abstract socket, as Go writes it."""
    name = f"outage-exporter-test-{os.getpid()}"
    await unix_server(greeter, name="\0" + name)
    result = await run_probe("@" + name, unix_module(step(expect="^[+]OK")))
    assert result.success, result.message


async def test_silent_server_times_out(unix_server: Serve, run_probe: ProbeRunner) -> None:
    path = await unix_server(silent)
    result = await run_probe(path, unix_module(step(expect="^hello")), timeout=0.3)
    assert result.reason is FailureReason.TIMEOUT


async def test_tls_with_server_name(
    unix_server: Serve, run_probe: ProbeRunner, unix_tls: ssl.SSLContext, ca_file: Path
) -> None:
    path = await unix_server(greeter, tls=unix_tls)
    tls_config = TLSConfig(ca_file=str(ca_file), server_name="app.internal")
    result = await run_probe(path, unix_module(step(expect="^[+]OK"), tls=True, tls_config=tls_config))
    assert result.success, result.message
    assert result.value("probe_ssl_earliest_cert_expiry") > 0
    assert [s.labels for s in result.samples if s.name == "probe_tls_version_info"] == [
        (("version", "TLS 1.3"),)
    ]


async def test_tls_needs_a_server_name(
    unix_server: Serve, run_probe: ProbeRunner, unix_tls: ssl.SSLContext, ca_file: Path
) -> None:
    path = await unix_server(greeter, tls=unix_tls)
    result = await run_probe(path, unix_module(tls=True, tls_config=TLSConfig(ca_file=str(ca_file))))
    assert result.reason is FailureReason.TLS
    assert "tls_config.server_name" in result.message
    skip = TLSConfig(insecure_skip_verify=True)
    assert (await run_probe(path, unix_module(tls=True, tls_config=skip))).success


async def test_tls_wrong_server_name(
    unix_server: Serve, run_probe: ProbeRunner, unix_tls: ssl.SSLContext, ca_file: Path
) -> None:
    path = await unix_server(greeter, tls=unix_tls)
    tls_config = TLSConfig(ca_file=str(ca_file), server_name="other.internal")
    result = await run_probe(path, unix_module(tls=True, tls_config=tls_config))
    assert result.reason is FailureReason.TLS
    assert "other.internal" in result.message


async def test_on_demand_probes_reach_only_listed_sockets(
    unix_server: Serve, run_probe: ProbeRunner, tmp_path: Path
) -> None:
    """A /probe caller reaches a socket only when a path entry of probe_allowlist lists it."""
    path = await unix_server(greeter)
    for entries in (
        ("*", "127.0.0.0/8", "0.0.0.0/0"),
        (f"{tmp_path}/other/*.sock",),
        (f"{tmp_path}/*/app.sock",),
    ):
        guard = Allowlist(tuple(HostPattern.from_yaml(e) for e in entries))
        result = await run_probe(path, unix_module(), guard=guard)
        assert result.reason is FailureReason.OTHER, entries
        assert "outside probe_allowlist" in result.message
    for entry in (path, f"{tmp_path}/*.sock", f"{tmp_path}/app.s?ck"):
        guard = Allowlist((HostPattern.from_yaml(entry),))
        assert await guard.allows_target(path)
        assert (await run_probe(path, unix_module(), guard=guard)).success, entry


def test_blackbox_unix_module_loads_and_bad_regex_is_refused() -> None:
    """blackbox 0.26's unix section loads unchanged; an invalid expect is a located error."""
    config = parse_config(
        "modules:\n  unix_ping:\n    prober: unix\n    timeout: 5s\n    unix:\n"
        "      query_response:\n        - send: PING\n        - expect: '^PONG'\n"
    )
    settings = config.modules["unix_ping"].section(UnixProbe)
    assert [s.send for s in settings.query_response] == ["PING", ""]
    with pytest.raises(ConfigError) as err:
        parse_config(
            "modules:\n  bad:\n    prober: unix\n    unix:\n      query_response:\n"
            "        - send: PING\n          expect: ':['\n"
        )
    [issue] = err.value.issues
    assert issue.path == "modules.bad.unix.query_response[0].expect"
    assert issue.line == 7


def test_service_with_inline_unix_settings() -> None:
    config = parse_config(
        "services:\n  - name: local-app\n    prober: unix\n    target: /run/app.sock\n"
        "    unix: {query_response: [{expect: '^[+]OK'}]}\n"
    )
    [service] = config.services
    assert service.module.prober == "unix"
    assert service.module.section(UnixProbe).query_response[0].expect is not None


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("var/run/docker.sock", "the target must be an absolute socket path or @name"),
        ("./app.sock", "the target must be an absolute socket path or @name"),
        ("/run/apps/../docker.sock", "the socket path must not hold '.', '..' or a NUL byte"),
        ("/run/apps/./app.sock", "the socket path must not hold '.', '..' or a NUL byte"),
        ("/run/apps/app\0.sock", "the socket path must not hold '.', '..' or a NUL byte"),
    ],
)
async def test_only_absolute_normal_paths(target: str, message: str, run_probe: ProbeRunner) -> None:
    """A relative path, a dot segment or a NUL could reach another socket than the one listed."""
    guard = Allowlist((HostPattern.from_yaml("/run/apps/*"), HostPattern.from_yaml("10.0.0.0/8")))
    for allowlist in (None, guard):
        result = await run_probe(target, unix_module(), guard=allowlist)
        assert (result.reason, result.message) == (FailureReason.OTHER, message)
    assert not guard.allows_host("/run/apps/app\0.sock")


def test_socket_path_with_a_colon_is_checked_whole() -> None:
    from exporter.allowlist import target_host

    assert target_host("/run/app/a:b.sock") == "/run/app/a:b.sock"
