"""The grpc probe itself: the grpc.health.v1.Health/Check call over h2, with blackbox's metric names.

Its own module so that h2 loads only in a process that runs a grpc probe; the kind's
entry in the registry is exporter.probes.grpc.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import zlib
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from exporter.modules import GRPCProbe
from exporter.probes import httpclient, net
from exporter.probes.base import ProbeRequest
from exporter.probes.grpc import PHASES, SERVING_STATUSES
from exporter.probes.net import ProbeFailure, split_host_port
from exporter.result import FailureReason, ProbeResult, Trace

# Why HTTP/2 through h2 rather than grpcio: a health check is one unary call whose request and
# answer are a few bytes of protobuf, which fit in a screenful of code. h2 is pure Python and
# sans-IO (HTTP/2's h11), so the call runs on the exporter's own event loop and reuses net.py:
# the resolve, connect and tls phases are timed exactly as for the other kinds, probe_allowlist
# checks every address, and tls_config builds the same SSL context. grpcio would bring a native
# wheel of several megabytes with its own threads, resolver and TLS stack hiding those phases.
#
# Semantics, and where they differ from blackbox_exporter:
# - The target is host:port, [ipv6]:port, or a URL with both (grpc://host:port); TLS is on only
#   when the module says ``tls: true``, as in blackbox.
# - The request carries grpc-timeout from the time the runner left the probe, so the server
#   gives up at the same moment we do.
# - Phases: resolve, connect, tls, then check from the connection being ready to the answer.
#   blackbox has only resolve and check (its check includes connecting and TLS); the sum of
#   the phases means the same in both.
# - probe_grpc_status_code is the call's gRPC status: 14 (UNAVAILABLE) when no connection was
#   made, 4 (DEADLINE_EXCEEDED) when the runner's timeout hit while waiting for the answer, as a
#   gRPC client library reports them. An HTTP status other than 200 maps to a gRPC status as the
#   gRPC spec says (404 is UNIMPLEMENTED, 503 UNAVAILABLE, ...).
# - probe_grpc_healthcheck_response has its four serving_status states always; a value outside
#   the enum counts as UNKNOWN.
# - Reasons: a gRPC status other than OK is ``http_status`` (DEADLINE_EXCEEDED from the server is
#   ``timeout``); an answer other than SERVING is ``body``; broken HTTP/2, a non-gRPC answer or a
#   malformed message is ``protocol``; the rest come from resolving, connecting and TLS.

HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"
# A HealthCheckResponse is a few bytes; anything much bigger is not one.
MAX_RESPONSE_BYTES = 64 * 1024
MAX_HEADER_LIST_BYTES = 64 * 1024
_READ_SIZE = 64 * 1024
# How much of the server's grpc-message a failure may quote.
_QUOTE_CHARS = 120

STATUS_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
OK, CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, PERMISSION_DENIED = 0, 1, 2, 4, 7
UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 12, 13, 14, 16
# The gRPC spec's mapping of HTTP status codes for answers that carry no grpc-status.
_HTTP_TO_GRPC = {
    400: INTERNAL,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: UNIMPLEMENTED,
    429: UNAVAILABLE,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: UNAVAILABLE,
}


async def probe_grpc(request: ProbeRequest) -> ProbeResult:
    """Call Health/Check on ``request.target``; never raises but CancelledError."""
    trace = request.trace
    for phase in PHASES:
        trace.add_phase(phase, 0.0)
    for status in SERVING_STATUSES:
        trace.set("probe_grpc_healthcheck_response", 0, (("serving_status", status),))
    trace.set("probe_grpc_ssl", 0)
    trace.set("probe_grpc_status_code", UNAVAILABLE)
    await _check(request)
    return trace.succeed()


def _host_port(target: str) -> tuple[str, int]:
    text = target.strip()
    if "://" in text:
        text = urlsplit(text).netloc.rpartition("@")[2]
    return split_host_port(text)


async def _check(request: ProbeRequest) -> None:
    settings = request.module.section(GRPCProbe)
    trace = request.trace
    host, port = _host_port(request.target)
    net.check_host(request.guard, host)
    # Built before connecting so an unreadable ca_file fails without traffic.
    context = _ssl_context(settings) if settings.tls else None
    addresses = await net.resolve(
        host, settings.preferred_ip_protocol, settings.ip_protocol_fallback, trace, request.guard
    )
    reader, writer = await net.connect(addresses, port, trace)
    try:
        if context is not None:
            await net.start_tls(writer, context, settings.tls_config.server_name or host, trace)
            trace.set("probe_grpc_ssl", 1)
            protocol = writer.get_extra_info("ssl_object").selected_alpn_protocol()
            if protocol not in (None, "h2"):
                raise ProbeFailure(FailureReason.PROTOCOL, f"the server chose {protocol} over TLS, not h2")
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        with trace.phase("check"):
            call = _Call(reader, writer, trace)
            # From here on a timeout is the call's deadline passing.
            trace.set("probe_grpc_status_code", DEADLINE_EXCEEDED)
            headers, trailers, body = await call.run(
                _request_headers(settings, authority, context is not None, request.timeout - trace.elapsed()),
                _health_check_request(settings.service),
            )
        _judge(headers, trailers, body, trace)
    finally:
        writer.transport.abort()


def _ssl_context(settings: GRPCProbe) -> ssl.SSLContext:
    # Shared between probes: building a context costs tens of milliseconds of CPU each time.
    return net.shared_ssl_context(settings.tls_config, ("h2",))


def grpc_timeout(seconds: float) -> str:
    """A grpc-timeout header value: at most eight digits and a unit."""
    millis = max(1, math.ceil(seconds * 1000))
    if millis < 10**8:
        return f"{millis}m"
    return f"{min(math.ceil(seconds), 10**8 - 1)}S"


def _request_headers(
    settings: GRPCProbe, authority: str, tls: bool, remaining: float
) -> list[tuple[bytes, bytes]]:
    headers = [
        (":method", "POST"),
        (":scheme", "https" if tls else "http"),
        (":path", HEALTH_CHECK_PATH),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", httpclient.USER_AGENT),
        ("grpc-timeout", grpc_timeout(remaining)),
    ]
    headers += [
        (name.lower(), value.reveal()) for name, values in settings.metadata.items() for value in values
    ]
    return [(name.encode("ascii"), value.encode("utf-8")) for name, value in headers]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _health_check_request(service: str) -> bytes:
    """A length-prefixed HealthCheckRequest{service} (field 1, a string)."""
    name = service.encode("utf-8")
    message = b"\x0a" + _varint(len(name)) + name if name else b""
    return b"\x00" + len(message).to_bytes(4, "big") + message


Headers = Sequence[tuple[bytes, bytes]]


class _Call:
    """One unary call on a fresh HTTP/2 connection, read within fixed bounds."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, trace: Trace) -> None:
        self.reader = reader
        self.writer = writer
        self.trace = trace
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_BYTES,
            },
        )

    async def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            try:
                self.writer.write(data)
                await self.writer.drain()
            except (ConnectionError, OSError):
                pass  # the next read says what happened

    async def _read(self) -> bytes:
        return await net.read(self.reader, _READ_SIZE, "during the call")

    async def run(self, headers: Headers, message: bytes) -> tuple[Headers, Headers, bytes]:
        """Send the call; the answer's headers, trailers (empty for a trailers-only answer) and body."""
        conn = self.conn
        try:
            conn.initiate_connection()
            stream = conn.get_next_available_stream_id()
            conn.send_headers(stream, list(headers))
            conn.send_data(stream, message, end_stream=True)
        except (h2.exceptions.H2Error, UnicodeError):
            # The message may quote a header value, which may be a credential.
            raise ProbeFailure(
                FailureReason.OTHER, "cannot build the request: a metadata value is invalid"
            ) from None
        await self._flush()
        answer: Headers | None = None
        trailers: Headers = ()
        body = bytearray()
        while True:
            data = await self._read()
            if not data:
                raise ProbeFailure(
                    FailureReason.PROTOCOL, "the server closed the connection before answering"
                )
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError as err:
                self.trace.set("probe_grpc_status_code", INTERNAL)
                raise ProbeFailure(FailureReason.PROTOCOL, f"bad HTTP/2 from the server: {err}") from None
            for event in events:
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                    answer = event.headers
                elif isinstance(event, h2.events.TrailersReceived) and event.stream_id == stream:
                    trailers = event.headers
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                    if len(body) > MAX_RESPONSE_BYTES:
                        self.trace.set("probe_grpc_status_code", INTERNAL)
                        raise ProbeFailure(
                            FailureReason.PROTOCOL, f"the answer is larger than {MAX_RESPONSE_BYTES} bytes"
                        )
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                    raise _reset(event.error_code, self.trace)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    if (
                        event.error_code != h2.errors.ErrorCodes.NO_ERROR
                        or (event.last_stream_id or 0) < stream
                    ):
                        self.trace.set("probe_grpc_status_code", UNAVAILABLE)
                        raise ProbeFailure(
                            FailureReason.PROTOCOL,
                            f"the server closed the connection (GOAWAY {_error_name(event.error_code)})",
                        )
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                    if answer is None:
                        raise ProbeFailure(
                            FailureReason.PROTOCOL, "the server ended the call without headers"
                        )
                    conn.close_connection()
                    await self._flush()
                    return answer, trailers, bytes(body)
            await self._flush()


def _error_name(code: object) -> str:
    return code.name if isinstance(code, h2.errors.ErrorCodes) else str(code)


def _reset(code: object, trace: Trace) -> ProbeFailure:
    # gRPC's mapping of HTTP/2 RST_STREAM codes to call statuses.
    if code == h2.errors.ErrorCodes.REFUSED_STREAM:
        status = UNAVAILABLE
    elif code == h2.errors.ErrorCodes.CANCEL:
        status = CANCELLED
    else:
        status = INTERNAL
    trace.set("probe_grpc_status_code", status)
    return ProbeFailure(FailureReason.PROTOCOL, f"the server reset the call ({_error_name(code)})")


def _value(headers: Headers, name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("utf-8", "replace")
    return None


def _judge(headers: Headers, trailers: Headers, body: bytes, trace: Trace) -> None:
    """Turn the answer into blackbox's values; raise ProbeFailure unless the service is SERVING."""
    http_status = _value(headers, b":status") or ""
    # A trailers-only answer (the usual way to fail a call) carries grpc-status in its headers.
    status_source = trailers or headers
    grpc_status = _value(status_source, b"grpc-status")
    if http_status != "200":
        code = int(http_status) if http_status.isdigit() else 0
        status = _HTTP_TO_GRPC.get(code, UNKNOWN) if grpc_status is None else _status(grpc_status)
        trace.set("probe_grpc_status_code", status)
        raise ProbeFailure(FailureReason.HTTP_STATUS, f"HTTP status {http_status}, not 200")
    content_type = _value(headers, b"content-type") or ""
    if not content_type.startswith("application/grpc"):
        trace.set("probe_grpc_status_code", UNKNOWN)
        raise ProbeFailure(FailureReason.PROTOCOL, f"the answer is not gRPC (content-type {content_type!r})")
    if grpc_status is None:
        trace.set("probe_grpc_status_code", INTERNAL)
        raise ProbeFailure(FailureReason.PROTOCOL, "the answer has no grpc-status")
    status = _status(grpc_status)
    trace.set("probe_grpc_status_code", status)
    if status != OK:
        name = STATUS_NAMES[status] if status < len(STATUS_NAMES) else str(status)
        detail = unquote(_value(status_source, b"grpc-message") or "")[:_QUOTE_CHARS]
        reason = FailureReason.TIMEOUT if status == DEADLINE_EXCEEDED else FailureReason.HTTP_STATUS
        raise ProbeFailure(reason, f"health check failed: {name}" + (f": {detail}" if detail else ""))
    serving = _serving_status(_message(body, _value(headers, b"grpc-encoding")))
    name = SERVING_STATUSES[serving] if serving < len(SERVING_STATUSES) else "UNKNOWN"
    trace.set("probe_grpc_healthcheck_response", 1, (("serving_status", name),))
    if name != "SERVING":
        raise ProbeFailure(FailureReason.BODY, f"the service is {name}, not SERVING")


def _status(text: str) -> int:
    return int(text) if text.strip().isdigit() else UNKNOWN


def _malformed(why: str) -> ProbeFailure:
    return ProbeFailure(FailureReason.PROTOCOL, f"malformed HealthCheckResponse: {why}")


def _message(body: bytes, encoding: str | None) -> bytes:
    """The one length-prefixed message of a unary answer, inflated if compressed."""
    if len(body) < 5:
        raise _malformed("no message in the answer")
    compressed, length = body[0], int.from_bytes(body[1:5], "big")
    if len(body) != 5 + length:
        raise _malformed("the message length does not match the data")
    payload = body[5:]
    if not compressed:
        return payload
    if (encoding or "").strip().lower() != "gzip":
        raise _malformed(f"compressed with {encoding!r}, which the probe did not ask for")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(payload, MAX_RESPONSE_BYTES + 1)
    except zlib.error as err:
        raise _malformed(f"cannot decompress: {err}") from None
    if len(out) > MAX_RESPONSE_BYTES or not inflater.eof:
        raise _malformed("the compressed message is too large or truncated")
    return out


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _malformed("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _serving_status(message: bytes) -> int:
    """Field 1 (status, an enum) of a HealthCheckResponse; 0 (UNKNOWN) when absent, as proto3 says."""
    status = 0
    pos = 0
    while pos < len(message):
        key, pos = _read_varint(message, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(message, pos)
            if field == 1:
                status = value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(message, pos)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise _malformed(f"unsupported wire type {wire}")
        if pos > len(message):
            raise _malformed("a field runs past the end")
    return status
