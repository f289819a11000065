"""Tests for the HTTP/1.1 wire layer: request bytes and the llhttp-backed response reader."""

from __future__ import annotations

import gc

import pytest

from exporter.probes import http1

OK = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Spaced:  a b \t\r\n"
    b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nhello"
)


def events(data: list[bytes], head_request: bool = False, limit: int = 65536) -> list[object]:
    """Every event the reader gives for ``data`` fed piece by piece, then the end of the connection."""
    reader = http1.ResponseReader(limit, head_request=head_request)
    out: list[object] = []
    pieces = [*data, b""]
    while True:
        try:
            event = reader.next_event()
        except http1.RemoteProtocolError as err:
            out.append(f"error: {err}")
            return out
        if event is http1.NEED_DATA:
            reader.receive_data(pieces.pop(0) if pieces else b"")
            continue
        if event is http1.PAUSED:
            return out
        out.append(event)


def test_head_and_body_in_one_piece_or_byte_by_byte() -> None:
    """The same events come out however the bytes are split; names lower-cased, values trimmed."""
    whole = events([OK])
    assert whole[0] == http1.Response(
        200,
        b"1.1",
        [(b"content-length", b"5"), (b"x-spaced", b"a b"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")],
    )
    assert whole[1:] == [http1.Data(b"hello"), http1.EndOfMessage()]
    split = events([OK[i : i + 1] for i in range(len(OK))])
    assert split[0] == whole[0]
    assert b"".join(e.data for e in split if isinstance(e, http1.Data)) == b"hello"
    assert split[-1] == http1.EndOfMessage()


def test_informational_responses_come_first() -> None:
    """1xx responses are their own events before the final response."""
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
    got = events([data])
    assert [type(e).__name__ for e in got] == [
        "InformationalResponse",
        "InformationalResponse",
        "Response",
        "EndOfMessage",
    ]
    assert [getattr(e, "status_code", None) for e in got[:3]] == [100, 102, 204]


def test_bytes_after_the_response_are_ignored() -> None:
    """Garbage after a complete response changes nothing, as h11's PAUSED did."""
    assert events([OK + b"\x00garbage HTTP/9"]) == events([OK])


def test_body_to_the_end_of_the_connection() -> None:
    """Without Content-Length or chunking, an HTTP/1.0 body runs to the close."""
    got = events([b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nhello ", b"from 1996"])
    assert got[0] == http1.Response(200, b"1.0", [(b"server", b"old")])
    assert got[1:] == [http1.Data(b"hello "), http1.Data(b"from 1996"), http1.EndOfMessage()]


def test_bare_line_feeds_are_read() -> None:
    """A server ending lines with LF alone is understood, as h11 and Go's client understand it."""
    got = events([b"HTTP/1.1 200 OK\nContent-Length: 2\nServer: tiny\n\nok"])
    assert got == [
        http1.Response(200, b"1.1", [(b"content-length", b"2"), (b"server", b"tiny")]),
        http1.Data(b"ok"),
        http1.EndOfMessage(),
    ]


def test_chunked_body() -> None:
    """Chunked framing is undone; the events carry the payload only."""
    got = events([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"])
    assert b"".join(e.data for e in got if isinstance(e, http1.Data)) == b"abcde"
    assert got[-1] == http1.EndOfMessage()


def test_head_response_has_no_body() -> None:
    """The answer to HEAD ends after its head, whatever its Content-Length says."""
    got = events([b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"], head_request=True)
    assert [type(e).__name__ for e in got] == ["Response", "EndOfMessage"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"], "closed before the end of the body"),
        ([b"HTTP/1.1 200 OK\r\nContent-"], "closed before the response head ended"),
        ([b"SSH-2.0-OpenSSH_9.6\r\n\r\n"], "Expected HTTP/"),
        ([b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"], "unsupported HTTP version 2.0"),
        ([b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"], "101 Switching Protocols"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx"], "Duplicate Content-Length"),
        ([b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000], "response head too long (over 65536 bytes)"),
    ],
)
def test_bad_responses(data: list[bytes], message: str) -> None:
    """A response that is cut short, too big or not HTTP/1.x ends in an error saying so."""
    got = events(data)
    assert isinstance(got[-1], str) and message in got[-1], got


def test_body_read_before_an_error_is_still_given() -> None:
    """The data that arrived before the connection broke comes out before the error."""
    got = events([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"])
    assert got[1] == http1.Data(b"only this")


def test_request_bytes() -> None:
    """A request is the request line, the headers as given, a blank line and the body."""
    payload = http1.request("POST", "/a?b=c", [(b"Host", b"example"), (b"Content-Length", b"2")], b"hi")
    assert payload == b"POST /a?b=c HTTP/1.1\r\nHost: example\r\nContent-Length: 2\r\n\r\nhi"
    assert http1.request("GET", "/", [(b"Host", b"x")]) == b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    ("method", "target", "header"),
    [
        ("GET POST", "/", (b"Host", b"x")),
        ("GET", "/a b", (b"Host", b"x")),
        ("GET", "/", (b"Bad Name", b"x")),
        ("GET", "/", (b"X-Value", b"a\r\nInjected: 1")),
        ("GET", "/", (b"X-Value", b" leading")),
        ("GÉT", "/", (b"Host", b"x")),
    ],
)
def test_request_refuses_what_http_cannot_carry(
    method: str, target: str, header: tuple[bytes, bytes]
) -> None:
    """Methods, targets and headers that would break the request are refused before sending."""
    with pytest.raises(http1.LocalProtocolError):
        http1.request(method, target, [header])


def test_a_reader_leaves_no_cycle() -> None:
    """A reader and its parser are freed by reference counting alone, even after an error."""
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        for data in ([OK], [b"SSH-2.0\r\n\r\n"], [b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab"]):
            events(data)
        assert gc.collect() == 0
        assert len(gc.get_objects()) - before < 50
    finally:
        gc.enable()
