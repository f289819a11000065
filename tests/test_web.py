"""Tests for the web app: /metrics from scheduled probes, /probe, reload, /config, health."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from exporter.config import parse_config
from exporter.web import EXPORTER, make_app
from tests.conftest import TargetState, wait_for
from tests.metrics_util import Series, labelsets, parse, value

ClientFactory = Callable[..., Awaitable[TestClient[object, object]]]


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient) -> ClientFactory:
    """Builds the exporter app from config text and returns a client bound to it."""

    async def make(
        text: str, config_file: Path | None = None, **kwargs: object
    ) -> TestClient[object, object]:
        config = parse_config(text, str(config_file) if config_file else None)
        app = make_app(config, config_file=str(config_file) if config_file else None, **kwargs)  # type: ignore[arg-type]
        return await aiohttp_client(app)  # type: ignore[return-value]

    return make


async def scrape(client: TestClient[object, object]) -> Series:
    response = await client.get("/metrics")
    assert response.status == 200
    return parse(await response.text())


def runs(series: Series, service: str) -> float:
    return value(series, "probe_runs_total", service=service)


def service_config(base: str, extra: str = "") -> str:
    return f"""
global: {{interval: 200ms, timeout: 150ms, location: test-loc}}
probe_allowlist: [127.0.0.0/8]
modules:
  http_2xx: {{prober: http, timeout: 1s}}
services:
  - name: ok
    group: g1
    target: {base}/ok
    module: http_2xx
    interval: 300ms
    timeout: 250ms
    labels: {{team: core}}
    objectives: {{availability: 0.99, latency: 300ms}}
{extra}"""


async def test_metrics_report_scheduled_probe_values(
    make_client: ClientFactory, http_target: tuple[str, TargetState]
) -> None:
    """A scheduled service shows up with success, status code, counters and exact labels."""
    base, _ = http_target
    client = await make_client(service_config(base))
    series: Series = {}

    async def probed() -> bool:
        nonlocal series
        series = await scrape(client)
        return any(n == "probe_runs_total" and v >= 2 for (n, _), v in series.items())

    for _ in range(500):
        if await probed():
            break
        await asyncio.sleep(0.02)
    labels = {"service": "ok", "group": "g1", "location": "test-loc"}
    assert value(series, "probe_success", **labels) == 1
    assert value(series, "probe_http_status_code", **labels) == 200
    assert value(series, "probe_failures_total", reason="timeout", **labels) == 0
    assert labelsets(series, "probe_success") == [labels]
    info = labelsets(series, "probe_service_info")[0]
    assert info == {
        **labels,
        "target": f"{base}/ok",
        "prober": "http",
        "module": "http_2xx",
        "team": "core",
    }
    assert value(series, "probe_objective_latency_seconds", **labels) == 0.3
    assert value(series, "probe_objective_availability_ratio", **labels) == 0.99
    bounds = {lb["le"] for lb in labelsets(series, "probe_latency_seconds_bucket")}
    assert "0.3" in bounds and "+Inf" in bounds
    count = value(series, "probe_latency_seconds_count", **labels)
    assert count == value(series, "probe_runs_total", **labels)
    phases = {lb["phase"] for lb in labelsets(series, "probe_http_duration_seconds")}
    assert phases == {"resolve", "connect", "tls", "processing", "transfer"}
    assert value(series, "outage_exporter_config_last_reload_successful") == 1
    assert value(series, "probe_last_run_timestamp_seconds", **labels) >= value(
        series, "probe_last_success_timestamp_seconds", **labels
    )


async def test_slow_handler_shows_in_duration_and_processing_phase(
    make_client: ClientFactory, http_target: tuple[str, TargetState]
) -> None:
    """A 200 ms handler gives a duration and processing phase of at least 0.2 s."""
    base, _ = http_target
    client = await make_client(service_config(base))
    response = await client.get("/probe", params={"target": f"{base}/slow?s=0.2"})
    series = parse(await response.text())
    duration = value(series, "probe_duration_seconds")
    processing = value(series, "probe_http_duration_seconds", phase="processing")
    total = sum(v for (n, _), v in series.items() if n == "probe_http_duration_seconds")
    assert value(series, "probe_success") == 1
    assert processing >= 0.2
    assert duration >= processing
    assert total <= duration


async def test_probe_refuses_targets_outside_allowlist(
    make_client: ClientFactory, http_target: tuple[str, TargetState]
) -> None:
    """/probe answers 403 with a how-to for targets outside probe_allowlist."""
    base, _ = http_target
    # The allowlist covers a documentation network only, so nothing here is ever probed.
    client = await make_client(service_config(base).replace("[127.0.0.0/8]", "[192.0.2.0/24]"))
    response = await client.get("/probe", params={"target": f"{base}/ok"})
    assert response.status == 403
    text = await response.text()
    assert "not covered by probe_allowlist (192.0.2.0/24)" in text
    assert "add a matching CIDR or host glob" in text
    for trick in (
        "http://2130706433:1/",
        "http://[::ffff:127.0.0.1]/",
        "http://0x7f.1/",
        "localhost:1",
    ):
        response = await client.get("/probe", params={"target": trick, "module": "http_2xx"})
        assert response.status == 403, trick


async def test_probe_blackbox_output_has_no_service_labels(
    make_client: ClientFactory, http_target: tuple[str, TargetState]
) -> None:
    """An allowed /probe returns blackbox's metrics, unlabelled, with the module's settings."""
    base, _ = http_target
    client = await make_client(service_config(base))
    response = await client.get("/probe", params={"target": f"{base}/status/503", "module": "http_2xx"})
    assert response.status == 200
    series = parse(await response.text())
    assert value(series, "probe_success") == 0
    assert value(series, "probe_http_status_code") == 503
    assert labelsets(series, "probe_success") == [{}]


async def test_probe_configured_service_by_name(
    make_client: ClientFactory, http_target: tuple[str, TargetState]
) -> None:
    """/probe?service=NAME probes that service now; an unknown name is a 404."""
    base, state = http_target
    client = await make_client(service_config(base).replace("[127.0.0.0/8]", "[]"))
    before = state.hits
    response = await client.get("/probe", params={"service": "ok"})
    series = parse(await response.text())
    assert value(series, "probe_success") == 1
    assert state.hits > before
    response = await client.get("/probe", params={"service": "nope"})
    assert response.status == 404


async def test_probe_honours_scrape_timeout_header(
    make_client: ClientFactory, http_target: tuple[str, TargetState]
) -> None:
    """X-Prometheus-Scrape-Timeout-Seconds caps the probe, less blackbox's 0.5 s offset."""
    base, _ = http_target
    client = await make_client(service_config(base))
    response = await client.get(
        "/probe",
        params={"target": f"{base}/slow?s=3", "debug": "true"},
        headers={"X-Prometheus-Scrape-Timeout-Seconds": "0.8"},
    )
    text = await response.text()
    assert "success: no" in text
    assert "reason: timeout" in text
    assert "no answer within 300ms" in text
    response = await client.get(
        "/probe",
        params={"target": f"{base}/ok"},
        headers={"X-Prometheus-Scrape-Timeout-Seconds": "x"},
    )
    assert response.status == 400


async def test_probe_rejects_bad_requests(
    make_client: ClientFactory, http_target: tuple[str, TargetState]
) -> None:
    """Missing target, unknown module, huge query and wrong method are 4xx, never 500."""
    base, _ = http_target
    client = await make_client(service_config(base))
    assert (await client.get("/probe")).status == 400
    assert (await client.get("/probe", params={"target": f"{base}/ok", "module": "nope"})).status == 400
    assert (await client.get("/probe", params={"target": "x" * 5000})).status == 414
    assert (await client.post("/probe")).status == 405
    assert (await client.get("/-/reload")).status == 405


async def test_reload_swaps_services_and_keeps_unchanged_ones(
    make_client: ClientFactory, http_target: tuple[str, TargetState], tmp_path: Path
) -> None:
    """A reload adds and removes services; an unchanged service keeps its task and counters."""
    base, _ = http_target
    path = tmp_path / "config.yml"
    path.write_text(service_config(base))
    client = await make_client(path.read_text(), config_file=path)
    exporter = client.app[EXPORTER]  # type: ignore[index]
    await wait_for(lambda: (s := exporter.store.get("ok")) is not None and s.runs >= 2, what="two runs")
    task_before = exporter.scheduler._tasks["ok"][1]
    extra = f"""  - name: added
    target: {base}/ok
    prober: http
    interval: 300ms
    timeout: 250ms
"""
    path.write_text(service_config(base, extra))
    response = await client.post("/-/reload")
    assert response.status == 200, await response.text()
    assert exporter.scheduler._tasks["ok"][1] is task_before
    await wait_for(lambda: (s := exporter.store.get("added")) is not None and s.runs >= 1, what="added runs")
    series = await scrape(client)
    assert runs(series, "ok") >= 2
    path.write_text(service_config(base).replace("name: ok", "name: renamed"))
    assert (await client.post("/-/reload")).status == 200
    series = await scrape(client)
    assert labelsets(series, "probe_runs_total") == [
        {"service": "renamed", "group": "g1", "location": "test-loc"}
    ]


async def test_bad_reload_keeps_running_config(
    make_client: ClientFactory, http_target: tuple[str, TargetState], tmp_path: Path
) -> None:
    """An invalid file on reload is refused with its errors; the old services keep running."""
    base, _ = http_target
    path = tmp_path / "config.yml"
    path.write_text(service_config(base))
    client = await make_client(path.read_text(), config_file=path)
    exporter = client.app[EXPORTER]  # type: ignore[index]
    path.write_text("services:\n  - name: broken\n    prober: http\n")
    response = await client.post("/-/reload")
    assert response.status == 500
    assert "services[0].target (line 2): is required" in await response.text()
    series = await scrape(client)
    assert value(series, "outage_exporter_config_last_reload_successful") == 0
    assert [lb["service"] for lb in labelsets(series, "probe_service_info")] == ["ok"]
    runs_then = exporter.store.get("ok").runs
    await wait_for(lambda: exporter.store.get("ok").runs > runs_then, what="probing continues")


async def test_config_endpoint_redacts_secrets(
    make_client: ClientFactory,
    http_target: tuple[str, TargetState],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """/config shows the running config with secrets replaced."""
    base, _ = http_target
    monkeypatch.setenv("OE_TEST_TOKEN", "tok-very-secret")
    extra = f"""  - name: auth
    target: {base}/ok
    prober: http
    interval: 300ms
    timeout: 250ms
    http: {{bearer_token: "${{OE_TEST_TOKEN}}", headers: {{X-Api-Key: plain-secret-header}}}}
"""
    client = await make_client(service_config(base, extra))
    text = await (await client.get("/config")).text()
    assert "tok-very-secret" not in text and "plain-secret-header" not in text
    assert "bearer_token: <secret>" in text
    metrics_text = await (await client.get("/metrics")).text()
    assert "tok-very-secret" not in metrics_text and "plain-secret-header" not in metrics_text


async def test_health_and_ready(make_client: ClientFactory, http_target: tuple[str, TargetState]) -> None:
    """/-/healthy and /-/ready answer 200 while running."""
    base, _ = http_target
    client = await make_client(service_config(base))
    assert (await client.get("/-/healthy")).status == 200
    assert (await client.get("/-/ready")).status == 200
    page = await (await client.get("/")).text()
    assert 'data-service="ok"' in page  # the status page lists the service (tests/test_page.py has more)


async def test_hanging_target_does_not_delay_other_services(
    make_client: ClientFactory, http_target: tuple[str, TargetState]
) -> None:
    """A target that accepts and never answers times out while other services keep their schedule."""
    base, _ = http_target
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    extra = f"""  - name: hang
    target: http://127.0.0.1:{port}/
    prober: http
    interval: 300ms
    timeout: 200ms
"""
    try:
        client = await make_client(service_config(base, extra))
        exporter = client.app[EXPORTER]  # type: ignore[index]
        await wait_for(
            lambda: exporter.store.get("hang").runs >= 3 and exporter.store.get("ok").runs >= 3,
            what="both services probed three times",
        )
        series = await scrape(client)
        assert value(series, "probe_failures_total", service="hang", reason="timeout") >= 3
        assert value(series, "probe_success", service="ok") == 1
        assert value(series, "probe_failures_total", service="ok", reason="timeout") == 0
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
