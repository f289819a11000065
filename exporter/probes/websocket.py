"""The websocket probe: the upgrade handshake over h11, then a dialogue of expected and sent messages."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import ssl

import h11

from exporter.modules import WebSocketProbe
from exporter.probes import httpclient as http
from exporter.probes import net
from exporter.probes.base import ProbeRequest, ProberKind
from exporter.probes.net import ProbeFailure, expand
from exporter.result import FailureReason, MetricFamily, ProbeResult, Trace
from exporter.types import Regex, RegexMatch

# Semantics:
# - Targets are ws:// or wss:// URLs (http:// and https:// mean the same; no scheme means ws://).
# - Phases: resolve, connect and tls as in the http prober; upgrade from sending the handshake
#   request to the end of the 101 response's head; messages for the whole dialogue.
# - The dialogue is the tcp prober's query_response for messages: each turn waits for a text (or
#   binary, read as UTF-8) message matching ``expect``, skipping others, then sends ``send`` as a
#   text message, expanded from the turn's match (or the latest one). Pings are answered.
#   Afterwards the probe sends a close frame and hangs up without waiting for the answer.
# - No extension is offered, so frames are never compressed; a message (all its fragments) over
#   max_message_size fails the probe before its payload is read.
# - Reasons: a refused upgrade (any status but 101) is ``http_status``; a bad handshake answer,
#   a broken frame, a message over max_message_size or the server closing before an expect
#   matched is ``protocol``; the rest come from resolving, connecting and TLS.

PHASES = ("resolve", "connect", "tls", "upgrade", "messages")
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_READ_SIZE = 64 * 1024
# How much of a peer's message a failure may quote.
_QUOTE_CHARS = 80

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA_OPCODES = frozenset({OP_TEXT, OP_BINARY})
_CONTROL_OPCODES = frozenset({OP_CLOSE, OP_PING, OP_PONG})

log = logging.getLogger(__name__)


async def probe_websocket(request: ProbeRequest) -> ProbeResult:
    """Open a WebSocket to ``request.target`` and hold the dialogue; never raises but CancelledError."""
    trace = request.trace
    for phase in PHASES:
        trace.add_phase(phase, 0.0)
    trace.set("probe_websocket_status_code", 0)
    trace.set("probe_websocket_ssl", 0)
    trace.set("probe_failed_due_to_regex", 0)
    try:
        await _run(request)
    except ProbeFailure as failure:
        return failure.result(trace)
    except Exception as err:  # a bug here must still produce a result, not a crash
        log.exception("websocket probe of %s raised", http.redact(_as_http(request.target)))
        return trace.fail(FailureReason.OTHER, f"internal error: {type(err).__name__}")
    return trace.succeed()


KIND = ProberKind(
    name="websocket",
    settings=WebSocketProbe,
    probe=probe_websocket,
    metrics=(
        MetricFamily(
            "probe_websocket_duration_seconds",
            "Duration of each phase of the WebSocket probe.",
            ("phase",),
        ),
        MetricFamily(
            "probe_websocket_status_code",
            "Status code of the answer to the upgrade request (101 when upgraded).",
        ),
        MetricFamily("probe_websocket_ssl", "1 if the WebSocket went over TLS."),
        *net.ADDRESS_METRICS,
        *net.TLS_METRICS,
        net.REGEX_METRIC,
    ),
    phase_metric="probe_websocket_duration_seconds",
    phases=PHASES,
)


def _as_http(target: str) -> str:
    """The target with ws/wss spelled http/https, so the http prober's URL parser reads it."""
    text = target.strip()
    scheme, separator, rest = text.partition("://")
    if not separator:
        return "http://" + text
    mapped = {"ws": "http", "wss": "https"}.get(scheme.lower(), scheme)
    return f"{mapped}://{rest}"


async def _run(request: ProbeRequest) -> None:
    settings = request.module.section(WebSocketProbe)
    trace = request.trace
    url = http.parse_url(_as_http(request.target))
    if request.guard is not None and not request.guard.allows_host(url.host):
        raise ProbeFailure(FailureReason.OTHER, f"target host {url.host} is outside probe_allowlist")
    # Built before connecting so an unreadable ca_file fails without traffic.
    context = _ssl_context(settings) if url.tls else None
    addresses = await net.resolve(
        url.host, settings.preferred_ip_protocol, settings.ip_protocol_fallback, trace, request.guard
    )
    reader, writer = await net.connect(addresses, url.port, trace)
    try:
        if context is not None:
            await net.start_tls(writer, context, settings.tls_config.server_name or url.host, trace)
            trace.set("probe_websocket_ssl", 1)
        with trace.phase("upgrade"):
            buffered = await _handshake(reader, writer, url, settings, trace)
        with trace.phase("messages"):
            frames = _Frames(reader, writer, buffered, int(settings.max_message_size))
            await _dialogue(frames, settings, trace)
            await frames.close()
    finally:
        writer.transport.abort()


def _ssl_context(settings: WebSocketProbe) -> ssl.SSLContext:
    # Shared between probes: building a context costs tens of milliseconds of CPU each time.
    return net.shared_ssl_context(settings.tls_config, ("http/1.1",))


def _accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


async def _handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    url: http.URL,
    settings: WebSocketProbe,
    trace: Trace,
) -> bytes:
    """Send the upgrade request and check the 101 answer; the bytes read past its head."""
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    headers: dict[str, tuple[str, str]] = {"user-agent": ("User-Agent", http.USER_AGENT)}
    for name, value in settings.headers.items():
        headers[name.lower()] = (name, value.reveal())
    fixed = [
        ("Host", url.authority),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
    ]
    if settings.subprotocols:
        fixed.append(("Sec-WebSocket-Protocol", ", ".join(settings.subprotocols)))
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=http.MAX_HEAD_BYTES)
    try:
        payload = conn.send(
            h11.Request(
                method="GET",
                target=url.target,
                headers=[(n.encode("ascii"), v.encode("utf-8")) for n, v in (*fixed, *headers.values())],
            )
        )
        payload = (payload or b"") + (conn.send(h11.EndOfMessage()) or b"")
    except (h11.LocalProtocolError, UnicodeError):
        # h11's message quotes the offending value, which may be a credential.
        raise ProbeFailure(
            FailureReason.OTHER, "cannot build the upgrade request: a header is not valid HTTP"
        ) from None
    try:
        writer.write(payload)
        await writer.drain()
    except (ConnectionError, OSError):
        pass  # the read below tells what happened
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as err:
            raise ProbeFailure(FailureReason.PROTOCOL, f"bad answer to the upgrade request: {err}") from None
        if event is h11.NEED_DATA:
            data = await _read(reader, "before the upgrade answer")
            if not data:
                raise ProbeFailure(
                    FailureReason.PROTOCOL, f"{url.authority} closed the connection without an answer"
                )
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Response):
            trace.set("probe_websocket_status_code", event.status_code)
            raise ProbeFailure(
                FailureReason.HTTP_STATUS, f"upgrade refused: status code {event.status_code}, expected 101"
            )
        if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            trace.set("probe_websocket_status_code", 101)
            _check_upgrade(event, key, settings)
            break
    return bytes(conn.trailing_data[0])


def _check_upgrade(event: h11.InformationalResponse, key: str, settings: WebSocketProbe) -> None:
    values: dict[str, list[str]] = {}
    for name, value in event.headers:
        values.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1").strip())

    def tokens(name: str) -> list[str]:
        return [t.strip().lower() for v in values.get(name, []) for t in v.split(",") if t.strip()]

    if "websocket" not in tokens("upgrade"):
        raise ProbeFailure(FailureReason.PROTOCOL, "the 101 answer does not upgrade to websocket")
    if "upgrade" not in tokens("connection"):
        raise ProbeFailure(FailureReason.PROTOCOL, "the 101 answer lacks Connection: Upgrade")
    if values.get("sec-websocket-accept", [""])[0] != _accept_key(key):
        raise ProbeFailure(FailureReason.PROTOCOL, "the 101 answer has a wrong Sec-WebSocket-Accept")
    if values.get("sec-websocket-extensions"):
        raise ProbeFailure(FailureReason.PROTOCOL, "the server chose an extension the probe did not offer")
    chosen = values.get("sec-websocket-protocol", [""])[0]
    if chosen and chosen not in settings.subprotocols:
        raise ProbeFailure(FailureReason.PROTOCOL, f"the server chose subprotocol {chosen!r}, not offered")


async def _read(reader: asyncio.StreamReader, when: str, size: int = _READ_SIZE) -> bytes:
    try:
        return await reader.read(size)
    except ssl.SSLError as err:
        detail = err.reason.lower().replace("_", " ") if err.reason else str(err)
        raise ProbeFailure(FailureReason.TLS, f"TLS error {when}: {detail}") from None
    except OSError as err:
        raise ProbeFailure(
            FailureReason.PROTOCOL, f"connection lost {when}: {err.strerror or type(err).__name__}"
        ) from None


class _Closed(Exception):
    """The server sent a close frame or hung up."""

    def __init__(self, code: int | None) -> None:
        super().__init__(code)
        self.code = code


class _Frames:
    """RFC 6455 framing for a client: masked frames out, whole messages in, never over the limit."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, buffered: bytes, limit: int
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray(buffered)
        self.limit = limit
        self.closed = False

    async def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            data = await _read(self.reader, "in the dialogue", max(size - len(self.buffer), _READ_SIZE))
            if not data:
                self.closed = True
                raise _Closed(None)
            self.buffer += data
        out = bytes(self.buffer[:size])
        del self.buffer[:size]
        return out

    async def _frame(self, so_far: int) -> tuple[bool, int, bytes]:
        first, second = await self._exactly(2)
        fin, opcode, length = bool(first & 0x80), first & 0x0F, second & 0x7F
        if first & 0x70:
            raise _protocol("the server set reserved frame bits, though no extension was agreed")
        if second & 0x80:
            raise _protocol("the server masked a frame")
        if length == 126:
            length = int.from_bytes(await self._exactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self._exactly(8), "big")
        if opcode in _CONTROL_OPCODES:
            if not fin or length > 125:
                raise _protocol("the server sent a fragmented or oversized control frame")
        elif opcode not in _DATA_OPCODES and opcode != OP_CONTINUATION:
            raise _protocol(f"the server sent a frame with unknown opcode {opcode}")
        elif so_far + length > self.limit:
            raise _protocol(f"the server sent a message larger than max_message_size ({self.limit} bytes)")
        return fin, opcode, await self._exactly(length)

    async def receive(self) -> str:
        """The next data message, answering pings on the way."""
        parts: list[bytes] = []
        size = 0
        while True:
            fin, opcode, payload = await self._frame(size)
            if opcode == OP_PING:
                await self.send(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                self.closed = True
                raise _Closed(int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None)
            if (opcode == OP_CONTINUATION) != bool(parts):
                raise _protocol("the server interleaved or mis-continued fragmented messages")
            parts.append(payload)
            size += len(payload)
            if fin:
                return b"".join(parts).decode("utf-8", "replace")

    async def send(self, opcode: int, payload: bytes) -> None:
        length = len(payload)
        if length < 126:
            head = bytes((0x80 | opcode, 0x80 | length))
        elif length < 1 << 16:
            head = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
        mask = os.urandom(4)
        # XOR with the key repeated over the payload, done on one big integer.
        key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
        masked = (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")
        try:
            self.writer.write(head + mask + masked)
            await self.writer.drain()
        except (ConnectionError, OSError) as err:
            raise _protocol(f"cannot send: {err.strerror or type(err).__name__}") from None

    async def close(self) -> None:
        """Say goodbye (code 1000) unless the server already did; the caller hangs up."""
        if not self.closed:
            self.closed = True
            await self.send(OP_CLOSE, (1000).to_bytes(2, "big"))


def _protocol(message: str) -> ProbeFailure:
    return ProbeFailure(FailureReason.PROTOCOL, message)


async def _dialogue(frames: _Frames, settings: WebSocketProbe, trace: Trace) -> None:
    last_match: RegexMatch | None = None
    for turn, message in enumerate(settings.messages, 1):
        if message.expect is not None:
            last_match = await _expect(frames, message.expect, turn, trace)
        if message.send:
            text = expand(message.send, last_match) if last_match is not None else message.send
            # The text stays out of failure messages: a send may carry a credential.
            try:
                await frames.send(OP_TEXT, text.encode("utf-8", "surrogateescape"))
            except ProbeFailure as failure:
                raise _protocol(f"message {turn}: {failure.message}") from None


async def _expect(frames: _Frames, regex: Regex, turn: int, trace: Trace) -> RegexMatch:
    last: str | None = None
    try:
        while True:
            last = await frames.receive()
            match = regex.search(last)
            if match is not None:
                return match
    except _Closed as closed:
        trace.set("probe_failed_due_to_regex", 1)
        how = f"closed the WebSocket (code {closed.code})" if closed.code else "hung up"
        seen = f"; the last message was {last[:_QUOTE_CHARS]!r}" if last is not None else "; it sent none"
        raise _protocol(
            f"message {turn}: the server {how} before a message matched expect {regex.source!r}{seen}"
        ) from None
    except ProbeFailure as failure:
        raise ProbeFailure(failure.reason, f"message {turn}: {failure.message}") from None
