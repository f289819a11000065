"""Tests of the statuspage probe against a real local server with Statuspage-format documents."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from exporter.collector import render_result
from exporter.config import parse_config
from exporter.modules import Module, StatuspageProbe
from exporter.probes import PROBERS, statuspage
from exporter.result import FailureReason, ProbeResult
from tests.conftest import ProbeRunner
from tests.metrics_util import labelsets, parse, value

UPDATED = "2026-11-25T18:40:12.345Z"

# Shaped like a real Statuspage summary.json: grouped components with a name used twice,
# incidents open and resolved, maintenances in progress and scheduled.
SUMMARY: dict[str, Any] = {
    "page": {
        "id": "kctbh9vrtdwd",
        "name": "Example",
        "url": "https://status.example.com",
        "updated_at": UPDATED,
    },
    "status": {"indicator": "major", "description": "Partial System Outage"},
    "components": [
        {"id": "c1", "name": "Git Operations", "status": "operational", "group": False, "group_id": None},
        {"id": "c2", "name": "API Requests", "status": "partial_outage", "group": False, "group_id": None},
        {"id": "g1", "name": "Europe", "status": "major_outage", "group": True, "components": ["c3", "c4"]},
        {"id": "c3", "name": "Uploads", "status": "major_outage", "group": False, "group_id": "g1"},
        {"id": "c4", "name": "Login", "status": "degraded_performance", "group": False, "group_id": "g1"},
        {"id": "g2", "name": "Asia", "status": "under_maintenance", "group": True, "components": ["c5"]},
        {"id": "c5", "name": "Uploads", "status": "under_maintenance", "group": False, "group_id": "g2"},
        {"id": "c6", "name": "Webhooks", "status": "something_new", "group": False, "group_id": None},
    ],
    "incidents": [
        {"id": "i1", "name": "Uploads failing", "status": "investigating", "impact": "major"},
        {"id": "i2", "name": "Slow logins", "status": "monitoring", "impact": "minor"},
        {"id": "i3", "name": "Old one", "status": "resolved", "impact": "critical"},
        {"id": "i4", "name": "Another", "status": "identified", "impact": "major"},
    ],
    "scheduled_maintenances": [
        {"id": "m1", "name": "Database upgrade", "status": "in_progress", "impact": "maintenance"},
        {"id": "m2", "name": "Next week", "status": "scheduled", "impact": "none"},
    ],
}

ALL_COMPONENTS = {
    "Git Operations": "operational",
    "API Requests": "partial_outage",
    "Europe": "major_outage",
    "Europe / Uploads": "major_outage",
    "Login": "degraded_performance",
    "Asia": "under_maintenance",
    "Asia / Uploads": "under_maintenance",
    "Webhooks": "something_new",
}


@dataclass
class Page:
    """A local status page whose document and status code the test chooses."""

    base: str
    document: Any = field(default_factory=lambda: copy.deepcopy(SUMMARY))
    raw: bytes | None = None
    status: int = 200
    paths: list[str] = field(default_factory=list)
    accept: list[str] = field(default_factory=list)


@pytest.fixture
async def page(aiohttp_server: AiohttpServer) -> Page:
    """Serves the document at /api/v2/summary.json and /custom/summary.json."""
    state = Page("")

    async def summary(request: web.Request) -> web.Response:
        state.paths.append(request.path_qs)
        state.accept.append(request.headers.get("Accept", ""))
        body = state.raw if state.raw is not None else json.dumps(state.document).encode()
        return web.Response(body=body, status=state.status, content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v2/summary.json", summary)
    app.router.add_get("/status/api/v2/summary.json", summary)
    app.router.add_get("/custom/summary.json", summary)
    server = await aiohttp_server(app)
    state.base = f"http://127.0.0.1:{server.port}"
    return state


def module(**settings: Any) -> Module:
    return Module(prober="statuspage", sections={"statuspage": StatuspageProbe(**settings)})


def states(result: ProbeResult, name: str, label: str) -> dict[str, float]:
    return {dict(s.labels)[label]: s.value for s in result.samples if s.name == name}


def components(result: ProbeResult) -> dict[str, str]:
    """The state each exported component is in (the one series at 1), or '' if none is."""
    out: dict[str, str] = {}
    for sample in result.samples:
        if sample.name == "probe_statuspage_component_status":
            labels = dict(sample.labels)
            out.setdefault(labels["component"], "")
            if sample.value == 1:
                out[labels["component"]] = labels["state"]
    return out


async def test_summary_is_exported_as_state_sets(run_probe: ProbeRunner, page: Page) -> None:
    """Indicator, components, incidents and maintenance are read; a major page is still a success."""
    result = await run_probe(page.base, module())
    assert result.success, result.message
    assert page.paths == ["/api/v2/summary.json"]
    assert page.accept == ["application/json"]
    assert states(result, "probe_statuspage_indicator", "state") == {
        "none": 0,
        "minor": 0,
        "major": 1,
        "critical": 0,
    }
    assert components(result) == {
        name: s if s != "something_new" else "" for name, s in ALL_COMPONENTS.items()
    }
    for name in ALL_COMPONENTS:
        per_state = [
            s
            for s in result.samples
            if s.name == "probe_statuspage_component_status" and dict(s.labels)["component"] == name
        ]
        assert [dict(s.labels)["state"] for s in per_state] == list(statuspage.COMPONENT_STATES)
    assert result.value("probe_statuspage_components_dropped") == 0
    assert states(result, "probe_statuspage_incidents", "impact") == {
        "none": 0,
        "minor": 1,
        "major": 2,
        "critical": 0,
    }
    assert result.value("probe_statuspage_maintenance_in_progress") == 1
    assert result.value("probe_statuspage_page_updated_timestamp_seconds") == (
        datetime(2026, 11, 25, 18, 40, 12, 345000, tzinfo=UTC).timestamp()
    )
    assert result.value("probe_http_status_code") == 200
    assert set(result.phases) == set(statuspage.KIND.phases)


async def test_operational_page(run_probe: ProbeRunner, page: Page) -> None:
    """An all-clear page reports indicator none and zero incidents of every impact."""
    page.document = {
        "page": {"id": "x", "name": "Quiet"},
        "status": {"indicator": "none", "description": "All Systems Operational"},
        "components": [{"id": "c1", "name": "API", "status": "operational"}],
        "incidents": [],
        "scheduled_maintenances": [],
    }
    result = await run_probe(page.base + "/", module())
    assert result.success, result.message
    assert states(result, "probe_statuspage_indicator", "state") == {
        "none": 1,
        "minor": 0,
        "major": 0,
        "critical": 0,
    }
    assert states(result, "probe_statuspage_incidents", "impact") == dict.fromkeys(statuspage.IMPACTS, 0)
    assert components(result) == {"API": "operational"}
    assert result.value("probe_statuspage_maintenance_in_progress") == 0
    assert result.value("probe_statuspage_page_updated_timestamp_seconds") is None


async def test_components_are_capped_and_filtered(run_probe: ProbeRunner, page: Page) -> None:
    """max_components keeps the first ones and counts the rest; components picks by name."""
    result = await run_probe(page.base, module(max_components=3))
    assert list(components(result)) == ["Git Operations", "API Requests", "Europe"]
    assert result.value("probe_statuspage_components_dropped") == 5
    result = await run_probe(
        page.base, module(components=("Login", "Asia / Uploads", "Nowhere"), max_components=1)
    )
    assert components(result) == {"Login": "degraded_performance"}
    assert result.value("probe_statuspage_components_dropped") == 1
    result = await run_probe(page.base, module(max_components=0))
    assert components(result) == {}
    assert result.value("probe_statuspage_components_dropped") == 8


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/custom/summary.json", "/custom/summary.json"), ("/status", "/status/api/v2/summary.json")],
)
async def test_target_forms(run_probe: ProbeRunner, page: Page, path: str, expected: str) -> None:
    """A .json URL is fetched as it is; any other URL is a page base."""
    result = await run_probe(page.base + path, module())
    assert result.success, result.message
    assert page.paths == [expected]


@pytest.mark.parametrize(
    ("target", "url"),
    [
        ("https://www.githubstatus.com", "https://www.githubstatus.com/api/v2/summary.json"),
        ("https://www.githubstatus.com/", "https://www.githubstatus.com/api/v2/summary.json"),
        ("status.example.com/team", "http://status.example.com/team/api/v2/summary.json"),
        ("https://status.example.com/api/v2/summary.json", "https://status.example.com/api/v2/summary.json"),
    ],
)
def test_summary_url(target: str, url: str) -> None:
    """The summary document's URL for each way of writing the target."""
    assert statuspage.summary_url(target) == url


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"<html>maintenance</html>", "not a Statuspage summary: the body is not JSON (Expecting value)"),
        (b"[1, 2]", "not a Statuspage summary: the body is not a JSON object"),
        (b'{"page": {}}', "not a Statuspage summary: status.indicator is missing"),
        (
            b'{"status": {"indicator": "none"}, "components": {}}',
            "not a Statuspage summary: components is not a list",
        ),
        (b"[" * 100_000, "not a Statuspage summary: the body is JSON nested too deeply"),
    ],
)
async def test_not_a_summary_fails_with_body(
    run_probe: ProbeRunner, page: Page, raw: bytes, message: str
) -> None:
    """A body that is not a summary fails the probe (body), with every indicator state at 0."""
    page.raw = raw
    result = await run_probe(page.base, module())
    assert (result.reason, result.message) == (FailureReason.BODY, message)
    assert states(result, "probe_statuspage_indicator", "state") == dict.fromkeys(statuspage.INDICATORS, 0)
    assert result.value("probe_statuspage_incidents") is None
    assert components(result) == {}


async def test_error_status_fails(run_probe: ProbeRunner, page: Page) -> None:
    """A page that answers 503 fails with http_status."""
    page.status = 503
    result = await run_probe(page.base, module())
    assert (result.reason, result.message) == (FailureReason.HTTP_STATUS, "status code 503 is not 2xx")
    assert result.value("probe_http_status_code") == 503


async def test_metrics_exposition(run_probe: ProbeRunner, page: Page) -> None:
    """The exposition holds one series per component and state, and the HTTP phases."""
    result = await run_probe(page.base, module())
    series = parse(render_result(result, "statuspage").decode())
    assert value(series, "probe_success") == 1
    assert value(series, "probe_statuspage_indicator", state="major") == 1
    assert (
        value(series, "probe_statuspage_component_status", component="Europe / Uploads", state="major_outage")
        == 1
    )
    assert value(series, "probe_statuspage_incidents", impact="major") == 2
    assert len(labelsets(series, "probe_statuspage_component_status")) == 8 * 5
    assert len(labelsets(series, "probe_http_duration_seconds")) == 5


def test_config_loads_a_statuspage_service() -> None:
    """A statuspage service with inline settings loads."""
    config = parse_config(
        "services:\n"
        "  - {name: vendor, group: github, target: 'https://www.githubstatus.com', prober: statuspage,\n"
        "     statuspage: {max_components: 10, components: [Git Operations]}}\n"
    )
    (service,) = config.services
    assert service.module.prober == "statuspage"
    assert service.module.sections["statuspage"].max_components == 10
    assert PROBERS["statuspage"] is statuspage.KIND
