"""The websocket probe itself: handshake and frames on wsproto, then the dialogue of messages.

Its own module so that wsproto loads only in a process that runs a websocket probe; the kind's
entry in the registry is exporter.probes.websocket.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from exporter.modules import WebSocketProbe
from exporter.probes import httpclient, net
from exporter.probes.base import ProbeRequest
from exporter.probes.net import ProbeFailure, expand
from exporter.probes.websocket import PHASES
from exporter.result import FailureReason, ProbeResult, Trace
from exporter.types import Regex, RegexMatch

# Semantics:
# - Targets are ws:// or wss:// URLs (http:// and https:// mean the same; no scheme means ws://).
# - Phases: resolve, connect and tls as in the http prober; upgrade from sending the handshake
#   request to the end of the 101 response's head; messages for the whole dialogue.
# - The dialogue is the tcp prober's query_response for messages: each turn waits for a text (or
#   binary, read as UTF-8) message matching ``expect``, skipping others, then sends ``send`` as a
#   text message, expanded from the turn's match (or the latest one); a ``send`` whose bytes are
#   not UTF-8 (``!!binary``) goes as a binary message. Pings are answered. Afterwards the probe
#   sends a close frame and hangs up without waiting for the answer.
# - Handshake and framing are wsproto's, which holds to RFC 6455 strictly (a text message that is
#   not UTF-8 is a broken frame). No extension is offered, so frames are never compressed.
#   Messages are read as they arrive: one (all its fragments) over max_message_size fails the
#   probe as soon as more than that has arrived, so no more than the limit and one read is held.
# - Reasons: a refused upgrade (any final status but 101; 1xx answers before it are skipped) is
#   ``http_status``, its code in probe_websocket_status_code; a bad handshake answer, a broken
#   frame, a message over max_message_size or the server closing before an expect matched is
#   ``protocol``; the rest come from resolving, connecting and TLS.

_READ_SIZE = 64 * 1024
# How much of a peer's message a failure may quote.
_QUOTE_CHARS = 80

# wsproto tells why it refused a 101 answer or a frame only in the text of its exception or
# close reason; known texts become our messages, an unknown one is quoted as it is.
_UPGRADE_ERRORS = (
    ("Missing header, 'Connection: Upgrade'", "the 101 answer lacks Connection: Upgrade"),
    ("Missing header, 'Upgrade: ", "the 101 answer does not upgrade to websocket"),
    ("Bad accept token", "the 101 answer has a wrong Sec-WebSocket-Accept"),
    ("unrecognized extension", "the server chose an extension the probe did not offer"),
)
_INTERLEAVED = "the server interleaved or mis-continued fragmented messages"
_BAD_CONTROL = "the server sent a fragmented or oversized control frame"
_FRAME_ERRORS = (
    ("client received unexpected masked frame", "the server masked a frame"),
    ("Reserved bit set unexpectedly", "the server set reserved frame bits, though no extension was agreed"),
    ("unexpected CONTINUATION", _INTERLEAVED),
    ("expected CONTINUATION", _INTERLEAVED),
    ("Invalid attempt to fragment control frame", _BAD_CONTROL),
    ("Control frame with payload len > 125", _BAD_CONTROL),
)


async def probe_websocket(request: ProbeRequest) -> ProbeResult:
    """Open a WebSocket to ``request.target`` and hold the dialogue."""
    trace = request.trace
    for phase in PHASES:
        trace.add_phase(phase, 0.0)
    trace.set("probe_websocket_status_code", 0)
    trace.set("probe_websocket_ssl", 0)
    trace.set("probe_failed_due_to_regex", 0)
    await _run(request)
    return trace.succeed()


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
    url = httpclient.parse_url(_as_http(request.target))
    net.check_host(request.guard, url.host)
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
        socket = _WebSocket(reader, writer, int(settings.max_message_size))
        with trace.phase("upgrade"):
            await socket.handshake(url, settings, trace)
        with trace.phase("messages"):
            await _dialogue(socket, settings, trace)
            await socket.close()
    finally:
        writer.transport.abort()


def _ssl_context(settings: WebSocketProbe) -> ssl.SSLContext:
    # Shared between probes: building a context costs tens of milliseconds of CPU each time.
    return net.shared_ssl_context(settings.tls_config, ("http/1.1",))


class _Closed(Exception):
    """The server sent a close frame or hung up."""

    def __init__(self, code: int | None) -> None:
        super().__init__(code)
        self.code = code


class _WebSocket:
    """A client's wsproto connection on a stream: whole messages in, never over the limit."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int) -> None:
        self.reader = reader
        self.writer = writer
        self.limit = limit
        self.conn = WSConnection(ConnectionType.CLIENT)

    async def handshake(self, url: httpclient.URL, settings: WebSocketProbe, trace: Trace) -> None:
        """Send the upgrade request and wait for its 101 answer, which wsproto checks."""
        headers: dict[str, tuple[str, str]] = {"user-agent": ("User-Agent", httpclient.USER_AGENT)}
        for name, value in settings.headers.items():
            headers[name.lower()] = (name, value.reveal())
        try:
            payload = self.conn.send(
                Request(
                    host=url.authority,
                    target=url.target,
                    subprotocols=list(settings.subprotocols),
                    extra_headers=[(n.encode("ascii"), v.encode("utf-8")) for n, v in headers.values()],
                )
            )
        except (h11.LocalProtocolError, LocalProtocolError, UnicodeError):
            # h11's message quotes the offending value, which may be a credential.
            raise ProbeFailure(
                FailureReason.OTHER, "cannot build the upgrade request: a header is not valid HTTP"
            ) from None
        try:
            self.writer.write(payload)
            await self.writer.drain()
        except (ConnectionError, OSError):
            pass  # the read below tells what happened
        while True:
            for event in self.conn.events():
                if isinstance(event, AcceptConnection):
                    trace.set("probe_websocket_status_code", 101)
                    return
                # wsproto reports a 1xx answer before the 101 as a refusal; it keeps reading.
                if isinstance(event, RejectConnection) and event.status_code >= 200:
                    trace.set("probe_websocket_status_code", event.status_code)
                    raise ProbeFailure(
                        FailureReason.HTTP_STATUS,
                        f"upgrade refused: status code {event.status_code}, expected 101",
                    )
            data = await net.read(self.reader, _READ_SIZE, "before the upgrade answer")
            if not data:
                raise _protocol(f"{url.authority} closed the connection without an answer")
            try:
                self.conn.receive_data(data)
            except RemoteProtocolError as err:
                raise _upgrade_failure(err, trace) from None
            except UnicodeError:
                # Only the checks of a 101 answer decode header values.
                trace.set("probe_websocket_status_code", 101)
                raise _protocol("the 101 answer has a WebSocket header that is not ASCII") from None

    async def _event(self) -> Event:
        while True:
            # Taking one event at a time leaves the frames after it unparsed, so a close frame
            # behind the matching message does not change the connection's state yet.
            event = next(self.conn.events(), None)
            if event is not None:
                return event
            data = await net.read(self.reader, _READ_SIZE, "in the dialogue")
            if not data:
                raise _Closed(None)
            self.conn.receive_data(data)

    async def receive(self) -> str:
        """The next data message, answering pings on the way."""
        texts: list[str] = []
        chunks: list[bytes | bytearray] = []
        size = 0
        while True:
            event = await self._event()
            if isinstance(event, TextMessage):
                data = event.data
                size += len(data) if data.isascii() else len(data.encode("utf-8"))
                texts.append(data)
            elif isinstance(event, BytesMessage):
                size += len(event.data)
                chunks.append(event.data)
            elif isinstance(event, Ping):
                await self._send(event.response())
                continue
            elif isinstance(event, CloseConnection):
                # A frame wsproto cannot parse comes as a close event too, but leaves the
                # connection open; only the server's own close frame moves it on.
                if self.conn.state is ConnectionState.OPEN:
                    raise _broken_frame(event)
                raise _Closed(None if event.code == CloseReason.NO_STATUS_RCVD else event.code)
            else:
                continue  # pongs
            if size > self.limit:
                raise _protocol(
                    f"the server sent a message larger than max_message_size ({self.limit} bytes)"
                )
            if event.message_finished:
                return "".join(texts) if texts else b"".join(chunks).decode("utf-8", "replace")

    async def send_text(self, text: str) -> None:
        if text.isascii():
            await self._send(TextMessage(data=text))
            return
        raw = text.encode("utf-8", "surrogateescape")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            # A text frame must be UTF-8; these bytes (from !!binary) go unchanged as binary.
            await self._send(BytesMessage(data=raw))
            return
        await self._send(TextMessage(data=text))

    async def _send(self, event: Event) -> None:
        payload = self.conn.send(event)
        try:
            self.writer.write(payload)
            await self.writer.drain()
        except (ConnectionError, OSError) as err:
            raise _protocol(f"cannot send: {err.strerror or type(err).__name__}") from None

    async def close(self) -> None:
        """Say goodbye (code 1000) unless the server already did; the caller hangs up."""
        if self.conn.state is ConnectionState.OPEN:
            await self._send(CloseConnection(code=CloseReason.NORMAL_CLOSURE))


def _upgrade_failure(err: RemoteProtocolError, trace: Trace) -> ProbeFailure:
    if isinstance(err.__context__, h11.RemoteProtocolError):
        return _protocol(f"bad answer to the upgrade request: {err.__context__}")
    # Every other refusal is wsproto's check of a 101 answer.
    trace.set("probe_websocket_status_code", 101)
    text = str(err)
    known = _known(text, _UPGRADE_ERRORS)
    if known is not None:
        return known
    chosen = text.removeprefix("unrecognized subprotocol ")
    if chosen != text:
        return _protocol(f"the server chose subprotocol {chosen!r}, not offered")
    return _protocol(f"bad answer to the upgrade request: {text}")


def _broken_frame(event: CloseConnection) -> ProbeFailure:
    reason = event.reason or ""
    if event.code == CloseReason.INVALID_FRAME_PAYLOAD_DATA and not reason.startswith("Error decoding CLOSE"):
        return _protocol("the server sent a text message that is not UTF-8")
    known = _known(reason, _FRAME_ERRORS)
    if known is not None:
        return known
    opcode = reason.removeprefix("Invalid opcode ")
    if opcode != reason:
        return _protocol(f"the server sent a frame with unknown opcode {int(opcode, 16)}")
    return _protocol(f"the server sent a broken frame: {reason}")


def _known(text: str, table: Iterable[tuple[str, str]]) -> ProbeFailure | None:
    """Our message for one of wsproto's texts, by its prefix (see _UPGRADE_ERRORS)."""
    message = next((message for prefix, message in table if text.startswith(prefix)), None)
    return None if message is None else _protocol(message)


def _protocol(message: str) -> ProbeFailure:
    return ProbeFailure(FailureReason.PROTOCOL, message)


async def _dialogue(socket: _WebSocket, settings: WebSocketProbe, trace: Trace) -> None:
    last_match: RegexMatch | None = None
    for turn, message in enumerate(settings.messages, 1):
        if message.expect is not None:
            last_match = await _expect(socket, message.expect, turn, trace)
        if message.send:
            text = expand(message.send, last_match) if last_match is not None else message.send
            # The text stays out of failure messages: a send may carry a credential.
            try:
                await socket.send_text(text)
            except ProbeFailure as failure:
                raise _protocol(f"message {turn}: {failure.message}") from None


async def _expect(socket: _WebSocket, regex: Regex, turn: int, trace: Trace) -> RegexMatch:
    last: str | None = None
    try:
        while True:
            last = await socket.receive()
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
