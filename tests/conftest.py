"""Shared fixtures: certificates from a throwaway CA and a helper that runs one probe."""

from __future__ import annotations

import asyncio
import datetime
import shutil
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from exporter import runner
from exporter.config import parse_config
from exporter.modules import Module
from exporter.result import ProbeResult
from exporter.web import make_app


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A certificate authority that only the tests trust."""
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    """A valid certificate for localhost and 127.0.0.1, good for a year."""
    return ca.issue_cert("localhost", "127.0.0.1", "::1")


@pytest.fixture(scope="session")
def cert_factory(ca: trustme.CA) -> Callable[..., trustme.LeafCert]:
    """Makes certificates with chosen validity windows (expired, soon-expiring)."""

    def make(not_before: datetime.datetime, not_after: datetime.datetime) -> trustme.LeafCert:
        return ca.issue_cert("localhost", "127.0.0.1", not_before=not_before, not_after=not_after)

    return make


ProbeRunner = Callable[..., Coroutine[Any, Any, ProbeResult]]


@pytest.fixture
def run_probe() -> ProbeRunner:
    """Runs one probe as the scheduler does, through the runner that enforces the timeout."""

    async def run(target: str, module: Module, timeout: float = 5.0, guard: Any = None) -> ProbeResult:
        return await runner.run_probe(target, module, timeout, guard)

    return run


class TargetState:
    """Lets a test switch the local target between healthy and failing."""

    def __init__(self) -> None:
        self.status = 200
        self.hits = 0


@pytest.fixture
async def http_target(aiohttp_server: AiohttpServer) -> tuple[str, TargetState]:
    """A real local HTTP server: /ok, /slow, /status/{code} and /flip (status set by the test)."""
    state = TargetState()

    async def ok(request: web.Request) -> web.Response:
        state.hits += 1
        return web.Response(text="ok")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "0.2")))
        return web.Response(text="slow")

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="status")

    async def flip(request: web.Request) -> web.Response:
        state.hits += 1
        return web.Response(status=state.status, text="flip")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/slow", slow)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/flip", flip)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}", state


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Wait until ``predicate`` holds, checking often; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.01)


@pytest.fixture(scope="session")
def blackbox_binary() -> str:
    """The Debian blackbox_exporter; the comparisons are the point, so its absence is a failure."""
    path = shutil.which("prometheus-blackbox-exporter")
    if path is None:
        pytest.fail(
            "prometheus-blackbox-exporter is not installed: apt-get install prometheus-blackbox-exporter"
        )
    return path


@pytest.fixture
async def ours(our_config: str, aiohttp_server: AiohttpServer) -> str:
    """Our exporter's app, with the module's ``our_config``, on a loopback test server; its base URL."""
    server = await aiohttp_server(make_app(parse_config(our_config), schedule=False))
    return f"http://127.0.0.1:{server.port}"
