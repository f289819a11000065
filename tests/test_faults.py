"""Faults around the exporter: targets, DNS and Prometheus come and go; SIGTERM lands mid-probe."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import dns.message
import dns.rrset
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from exporter.config import parse_config
from exporter.runtime import Exporter
from exporter.web import EXPORTER, make_app
from tests.conftest import wait_for
from tests.metrics_util import parse, value


class Target:
    """An HTTP server on a fixed port that can be stopped and started again."""

    def __init__(self, serve: AiohttpServer, port: int) -> None:
        self.serve = serve
        self.port = port
        self.server: TestServer | None = None

    async def start(self) -> None:
        async def ok(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/ok", ok)
        self.server = await self.serve(app, port=self.port)

    async def stop(self) -> None:
        assert self.server is not None
        await self.server.close()
        self.server = None


class DNSAnswers(asyncio.DatagramProtocol):
    """A UDP DNS server that answers every A query with 192.0.2.1."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        reply = dns.message.make_response(query)
        name = query.question[0].name
        reply.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.1"))
        self.transport.sendto(reply.to_wire(), addr)


class DNSServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.transport: asyncio.BaseTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            DNSAnswers, local_addr=("127.0.0.1", self.port)
        )

    async def stop(self) -> None:
        assert self.transport is not None
        self.transport.close()
        self.transport = None


@pytest.fixture
def exporter_client(aiohttp_client: AiohttpClient) -> Any:
    async def make(text: str) -> TestClient[Any, Any]:
        return await aiohttp_client(make_app(parse_config(text)))

    return make


def last_ok(exporter: Exporter, name: str) -> bool | None:
    state = exporter.store.get(name)
    return None if state is None or state.last is None else state.last.success


def runs(exporter: Exporter, name: str) -> int:
    state = exporter.store.get(name)
    return 0 if state is None else state.runs


async def scrape(client: TestClient[Any, Any]) -> dict[Any, float]:
    response = await client.get("/metrics")
    assert response.status == 200
    return parse(await response.text())


async def test_metrics_served_while_targets_and_dns_come_and_go(
    exporter_client: Any, aiohttp_server: AiohttpServer, unused_tcp_port: int, unused_udp_port: int
) -> None:
    """An HTTP target and a DNS server stop and start twice; /metrics answers at every step."""
    target = Target(aiohttp_server, unused_tcp_port)
    dns_server = DNSServer(unused_udp_port)
    await target.start()
    await dns_server.start()
    client = await exporter_client(
        f"""
global: {{interval: 150ms, timeout: 100ms}}
services:
  - name: web
    prober: http
    target: "http://127.0.0.1:{target.port}/ok"
    http: {{preferred_ip_protocol: ip4}}
  - name: resolver
    prober: dns
    target: "127.0.0.1:{dns_server.port}"
    dns: {{query_name: www.example.org, query_type: A, preferred_ip_protocol: ip4}}
"""
    )
    exporter = client.app[EXPORTER]
    try:
        for _ in range(2):
            await wait_for(lambda: last_ok(exporter, "web") and last_ok(exporter, "resolver"), what="both up")
            series = await scrape(client)
            assert value(series, "probe_success", service="web") == 1
            assert value(series, "probe_success", service="resolver") == 1
            await target.stop()
            await dns_server.stop()
            await wait_for(
                lambda: last_ok(exporter, "web") is False and last_ok(exporter, "resolver") is False,
                what="both down",
            )
            series = await scrape(client)
            assert value(series, "probe_success", service="web") == 0
            assert value(series, "probe_failures_total", service="web", reason="connect") >= 1
            assert value(series, "probe_success", service="resolver") == 0
            await target.start()
            await dns_server.start()
        await wait_for(lambda: last_ok(exporter, "web") and last_ok(exporter, "resolver"), what="both back")
        assert value(await scrape(client), "probe_success", service="web") == 1
    finally:
        if target.server is not None:
            await target.stop()
        if dns_server.transport is not None:
            await dns_server.stop()


async def test_scrapes_may_stop_and_resume(exporter_client: Any, http_target: tuple[str, Any]) -> None:
    """Prometheus going away and coming back finds counters that kept counting."""
    base, _ = http_target
    client = await exporter_client(
        f"""
global: {{interval: 100ms, timeout: 80ms}}
services:
  - {{name: web, prober: http, target: "{base}/ok", http: {{preferred_ip_protocol: ip4}}}}
"""
    )
    exporter = client.app[EXPORTER]
    await wait_for(lambda: runs(exporter, "web") >= 1, what="a first run")
    before = value(await scrape(client), "probe_runs_total", service="web")
    # No scrape while the service runs on: nothing waits for Prometheus.
    await wait_for(lambda: runs(exporter, "web") >= before + 5, what="five more runs unscraped")
    after = value(await scrape(client), "probe_runs_total", service="web")
    assert after >= before + 5


async def test_sigterm_with_probes_in_flight_exits_cleanly(tmp_path: Path, unused_tcp_port: int) -> None:
    """SIGTERM while 200 probes hang on a silent target: exit code 0 and "stopped" in the log."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    silent = await asyncio.start_server(hold, "127.0.0.1", 0, backlog=1024)
    silent_port = silent.sockets[0].getsockname()[1]
    # A quarter speak TLS, so handshakes are in flight too when the signal comes.
    services = "\n".join(
        f'  - {{name: hang-{i}, prober: http, target: "{"https" if i % 4 == 0 else "http"}://127.0.0.1:{silent_port}/",'
        " http: {preferred_ip_protocol: ip4}}"
        for i in range(200)
    )
    config = tmp_path / "config.yml"
    config.write_text(f"global: {{interval: 2s, timeout: 1900ms}}\nservices:\n{services}\n")
    port = unused_tcp_port
    listen = f"127.0.0.1:{port}"
    log = tmp_path / "exporter.log"
    with log.open("w") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "exporter", "--config.file", str(config), "--web.listen-address", listen],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    in_flight = 0.0
    try:
        async with aiohttp.ClientSession() as session:

            async def probes_in_flight() -> float:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                        text = await response.text()
                except aiohttp.ClientError:
                    return 0.0
                return value(parse(text), "outage_exporter_probes_in_flight")

            for _ in range(600):
                in_flight = await probes_in_flight()
                if in_flight >= 100 or proc.returncode is not None:
                    break
                await asyncio.sleep(0.05)
        assert in_flight >= 100, log.read_text()
        proc.send_signal(signal.SIGTERM)
        # The bound on a clean exit; a hang would fail here rather than block the suite.
        returncode = await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()
    text = log.read_text()
    assert returncode == 0, text
    assert "outage-exporter stopped" in text
    assert "Traceback" not in text
