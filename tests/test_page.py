"""The status page through its HTTP API: JSON, badges, maintenance, the public view and what it hides."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import bcrypt
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient

from exporter.config import parse_config
from exporter.page.routes import access_middleware
from exporter.result import FailureReason, ProbeResult, Sample
from exporter.types import Secret
from exporter.web import EXPORTER, make_app
from exporter.webconfig import WebConfig

NOW = time.time()
TARGET_SECRET = "tgt-pw-4Rz9"
MESSAGE_SECRET = "10.9.8.7"
CONFIG = f"""
global: {{location: eu-west}}
services:
  - {{name: api, group: shop, prober: http, target: "https://probe:{TARGET_SECRET}@api.internal.example/health",
      objectives: {{latency: 100ms}}, labels: {{team: identity, cost_centre: cc-991}}}}
  - {{name: db, group: shop, prober: tcp, target: "db.internal.example:5432"}}
  - {{name: cloud, group: vendors, prober: statuspage, target: "https://status.vendor.example"}}
  - {{name: batch, group: back-office, prober: tcp, target: "batch.internal.example:9000"}}
maintenance:
  - {{services: [batch], start: "2020-01-01T00:00:00Z", end: "2099-01-01T00:00:00Z",
      reason: "Rebuilding the batch hosts"}}
status_page:
  slot: 1m
  public: {{enabled: true, labels: [team]}}
"""
USERS = {"admin": "web-pw-8Ux1"}


def vendor(indicator: str) -> ProbeResult:
    samples = tuple(
        Sample("probe_statuspage_indicator", 1.0 if state == indicator else 0.0, (("state", state),))
        for state in ("none", "minor", "major", "critical")
    )
    return ProbeResult(True, 0.02, NOW - 1, samples=samples)


def fill(app: Any) -> None:
    """Fifty minutes of probes: api slow at the end, db failing every fifth probe."""
    store = app[EXPORTER].store
    for i in range(50):
        at = NOW - 3000 + i * 60
        store.record("api", ProbeResult(True, 0.05 if i < 49 else 0.3, at))
        failing = i % 5 == 3
        reason = FailureReason.CONNECT if failing else None
        message = f"connect to {MESSAGE_SECRET}:5432 refused" if failing else ""
        store.record("db", ProbeResult(not failing, 0.01, at, reason, message))
        store.record("batch", ProbeResult(False, 0.01, at, FailureReason.TIMEOUT, "no answer"))
    store.record("cloud", vendor("major"))


Client = Callable[..., Coroutine[Any, Any, TestClient[Any, Any]]]


@pytest.fixture
def client(aiohttp_client: AiohttpClient) -> Client:
    async def make(text: str = CONFIG, users: dict[str, str] | None = None) -> TestClient[Any, Any]:
        hashed = {
            u: Secret(bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode()) for u, p in (users or {}).items()
        }
        web_config = WebConfig(basic_auth_users=hashed)
        app = make_app(parse_config(text), schedule=False, middlewares=(access_middleware(web_config),))
        fill(app)
        return await aiohttp_client(app)

    return make


def auth(user: str = "admin") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()}


async def test_status_api_gives_state_history_and_uptime(client: Client) -> None:
    """/api/v1/status lists groups with verdicts and every service with state, history and uptime."""
    c = await client()
    status = await (await c.get("/api/v1/status")).json()
    services = {s["name"]: s for s in status["services"]}
    assert {n: s["state"] for n, s in services.items()} == {
        "api": "degraded",
        "db": "up",
        "cloud": "down",
        "batch": "maintenance",
    }
    assert services["api"]["note"] == "took 300ms, over its 100ms objective"
    assert services["cloud"]["vendor"] == {"indicator": "major", "words": "Major outage"}
    assert services["batch"]["maintenance"]["reason"] == "Rebuilding the batch hosts"
    slots = services["db"]["history"]["slots"]
    assert len(slots) == 90 and services["db"]["history"]["slot_seconds"] == 60
    assert sum(s["runs"] for s in slots if s) == 50
    assert sum(s["failed"] for s in slots if s) == 10
    # Ninety one-minute slots speak for an hour at most, and fifty minutes are not one yet.
    assert services["db"]["uptime"] == {"1h": None}
    assert services["db"]["uptime_since_start"] == 0.8
    groups = {g["name"]: (g["verdict"], g["services"]) for g in status["groups"]}
    assert groups == {
        "back-office": ("maintenance", ["batch"]),
        "shop": ("degraded", ["api", "db"]),
        "vendors": ("major", ["cloud"]),
    }
    assert status["state"] == "major" and status["prometheus"] is None
    assert any("status_page.prometheus_url" in n for n in status["notices"])


async def test_service_api_lists_recent_failures(client: Client) -> None:
    """/api/v1/services/{name} adds recent probes and failures with their messages."""
    c = await client()
    db = await (await c.get("/api/v1/services/db")).json()
    assert len(db["recent"]) == 50
    assert len(db["failures"]) == 10
    assert db["failures"][0]["reason"] == "connect"
    assert db["failures"][0]["message"] == f"connect to {MESSAGE_SECRET}:5432 refused"
    missing = await c.get("/api/v1/services/nope")
    assert missing.status == 404 and (await missing.json())["error"] == "no service named 'nope'"


async def test_badges_and_shields_endpoint(client: Client) -> None:
    """Badges are SVG with the state in words; the shields.io endpoint JSON says the same."""
    c = await client()
    svg = await c.get("/badge/db/status.svg")
    assert svg.content_type == "image/svg+xml"
    text = await svg.text()
    assert text.startswith("<svg") and 'aria-label="db: operational"' in text
    assert 'aria-label="cloud: down"' in await (await c.get("/badge/cloud/status.svg")).text()
    assert await (await c.get("/badge/db/status.json")).json() == {
        "schemaVersion": 1,
        "label": "db",
        "message": "operational",
        "color": "brightgreen",
    }
    uptime = await (await c.get("/badge/db/uptime.json")).json()
    assert (uptime["label"], uptime["message"]) == ("db uptime since start", "80.00%")
    latency = await (await c.get("/badge/api/latency.json?label=API")).json()
    assert (latency["label"], latency["message"], latency["color"]) == ("API latency", "300 ms", "orange")
    assert (await c.get("/badge/nope/status.svg")).status == 404
    assert (await c.get("/badge/db/colour.svg")).status == 404


async def test_degraded_and_maintenance_metrics(client: Client) -> None:
    """probe_degraded and probe_maintenance are exported for every service with the right values."""
    c = await client()
    text = await (await c.get("/metrics", headers=auth())).text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    degraded = {s.labels["service"]: s.value for s in families["probe_degraded"].samples}
    maintenance = {s.labels["service"]: s.value for s in families["probe_maintenance"].samples}
    assert degraded == {"api": 1.0, "db": 0.0, "cloud": 1.0, "batch": 0.0}
    assert maintenance == {"api": 0.0, "db": 0.0, "cloud": 0.0, "batch": 1.0}
    assert {tuple(sorted(s.labels)) for s in families["probe_maintenance"].samples} == {
        ("group", "location", "service")
    }


SECRETS = (TARGET_SECRET, MESSAGE_SECRET, "internal.example", "cc-991", "cost_centre", USERS["admin"])


async def test_public_view_hides_targets_errors_and_unlisted_labels(client: Client) -> None:
    """Without credentials the page, service pages and badges answer, redacted; the rest asks for auth."""
    c = await client(users=USERS)
    served = []
    paths = ["/", "/favicon.ico", "/assets/style.css", "/assets/favicon.svg"]
    for name in ("api", "db", "cloud", "batch"):
        paths += [f"/services/{name}", f"/badge/{name}/status.svg", f"/badge/{name}/uptime.svg"]
        paths += [f"/badge/{name}/latency.svg", f"/badge/{name}/status.json"]
    for path in paths:
        response = await c.get(path)
        assert response.status == 200, path
        served.append(await response.read())
    everything = b"\n".join(served).decode()
    leaked = [secret for secret in SECRETS if secret in everything]
    assert not leaked, f"the public view shows {leaked}"
    # Listed labels and the words of each state do show.
    page = served[0].decode()
    assert "team=identity" in page
    for words in ("Degraded", "Down", "Maintenance", "Operational", "Sign in for the full view"):
        assert words in page
    for path in (
        "/metrics",
        "/config",
        "/api/v1/status",
        "/api/v1/services/db",
        "/probe?service=db",
        "/login",
    ):
        assert (await c.get(path)).status == 401, path
    wrong = {"Authorization": "Basic " + base64.b64encode(b"admin:nope").decode()}
    assert (await c.get("/", headers=wrong)).status == 401


async def test_signed_in_view_is_the_full_one(client: Client) -> None:
    """With credentials the same page shows targets (redacted of passwords), errors and all labels."""
    c = await client(users=USERS)
    page = await (await c.get("/", headers=auth())).text()
    assert "api.internal.example" in page and "cost_centre=cc-991" in page
    assert TARGET_SECRET not in page
    detail = await (await c.get("/services/db", headers=auth())).text()
    assert MESSAGE_SECRET in detail
    login = await c.get("/login", headers=auth(), allow_redirects=False)
    assert login.status == 303 and login.headers["Location"] == "/"


async def test_public_view_off_keeps_everything_behind_auth(client: Client) -> None:
    """With status_page.public off, the page and badges need credentials like everything else."""
    c = await client(CONFIG.replace("enabled: true", "enabled: false"), users=USERS)
    for path in ("/", "/services/db", "/badge/db/status.svg", "/assets/style.css"):
        assert (await c.get(path)).status == 401, path
    assert (await c.get("/", headers=auth())).status == 200


async def test_history_survives_a_reload_and_drops_removed_services(client: Client) -> None:
    """History is kept per service in the store: a reload keeps it, a removed service loses it."""
    c = await client()
    exporter = c.server.app[EXPORTER]
    before = exporter.store.get("db").history
    renamed = CONFIG.replace("name: batch,", "name: batch2,").replace("[batch]", "[batch2]")
    exporter.apply(parse_config(renamed))
    assert exporter.store.get("db").history is before
    assert exporter.store.get("batch") is None
    status = await (await c.get("/api/v1/status")).json()
    assert "batch2" in {s["name"] for s in status["services"]}
    assert json.dumps(status)
