"""Hostile targets: servers that hang, dribble, flood, lie or reset; probes end with the right reason.

The misbehaving servers run in a child process (this file run as a script), so memory and file
descriptor counts taken in the test process are the prober's alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import random
import socket
import struct
import sys
import tracemalloc
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# --- the hostile server zoo (runs in the child process) ----------------------------------------

CHUNK = b"a" * 65536
NOISE = random.Random(7).randbytes(4096)  # fixed bytes: the same garbage on every run
HEALTHY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_head(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(asyncio.LimitOverrunError, asyncio.IncompleteReadError):
        await reader.readuntil(b"\r\n\r\n")


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts, reads, never answers."""
    while await reader.read(65536):
        pass


async def slowloris(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A status line and headers dribbled one byte per second."""
    await read_head(reader)
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(1)


async def slow_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A prompt head, then a body of one byte per second."""
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
    while True:
        writer.write(b"a")
        await writer.drain()
        await asyncio.sleep(1)


async def endless_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A chunked body that never ends."""
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n"
    while True:
        writer.write(chunk)
        await writer.drain()


async def endless_unframed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A body without a length that is never closed."""
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    while True:
        writer.write(CHUNK)
        await writer.drain()


async def endless_gzip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A gzip body of zeros that never ends: each small chunk inflates a thousandfold."""
    import zlib

    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nConnection: close\r\n\r\n")
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    writer.write(packer.compress(b"\0" * 1_000_000) + packer.flush(zlib.Z_SYNC_FLUSH))
    block = packer.compress(b"\0" * 1_000_000) + packer.flush(zlib.Z_SYNC_FLUSH)
    while True:
        writer.write(block)
        await writer.drain()


async def gzip_trailing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A complete gzip body followed by bytes that start no other member (Go's reader refuses it)."""
    import gzip

    await read_head(reader)
    body = gzip.compress(b"ok") + b"garbage after the end"
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    await writer.drain()


async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A TLS record header promising 16 KiB, then one byte every 200 ms: a handshake that never ends."""
    writer.write(b"\x16\x03\x03\x40\x00")
    while True:
        writer.write(b"\x00")
        await writer.drain()
        await asyncio.sleep(0.2)


async def endless_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Header lines forever."""
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\n")
    line = b"X-Filler: " + b"b" * 1000 + b"\r\n"
    while True:
        writer.write(line * 64)
        await writer.drain()


async def giant_header(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One header line that never ends."""
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nX-Giant: ")
    while True:
        writer.write(CHUNK)
        await writer.drain()


async def not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Another protocol's greeting instead of a status line."""
    await read_head(reader)
    writer.write(b"SSH-2.0-OpenSSH_9.6\r\nProtocol mismatch.\r\n\r\n")
    await writer.drain()
    await reader.read()


async def binary(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Random bytes, then hang up."""
    await read_head(reader)
    writer.write(NOISE)
    await writer.drain()


async def reset_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Part of a promised body, then a TCP reset (SO_LINGER 0)."""
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"a" * 10000)
    await writer.drain()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def tls_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Random bytes where a TLS server hello belongs."""
    await reader.read(65536)  # the client hello
    writer.write(NOISE)
    await writer.drain()
    await reader.read()


async def redirect_loop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Every request is sent back to itself."""
    await read_head(reader)
    port = writer.get_extra_info("sockname")[1]
    writer.write(
        b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:%d/again\r\nContent-Length: 0\r\n\r\n" % port
    )
    await writer.drain()


async def informational_flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Interim 1xx responses forever, never the final one."""
    await read_head(reader)
    while True:
        writer.write(b"HTTP/1.1 102 Processing\r\n\r\n" * 100)
        await writer.drain()
        await asyncio.sleep(0.01)


async def healthy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A well-behaved HTTP server."""
    await read_head(reader)
    writer.write(HEALTHY)
    await writer.drain()


async def endless_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A TCP banner line that never ends."""
    while True:
        writer.write(CHUNK)
        await writer.drain()


async def chatter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Lines forever, none of them the one the probe expects."""
    while True:
        writer.write(b"220 still here\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)


async def dns_tcp_lies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """DNS over TCP: promises a 65535-byte answer, sends 10 bytes, hangs up."""
    await reader.read(65536)
    writer.write(b"\xff\xff" + NOISE[:10])
    await writer.drain()


STREAM_HANDLERS: dict[str, Handler] = {
    "silent": silent,
    "slowloris": slowloris,
    "slow_body": slow_body,
    "endless_chunked": endless_chunked,
    "endless_unframed": endless_unframed,
    "endless_gzip": endless_gzip,
    "endless_headers": endless_headers,
    "giant_header": giant_header,
    "not_http": not_http,
    "binary": binary,
    "reset_mid_body": reset_mid_body,
    "tls_garbage": tls_garbage,
    "redirect_loop": redirect_loop,
    "informational_flood": informational_flood,
    "healthy": healthy,
    "endless_line": endless_line,
    "chatter": chatter,
    "dns_tcp_lies": dns_tcp_lies,
    "gzip_trailing": gzip_trailing,
    "drip": drip,
}


def _dns_reply(query: bytes, kind: str) -> bytes | None:
    """A hostile answer to a DNS query, built by hand so it can be as wrong as wanted."""
    ident = query[:2]
    question = query[12:]
    header = b"\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00"  # response, RD RA, NOERROR, 1 question
    if kind == "dns_garbage":
        return NOISE[:64]
    if kind == "dns_cut":
        return (ident + header + question)[:7]  # stops inside the header
    if kind == "dns_wrong_id":
        return bytes([ident[0] ^ 0xFF, ident[1]]) + header + question
    if kind == "dns_truncated":
        return ident + b"\x83\x80" + header[2:] + question  # TC set, no records
    return None  # dns_silent


class _DNSLiar(asyncio.DatagramProtocol):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = _dns_reply(data, self.kind)
        if reply is not None:
            self.transport.sendto(reply, addr)


async def _serve_zoo(lifetime: float) -> None:
    loop = asyncio.get_running_loop()
    ports: dict[str, int] = {}
    servers = []
    for name, handler in STREAM_HANDLERS.items():

        async def run(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, h: Handler = handler
        ) -> None:
            try:
                await h(reader, writer)
            except (OSError, asyncio.IncompleteReadError):
                pass  # the prober hung up, as it should
            finally:
                writer.transport.abort()

        server = await asyncio.start_server(run, "127.0.0.1", 0)
        servers.append(server)
        ports[name] = server.sockets[0].getsockname()[1]
    for kind in ("dns_garbage", "dns_cut", "dns_wrong_id", "dns_truncated", "dns_silent"):
        transport, _ = await loop.create_datagram_endpoint(
            lambda k=kind: _DNSLiar(k), local_addr=("127.0.0.1", 0)
        )
        ports[kind] = transport.get_extra_info("sockname")[1]
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))  # bound, never read: nothing answers here...
    ports["dns_closed"] = closed.getsockname()[1]
    closed.close()  # ...and now nothing listens, so the kernel answers ICMP port unreachable
    print(json.dumps(ports), flush=True)
    stdin_closed = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: stdin_closed.done() or stdin_closed.set_result(None))
    # The zoo ends when the test closes our stdin, and in any case after ``lifetime`` seconds.
    await asyncio.wait_for(stdin_closed, lifetime)


# --- the tests (in the test process) -----------------------------------------------------------

from aiohttp import web  # noqa: E402
from aiohttp.test_utils import RawTestServer, TestClient  # noqa: E402
from pytest_aiohttp import AiohttpClient, AiohttpRawServer  # noqa: E402

from exporter.config import parse_config  # noqa: E402
from exporter.modules import DNSProbe, HTTPProbe, Module, QueryResponse, TCPProbe, TLSConfig  # noqa: E402
from exporter.probes import net  # noqa: E402
from exporter.probes.httpclient import MAX_HEAD_BYTES  # noqa: E402
from exporter.probes.tcp import MAX_LINE_BYTES  # noqa: E402
from exporter.result import FailureReason, ProbeResult  # noqa: E402
from exporter.runner import run_probe  # noqa: E402
from exporter.scheduler import Scheduler  # noqa: E402
from exporter.store import ResultStore  # noqa: E402
from exporter.types import ByteSize, Regex  # noqa: E402
from exporter.web import make_app  # noqa: E402
from tests.conftest import wait_for  # noqa: E402
from tests.stack import server_child  # noqa: E402

TIMEOUT = 1.0
BODY_LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def zoo() -> Iterator[dict[str, int]]:
    """Starts the hostile servers in a child process; their ports by behaviour."""
    with server_child("tests.test_hostile") as ports:
        yield ports


def http(**settings: Any) -> Module:
    return Module(prober="http", sections={"http": HTTPProbe(preferred_ip_protocol="ip4", **settings)})


def tcp(**settings: Any) -> Module:
    return Module(prober="tcp", sections={"tcp": TCPProbe(preferred_ip_protocol="ip4", **settings)})


def dns(transport: str = "udp") -> Module:
    settings = DNSProbe(query_name="example.org", query_type="A", transport_protocol=transport)  # type: ignore[arg-type]
    return Module(prober="dns", sections={"dns": settings})


INSECURE = TLSConfig(insecure_skip_verify=True)
LIMITED = {"body_size_limit": ByteSize(BODY_LIMIT)}


@dataclass(frozen=True)
class Case:
    """One hostile behaviour, how to probe it, what the probe must conclude, and its memory bound."""

    server: str
    target: str
    module: Module
    reason: FailureReason | None
    # The limit that must bound the probe's memory (4x), or None where nothing is streamed.
    limit: int | None = None


CASES = [
    Case("silent", "http://127.0.0.1:{port}/", http(), FailureReason.TIMEOUT),
    Case("silent", "https://127.0.0.1:{port}/", http(tls_config=INSECURE), FailureReason.TIMEOUT),
    Case(
        "silent",
        "127.0.0.1:{port}",
        tcp(query_response=(QueryResponse(Regex.from_yaml("^220")),)),
        FailureReason.TIMEOUT,
    ),
    Case("slowloris", "http://127.0.0.1:{port}/", http(), FailureReason.TIMEOUT),
    Case("slow_body", "http://127.0.0.1:{port}/", http(), FailureReason.TIMEOUT),
    Case("endless_chunked", "http://127.0.0.1:{port}/", http(**LIMITED), FailureReason.BODY, BODY_LIMIT),
    Case("endless_unframed", "http://127.0.0.1:{port}/", http(**LIMITED), FailureReason.BODY, BODY_LIMIT),
    Case("endless_gzip", "http://127.0.0.1:{port}/", http(**LIMITED), FailureReason.BODY, BODY_LIMIT),
    Case("endless_headers", "http://127.0.0.1:{port}/", http(), FailureReason.PROTOCOL, MAX_HEAD_BYTES),
    Case("giant_header", "http://127.0.0.1:{port}/", http(), FailureReason.PROTOCOL, MAX_HEAD_BYTES),
    Case("not_http", "http://127.0.0.1:{port}/", http(), FailureReason.PROTOCOL),
    Case("binary", "http://127.0.0.1:{port}/", http(), FailureReason.PROTOCOL),
    Case("reset_mid_body", "http://127.0.0.1:{port}/", http(), FailureReason.PROTOCOL),
    Case("tls_garbage", "https://127.0.0.1:{port}/", http(tls_config=INSECURE), FailureReason.TLS),
    Case("tls_garbage", "127.0.0.1:{port}", tcp(tls=True, tls_config=INSECURE), FailureReason.TLS),
    Case("silent", "127.0.0.1:{port}", tcp(tls=True, tls_config=INSECURE), FailureReason.TIMEOUT),
    Case("drip", "127.0.0.1:{port}", tcp(tls=True, tls_config=INSECURE), FailureReason.TIMEOUT),
    Case("drip", "https://127.0.0.1:{port}/", http(tls_config=INSECURE), FailureReason.TIMEOUT),
    Case("gzip_trailing", "http://127.0.0.1:{port}/", http(), FailureReason.BODY),
    Case("redirect_loop", "http://127.0.0.1:{port}/", http(), FailureReason.OTHER),
    Case("informational_flood", "http://127.0.0.1:{port}/", http(), FailureReason.PROTOCOL, MAX_HEAD_BYTES),
    Case(
        "endless_line",
        "127.0.0.1:{port}",
        tcp(query_response=(QueryResponse(Regex.from_yaml("^220")),)),
        FailureReason.PROTOCOL,
        MAX_LINE_BYTES,
    ),
    Case(
        "chatter",
        "127.0.0.1:{port}",
        tcp(query_response=(QueryResponse(Regex.from_yaml("^OK")),)),
        FailureReason.TIMEOUT,
    ),
    Case("dns_garbage", "127.0.0.1:{port}", dns(), FailureReason.PROTOCOL),
    Case("dns_cut", "127.0.0.1:{port}", dns(), FailureReason.PROTOCOL),
    Case("dns_wrong_id", "127.0.0.1:{port}", dns(), FailureReason.PROTOCOL),
    Case("dns_silent", "127.0.0.1:{port}", dns(), FailureReason.TIMEOUT),
    Case("dns_closed", "127.0.0.1:{port}", dns(), FailureReason.CONNECT),
    Case("dns_tcp_lies", "127.0.0.1:{port}", dns("tcp"), FailureReason.PROTOCOL),
    # A truncated answer is still an answer: reported as blackbox reports it, with a note.
    Case("dns_truncated", "127.0.0.1:{port}", dns(), None),
]


def case_id(case: Case) -> str:
    return f"{case.server}-{case.module.prober}" + ("-tls" if case.target.startswith("https") else "")


async def traced(target: str, module: Module) -> tuple[ProbeResult, int]:
    """Run one probe under tracemalloc; its result and the peak of memory allocated meanwhile."""
    tracemalloc.start()
    try:
        result = await run_probe(target, module, TIMEOUT)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("case", CASES, ids=case_id)
async def test_hostile_target_fails_with_its_reason(zoo: dict[str, int], case: Case) -> None:
    """Each hostile server makes the probe end (within its timeout, by the runner) with the right reason.

    Where the server streams without end, the memory the probe took beyond that of a probe of a
    healthy server stays under four times the limit that applies (body, head or line size).
    """
    target = case.target.format(port=zoo[case.server])
    result, peak = await traced(target, case.module)
    if case.reason is None:
        assert result.success, result.message
        assert "truncated" in result.message
    else:
        assert not result.success
        assert result.reason == case.reason, result.message
    if case.limit is not None:
        healthy, baseline = await traced(f"http://127.0.0.1:{zoo['healthy']}/", http())
        assert healthy.success
        assert peak - baseline < 4 * case.limit, (
            f"peak {peak} (healthy {baseline}) for a {case.limit}-byte limit"
        )


async def test_a_connection_cut_off_by_the_timeout_is_dropped_at_once(zoo: dict[str, int]) -> None:
    """Closing the connection of a probe being cancelled never waits for the peer.

    A polite TLS close to a silent peer used to add a second after the timeout; the probe's
    close now aborts the connection without suspending once, which is checked by driving it.
    """
    _, writer = await asyncio.open_connection("127.0.0.1", zoo["silent"])
    suspended: list[bool] = []

    async def cut_off() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            closing = net.close(writer)
            try:
                closing.send(None)
                suspended.append(True)
                closing.close()
            except StopIteration:
                suspended.append(False)

    task = asyncio.create_task(cut_off())
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert suspended == [False]
    assert writer.transport.is_closing()


def open_fds() -> int:
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


async def test_hostile_probes_leak_no_file_descriptors(zoo: dict[str, int]) -> None:
    """Two batches of every hostile probe at once leave the fd count where it was."""
    # One round first, so lazily opened descriptors (resolver threads' files, the executor) exist.
    await asyncio.gather(*(run_probe(c.target.format(port=zoo[c.server]), c.module, TIMEOUT) for c in CASES))
    before = open_fds()
    for _ in range(2):
        results = await asyncio.gather(
            *(run_probe(c.target.format(port=zoo[c.server]), c.module, TIMEOUT) for c in CASES)
        )
        assert [r.reason for r in results] == [c.reason for c in CASES]
    assert open_fds() == before


def cyclic_garbage_of_ours() -> list[str]:
    """Objects of the exporter's freed only by the garbage collector (reference cycles)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = []
        for obj in gc.garbage:
            if isinstance(obj, types.FrameType) and "/exporter/" in obj.f_code.co_filename:
                found.append(f"frame of {obj.f_code.co_name}")
            elif type(obj).__module__.startswith("exporter."):
                found.append(type(obj).__name__)
        return found
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def test_failed_probes_leave_no_reference_cycles(zoo: dict[str, int]) -> None:
    """Every hostile probe, failing for its own reason, is freed by reference counting alone.

    At thousands of failing services a cycle per failure adds up to collector pauses long
    enough to delay the schedule.
    """
    await asyncio.gather(*(run_probe(c.target.format(port=zoo[c.server]), c.module, TIMEOUT) for c in CASES))
    gc.collect()
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    try:
        port = refused.getsockname()[1]
        results = await asyncio.gather(
            *(run_probe(c.target.format(port=zoo[c.server]), c.module, TIMEOUT) for c in CASES),
            run_probe(f"http://127.0.0.1:{port}/", http(), TIMEOUT),
            run_probe(f"127.0.0.1:{port}", tcp(), TIMEOUT),
        )
    finally:
        refused.close()
    assert [r.reason for r in results] == [c.reason for c in CASES] + [FailureReason.CONNECT] * 2
    del results
    assert cyclic_garbage_of_ours() == []


SCHEDULE = """
global: {{interval: 600ms, timeout: 400ms}}
services:
  - {{name: healthy, prober: http, target: "http://127.0.0.1:{healthy}/", interval: 100ms, timeout: 90ms,
      http: {{preferred_ip_protocol: ip4}}}}
  - {{name: silent, prober: http, target: "http://127.0.0.1:{silent}/", http: {{preferred_ip_protocol: ip4}}}}
  - {{name: slowloris, prober: http, target: "http://127.0.0.1:{slowloris}/",
      http: {{preferred_ip_protocol: ip4}}}}
  - {{name: endless, prober: http, target: "http://127.0.0.1:{endless_chunked}/",
      http: {{preferred_ip_protocol: ip4, body_size_limit: 1MiB}}}}
  - {{name: headers, prober: http, target: "http://127.0.0.1:{endless_headers}/",
      http: {{preferred_ip_protocol: ip4}}}}
  - {{name: tls, prober: http, target: "https://127.0.0.1:{tls_garbage}/",
      http: {{preferred_ip_protocol: ip4}}}}
  - {{name: reset, prober: http, target: "http://127.0.0.1:{reset_mid_body}/",
      http: {{preferred_ip_protocol: ip4}}}}
  - {{name: dns, prober: dns, target: "127.0.0.1:{dns_silent}",
      dns: {{query_name: example.org, preferred_ip_protocol: ip4}}}}
"""


async def test_healthy_service_keeps_its_schedule_beside_hostile_ones(zoo: dict[str, int]) -> None:
    """While hostile services run N times each, the healthy one runs about N times its rate, all good."""
    config = parse_config(SCHEDULE.format(**zoo))
    store = ResultStore()
    scheduler = Scheduler(store, max_concurrency=100)
    scheduler.apply(config.services, 100)
    hostile = [s.name for s in config.services if s.name != "healthy"]

    def hostile_runs() -> list[int]:
        return [store.get(name).runs for name in hostile]  # type: ignore[union-attr]

    try:
        await wait_for(
            lambda: min(hostile_runs()) >= 5, timeout=60, what="five runs of every hostile service"
        )
        runs = hostile_runs()
        healthy = store.get("healthy")
        assert healthy is not None
        count = healthy.runs
    finally:
        await scheduler.stop()
    ratio = 6  # the hostile interval over the healthy one
    # Counted in runs, not seconds: the healthy service kept its rate while the others hung.
    assert (min(runs) - 1) * ratio - 3 <= count <= (max(runs) + 1) * ratio + 3, (count, runs)
    assert sum(healthy.failures.values()) == 0, healthy.last
    for name in hostile:
        state = store.get(name)
        assert state is not None and state.last is not None and not state.last.success, name


# --- probe_allowlist tricks ----------------------------------------------------------------------


class Listener:
    """A TCP listener that remembers the peer of every connection it accepts."""

    def __init__(self) -> None:
        self.peers: list[tuple[str, int]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str) -> Listener:
        self.server = await asyncio.start_server(self._accept, host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(writer.get_extra_info("peername")[:2])
        writer.transport.abort()

    async def connections_before_now(self, host: str) -> list[tuple[str, int]]:
        """Peers accepted before this call, made certain by a last connection of our own.

        The kernel hands connections over in order, so once ours is seen every earlier one is.
        """
        _, writer = await asyncio.open_connection(host, self.port)
        mine = writer.get_extra_info("sockname")[:2]
        await wait_for(lambda: mine in self.peers, what="our own connection to the listener")
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return self.peers[: self.peers.index(mine)]

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def forbidden() -> AsyncIterator[Listener]:
    """A listener on 127.0.0.2: loopback, but outside an allowlist of 127.0.0.1/32."""
    listener = await Listener().start("127.0.0.2")
    yield listener
    await listener.close()


async def redirector(serve: AiohttpRawServer, location: str) -> RawTestServer:
    """An HTTP server that answers every request with a redirect to ``location``, as written."""

    async def handle(request: web.BaseRequest) -> web.Response:
        return web.Response(status=302, headers={"Location": location})

    return await serve(handle)


ALLOW_LOOPBACK_ONE = """
global: {interval: 1m, timeout: 2s}
probe_allowlist: [127.0.0.1/32]
modules:
  http_2xx: {prober: http, http: {preferred_ip_protocol: ip4}}
  tcp_connect: {prober: tcp, tcp: {preferred_ip_protocol: ip4}}
  dns_udp: {prober: dns, dns: {query_name: example.org, preferred_ip_protocol: ip4}}
"""


@pytest.fixture
async def guarded(aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    """The web app with probe_allowlist [127.0.0.1/32] and no scheduled services."""
    return await aiohttp_client(make_app(parse_config(ALLOW_LOOPBACK_ONE), schedule=False))


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.2:{port}/",
        "http://2130706434:{port}/",
        "http://0x7f000002:{port}/",
        "http://0177.0.0.2:{port}/",
        "http://127.2:{port}/",
        "http://[::ffff:127.0.0.2]:{port}/",
        "http://127.0.0.1:1@127.0.0.2:{port}/",
        "//127.0.0.2:{port}/",
    ],
)
async def test_redirect_to_forbidden_host_is_not_followed(
    guarded: TestClient[Any, Any], forbidden: Listener, location: str, aiohttp_raw_server: AiohttpRawServer
) -> None:
    """An allowed target that redirects outside the allowlist fails, and the forbidden host sees nothing."""
    server = await redirector(aiohttp_raw_server, location.format(port=forbidden.port))
    response = await guarded.get(
        "/probe", params={"target": f"http://127.0.0.1:{server.port}/", "module": "http_2xx", "debug": "true"}
    )
    text = await response.text()
    assert response.status == 200, text
    assert "success: no" in text and "reason: other" in text
    assert "outside probe_allowlist" in text
    await server.close()
    assert await forbidden.connections_before_now("127.0.0.2") == []


@pytest.mark.parametrize(
    ("target", "module"),
    [
        ("http://127.0.0.2:{port}/", "http_2xx"),
        ("http://2130706434:{port}/", "http_2xx"),
        ("http://0x7f.0.0.2:{port}/", "http_2xx"),
        ("http://0x7f000002:{port}/", "http_2xx"),
        ("http://[::ffff:127.0.0.2]:{port}/", "http_2xx"),
        ("http://[::ffff:7f00:2]:{port}/", "http_2xx"),
        ("http://127.0.0.1:{port}@127.0.0.2:{port}/", "http_2xx"),
        ("127.0.0.2:{port}", "tcp_connect"),
        ("2130706434:{port}", "tcp_connect"),
        ("[::ffff:127.0.0.2]:{port}", "tcp_connect"),
        ("127.0.0.2:{port}", "dns_udp"),
    ],
)
async def test_disguised_forbidden_addresses_are_refused(
    guarded: TestClient[Any, Any], forbidden: Listener, target: str, module: str
) -> None:
    """Decimal, hex, IPv4-mapped IPv6 and user-info spellings of 127.0.0.2 get 403 and no connection."""
    response = await guarded.get(
        "/probe", params={"target": target.format(port=forbidden.port), "module": module}
    )
    assert response.status == 403, await response.text()
    assert "not covered by probe_allowlist (127.0.0.1/32)" in await response.text()
    assert await forbidden.connections_before_now("127.0.0.2") == []


async def test_name_resolving_outside_allowlist_is_refused(aiohttp_client: AiohttpClient) -> None:
    """`localhost` resolves to 127.0.0.1, outside a documentation-network allowlist: 403, no connection."""
    listener = await Listener().start("127.0.0.1")
    text = ALLOW_LOOPBACK_ONE.replace("[127.0.0.1/32]", "[192.0.2.0/24]")
    client = await aiohttp_client(make_app(parse_config(text), schedule=False))
    try:
        for target, module in (
            (f"http://localhost:{listener.port}/", "http_2xx"),
            (f"localhost:{listener.port}", "tcp_connect"),
        ):
            response = await client.get("/probe", params={"target": target, "module": module})
            assert response.status == 403, target
        assert await listener.connections_before_now("127.0.0.1") == []
    finally:
        await listener.close()


def test_tls_contexts_are_shared_and_renewed(tmp_path: Path, ca_file: Path) -> None:
    """TLS probes share one context per settings (building one loads the CA store, tens of ms on
    the event loop); a CA file that changes on disk gets a new one."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(ca_file.read_bytes())
    settings = TLSConfig(ca_file=str(ca))
    first = net.shared_ssl_context(settings, ("http/1.1",))
    assert net.shared_ssl_context(settings, ("http/1.1",)) is first
    assert net.shared_ssl_context(settings) is not first  # other ALPN: another context
    ca.write_bytes(ca_file.read_bytes() + b"\n")
    assert net.shared_ssl_context(settings, ("http/1.1",)) is not first


if __name__ == "__main__":
    asyncio.run(_serve_zoo(float(sys.argv[1]) if len(sys.argv) > 1 else 600.0))
