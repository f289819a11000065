"""Tests for push heartbeats: tokens, silence, reported failures, and refused pushes."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from exporter.config import parse_config
from exporter.result import FailureReason
from exporter.web import EXPORTER, make_app
from tests.conftest import wait_for
from tests.metrics_util import parse, value

TOKEN = "push-token-7d1f"


@pytest.fixture
async def client(tmp_path: Path, aiohttp_client: AiohttpClient) -> TestClient[web.Request, web.Application]:
    """An exporter with one push service allowed 600 ms of silence, checked every 100 ms."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    config = parse_config(
        f"""
global: {{interval: 100ms, timeout: 50ms}}
services:
  - name: nightly-backup
    group: batch
    prober: push
    push: {{token_file: "{token_file}", max_silence: 600ms}}
  - {{name: web, prober: tcp, target: "127.0.0.1:1"}}
"""
    )
    return await aiohttp_client(make_app(config))


def last(client: TestClient[web.Request, web.Application]) -> object:
    state = client.app[EXPORTER].store.get("nightly-backup")  # type: ignore[index]
    return None if state is None else state.last


async def test_push_keeps_service_up_and_silence_fails_it(
    client: TestClient[web.Request, web.Application],
) -> None:
    """Before max_silence the service is up; a push keeps it up; silence then fails it as timeout."""
    exporter = client.app[EXPORTER]  # type: ignore[index]
    await wait_for(lambda: exporter.store.get("nightly-backup").last is not None, what="first check")
    assert exporter.store.get("nightly-backup").last.success
    response = await client.post(
        "/push/nightly-backup", headers={"Authorization": f"Bearer {TOKEN}"}, json={"duration": 12.5}
    )
    assert response.status == 200
    await wait_for(
        lambda: (
            exporter.store.get("nightly-backup").last.value("probe_push_reported_duration_seconds") == 12.5
        ),
        what="push seen",
    )
    assert exporter.store.get("nightly-backup").last.success
    await wait_for(lambda: not exporter.store.get("nightly-backup").last.success, what="silence noticed")
    result = exporter.store.get("nightly-backup").last
    assert result.reason is FailureReason.TIMEOUT
    assert "more than max_silence 600ms" in result.message
    series = parse(await (await client.get("/metrics")).text())
    assert value(series, "probe_success", service="nightly-backup") == 0
    assert value(series, "probe_push_age_seconds", service="nightly-backup") > 0.6


async def test_push_reporting_down_fails_the_service(
    client: TestClient[web.Request, web.Application],
) -> None:
    """A push that says down fails the service with its message."""
    exporter = client.app[EXPORTER]  # type: ignore[index]
    response = await client.post(
        "/push/nightly-backup", data={"token": TOKEN, "status": "down", "message": "disk full"}
    )
    assert response.status == 200
    await wait_for(
        lambda: (r := exporter.store.get("nightly-backup").last) is not None and not r.success,
        what="down push seen",
    )
    result = exporter.store.get("nightly-backup").last
    assert (result.reason, result.message) == (
        FailureReason.OTHER,
        "the last push reported a failure: disk full",
    )


async def test_refused_pushes_are_counted(client: TestClient[web.Request, web.Application]) -> None:
    """Wrong or missing tokens get 401, unknown or non-push services 404, and each is counted."""
    assert (await client.post("/push/nightly-backup")).status == 401
    wrong = await client.post("/push/nightly-backup", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    assert (await client.post("/push/nightly-backup?token=nope")).status == 401
    assert (await client.post("/push/web", params={"token": TOKEN})).status == 404
    assert (await client.post("/push/missing", params={"token": TOKEN})).status == 404
    bad = await client.post("/push/nightly-backup", params={"token": TOKEN, "status": "maybe"})
    assert bad.status == 400
    bad = await client.post("/push/nightly-backup", params={"token": TOKEN, "duration": "nan"})
    assert bad.status == 400
    bad = await client.post(
        "/push/nightly-backup", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert bad.status == 400
    assert (await client.get("/push/nightly-backup")).status == 405
    series = parse(await (await client.get("/metrics")).text())
    assert value(series, "outage_exporter_push_rejected_total", reason="missing_token") == 1
    assert value(series, "outage_exporter_push_rejected_total", reason="bad_token") == 2
    assert value(series, "outage_exporter_push_rejected_total", reason="unknown_service") == 2
    text = await (await client.get("/metrics")).text()
    assert TOKEN not in text
    assert TOKEN not in await (await client.get("/config")).text()


async def test_probe_endpoint_judges_a_push_service(client: TestClient[web.Request, web.Application]) -> None:
    """/probe?service= on a push service judges its heartbeats now, as the schedule would."""
    response = await client.post(
        "/push/nightly-backup", headers={"Authorization": f"Bearer {TOKEN}"}, json={"duration": 3}
    )
    assert response.status == 200
    reply = await client.get("/probe", params={"service": "nightly-backup"})
    assert reply.status == 200
    series = parse(await reply.text())
    assert value(series, "probe_success") == 1
    assert value(series, "probe_push_reported_duration_seconds") == 3
