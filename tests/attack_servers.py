"""Targets built to make a prober burn its own time: run as a child process by tests/test_stalls.py.

Each answer is legal or nearly so; what makes it hostile is the work it asks of the prober
(a regex over a huge body, thousands of DNS records, a gzip bomb). The child prints its ports
as JSON and serves until its stdin closes.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import struct
import sys
from typing import Any

from aiohttp import web

# The big bodies' size; the child's second argument (in MiB) changes it.
BIG = (int(sys.argv[2]) if len(sys.argv) > 2 else 4) * 1024 * 1024
DNS_RECORDS = 4060  # about 65 KB: the most one message can carry


def _bodies() -> dict[str, tuple[bytes, dict[str, str]]]:
    plain = {"Content-Type": "text/plain"}
    zipped = {"Content-Type": "text/plain", "Content-Encoding": "gzip"}
    bomb = gzip.compress(b"\0" * BIG, 9)
    return {
        "ok": (b"ok", plain),
        # "^(a+)+$" backtracks exponentially on this in a backtracking engine.
        "nested": (b"a" * 40 + b"b", plain),
        # '.*"status": *"ok"' is quadratic over a long line without the literal.
        "letters": (b"a" * BIG, plain),
        # "\s+$" is quadratic over a run of spaces that does not end the body.
        "spaces": (b" " * 400_000 + b"x", plain),
        # Two members, the second with the word the check looks for.
        "members": (gzip.compress(b"a" * (BIG // 2)) + gzip.compress(b"status: ok"), zipped),
        # Megabytes of zeros in a few kilobytes.
        "bomb": (bomb, zipped),
        "json": (json.dumps({"status": "ok", "items": ["a" * 64] * 60_000}).encode(), plain),
        # Four megabytes of a vendor's summary.json, all but a few bytes one component list.
        "summary.json": (
            json.dumps(
                {
                    "status": {"indicator": "none", "description": "ok"},
                    "components": [{"name": f"c{i}", "status": "operational"} for i in range(60_000)],
                }
            ).encode(),
            plain,
        ),
    }


def _dns_answer(query: bytes) -> bytes:
    """A well-formed answer with thousands of A records, too big for a UDP answer without EDNS."""
    end = 12
    while query[end] != 0:
        end += query[end] + 1
    question = query[12 : end + 5]
    header = query[:2] + struct.pack("!HHHHH", 0x8180, 1, DNS_RECORDS, 0, 0)
    record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4)
    records = b"".join(record + struct.pack("!I", 0x0A000000 + i) for i in range(DNS_RECORDS))
    return header + question + records


class _DNSFlood(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(_dns_answer(data), addr)


async def _dns_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            answer = _dns_answer(await reader.readexactly(length))
            writer.write(struct.pack("!H", len(answer)) + answer)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _long_lines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Lines just under the prober's line limit, none matching what it expects."""
    try:
        for _ in range(8):
            writer.write(b"a" * 60_000 + b"b\n")
            await writer.drain()
        await asyncio.sleep(30)
    except (OSError, asyncio.CancelledError):
        pass  # the prober hung up, or the child is shutting down
    finally:
        writer.close()


async def _serve() -> None:
    bodies = _bodies()

    async def body(request: web.Request) -> web.Response:
        data, headers = bodies[request.match_info["name"]]
        return web.Response(body=data, headers=headers)

    app = web.Application()
    app.router.add_get("/{name}", body)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    loop = asyncio.get_running_loop()
    assert site._server is not None
    ports = {"http": site._server.sockets[0].getsockname()[1]}  # type: ignore[union-attr]
    transport, _ = await loop.create_datagram_endpoint(_DNSFlood, local_addr=("127.0.0.1", 0))
    ports["dns_udp"] = transport.get_extra_info("sockname")[1]
    dns_tcp = await asyncio.start_server(_dns_tcp, "127.0.0.1", 0)
    ports["dns_tcp"] = dns_tcp.sockets[0].getsockname()[1]
    lines = await asyncio.start_server(_long_lines, "127.0.0.1", 0)
    ports["lines"] = lines.sockets[0].getsockname()[1]
    print(json.dumps(ports), flush=True)
    stdin_closed = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: stdin_closed.done() or stdin_closed.set_result(None))
    try:
        await asyncio.wait_for(stdin_closed, float(sys.argv[1]) if len(sys.argv) > 1 else 600)
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(_serve())
