"""Tests of the websocket probe against real aiohttp WebSocket servers and raw misbehaving peers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from cryptography import x509
from pytest_aiohttp import AiohttpServer
from wsproto.frame_protocol import Opcode

from exporter.collector import render_result
from exporter.config import parse_config
from exporter.modules import Module, TLSConfig, WebSocketMessage, WebSocketProbe
from exporter.probes import PROBERS, websocket
from exporter.result import FailureReason
from exporter.types import ByteSize, Regex, Secret
from tests.conftest import ProbeRunner, wait_for
from tests.metrics_util import parse, value


@dataclass
class Seen:
    """What the WebSocket app received."""

    messages: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    closes: list[int | None] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


def make_app(seen: Seen) -> web.Application:
    async def dialogue(request: web.Request, ws: web.WebSocketResponse, greeting: str | None = None) -> None:
        seen.headers.append(dict(request.headers))
        await ws.prepare(request)
        if greeting is not None:
            await ws.send_str(greeting)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                seen.messages.append(message.data)
                if message.data.startswith("auth "):
                    await ws.send_str(f"ok {message.data[5:]}")
                else:
                    await ws.send_str(f"echo:{message.data}")
        seen.closes.append(ws.close_code)

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await dialogue(request, ws)
        return ws

    async def greet(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await dialogue(request, ws, "welcome; token=abc123")
        return ws

    async def chatty(request: web.Request) -> web.WebSocketResponse:
        # A ping and unrelated messages before the one a probe waits for.
        ws = web.WebSocketResponse(autoping=False)
        seen.headers.append(dict(request.headers))
        await ws.prepare(request)
        await ws.ping(b"are you there")
        await ws.send_str("heartbeat 1")
        await ws.send_bytes(b"heartbeat 2")
        await ws.send_str("ready: 42 rooms")
        async for message in ws:
            if message.type == aiohttp.WSMsgType.PONG:
                seen.messages.append(f"pong:{message.data.decode()}")
        return ws

    async def big(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        await ws.send_str("x" * int(request.query["size"]))
        async for _ in ws:
            pass
        return ws

    async def bye(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("not what you want")
        await ws.close(code=4000, message=b"go away")
        return ws

    async def silent(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await seen.release.wait()
        return ws

    async def protocols(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("chat.v2",))
        await dialogue(request, ws)
        return ws

    async def guarded(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != "Bearer ws-s3cret":
            return web.Response(status=403, text="forbidden")
        ws = web.WebSocketResponse()
        await dialogue(request, ws, "hello")
        return ws

    async def kinds(request: web.Request) -> web.WebSocketResponse:
        # Records each message's type and data as received.
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            seen.messages.append(f"{message.type.name.lower()}:{message.data!r}")
        return ws

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="not a websocket")

    app = web.Application()
    for path, handler in (
        ("/echo", echo),
        ("/greet", greet),
        ("/chatty", chatty),
        ("/big", big),
        ("/bye", bye),
        ("/silent", silent),
        ("/protocols", protocols),
        ("/guarded", guarded),
        ("/kinds", kinds),
        ("/plain", plain),
    ):
        app.router.add_get(path, handler)
    return app


@dataclass
class Site:
    base: str
    seen: Seen


@pytest.fixture
async def serve(aiohttp_server: AiohttpServer) -> AsyncIterator[Callable[..., Awaitable[Site]]]:
    """Starts the WebSocket app on 127.0.0.1, over TLS when given a context."""
    seens: list[Seen] = []

    async def start(context: ssl.SSLContext | None = None) -> Site:
        seen = Seen()
        server = await aiohttp_server(make_app(seen), ssl=context)
        seens.append(seen)
        scheme = "wss" if context is not None else "ws"
        return Site(f"{scheme}://127.0.0.1:{server.port}", seen)

    yield start
    for seen in seens:
        seen.release.set()  # handlers still holding a socket end before the servers close


@pytest.fixture
async def site(serve: Callable[..., Awaitable[Site]]) -> Site:
    return await serve()


def module(*turns: tuple[str | None, str], **settings: Any) -> Module:
    messages = tuple(
        WebSocketMessage(expect=Regex.from_yaml(expect) if expect is not None else None, send=send)
        for expect, send in turns
    )
    return Module(prober="websocket", sections={"websocket": WebSocketProbe(messages=messages, **settings)})


async def test_echo_dialogue(run_probe: ProbeRunner, site: Site) -> None:
    """Connect, send, expect the echo; the upgrade status, phases and a clean close are reported."""
    result = await run_probe(site.base + "/echo", module((None, "hello"), ("^echo:hello$", "")))
    assert result.success, result.message
    assert result.value("probe_websocket_status_code") == 101
    assert result.value("probe_websocket_ssl") == 0
    assert result.value("probe_failed_due_to_regex") == 0
    assert set(result.phases) == set(websocket.PHASES)
    assert result.phases["connect"] > 0 and result.phases["upgrade"] > 0 and result.phases["messages"] > 0
    assert result.phases["tls"] == 0
    assert sum(result.phases.values()) <= result.duration
    await wait_for(lambda: bool(site.seen.closes))
    assert site.seen.messages == ["hello"]
    assert site.seen.closes == [1000]
    assert site.seen.headers[0]["Sec-WebSocket-Version"] == "13"


async def test_connect_only(run_probe: ProbeRunner, site: Site) -> None:
    """Without messages the probe checks the upgrade alone."""
    result = await run_probe(site.base + "/echo", module())
    assert result.success, result.message
    assert result.value("probe_websocket_status_code") == 101


async def test_expect_captures_feed_sends(run_probe: ProbeRunner, site: Site) -> None:
    """A send uses the groups of its turn's expect, as the tcp prober's query_response does."""
    result = await run_probe(
        site.base + "/greet",
        module(
            (r"token=(\w+)", "auth ${1}"), (r"^ok (?P<t>\w+)$", "auth again-${t}"), ("ok again-abc123", "")
        ),
    )
    assert result.success, result.message
    assert site.seen.messages == ["auth abc123", "auth again-abc123"]


async def test_pings_and_unrelated_messages(run_probe: ProbeRunner, site: Site) -> None:
    """Pings are answered and non-matching (also binary) messages skipped until one matches."""
    result = await run_probe(site.base + "/chatty", module((r"ready: (\d+) rooms", "")))
    assert result.success, result.message
    await wait_for(lambda: bool(site.seen.messages))
    assert site.seen.messages == ["pong:are you there"]


async def test_server_closes_before_a_match(run_probe: ProbeRunner, site: Site) -> None:
    """A close before the expected message fails with protocol and counts as a regex failure."""
    result = await run_probe(site.base + "/bye", module(("^welcome", "")))
    assert (result.reason, result.message) == (
        FailureReason.PROTOCOL,
        "message 1: the server closed the WebSocket (code 4000) before a message matched expect '^welcome';"
        " the last message was 'not what you want'",
    )
    assert result.value("probe_failed_due_to_regex") == 1


async def test_message_over_the_limit(run_probe: ProbeRunner, site: Site) -> None:
    """A message larger than max_message_size fails before its payload is read."""
    result = await run_probe(
        site.base + "/big?size=70000", module(("x", ""), max_message_size=ByteSize(65536))
    )
    assert (result.reason, result.message) == (
        FailureReason.PROTOCOL,
        "message 1: the server sent a message larger than max_message_size (65536 bytes)",
    )
    result = await run_probe(
        site.base + "/big?size=70000", module(("^x+$", ""), max_message_size=ByteSize(70000))
    )
    assert result.success, result.message


async def test_refused_upgrade(run_probe: ProbeRunner, site: Site) -> None:
    """An HTTP answer other than 101 fails with http_status and its code."""
    result = await run_probe(site.base + "/guarded", module())
    assert (result.reason, result.message) == (
        FailureReason.HTTP_STATUS,
        "upgrade refused: status code 403, expected 101",
    )
    assert result.value("probe_websocket_status_code") == 403
    result = await run_probe(site.base + "/plain", module())
    assert result.value("probe_websocket_status_code") == 200
    assert result.reason == FailureReason.HTTP_STATUS


async def test_headers_authorise_and_stay_secret(run_probe: ProbeRunner, site: Site) -> None:
    """Configured headers go out with the handshake; their values never reach the result."""
    settings = {"headers": MappingProxyType({"Authorization": Secret("Bearer ws-s3cret")})}
    result = await run_probe(site.base + "/guarded", module(("^hello$", ""), **settings))
    assert result.success, result.message
    result = await run_probe(site.base + "/bye", module(("^nothing$", ""), **settings))
    assert not result.success
    assert "ws-s3cret" not in result.message
    assert "ws-s3cret" not in render_result(result, "websocket").decode()


async def test_subprotocols(run_probe: ProbeRunner, site: Site) -> None:
    """Offered subprotocols are sent; the server's choice among them is accepted."""
    result = await run_probe(site.base + "/protocols", module(subprotocols=("chat.v1", "chat.v2")))
    assert result.success, result.message
    assert site.seen.headers[0]["Sec-WebSocket-Protocol"] == "chat.v1, chat.v2"


async def test_wss(
    run_probe: ProbeRunner,
    serve: Callable[..., Awaitable[Site]],
    server_cert: trustme.LeafCert,
    ca_file: Path,
) -> None:
    """Over TLS the tls phase and the certificate values are recorded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    site = await serve(context)
    tls = TLSConfig(ca_file=str(ca_file))
    result = await run_probe(site.base + "/echo", module((None, "hi"), ("echo:hi", ""), tls_config=tls))
    assert result.success, result.message
    assert result.value("probe_websocket_ssl") == 1
    assert result.phases["tls"] > 0
    leaf = x509.load_pem_x509_certificate(server_cert.cert_chain_pems[0].bytes())
    assert result.value("probe_ssl_earliest_cert_expiry") == leaf.not_valid_after_utc.timestamp()
    untrusted = await run_probe(site.base + "/echo", module())
    assert untrusted.reason == FailureReason.TLS


async def test_timeout_while_waiting(run_probe: ProbeRunner, site: Site) -> None:
    """A server that never sends the expected message: the runner's timeout ends the probe."""
    result = await run_probe(site.base + "/silent", module(("anything", "")), timeout=0.3)
    assert result.reason == FailureReason.TIMEOUT
    assert result.value("probe_websocket_status_code") == 101
    assert result.phases["upgrade"] > 0


# --- raw peers: framing the aiohttp server never produces ---------------------------------------

Peer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


RawPeer = Callable[..., Awaitable[str]]


@pytest.fixture
async def raw_peer() -> AsyncIterator[RawPeer]:
    """Starts a TCP listener that answers the handshake properly (unless told not to), then runs
    the test's peer."""
    servers: list[asyncio.Server] = []
    tasks: set[asyncio.Task[Any]] = set()

    async def start(peer: Peer, handshake: bool = True) -> str:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                if not handshake:
                    await peer(reader, writer)
                    await reader.read()
                    return
                head = await reader.readuntil(b"\r\n\r\n")
                key = next(
                    line.split(b":", 1)[1].strip()
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"sec-websocket-key:")
                )
                accept = base64.b64encode(
                    hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
                )
                writer.write(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                )
                await peer(reader, writer)
                await writer.drain()
                await reader.read()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(run, "127.0.0.1", 0)
        servers.append(server)
        return f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=5)
        for task in pending:
            task.cancel()


def server_frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = False) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if masked else 0
    if len(payload) < 126:
        head += bytes([mask_bit | len(payload)])
    else:
        head += bytes([mask_bit | 126]) + len(payload).to_bytes(2, "big")
    return head + (b"\0\0\0\0" if masked else b"") + payload


async def test_fragmented_message_is_reassembled(run_probe: ProbeRunner, raw_peer: RawPeer) -> None:
    """Fragments, with a ping between them, make one message."""

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            server_frame(Opcode.TEXT, b"sta", fin=False)
            + server_frame(Opcode.PING, b"p")
            + server_frame(Opcode.CONTINUATION, b"tus: ", fin=False)
            + server_frame(Opcode.CONTINUATION, b"up")
        )

    url = await raw_peer(peer)
    result = await run_probe(url, module(("^status: up$", "")))
    assert result.success, result.message


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (server_frame(Opcode.TEXT, b"hi", masked=True), "message 1: the server masked a frame"),
        (server_frame(0x3, b"hi"), "message 1: the server sent a frame with unknown opcode 3"),
        (
            server_frame(Opcode.CONTINUATION, b"hi"),
            "message 1: the server interleaved or mis-continued fragmented messages",
        ),
        (
            server_frame(Opcode.PING, b"x", fin=False),
            "message 1: the server sent a fragmented or oversized control frame",
        ),
        (
            bytes([0xC1, 0x02]) + b"hi",
            "message 1: the server set reserved frame bits, though no extension was agreed",
        ),
        (
            server_frame(Opcode.TEXT, b"caf\xe9"),
            "message 1: the server sent a text message that is not UTF-8",
        ),
        (
            bytes([0x81, 126, 0, 2]) + b"hi",
            "message 1: the server sent a broken frame:"
            " Payload length used 2 bytes when 1 would have sufficed",
        ),
        (
            server_frame(Opcode.CLOSE, (999).to_bytes(2, "big")),
            "message 1: the server sent a broken frame: CLOSE with invalid code",
        ),
        (b"", "message 1: the server hung up before a message matched expect 'never'; it sent none"),
        (
            server_frame(Opcode.CLOSE, b""),
            "message 1: the server hung up before a message matched expect 'never'; it sent none",
        ),
    ],
)
async def test_broken_frames(run_probe: ProbeRunner, raw_peer: RawPeer, frames: bytes, message: str) -> None:
    """Frames that break RFC 6455 fail with protocol and say what was wrong."""

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(frames)
        if not frames:
            writer.close()

    url = await raw_peer(peer)
    result = await run_probe(url, module(("never", "")))
    assert (result.reason, result.message) == (FailureReason.PROTOCOL, message)


async def test_bad_accept_key(run_probe: ProbeRunner, raw_peer: RawPeer) -> None:
    """A 101 answer with a wrong Sec-WebSocket-Accept fails with protocol."""

    async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n"
        )

    result = await run_probe(await raw_peer(liar, handshake=False), module())
    assert (result.reason, result.message) == (
        FailureReason.PROTOCOL,
        "the 101 answer has a wrong Sec-WebSocket-Accept",
    )
    assert result.value("probe_websocket_status_code") == 101


def handshake_answer(head: bytes, **fields: bytes) -> bytes:
    """A 101 answer to the request ``head`` with a right accept key unless ``fields`` override."""
    key = next(
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    values = {
        "Upgrade": b"websocket",
        "Connection": b"Upgrade",
        "Sec-WebSocket-Accept": base64.b64encode(
            hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        ),
    }
    values.update({name.replace("_", "-"): value for name, value in fields.items()})
    lines = b"".join(name.encode() + b": " + value + b"\r\n" for name, value in values.items() if value)
    return b"HTTP/1.1 101 Switching Protocols\r\n" + lines + b"\r\n"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"Connection": b""}, "the 101 answer lacks Connection: Upgrade"),
        ({"Upgrade": b"h2c"}, "the 101 answer does not upgrade to websocket"),
        (
            {"Sec_WebSocket_Extensions": b"permessage-deflate"},
            "the server chose an extension the probe did not offer",
        ),
        ({"Sec_WebSocket_Protocol": b"chat.v9"}, "the server chose subprotocol 'chat.v9', not offered"),
        ({"Sec_WebSocket_Protocol": b"caf\xe9"}, "the 101 answer has a WebSocket header that is not ASCII"),
    ],
)
async def test_bad_upgrade_answers(
    run_probe: ProbeRunner, raw_peer: RawPeer, fields: dict[str, bytes], message: str
) -> None:
    """Each check of the 101 answer fails with protocol and its own message; the status is kept."""

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(handshake_answer(await reader.readuntil(b"\r\n\r\n"), **fields))

    result = await run_probe(await raw_peer(peer, handshake=False), module(subprotocols=("chat.v1",)))
    assert (result.reason, result.message) == (FailureReason.PROTOCOL, message)
    assert result.value("probe_websocket_status_code") == 101


async def test_malformed_upgrade_answer(run_probe: ProbeRunner, raw_peer: RawPeer) -> None:
    """An answer that is not HTTP fails with protocol, saying what was wrong, and no status."""

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 abc\r\n\r\n")

    result = await run_probe(await raw_peer(peer, handshake=False), module())
    assert result.reason == FailureReason.PROTOCOL
    assert result.message.startswith("bad answer to the upgrade request: illegal status line"), result.message
    assert result.value("probe_websocket_status_code") == 0


async def test_informational_answers_before_101(run_probe: ProbeRunner, raw_peer: RawPeer) -> None:
    """1xx answers before the 101 are skipped, as they are no answer to the upgrade."""

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        writer.write(handshake_answer(head) + server_frame(Opcode.TEXT, b"ready"))

    result = await run_probe(await raw_peer(peer, handshake=False), module(("^ready$", "")))
    assert result.success, result.message
    assert result.value("probe_websocket_status_code") == 101


async def test_fragmented_message_over_the_limit(run_probe: ProbeRunner, raw_peer: RawPeer) -> None:
    """The limit holds for a message's fragments together, each of them being under it."""

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            server_frame(Opcode.TEXT, b"a" * 40, fin=False)
            + server_frame(Opcode.CONTINUATION, b"b" * 40, fin=False)
            + server_frame(Opcode.CONTINUATION, b"c" * 40)
        )

    url = await raw_peer(peer)
    result = await run_probe(url, module(("a", ""), max_message_size=ByteSize(100)))
    assert (result.reason, result.message) == (
        FailureReason.PROTOCOL,
        "message 1: the server sent a message larger than max_message_size (100 bytes)",
    )
    result = await run_probe(url, module(("^a{40}b{40}c{40}$", ""), max_message_size=ByteSize(120)))
    assert result.success, result.message


async def test_oversized_message_fails_before_it_has_arrived(
    run_probe: ProbeRunner, raw_peer: RawPeer
) -> None:
    """A frame announcing 1 GiB fails once the limit is passed, without waiting for the rest."""

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The rest of the payload never comes: the fixture holds the connection open.
        writer.write(bytes([0x82, 127]) + (1 << 30).to_bytes(8, "big") + b"z" * 70_000)

    result = await run_probe(await raw_peer(peer), module(("z", ""), max_message_size=ByteSize(65536)))
    assert (result.reason, result.message) == (
        FailureReason.PROTOCOL,
        "message 1: the server sent a message larger than max_message_size (65536 bytes)",
    )


async def test_close_frame_behind_the_match(run_probe: ProbeRunner, raw_peer: RawPeer) -> None:
    """A close frame that arrives with the matching message does not fail the probe."""

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            server_frame(Opcode.TEXT, b"ready") + server_frame(Opcode.CLOSE, (1000).to_bytes(2, "big"))
        )

    result = await run_probe(await raw_peer(peer), module(("^ready$", "bye")))
    assert result.success, result.message


async def test_sends_that_are_not_utf8_go_as_binary(run_probe: ProbeRunner, site: Site) -> None:
    """A send keeps its bytes: text when they are UTF-8, otherwise a binary message."""
    result = await run_probe(
        site.base + "/kinds", module((None, "caf\udce9"), (None, "caf\udcc3\udca9"), (None, "plain"))
    )
    assert result.success, result.message
    await wait_for(lambda: len(site.seen.messages) == 3)
    assert site.seen.messages == ["binary:b'caf\\xe9'", "text:'café'", "text:'plain'"]


async def test_metrics_exposition(run_probe: ProbeRunner, site: Site) -> None:
    """The exposition has the websocket phases and the upgrade status."""
    result = await run_probe(site.base + "/echo", module((None, "x"), ("echo:x", "")))
    series = parse(render_result(result, "websocket").decode())
    assert value(series, "probe_success") == 1
    assert value(series, "probe_websocket_status_code") == 101
    assert value(series, "probe_websocket_duration_seconds", phase="upgrade") == result.phases["upgrade"]
    assert PROBERS["websocket"] is websocket.KIND


def test_config_loads_a_websocket_service() -> None:
    """A websocket service with a dialogue loads from YAML."""
    config = parse_config(
        "services:\n"
        "  - name: chat\n"
        "    target: wss://chat.example.com/socket\n"
        "    prober: websocket\n"
        "    websocket:\n"
        "      subprotocols: [chat.v2]\n"
        "      messages:\n"
        '        - send: \'{"type": "ping"}\'\n'
        '        - expect: \'"type": ?"pong"\'\n'
    )
    (service,) = config.services
    settings = service.module.sections["websocket"]
    assert [m.send for m in settings.messages] == ['{"type": "ping"}', ""]
    assert settings.messages[1].expect is not None
