"""HTTP/1.1 on the wire for the probes: request bytes checked as h11 would, responses parsed by llhttp.

The http probe reads a response as a series of events (the head, body data, the end), the way
h11 presents them, but the parsing runs in llhttp's C code through ``httptools``: h11's pure
Python state machine was most of an HTTP probe's CPU time.

Semantics (what h11 did, kept so probes report the same):
- Header names come lower-cased; values lose surrounding spaces and tabs.
- 1xx responses before the final one are ``InformationalResponse`` events; 101 is refused
  since the probe never asks to switch protocols.
- A response head (status line and headers) over ``max_head_bytes`` is an error, as is a
  version other than HTTP/1.0 or 1.1, a body cut short by the end of the connection, and
  anything llhttp rejects (folded headers, Content-Length twice or beside Transfer-Encoding).
  Lines may end in a bare LF, as h11 and Go's client allow.
- A body without Content-Length or chunked framing runs to the end of the connection.
- Bytes after the final response are ignored.
"""

from __future__ import annotations

import re
import weakref
from collections import deque
from dataclasses import dataclass

import httptools


class LocalProtocolError(Exception):
    """The request the probe was asked to send is not valid HTTP."""


class RemoteProtocolError(Exception):
    """The server's response is not valid HTTP."""


@dataclass(frozen=True, slots=True)
class InformationalResponse:
    status_code: int
    http_version: bytes
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Response:
    status_code: int
    http_version: bytes
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Data:
    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    pass


class Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# No event yet: feed more bytes (or b"" at the end of the connection).
NEED_DATA = Marker("NEED_DATA")
# The response is complete; anything after it is ignored.
PAUSED = Marker("PAUSED")

Event = InformationalResponse | Response | Data | EndOfMessage

# RFC 9110 tokens and field values, as h11 checks them before sending.
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_TARGET = re.compile(rb"[^\x00\s]+")
_FIELD_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?")


def request(method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    """The bytes of one HTTP/1.1 request; raises LocalProtocolError for a value HTTP cannot carry.

    The caller frames the body (its Content-Length is among ``headers``).
    """
    try:
        method_bytes = method.encode("ascii")
        target_bytes = target.encode("ascii")
    except UnicodeError:
        raise LocalProtocolError("method and target must be ASCII") from None
    if not _TOKEN.fullmatch(method_bytes):
        raise LocalProtocolError("illegal method")
    if not _TARGET.fullmatch(target_bytes):
        raise LocalProtocolError("illegal target")
    lines = [b"%s %s HTTP/1.1" % (method_bytes, target_bytes)]
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            raise LocalProtocolError("illegal header name")
        if not _FIELD_VALUE.fullmatch(value):
            raise LocalProtocolError("illegal header value")
        lines.append(b"%s: %s" % (name, value))
    lines.append(b"")
    lines.append(body)
    return b"\r\n".join(lines)


class _Stop(Exception):
    """Raised from a parser callback to end parsing where this reader wants it to end."""


class _Callbacks:
    """What llhttp calls back; it reaches the reader through a weak reference.

    The parser holds its callbacks and the reader holds the parser: a strong reference back
    would make a cycle per probe, left for the garbage collector to find.
    """

    __slots__ = ("_reader",)

    def __init__(self, reader: ResponseReader) -> None:
        self._reader = weakref.ref(reader)

    def on_header(self, name: bytes, value: bytes) -> None:
        reader = self._reader()
        if reader is not None:
            reader.on_header(name, value)

    def on_headers_complete(self) -> None:
        reader = self._reader()
        if reader is not None:
            reader.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        reader = self._reader()
        if reader is not None:
            reader.on_body(body)

    def on_message_begin(self) -> None:
        reader = self._reader()
        if reader is not None:
            reader.on_message_begin()

    def on_message_complete(self) -> None:
        reader = self._reader()
        if reader is not None:
            reader.on_message_complete()


class ResponseReader:
    """Turns the bytes of one connection into the events of the response to one request."""

    def __init__(self, max_head_bytes: int, head_request: bool = False) -> None:
        self._parser = httptools.HttpResponseParser(_Callbacks(self))
        # Read as Go's client (so blackbox) reads a response: lines ended by a bare LF; any byte
        # in a header value (a NUL included); Content-Length beside chunked, where chunked wins.
        # Smuggling checks guard servers and proxies; a probe sends one request per connection.
        self._parser.set_dangerous_leniencies(
            lenient_optional_cr_before_lf=True, lenient_headers=True, lenient_chunked_length=True
        )
        self._max_head_bytes = max_head_bytes
        self._head_request = head_request
        self._events: deque[Event] = deque()
        # Kept as text: an exception object kept here would hold, once raised, the frames
        # that hold this reader.
        self._error: str | None = None
        self._in_head = True
        self._head_bytes = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._until_close = False
        self._final = False
        self._done = False
        self._closed = False

    @property
    def head_request(self) -> bool:
        """Whether the request was HEAD, whose answer has headers but never a body."""
        return self._head_request

    # --- llhttp's callbacks ---

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value.strip(b" \t")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        version = parser.get_http_version().encode("ascii")
        headers, self._headers = self._headers, []
        self._in_head = False
        self._head_bytes = 0
        if version not in (b"1.1", b"1.0"):
            raise self._fail(f"unsupported HTTP version {version.decode()}")
        if 100 <= status < 200:
            if status == 101:
                raise self._fail("101 Switching Protocols, which the probe did not ask for")
            self._events.append(InformationalResponse(status, version, headers))
            return
        self._final = True
        self._events.append(Response(status, version, headers))
        framed = any(name in (b"content-length", b"transfer-encoding") for name, _ in headers)
        no_body = self._head_request or status in (204, 304)
        self._until_close = not framed and not no_body
        if self._head_request:
            self._finish()
            raise _Stop

    def on_body(self, body: bytes) -> None:
        if body:
            self._events.append(Data(body))

    def on_message_begin(self) -> None:
        self._in_head = True

    def on_message_complete(self) -> None:
        if self._final:
            self._finish()
            raise _Stop

    # --- the reader's side ---

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._events.append(EndOfMessage())

    def _fail(self, message: str) -> _Stop:
        self._error = message
        return _Stop()

    def receive_data(self, data: bytes) -> None:
        """Feed the bytes read; ``b""`` means the connection has ended."""
        if self._done or self._error is not None:
            return
        if not data:
            self._closed = True
            if self._final and self._until_close:
                self._finish()
            elif self._final:
                self._error = "connection closed before the end of the body"
            else:
                self._error = "connection closed before the response head ended"
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._error = self._error or "unexpected protocol switch"
        except httptools.HttpParserError as err:
            if not self._done and self._error is None:
                if isinstance(err.__context__, _Stop):
                    return
                self._error = str(err) or type(err).__name__
            return
        if self._in_head and not self._done:
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head_bytes:
                self._error = f"response head too long (over {self._max_head_bytes} bytes)"

    def next_event(self) -> Event | Marker:
        """The next event, NEED_DATA when more bytes are needed, PAUSED after the end.

        Raises RemoteProtocolError once the events before a problem have been taken.
        """
        if self._events:
            return self._events.popleft()
        if self._error is not None:
            raise RemoteProtocolError(self._error)
        return PAUSED if self._done else NEED_DATA
