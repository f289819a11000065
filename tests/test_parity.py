"""One table of probe cases run through the real blackbox_exporter and ours, answer against answer.

Each case is a module (blackbox's format) and a local target that behaves a set way. Both
exporters load every module at once and probe every case's target through ``/probe``; the two
answers must have the same metric names and the same value for every series that is not a
duration. Where the Debian binary (0.23) predates an option, the case is compared against
the 0.23 answer of a sibling case changed as the 0.28 source says (``recorded``). Where we
differ on purpose, the case names the row of the README's table "Where we differ, and why"
(``differs``), and the test checks both that the difference is really there and that the
README explains it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import re
import struct
import threading
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import parse_config
from exporter.web import make_app
from tests import test_dns, test_grpc
from tests.stack import ROOT, Process, free_port

SCRAPE_TIMEOUT = "5"
# Values that are durations, which no two probes share.
TIMING = re.compile(r"(_duration_seconds|_lookup_time_seconds)$")
# Names blackbox added after 0.23 that we export: compared with the 0.28 source's meaning here.
NEWER_NAMES = {"probe_timeout_seconds": "0.25", "probe_tls_cipher_info": "0.26"}

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass(frozen=True)
class Case:
    name: str
    module: dict[str, Any]
    # The target, with {http}, {tcp}, {dns}, {grpc}, {ws} and {closed} filled in.
    target: str
    # Where 0.28 answers otherwise than the 0.23 binary, or the module has an option 0.23 lacks:
    # the 0.23 answer (of this case, or of the case named ``like`` when 0.23 cannot load this
    # module) changed by ``recorded`` (name -> value, None = absent), as ``source`` says.
    like: str = ""
    recorded: dict[str, float | None] = field(default_factory=dict)
    source: str = ""
    # README rows that explain the differences this case shows, name by name.
    differs: dict[str, str] = field(default_factory=dict)
    # Neither side can be compared with blackbox at all (a kind it has no release of).
    ours_only: dict[str, float] = field(default_factory=dict)

    @property
    def module_name(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_")


def http(name: str, path: str, **settings: Any) -> Case:
    options = {"preferred_ip_protocol": "ip4", **settings.pop("http", {})}
    target = settings.pop("target", "{http}" + path)
    return Case(name, {"prober": "http", "timeout": "3s", "http": options}, target, **settings)


# 0.28 source, prober/query_response.go: both gauges are registered once the connection (and
# TLS) is up; 0.23 registered the regex one before dialing and had no bytes one.
TCP_CONNECTED = {"probe_failed_due_to_bytes": 0}
TCP_NOT_CONNECTED = {"probe_failed_due_to_regex": None}
TCP_SOURCE = "0.28 prober/query_response.go registers both regex and bytes gauges after connecting"


def tcp(name: str, script: str, **settings: Any) -> Case:
    options = {"preferred_ip_protocol": "ip4", **settings.pop("tcp", {})}
    target = "{closed}" if script == "closed" else "{tcp_" + script + "}"
    connects = script != "closed" and not options.get("tls")
    recorded = TCP_CONNECTED if connects else TCP_NOT_CONNECTED
    settings["recorded"] = {**recorded, **settings.get("recorded", {})}
    settings.setdefault("source", TCP_SOURCE)
    return Case(name, {"prober": "tcp", "timeout": "3s", "tcp": options}, target, **settings)


# 0.28 source, prober/grpc.go: the certificate gauges are registered only over TLS; 0.23 always
# registered probe_ssl_earliest_cert_expiry, 0 without TLS.
GRPC_PLAIN: dict[str, float | None] = {"probe_ssl_earliest_cert_expiry": None}
GRPC_SOURCE = "0.28 prober/grpc.go registers probe_ssl_earliest_cert_expiry only over TLS"


# 0.26 source, prober/unix.go: dial the path, then tcp's query_response steps
# (prober/query_response.go); nothing is resolved, so no address or lookup gauges.
UNIX_SOURCE = "0.26 prober/unix.go: tcp's query_response over the socket, no resolve phase"
NO_ADDRESS: dict[str, float | None] = dict.fromkeys(
    ("probe_ip_protocol", "probe_ip_addr_hash", "probe_dns_lookup_time_seconds")
)


def unix(name: str, script: str, like: str, **settings: Any) -> Case:
    """A unix socket case, compared with the tcp case ``like`` whose target runs the same script."""
    options = settings.pop("unix", {})
    recorded = TCP_NOT_CONNECTED if script == "missing" else TCP_CONNECTED
    settings["recorded"] = {**recorded, **NO_ADDRESS, **settings.get("recorded", {})}
    module = {"prober": "unix", "timeout": "3s", "unix": options}
    return Case(name, module, "{unix_" + script + "}", like=like, source=UNIX_SOURCE, **settings)


def grpc(name: str, target: str, **options: Any) -> Case:
    module = {"prober": "grpc", "timeout": "3s", "grpc": {"preferred_ip_protocol": "ip4", **options}}
    return Case(name, module, target, recorded=GRPC_PLAIN, source=GRPC_SOURCE)


def dns_case(name: str, query_name: str, **settings: Any) -> Case:
    options = {"query_name": query_name, "preferred_ip_protocol": "ip4", **settings.pop("dns", {})}
    target = settings.pop("target", "{dns}")
    return Case(name, {"prober": "dns", "timeout": "3s", "dns": options}, target, **settings)


# --- what the local HTTP target answers, by path ------------------------------------------------


def raw(status_line: str, headers: list[str], body: bytes = b"") -> bytes:
    return (status_line + "\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode("latin-1") + body


def ok(body: bytes = b"ok", *headers: str) -> bytes:
    return raw("HTTP/1.1 200 OK", [f"Content-Length: {len(body)}", *headers], body)


GZIPPED = gzip.compress(b"compressed hello " * 20)
CHUNKED = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
JSON_BODY = b'{"status": "up", "count": 2, "checks": [{"ok": true}]}'

Answer = bytes | Callable[[str, dict[str, str], bytes], bytes]

ANSWERS: dict[str, Answer] = {
    "/ok": ok(),
    "/404": raw("HTTP/1.1 404 Not Found", ["Content-Length: 9"], b"not found"),
    "/500": raw("HTTP/1.1 500 Internal Server Error", ["Content-Length: 0"]),
    "/204": raw("HTTP/1.1 204 No Content", []),
    "/304": raw("HTTP/1.1 304 Not Modified", ["Content-Length: 10"]),
    "/redirect": raw("HTTP/1.1 302 Found", ["Location: /ok", "Content-Length: 10"], b"redirected"),
    "/redirect-abs": b"",  # filled in with the server's own address
    "/redirect-404": raw("HTTP/1.1 301 Moved Permanently", ["Location: /404", "Content-Length: 0"]),
    "/redirect-chain": raw("HTTP/1.1 307 Temporary Redirect", ["Location: /redirect", "Content-Length: 0"]),
    "/loop": raw("HTTP/1.1 302 Found", ["Location: /loop", "Content-Length: 0"]),
    "/chunked": raw("HTTP/1.1 200 OK", ["Transfer-Encoding: chunked"], CHUNKED),
    "/chunked-and-length": raw(
        "HTTP/1.1 200 OK", ["Content-Length: 100", "Transfer-Encoding: chunked"], CHUNKED
    ),
    "/no-length": raw("HTTP/1.1 200 OK", ["Connection: close"], b"until the end"),
    "/http10": raw("HTTP/1.0 200 OK", ["Content-Length: 2"], b"ok"),
    "/nul-header": ok(b"ok", "X-Odd: a\x00b"),
    "/continue": raw("HTTP/1.1 100 Continue", []) + ok(),
    "/short-body": raw("HTTP/1.1 200 OK", ["Content-Length: 50"], b"only this"),
    "/garbage": b"this is not http at all\r\n\r\n",
    "/hangup": b"",
    "/last-modified": ok(b"ok", "Last-Modified: Wed, 21 Oct 2015 07:28:00 GMT"),
    "/bad-last-modified": ok(b"ok", "Last-Modified: yesterday"),
    "/gzip": raw("HTTP/1.1 200 OK", [f"Content-Length: {len(GZIPPED)}", "Content-Encoding: gzip"], GZIPPED),
    "/big": ok(b"x" * 5000),
    "/json": ok(JSON_BODY, "Content-Type: application/json"),
    "/headers": ok(b"ok", "X-Version: 2.1", "Server: test/1.0", "Set-Cookie: a=b"),
    "/body": ok(b"<html>status: all systems operational</html>"),
    "/not-found-page": raw("HTTP/1.1 200 OK", ["Content-Length: 14"], b"page not found"),
}


def _method_only_post(method: str, headers: dict[str, str], body: bytes) -> bytes:
    if method != "POST" or body != b"ping":
        return raw("HTTP/1.1 405 Method Not Allowed", ["Content-Length: 0"])
    return ok(b"pong")


def _needs_header(method: str, headers: dict[str, str], body: bytes) -> bytes:
    if headers.get("x-token") != "t1":
        return raw("HTTP/1.1 403 Forbidden", ["Content-Length: 0"])
    return ok()


def _needs_basic(method: str, headers: dict[str, str], body: bytes) -> bytes:
    if headers.get("authorization") != "Basic dTpwdw==":  # u:pw
        return raw("HTTP/1.1 401 Unauthorized", ["Content-Length: 0", 'WWW-Authenticate: Basic realm="x"'])
    return ok()


def _needs_bearer(method: str, headers: dict[str, str], body: bytes) -> bytes:
    if headers.get("authorization") != "Bearer tok3n":
        return raw("HTTP/1.1 401 Unauthorized", ["Content-Length: 0"])
    return ok()


def _head(method: str, headers: dict[str, str], body: bytes) -> bytes:
    if method == "HEAD":
        return raw("HTTP/1.1 200 OK", ["Content-Length: 1234"])
    return raw("HTTP/1.1 405 Method Not Allowed", ["Content-Length: 0"])


def _needs_gzip(method: str, headers: dict[str, str], body: bytes) -> bytes:
    if "gzip" not in headers.get("accept-encoding", ""):
        return ok(b"plain")
    return ANSWERS["/gzip"]  # type: ignore[return-value]


ANSWERS.update(
    {
        "/post": _method_only_post,
        "/needs-header": _needs_header,
        "/basic": _needs_basic,
        "/bearer": _needs_bearer,
        "/head": _head,
        "/needs-gzip": _needs_gzip,
    }
)


# --- the table ------------------------------------------------------------------------------

BYTES_SOURCE = "0.28 prober/query_response.go: expect_bytes wants the next bytes; probe_failed_due_to_bytes"
CEL_SOURCE = "0.27 source: probe_failed_due_to_cel registered with a CEL check, 1 when it fails"

CASES: list[Case] = [
    http("http ok", "/ok"),
    http("http 404 fails", "/404"),
    http("http 500 fails", "/500"),
    http("http 204 no content", "/204"),
    http("http 304 with length", "/304", http={"valid_status_codes": [304]}),
    http("http 404 allowed", "/404", http={"valid_status_codes": [404]}),
    http("http redirect followed", "/redirect"),
    http(
        "http redirect not followed",
        "/redirect",
        http={"follow_redirects": False, "valid_status_codes": [302]},
    ),
    http("http redirect absolute", "/redirect-abs"),
    http("http redirect to 404", "/redirect-404"),
    http("http redirect chain", "/redirect-chain"),
    http("http redirect loop", "/loop"),
    http("http chunked", "/chunked"),
    http("http chunked and content-length", "/chunked-and-length"),
    http("http body until close", "/no-length"),
    http("http 1.0 response", "/http10"),
    http("http version refused", "/http10", http={"valid_http_versions": ["HTTP/1.1"]}),
    http("http nul byte in a header", "/nul-header"),
    http("http 100 continue first", "/continue"),
    http("http body shorter than content-length", "/short-body"),
    http("http garbage answer", "/garbage"),
    http("http hang up without answer", "/hangup"),
    http("http connection refused", "", target="{closed_http}"),
    http("http last-modified", "/last-modified"),
    http("http unparsable last-modified", "/bad-last-modified"),
    http("http gzip body", "/gzip", http={"compression": "gzip"}),
    http(
        "http gzip asked for",
        "/needs-gzip",
        http={"compression": "gzip"},
        differs=dict.fromkeys(
            ("probe_success", "probe_http_content_length", "probe_http_uncompressed_body_length"),
            "`compression` asks for the coding",
        ),
    ),
    http("http body size limit", "/big", http={"body_size_limit": "1KB"}),
    http("http body within limit", "/big", http={"body_size_limit": "1MB"}),
    http("http fail if body matches", "/body", http={"fail_if_body_matches_regexp": ["operational"]}),
    http("http body matches nothing bad", "/body", http={"fail_if_body_matches_regexp": ["outage"]}),
    http(
        "http fail if body not matches", "/not-found-page", http={"fail_if_body_not_matches_regexp": ["^ok"]}
    ),
    http(
        "http fail if header matches",
        "/headers",
        http={"fail_if_header_matches": [{"header": "Server", "regexp": "test/"}]},
    ),
    http(
        "http header not matches",
        "/headers",
        http={"fail_if_header_not_matches": [{"header": "X-Version", "regexp": "^3\\."}]},
    ),
    http(
        "http missing header allowed",
        "/ok",
        http={"fail_if_header_not_matches": [{"header": "X-Absent", "regexp": "x", "allow_missing": True}]},
    ),
    http(
        "http missing header refused",
        "/ok",
        http={"fail_if_header_matches": [{"header": "X-Absent", "regexp": "x"}]},
    ),
    http("http fail if not ssl", "/ok", http={"fail_if_not_ssl": True}),
    http("http fail if ssl on plain", "/ok", http={"fail_if_ssl": True}),
    http("http post with body", "/post", http={"method": "POST", "body": "ping"}),
    http("http get where post is wanted", "/post"),
    http("http head", "/head", http={"method": "HEAD"}),
    http("http header sent", "/needs-header", http={"headers": {"X-Token": "t1"}}),
    http("http basic auth", "/basic", http={"basic_auth": {"username": "u", "password": "pw"}}),
    http("http basic auth missing", "/basic"),
    http("http bearer token", "/bearer", http={"bearer_token": "tok3n"}),
    http(
        "http cel fails on a match",
        "/json",
        http={"fail_if_body_json_matches_cel": 'body.status == "up"'},
        source=CEL_SOURCE,
        like="http ok",
        recorded={
            "probe_success": 0,
            "probe_failed_due_to_cel": 1,
            "probe_http_content_length": len(JSON_BODY),
            "probe_http_uncompressed_body_length": len(JSON_BODY),
        },
    ),
    http(
        "http cel passes",
        "/json",
        http={"fail_if_body_json_not_matches_cel": "body.checks.all(c, c.ok) && body.count == 2"},
        source=CEL_SOURCE,
        like="http ok",
        recorded={
            "probe_failed_due_to_cel": 0,
            "probe_http_content_length": len(JSON_BODY),
            "probe_http_uncompressed_body_length": len(JSON_BODY),
        },
    ),
    http(
        "http cel on a body that is not json",
        "/body",
        http={"fail_if_body_json_not_matches_cel": "body.ok"},
        source=CEL_SOURCE,
        like="http fail if body matches",
        recorded={"probe_failed_due_to_cel": 1, "probe_failed_due_to_regex": 0},
    ),
    http(
        "http cel not reached after a bad status",
        "/404",
        http={"fail_if_body_json_matches_cel": "body.x"},
        source=CEL_SOURCE,
        like="http 404 fails",
        recorded={"probe_failed_due_to_cel": 0},
    ),
    tcp("tcp connect", "banner"),
    tcp("tcp connection refused", "closed"),
    tcp("tcp banner expected", "banner", tcp={"query_response": [{"expect": "^SSH-2.0-"}]}),
    tcp("tcp banner mismatch", "banner", tcp={"query_response": [{"expect": "^220 "}]}),
    tcp(
        "tcp send and expect",
        "echo",
        tcp={"query_response": [{"send": "hello"}, {"expect": "^hello$"}]},
    ),
    tcp(
        "tcp ping pong with a capture",
        "irc",
        tcp={
            "query_response": [{"expect": "PING :([^ ]+)", "send": "PONG ${1}"}, {"expect": "^:welcome 001"}]
        },
    ),
    tcp("tcp peer closes before expect", "hangup", tcp={"query_response": [{"expect": "^x"}]}),
    tcp("tcp tls against plain", "banner", tcp={"tls": True, "tls_config": {"insecure_skip_verify": True}}),
    tcp(
        "tcp starttls refused",
        "banner",
        tcp={
            "query_response": [{"expect": "^SSH"}, {"starttls": True}],
            "tls_config": {"insecure_skip_verify": True},
        },
    ),
    tcp(
        "tcp several steps",
        "smtp",
        tcp={
            "query_response": [{"expect": "^220 "}, {"send": "EHLO p"}, {"expect": "^250 "}, {"send": "QUIT"}]
        },
    ),
    tcp(
        "tcp expect bytes",
        "banner",
        tcp={"query_response": [{"expect_bytes": "SSH-2.0"}]},
        source=BYTES_SOURCE,
        like="tcp banner expected",
        recorded={"probe_failed_due_to_bytes": 0},
    ),
    tcp(
        "tcp expect bytes mismatch",
        "banner",
        tcp={"query_response": [{"expect_bytes": "220"}]},
        source=BYTES_SOURCE,
        like="tcp banner mismatch",
        recorded={"probe_failed_due_to_bytes": 1, "probe_failed_due_to_regex": 0},
    ),
    unix("unix connect", "banner", "tcp connect"),
    unix("unix missing socket", "missing", "tcp connection refused"),
    unix(
        "unix banner expected",
        "banner",
        "tcp banner expected",
        unix={"query_response": [{"expect": "^SSH-2.0-"}]},
    ),
    unix(
        "unix banner mismatch",
        "banner",
        "tcp banner mismatch",
        unix={"query_response": [{"expect": "^220 "}]},
    ),
    unix(
        "unix send and expect",
        "echo",
        "tcp send and expect",
        unix={"query_response": [{"send": "hello"}, {"expect": "^hello$"}]},
    ),
    unix(
        "unix ping pong with a capture",
        "irc",
        "tcp ping pong with a capture",
        unix={
            "query_response": [{"expect": "PING :([^ ]+)", "send": "PONG ${1}"}, {"expect": "^:welcome 001"}]
        },
    ),
    unix(
        "unix peer closes before expect",
        "hangup",
        "tcp peer closes before expect",
        unix={"query_response": [{"expect": "^x"}]},
    ),
    unix(
        "unix expect bytes",
        "banner",
        "tcp banner expected",
        unix={"query_response": [{"expect_bytes": "SSH-2.0"}]},
        recorded={"probe_failed_due_to_bytes": 0},
    ),
    dns_case("dns a record", f"www.{test_dns.ZONE}"),
    dns_case("dns over tcp", f"www.{test_dns.ZONE}", dns={"transport_protocol": "tcp"}, target="{dns_tcp}"),
    dns_case("dns nxdomain", f"nope.{test_dns.ZONE}"),
    dns_case("dns nxdomain allowed", f"nope.{test_dns.ZONE}", dns={"valid_rcodes": ["NXDOMAIN"]}),
    dns_case("dns servfail", f"fail.{test_dns.ZONE}"),
    dns_case("dns soa serial", test_dns.ZONE, dns={"query_type": "SOA"}),
    dns_case("dns empty answer", f"empty.{test_dns.ZONE}"),
    dns_case(
        "dns answer matches a bad pattern",
        f"www.{test_dns.ZONE}",
        dns={"validate_answer_rrs": {"fail_if_matches_regexp": ["127\\.0\\.0\\.2"]}},
    ),
    dns_case(
        "dns answer lacks a pattern",
        f"www.{test_dns.ZONE}",
        dns={"validate_answer_rrs": {"fail_if_not_matches_regexp": ["10\\.0\\.0\\.1"]}},
    ),
    dns_case(
        "dns authority checked",
        f"www.{test_dns.ZONE}",
        dns={"validate_authority_rrs": {"fail_if_none_matches_regexp": ["NS"]}},
    ),
    dns_case("dns header counts lie", f"liar.{test_dns.ZONE}"),
    dns_case("dns garbage answer", f"garbage.{test_dns.ZONE}"),
    dns_case("dns wrong message id", f"wrong-id.{test_dns.ZONE}"),
    Case(
        "icmp loopback",
        {"prober": "icmp", "timeout": "3s", "icmp": {"preferred_ip_protocol": "ip4"}},
        "127.0.0.1",
    ),
    Case(
        "icmp loopback v6",
        {"prober": "icmp", "timeout": "3s", "icmp": {"preferred_ip_protocol": "ip6"}},
        "::1",
    ),
    grpc("grpc serving", "{grpc}"),
    grpc("grpc not serving", "{grpc}", service="down"),
    grpc("grpc unknown service", "{grpc}", service="who"),
    grpc("grpc connection refused", "{closed}"),
    Case(
        "websocket upgrade and message",
        {
            "prober": "websocket",
            "timeout": "3s",
            "websocket": {"preferred_ip_protocol": "ip4", "messages": [{"expect": "^hello"}]},
        },
        "{ws}/ws",
        ours_only={
            "probe_success": 1,
            "probe_websocket_status_code": 101,
            "probe_websocket_ssl": 0,
            "probe_failed_due_to_regex": 0,
        },
    ),
    Case(
        "websocket upgrade refused",
        {"prober": "websocket", "timeout": "3s", "websocket": {"preferred_ip_protocol": "ip4"}},
        "{ws}/not-here",
        ours_only={"probe_success": 0, "probe_websocket_status_code": 404, "probe_failed_due_to_regex": 0},
    ),
]


# --- the local targets ----------------------------------------------------------------------


async def _http_target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
        answer = ANSWERS.get(urllib.parse.urlsplit(path).path, ANSWERS["/404"])
        writer.write(answer(method, headers, body) if callable(answer) else answer)
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def _line(reader: asyncio.StreamReader) -> bytes:
    return (await reader.readline()).rstrip(b"\r\n")


TCPScript = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"SSH-2.0-OpenSSH_9.0\r\n")
    await writer.drain()
    await reader.read(100)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()


async def _irc(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"PING :k3y\r\n")
    await writer.drain()
    if await _line(reader) == b"PONG k3y":
        writer.write(b":welcome 001 prober\r\n")
        await writer.drain()
    await reader.read(100)


async def _hangup(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    return


async def _smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 mail ready\r\n")
    await writer.drain()
    if (await _line(reader)).startswith(b"EHLO"):
        writer.write(b"250 hello\r\n")
        await writer.drain()
    await reader.read(100)


TCP_SCRIPTS: dict[str, TCPScript] = {
    "banner": _banner,
    "echo": _echo,
    "irc": _irc,
    "hangup": _hangup,
    "smtp": _smtp,
}


def _lying_counts(query: dns.message.Message) -> bytes | None:
    """The header says 3 answers; one follows (a middlebox or a broken server)."""
    name = query.question[0].name.to_text()
    if name != f"liar.{test_dns.ZONE}":
        return test_dns.answer(query)
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text(name, 300, "IN", "A", "127.0.0.9"))
    wire = bytearray(response.to_wire())
    struct.pack_into("!H", wire, 6, 3)
    return bytes(wire)


async def _websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str("hello there")
    async for _ in ws:
        pass
    return ws


class Targets:
    """Every local target, our exporter and their addresses, on one event loop in a thread."""

    def __init__(self, our_config: str, sockets: Path) -> None:
        self.our_config = our_config
        self.sockets = sockets
        self.loop = asyncio.new_event_loop()
        self.places: dict[str, str] = {}
        self._cleanups: list[Callable[[], Awaitable[None]]] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self.loop.run_forever, name="parity-targets", daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    async def _serve(self, handler: TCPScript, unix_path: str = "") -> int:
        """Serve ``handler`` on a loopback TCP port (returned), or on the unix socket ``unix_path``."""

        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._handlers.add(task)
            try:
                await handler(reader, writer)
            except (ConnectionError, OSError, asyncio.IncompleteReadError):
                pass
            finally:
                self._handlers.discard(task)
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()

        if unix_path:
            server = await asyncio.start_unix_server(run, unix_path)
            self._cleanups.append(self._closer(server))
            return 0
        server = await asyncio.start_server(run, "127.0.0.1", 0)
        self._cleanups.append(self._closer(server))
        return int(server.sockets[0].getsockname()[1])

    @staticmethod
    def _closer(server: asyncio.Server) -> Callable[[], Awaitable[None]]:
        async def close() -> None:
            server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)

        return close

    async def _start(self) -> None:
        port = await self._serve(_http_target)
        base = f"http://127.0.0.1:{port}"
        ANSWERS["/redirect-abs"] = raw("HTTP/1.1 302 Found", [f"Location: {base}/ok", "Content-Length: 0"])
        self.places["http"] = base
        for name, script in TCP_SCRIPTS.items():
            self.places[f"tcp_{name}"] = f"127.0.0.1:{await self._serve(script)}"
            self.places[f"unix_{name}"] = str(self.sockets / f"{name}.sock")
            await self._serve(script, self.places[f"unix_{name}"])
        self.places["unix_missing"] = str(self.sockets / "missing.sock")
        closed = free_port()
        self.places["closed"] = f"127.0.0.1:{closed}"
        self.places["closed_http"] = f"http://127.0.0.1:{closed}/"
        # The DNS and gRPC servers of their own tests, with one more misbehaving DNS name.
        dns_server = test_dns.DNSServer("127.0.0.1", 0, 0)
        transport, _ = await self.loop.create_datagram_endpoint(
            lambda: test_dns._UDPHandler(dns_server, _lying_counts), local_addr=("127.0.0.1", 0)
        )
        self._cleanups.append(lambda: _close_transport(transport))
        dns_server.udp_port = transport.get_extra_info("sockname")[1]
        dns_server.tcp_port = await self._serve(_dns_over_tcp)
        self.places["dns"] = dns_server.udp()
        self.places["dns_tcp"] = dns_server.tcp()
        health = test_grpc.HealthServer(statuses={"": 1, "down": 2})
        self.places["grpc"] = f"127.0.0.1:{await self._serve(health.handle)}"
        ws_app = web.Application()
        ws_app.router.add_get("/ws", _websocket)
        self.places["ws"] = f"ws://127.0.0.1:{await self._site(ws_app)}"
        self.places["ours"] = (
            f"http://127.0.0.1:{await self._site(make_app(parse_config(self.our_config), schedule=False))}"
        )

    async def _site(self, app: web.Application) -> int:
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._cleanups.append(runner.cleanup)
        return int(runner.addresses[0][1])

    async def _stop(self) -> None:
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        for cleanup in reversed(self._cleanups):
            await cleanup()


async def _close_transport(transport: asyncio.BaseTransport) -> None:
    transport.close()


async def _dns_over_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            reply = _lying_counts(dns.message.from_wire(await reader.readexactly(length)))
            if reply is not None:
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def compared_cases() -> list[Case]:
    return [case for case in CASES if not case.like and not case.ours_only]


def blackbox_modules() -> dict[str, Any]:
    return {case.module_name: case.module for case in compared_cases()}


def all_modules() -> dict[str, Any]:
    return {case.module_name: case.module for case in CASES}


@dataclass
class Exporters:
    blackbox: str
    ours: str
    places: dict[str, str]
    answers: dict[str, tuple[set[str], Series]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def exporters(blackbox_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporters]:
    """blackbox_exporter and ours, each loaded with every case's module, and the local targets."""
    directory = tmp_path_factory.mktemp("parity")
    path = directory / "blackbox.yml"
    path.write_text(yaml.safe_dump({"modules": blackbox_modules()}), encoding="utf-8")
    port = free_port()
    theirs = Process(
        "blackbox",
        [blackbox_binary, f"--config.file={path}", f"--web.listen-address=127.0.0.1:{port}"],
        f"http://127.0.0.1:{port}",
        directory,
    )
    sockets = directory / "s"
    sockets.mkdir()
    allowlist = ["127.0.0.0/8", "::1/128", f"{sockets}/*.sock"]
    targets = Targets(yaml.safe_dump({"probe_allowlist": allowlist, "modules": all_modules()}), sockets)
    targets.start()
    try:
        theirs.wait_ready("/-/healthy")
        yield Exporters(theirs.url, targets.places["ours"], targets.places)
    finally:
        theirs.stop()
        targets.stop()


def fetch(base: str, case: Case, places: dict[str, str]) -> tuple[set[str], Series]:
    target = case.target.format(**places)
    query = urllib.parse.urlencode({"target": target, "module": case.module_name})
    request = urllib.request.Request(
        f"{base}/probe?{query}", headers={"X-Prometheus-Scrape-Timeout-Seconds": SCRAPE_TIMEOUT}
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        text = response.read().decode()
    names: set[str] = set()
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.add(sample.name)
            if not TIMING.search(sample.name):
                labels = dict(sample.labels)
                labels.pop("serialnumber", None)  # 0.28 adds the certificate serial; 0.23 has none
                series[(sample.name, tuple(sorted(labels.items())))] = sample.value
    return names, series


def blackbox_answer(exporters: Exporters, case: Case) -> tuple[set[str], Series]:
    if case.name not in exporters.answers:
        exporters.answers[case.name] = fetch(exporters.blackbox, case, exporters.places)
    return exporters.answers[case.name]


def expected(exporters: Exporters, case: Case) -> tuple[set[str], Series]:
    """blackbox's answer for the case: the 0.23 binary's (its own or a sibling's) changed as recorded."""
    base = next(c for c in CASES if c.name == case.like) if case.like else case
    names, series = blackbox_answer(exporters, base)
    names, series = set(names), dict(series)
    for name, value in case.recorded.items():
        if value is None:
            names.discard(name)
            series.pop((name, ()), None)
        else:
            names.add(name)
            series[(name, ())] = float(value)
    return names, series


def readme_differences() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## Where we differ, and why")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


@pytest.mark.parametrize("case", CASES, ids=[c.module_name for c in CASES])
def test_probe_answers_as_blackbox(exporters: Exporters, case: Case) -> None:
    """Same metric names, same values but durations; explained differences only, and really there."""
    our_names, ours = fetch(exporters.ours, case, exporters.places)
    for name in NEWER_NAMES:
        # blackbox added these after 0.23, with the meaning ours has (the 0.28 source).
        if name == "probe_timeout_seconds":
            assert ours.pop((name, ())) == min(
                float(case.module["timeout"].rstrip("s")), float(SCRAPE_TIMEOUT) - 0.5
            )
        else:
            for key in [k for k in ours if k[0] == name]:
                del ours[key]
        our_names.discard(name)
    if case.ours_only:
        assert {name: ours.get((name, ())) for name in case.ours_only} == case.ours_only
        assert case.differs == {}, "an ours-only case has nothing to differ from"
        assert "websocket" in readme_differences()
        return
    their_names, theirs = expected(exporters, case)
    for name, row in case.differs.items():
        assert row in readme_differences(), f"README's table lacks the row {row!r}"
        assert ours.get((name, ())) != theirs.get((name, ())) or (name in our_names) != (
            name in their_names
        ), f"{name} no longer differs: drop it from the case's differs"
        our_names.discard(name)
        their_names.discard(name)
        ours = {k: v for k, v in ours.items() if k[0] != name}
        theirs = {k: v for k, v in theirs.items() if k[0] != name}
    assert sorted(our_names - their_names) == [] and sorted(their_names - our_names) == [], (
        f"names only ours: {sorted(our_names - their_names)}, "
        f"only blackbox's: {sorted(their_names - our_names)}"
    )
    differ = {
        f"{name}{dict(labels) or ''}": {
            "blackbox": theirs.get((name, labels)),
            "ours": ours.get((name, labels)),
        }
        for name, labels in sorted(set(ours) | set(theirs))
        if ours.get((name, labels)) != theirs.get((name, labels))
    }
    assert not differ, f"values differ: {differ}"


def test_table_is_large_and_names_unique() -> None:
    """At least 60 cases, every prober represented, no two modules of the same name, sources named."""
    names = [case.module_name for case in CASES]
    assert all(case.source for case in CASES if case.recorded or case.like)
    assert len(names) == len(set(names))
    assert len(CASES) >= 60
    assert {case.module["prober"] for case in CASES} == {
        "http",
        "tcp",
        "dns",
        "icmp",
        "grpc",
        "unix",
        "websocket",
    }


def test_blackbox_loads_the_compared_modules(blackbox_binary: str, tmp_path: Path) -> None:
    """The modules file both exporters get is one blackbox 0.23 accepts (the recorded ones left out)."""
    import subprocess

    path = tmp_path / "blackbox.yml"
    path.write_text(yaml.safe_dump({"modules": blackbox_modules()}), encoding="utf-8")
    checked = subprocess.run(
        [blackbox_binary, f"--config.file={path}", "--config.check"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr
    parse_config(yaml.safe_dump({"modules": all_modules()}))
