"""Tests for the runner: timeouts, unknown probers, and retries that do not hide failures."""

from __future__ import annotations

import asyncio
import errno
import logging

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient, AiohttpServer

from exporter import runner
from exporter.config import parse_config
from exporter.modules import Module
from exporter.probes.base import ProbeRequest
from exporter.probes.net import ProbeFailure, map_exceptions, why
from exporter.result import FailureReason, ProbeResult, Trace
from exporter.runner import run_probe
from exporter.web import EXPORTER, make_app
from tests.conftest import wait_for
from tests.metrics_util import labelsets, parse, value


@pytest.fixture
async def flaky(aiohttp_server: AiohttpServer) -> tuple[str, list[int]]:
    """A server that fails with 503 while its queue of statuses lasts, then answers 200."""
    queue: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=queue.pop(0) if queue else 200)

    app = web.Application()
    app.router.add_get("/", handler)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}/", queue


async def test_retry_succeeds_and_keeps_the_failed_attempt(flaky: tuple[str, list[int]]) -> None:
    """A retry that succeeds makes the probe succeed, and the failed attempt's reason is kept."""
    url, queue = flaky
    queue.extend([503])
    result = await run_probe(url, Module(prober="http", retries=2), 5.0)
    assert result.success
    assert result.attempts == 2
    assert result.failed_attempts == (FailureReason.HTTP_STATUS,)
    assert result.value("probe_http_status_code") == 200


async def test_retries_run_out(flaky: tuple[str, list[int]]) -> None:
    """When every attempt fails, the probe fails with the last reason after 1 + retries attempts."""
    url, queue = flaky
    queue.extend([503, 500, 502, 200])
    result = await run_probe(url, Module(prober="http", retries=2), 5.0)
    assert not result.success
    assert result.reason is FailureReason.HTTP_STATUS
    assert result.attempts == 3
    assert result.value("probe_http_status_code") == 502
    assert queue == [200]


async def test_timeout_is_not_retried() -> None:
    """An attempt that used up the timeout ends the probe: there is no time left to retry."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await run_probe(f"http://127.0.0.1:{port}/", Module(prober="http", retries=3), 0.3)
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert result.reason is FailureReason.TIMEOUT
    assert result.attempts == 1


async def test_unknown_prober_fails_cleanly() -> None:
    """A prober with no implementation is a failed result, not an exception."""
    result = await run_probe("127.0.0.1:1", Module(prober="ftp"), 1.0)
    assert (result.success, result.reason) == (False, FailureReason.OTHER)
    assert result.message == "prober 'ftp' is not available"


async def test_probe_failure_becomes_the_result() -> None:
    """A probe raises ProbeFailure for what it expected; the runner alone makes the result of it."""

    async def probe(request: ProbeRequest) -> ProbeResult:
        request.trace.set("probe_http_status_code", 503)
        raise ProbeFailure(FailureReason.HTTP_STATUS, "status code 503 is not 2xx")

    request = ProbeRequest("http://127.0.0.1:1/", Module(prober="http"), Trace(), timeout=1.0)
    result = await runner.attempt(probe, request)
    assert (result.success, result.reason) == (False, FailureReason.HTTP_STATUS)
    assert result.message == "status code 503 is not 2xx"
    assert result.value("probe_http_status_code") == 503


@pytest.mark.parametrize("prober", ["http", "tcp", "dns", "grpc", "icmp"])
async def test_unexpected_error_is_an_internal_error_logged_redacted(
    prober: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A probe bug is an internal error, and its log line hides the target's secrets, any kind."""

    async def probe(request: ProbeRequest) -> ProbeResult:
        raise KeyError("oops")

    target = "https://probe:hunter2@127.0.0.1:1/health?token=sekrit#frag"
    request = ProbeRequest(target, Module(prober=prober), Trace(), timeout=1.0)
    with caplog.at_level(logging.ERROR, logger="exporter.runner"):
        result = await runner.attempt(probe, request)
    assert (result.reason, result.message) == (FailureReason.OTHER, "internal error: KeyError")
    assert f"{prober} probe of https://probe:xxxxx@127.0.0.1:1/health raised" in caplog.text
    assert "hunter2" not in caplog.text
    assert "sekrit" not in caplog.text


def test_map_exceptions_takes_the_closest_type_whatever_the_order() -> None:
    """As httpx's helper: the entry nearest the error's class wins, not the first listed."""
    mapping = {
        OSError: (FailureReason.CONNECT, "some OS error"),
        ConnectionError: (FailureReason.PROTOCOL, lambda err: f"connection lost: {why(err)}"),
    }
    with pytest.raises(ProbeFailure) as lost, map_exceptions(mapping):
        raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    assert (lost.value.reason, lost.value.message) == (
        FailureReason.PROTOCOL,
        "connection lost: Connection reset by peer",
    )
    assert lost.value.__suppress_context__
    with pytest.raises(ProbeFailure) as other, map_exceptions(mapping):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")
    assert (other.value.reason, other.value.message) == (FailureReason.CONNECT, "some OS error")


def test_map_exceptions_lets_failures_and_unmapped_errors_through() -> None:
    """A ProbeFailure stays as it was raised; an unmapped error reaches the runner as it is."""
    mapping = {Exception: (FailureReason.OTHER, "mapped")}
    original = ProbeFailure(FailureReason.BODY, "body did not match")
    with pytest.raises(ProbeFailure) as kept, map_exceptions(mapping):
        raise original
    assert kept.value is original
    with pytest.raises(KeyError), map_exceptions({OSError: (FailureReason.CONNECT, "mapped")}):
        raise KeyError("bug")
    with map_exceptions(mapping):
        pass  # nothing raised: nothing mapped


async def test_attempt_metrics_show_flakiness(
    flaky: tuple[str, list[int]], aiohttp_client: AiohttpClient
) -> None:
    """Services with retries export attempts and failed attempts; others do not."""
    url, queue = flaky
    queue.extend([503, 503])
    config = parse_config(
        f"""
global: {{interval: 300ms, timeout: 250ms}}
modules: {{retrying: {{prober: http, retries: 2}}}}
services:
  - {{name: flaky, target: "{url}", module: retrying}}
  - {{name: plain, target: "{url}", prober: http}}
"""
    )
    app = make_app(config)
    client = await aiohttp_client(app)
    exporter = app[EXPORTER]
    await wait_for(lambda: not queue and exporter.store.get("flaky").runs >= 1, what="retries used")  # type: ignore[union-attr]
    series = parse(await (await client.get("/metrics")).text())
    attempts = value(series, "probe_attempts_total", service="flaky")
    failed = value(series, "probe_attempt_failures_total", service="flaky", reason="http_status")
    runs = value(series, "probe_runs_total", service="flaky")
    served_by_plain = value(series, "probe_failures_total", service="plain", reason="http_status")
    # The two 503s went to the flaky service's attempts or to the plain service's probes.
    assert failed + served_by_plain == 2
    assert attempts == runs + failed
    assert value(series, "probe_failures_total", service="flaky", reason="http_status") == 0
    assert [lb["service"] for lb in labelsets(series, "probe_attempts_total")] == ["flaky"]
