"""Tests of the grpc probe against a real local gRPC health server spoken over HTTP/2 with h2."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import pytest
import trustme
from cryptography import x509

from exporter.collector import render_result
from exporter.config import parse_config
from exporter.modules import GRPCProbe, Module, TLSConfig
from exporter.probes import PROBERS, grpc, grpc_probe
from exporter.result import FailureReason, ProbeResult
from exporter.types import Secret, SecretValues
from tests.conftest import ProbeRunner
from tests.metrics_util import parse, value

SERVING, NOT_SERVING, SERVICE_UNKNOWN = 1, 2, 3


def health_response(status: int) -> bytes:
    """A serialized HealthCheckResponse; proto3 leaves out the default (UNKNOWN, 0)."""
    return b"\x08" + bytes([status]) if status else b""


def frame(message: bytes, compressed: bool = False) -> bytes:
    return bytes([1 if compressed else 0]) + len(message).to_bytes(4, "big") + message


def service_name(body: bytes) -> str:
    """The service field of a framed HealthCheckRequest (short names only, as in these tests)."""
    message = body[5:]
    if not message:
        return ""
    assert message[0] == 0x0A
    return message[2 : 2 + message[1]].decode()


@dataclass
class Call:
    headers: dict[str, str]
    service: str


Answer = Callable[[h2.connection.H2Connection, int, Call], Awaitable[None]]


@dataclass
class HealthServer:
    """A gRPC health service: statuses by service name, and every call it received."""

    statuses: dict[str, int] = field(default_factory=lambda: {"": SERVING})
    calls: list[Call] = field(default_factory=list)
    # Replaces the standard answer, for misbehaving servers.
    answer: Answer | None = None
    release: asyncio.Event = field(default_factory=asyncio.Event)
    target: str = ""
    handlers: set[asyncio.Task[Any]] = field(default_factory=set)

    async def standard(self, conn: h2.connection.H2Connection, stream: int, call: Call) -> None:
        if call.headers.get(":path") != grpc_probe.HEALTH_CHECK_PATH:
            trailers_only(conn, stream, 12, "unknown method")
        elif call.service not in self.statuses:
            # What grpcio's health servicer answers for a service it does not know.
            trailers_only(conn, stream, 5, "unknown service")
        else:
            conn.send_headers(stream, [(":status", "200"), ("content-type", "application/grpc")])
            conn.send_data(stream, frame(health_response(self.statuses[call.service])))
            conn.send_headers(stream, [("grpc-status", "0")], end_stream=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        bodies: dict[int, bytes] = {}
        headers: dict[int, dict[str, str]] = {}
        try:
            while data := await reader.read(65536):
                try:
                    events = conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for event in events:
                    if isinstance(event, h2.events.RequestReceived):
                        headers[event.stream_id] = {str(k): str(v) for k, v in event.headers}
                    elif isinstance(event, h2.events.DataReceived):
                        bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        call = Call(headers[event.stream_id], service_name(bodies.get(event.stream_id, b"")))
                        self.calls.append(call)
                        await (self.answer or self.standard)(conn, event.stream_id, call)
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


def trailers_only(conn: h2.connection.H2Connection, stream: int, status: int, message: str) -> None:
    conn.send_headers(
        stream,
        [
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", str(status)),
            ("grpc-message", message),
        ],
        end_stream=True,
    )


ServerFactory = Callable[..., Awaitable[HealthServer]]


@pytest.fixture
async def health_server() -> AsyncIterator[ServerFactory]:
    """Starts health servers on 127.0.0.1, optionally over TLS with ALPN h2."""
    servers: list[tuple[asyncio.Server, HealthServer]] = []

    async def start(ssl_context: ssl.SSLContext | None = None, **options: Any) -> HealthServer:
        health = HealthServer(**options)
        server = await asyncio.start_server(health.handle, "127.0.0.1", 0, ssl=ssl_context)
        servers.append((server, health))
        health.target = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return health

    yield start
    for server, health in servers:
        health.release.set()
        server.close()
        await server.wait_closed()
        if health.handlers:
            # Handlers end when the probe hangs up; the bound only guards against a broken test.
            _, pending = await asyncio.wait(health.handlers, timeout=5)
            for task in pending:
                task.cancel()


def module(**settings: Any) -> Module:
    return Module(prober="grpc", sections={"grpc": GRPCProbe(**settings)})


def serving_states(result: ProbeResult) -> dict[str, float]:
    return {
        dict(s.labels)["serving_status"]: s.value
        for s in result.samples
        if s.name == "probe_grpc_healthcheck_response"
    }


def server_tls(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    context.set_alpn_protocols(["h2"])
    return context


async def test_serving_server(run_probe: ProbeRunner, health_server: ServerFactory) -> None:
    """The overall health (no service name) of a serving server: success and blackbox's values."""
    server = await health_server()
    result = await run_probe(server.target, module())
    assert result.success, result.message
    assert serving_states(result) == {"UNKNOWN": 0, "SERVING": 1, "NOT_SERVING": 0, "SERVICE_UNKNOWN": 0}
    assert result.value("probe_grpc_status_code") == 0
    assert result.value("probe_grpc_ssl") == 0
    assert result.value("probe_ip_protocol") == 4
    assert set(result.phases) == set(grpc.PHASES)
    assert result.phases["connect"] > 0 and result.phases["check"] > 0 and result.phases["tls"] == 0
    (call,) = server.calls
    assert call.service == ""
    assert call.headers[":method"] == "POST"
    assert call.headers[":scheme"] == "http"
    assert call.headers[":authority"] == server.target
    assert call.headers["content-type"] == "application/grpc"
    assert call.headers["te"] == "trailers"


@pytest.mark.parametrize(
    ("status", "name"), [(NOT_SERVING, "NOT_SERVING"), (SERVICE_UNKNOWN, "SERVICE_UNKNOWN"), (0, "UNKNOWN")]
)
async def test_named_service_not_serving(
    run_probe: ProbeRunner, health_server: ServerFactory, status: int, name: str
) -> None:
    """A service that answers anything but SERVING fails (body) with its state set to 1."""
    server = await health_server(statuses={"": SERVING, "feed.v1.Feed": status})
    result = await run_probe(server.target, module(service="feed.v1.Feed"))
    assert (result.reason, result.message) == (FailureReason.BODY, f"the service is {name}, not SERVING")
    assert serving_states(result) == {s: 1 if s == name else 0 for s in grpc.SERVING_STATUSES}
    assert result.value("probe_grpc_status_code") == 0
    assert server.calls[0].service == "feed.v1.Feed"


async def test_unknown_service_is_not_found(run_probe: ProbeRunner, health_server: ServerFactory) -> None:
    """A trailers-only NOT_FOUND answer fails (http_status) with gRPC status 5 and its message."""
    server = await health_server()
    result = await run_probe(server.target, module(service="nope"))
    assert (result.reason, result.message) == (
        FailureReason.HTTP_STATUS,
        "health check failed: NOT_FOUND: unknown service",
    )
    assert result.value("probe_grpc_status_code") == 5
    assert serving_states(result) == dict.fromkeys(grpc.SERVING_STATUSES, 0)


async def test_metadata_and_deadline_are_sent(run_probe: ProbeRunner, health_server: ServerFactory) -> None:
    """Configured metadata goes out as headers, and grpc-timeout carries the probe's deadline."""
    server = await health_server()
    settings = module(
        metadata=MappingProxyType(
            {
                "Authorization": SecretValues([Secret("Bearer s3cret")]),
                "x-team": SecretValues([Secret("core")]),
            }
        )
    )
    result = await run_probe(server.target, settings, timeout=3.0)
    assert result.success, result.message
    headers = server.calls[0].headers
    assert headers["authorization"] == "Bearer s3cret"
    assert headers["x-team"] == "core"
    timeout = headers["grpc-timeout"]
    assert timeout.endswith("m") and 0 < int(timeout[:-1]) <= 3000


async def test_tls(
    run_probe: ProbeRunner, health_server: ServerFactory, server_cert: trustme.LeafCert, ca_file: Path
) -> None:
    """Over TLS the probe negotiates h2 and reports the certificate and TLS values."""
    server = await health_server(ssl_context=server_tls(server_cert))
    result = await run_probe(server.target, module(tls=True, tls_config=TLSConfig(ca_file=str(ca_file))))
    assert result.success, result.message
    assert result.value("probe_grpc_ssl") == 1
    assert result.phases["tls"] > 0
    leaf = x509.load_pem_x509_certificate(server_cert.cert_chain_pems[0].bytes())
    assert result.value("probe_ssl_earliest_cert_expiry") == leaf.not_valid_after_utc.timestamp()
    versions = [dict(s.labels)["version"] for s in result.samples if s.name == "probe_tls_version_info"]
    assert versions == ["TLS 1.3"]
    assert server.calls[0].headers[":scheme"] == "https"


async def test_untrusted_certificate(
    run_probe: ProbeRunner, health_server: ServerFactory, server_cert: trustme.LeafCert
) -> None:
    """A certificate the probe does not trust fails with tls, before any call."""
    server = await health_server(ssl_context=server_tls(server_cert))
    result = await run_probe(server.target, module(tls=True))
    assert result.reason == FailureReason.TLS
    assert result.message.startswith("certificate verification failed")
    assert result.value("probe_grpc_status_code") == grpc_probe.UNAVAILABLE
    assert server.calls == []


async def test_connection_refused(run_probe: ProbeRunner) -> None:
    """Nothing listening: connect fails, and the status code says UNAVAILABLE as gRPC clients do."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        # Bound but not listening: connections are refused.
        result = await run_probe(f"127.0.0.1:{port}", module())
    assert result.reason == FailureReason.CONNECT
    assert result.value("probe_grpc_status_code") == grpc_probe.UNAVAILABLE


async def test_deadline_passes(run_probe: ProbeRunner, health_server: ServerFactory) -> None:
    """A server that does not answer in time: timeout, with DEADLINE_EXCEEDED as the status code."""
    server = await health_server()

    async def stall(conn: h2.connection.H2Connection, stream: int, call: Call) -> None:
        await server.release.wait()

    server.answer = stall
    result = await run_probe(server.target, module(), timeout=0.3)
    assert result.reason == FailureReason.TIMEOUT
    assert result.value("probe_grpc_status_code") == grpc_probe.DEADLINE_EXCEEDED
    assert serving_states(result) == dict.fromkeys(grpc.SERVING_STATUSES, 0)


async def test_http_error_maps_to_grpc_status(run_probe: ProbeRunner, health_server: ServerFactory) -> None:
    """An HTTP 404 without grpc-status is UNIMPLEMENTED, as the gRPC spec maps it."""
    server = await health_server()

    async def not_found(conn: h2.connection.H2Connection, stream: int, call: Call) -> None:
        conn.send_headers(stream, [(":status", "404"), ("content-type", "text/plain")], end_stream=True)

    server.answer = not_found
    result = await run_probe(server.target, module())
    assert (result.reason, result.message) == (FailureReason.HTTP_STATUS, "HTTP status 404, not 200")
    assert result.value("probe_grpc_status_code") == 12


async def test_compressed_answer(run_probe: ProbeRunner, health_server: ServerFactory) -> None:
    """A gzip-compressed message is inflated and read."""
    server = await health_server()

    async def compressed(conn: h2.connection.H2Connection, stream: int, call: Call) -> None:
        conn.send_headers(
            stream,
            [(":status", "200"), ("content-type", "application/grpc+proto"), ("grpc-encoding", "gzip")],
        )
        conn.send_data(stream, frame(gzip.compress(health_response(SERVING)), compressed=True))
        conn.send_headers(stream, [("grpc-status", "0")], end_stream=True)

    server.answer = compressed
    result = await run_probe(server.target, module())
    assert result.success, result.message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "malformed HealthCheckResponse: no message in the answer"),
        (
            frame(b"\x08\x01")[:-1],
            "malformed HealthCheckResponse: the message length does not match the data",
        ),
        (frame(b"\x08"), "malformed HealthCheckResponse: truncated varint"),
        (
            frame(b"\x08\x01", compressed=True),
            "malformed HealthCheckResponse: compressed with None, which the probe did not ask for",
        ),
    ],
)
async def test_malformed_answer(
    run_probe: ProbeRunner, health_server: ServerFactory, body: bytes, message: str
) -> None:
    """An answer that is not a HealthCheckResponse fails with protocol."""
    server = await health_server()

    async def broken(conn: h2.connection.H2Connection, stream: int, call: Call) -> None:
        conn.send_headers(stream, [(":status", "200"), ("content-type", "application/grpc")])
        if body:
            conn.send_data(stream, body)
        conn.send_headers(stream, [("grpc-status", "0")], end_stream=True)

    server.answer = broken
    result = await run_probe(server.target, module())
    assert (result.reason, result.message) == (FailureReason.PROTOCOL, message)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (h2.errors.ErrorCodes.INTERNAL_ERROR, grpc_probe.INTERNAL),
        (h2.errors.ErrorCodes.REFUSED_STREAM, grpc_probe.UNAVAILABLE),
        (h2.errors.ErrorCodes.CANCEL, grpc_probe.CANCELLED),
    ],
)
async def test_reset_stream(
    run_probe: ProbeRunner, health_server: ServerFactory, code: h2.errors.ErrorCodes, status: int
) -> None:
    """A server that resets the call fails with protocol; the code maps as gRPC clients map it."""
    server = await health_server()

    async def reset(conn: h2.connection.H2Connection, stream: int, call: Call) -> None:
        conn.reset_stream(stream, code)

    server.answer = reset
    result = await run_probe(server.target, module())
    assert (result.reason, result.message) == (
        FailureReason.PROTOCOL,
        f"the server reset the call ({code.name})",
    )
    assert result.value("probe_grpc_status_code") == status


async def test_not_http2(run_probe: ProbeRunner) -> None:
    """A server that speaks HTTP/1.1 is not gRPC: protocol."""

    async def http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http1, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        result = await run_probe(f"127.0.0.1:{port}", module())
    finally:
        server.close()
        await server.wait_closed()
    assert (result.reason, result.message) == (
        FailureReason.PROTOCOL,
        "the server closed the connection before answering",
    )


async def test_metrics_exposition(run_probe: ProbeRunner, health_server: ServerFactory) -> None:
    """The exposition has blackbox's grpc series with their values."""
    server = await health_server()
    result = await run_probe(f"grpc://{server.target}", module())
    series = parse(render_result(result, "grpc").decode())
    assert value(series, "probe_success") == 1
    assert value(series, "probe_grpc_healthcheck_response", serving_status="SERVING") == 1
    assert value(series, "probe_grpc_status_code") == 0
    assert value(series, "probe_grpc_duration_seconds", phase="check") > 0
    assert value(series, "probe_grpc_duration_seconds", phase="tls") == 0


@pytest.mark.parametrize(
    ("seconds", "header"), [(5, "5000m"), (0.0001, "1m"), (0.0014, "2m"), (200_000, "200000S")]
)
def test_grpc_timeout_header(seconds: float, header: str) -> None:
    """grpc-timeout is at most eight digits and a unit."""
    assert grpc_probe.grpc_timeout(seconds) == header


def test_grpc_service_loads() -> None:
    """A grpc service with metadata loads."""
    config = parse_config(
        "services:\n"
        "  - {name: api, target: '127.0.0.1:50051', prober: grpc,\n"
        "     grpc: {service: feed.v1.Feed, metadata: {x-team: core}}}\n"
    )
    (service,) = config.services
    assert service.module.sections["grpc"].service == "feed.v1.Feed"
    assert list(service.module.sections["grpc"].metadata["x-team"]) == ["core"]


def test_grpc_metadata_takes_lists_of_values() -> None:
    """A metadata key with a list of values loads each value, as blackbox 0.28 takes them."""
    config = parse_config("modules: {g: {prober: grpc, grpc: {metadata: {x-team: [core, edge], x-one: 5}}}}")
    metadata = config.modules["g"].sections["grpc"].metadata
    assert (list(metadata["x-team"]), list(metadata["x-one"])) == (["core", "edge"], ["5"])
    assert PROBERS["grpc"] is grpc.KIND
