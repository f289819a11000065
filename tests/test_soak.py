"""A short soak: 300 services, reloads that add and remove some, a scrape after each; nothing lost or leaked.

benchmarks/soak.py is the long version (10,000 services for 30 minutes); this one checks the same
properties by counts, not time.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient, AiohttpServer

from exporter.config import load_config
from exporter.configload import ISOLATE_ABOVE_BYTES
from exporter.web import EXPORTER, make_app
from tests.conftest import wait_for

SERVICES = 300
ROUNDS = 8
CHURN = 10
INFO_RE = re.compile(r'^probe_service_info\{[^}]*?\bservice="([^"]*)"', re.MULTILINE)
# Each request on its own connection, as Prometheus' scrapes of a busy exporter often are.
CLOSE = {"Connection": "close"}
RUNS_RE = re.compile(r'^probe_runs_total\{service="([^"]*)"[^}]*\} (\S+)$', re.MULTILINE)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port bound but not listening: connections to it are refused."""
    with socket.socket() as refused:
        refused.bind(("127.0.0.1", 0))
        yield refused.getsockname()[1]


@pytest.fixture
async def targets(aiohttp_server: AiohttpServer, refused_port: int) -> tuple[int, int]:
    """An HTTP server (/ok, /error) and a port that refuses connections."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def error(request: web.Request) -> web.Response:
        return web.Response(status=500, text="error")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/error", error)
    server = await aiohttp_server(app, access_log=None)
    return server.port, refused_port


def service_line(name: str, http_port: int, refused_port: int) -> str:
    """A quarter each: TCP connect, HTTP 500, a refused port, HTTP 200."""
    kind = sum(name.encode()) % 4
    if kind == 0:
        settings = "tcp: {preferred_ip_protocol: ip4}"
        return f'  - {{name: {name}, prober: tcp, target: "127.0.0.1:{http_port}", {settings}}}'
    url = (
        f"http://127.0.0.1:{http_port}/error",
        f"http://127.0.0.1:{refused_port}/",
        f"http://127.0.0.1:{http_port}/ok",
    )[kind - 1]
    return f'  - {{name: {name}, prober: http, target: "{url}", http: {{preferred_ip_protocol: ip4}}}}'


def write_config(path: Path, names: list[str], ports: tuple[int, int]) -> None:
    lines = [service_line(name, *ports) for name in names]
    path.write_text("global: {interval: 1s, timeout: 500ms}\nservices:\n" + "\n".join(lines) + "\n")


async def test_reloads_under_load_lose_no_series_and_leak_no_tasks(
    targets: tuple[int, int], tmp_path: Path, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    """Eight reloads of 300 services: every scrape has exactly the configured services, counters of
    unchanged services never go back, the scheduler runs one task per service, none is left after stop."""
    rng = random.Random(3)
    names = [f"svc-{i}" for i in range(SERVICES)]
    path = tmp_path / "config.yml"
    write_config(path, names, targets)
    app = make_app(load_config(path), config_file=str(path))
    # A short shutdown timeout bounds the close: aiohttp waits up to a minute for open
    # connections by default, which a loaded machine can turn into a test timeout.
    client = await aiohttp_client(await aiohttp_server(app, shutdown_timeout=5.0))
    exporter = app[EXPORTER]
    scheduler = exporter.scheduler
    last_runs: dict[str, float] = {}
    try:
        await wait_for(
            lambda: all((s := exporter.store.get(n)) is not None and s.runs >= 1 for n in names),
            timeout=60,
            what="a first run of every service",
        )
        for round_number in range(1, ROUNDS + 1):
            removed = set(rng.sample(names, CHURN))
            added = [f"svc-r{round_number}-{i}" for i in range(CHURN)]
            names = [n for n in names if n not in removed] + added
            write_config(path, names, targets)
            # Odd rounds parse the file in a child process, as a big config would be.
            exporter.isolate_above = 0 if round_number % 2 else ISOLATE_ABOVE_BYTES
            response = await client.post("/-/reload", headers=CLOSE)
            assert response.status == 200, await response.text()
            # One task per configured service, none for removed ones.
            assert set(scheduler._tasks) == set(names)
            assert sum(not task.done() for _, task in scheduler._tasks.values()) == len(names)
            await wait_for(
                lambda added=added: all(exporter.store.get(n).runs >= 1 for n in added),  # type: ignore[union-attr]
                timeout=60,
                what=f"a first run of the services added in round {round_number}",
            )
            text = await (await client.get("/metrics", headers=CLOSE)).text()
            assert set(INFO_RE.findall(text)) == set(names)
            runs = {name: float(value) for name, value in RUNS_RE.findall(text)}
            assert set(runs) == set(names)
            for name, before in last_runs.items():
                if name in runs:
                    assert runs[name] >= before, f"{name}'s counter went back after a reload"
            last_runs = runs
    finally:
        await client.close()
    assert not scheduler._tasks
    # No task of the exporter's is left: its scheduler, watcher and probes are all gone.
    ours = [t for t in asyncio.all_tasks() if "/exporter/" in t.get_coro().cr_code.co_filename]  # type: ignore[union-attr]
    assert ours == []
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("probe ")]
