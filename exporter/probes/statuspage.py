"""The statuspage probe: what a vendor's own status page claims, as bounded state-set series."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from urllib.parse import urlsplit, urlunsplit

from exporter import offloop
from exporter.modules import HTTPProbe, StatuspageProbe
from exporter.probes import httpclient, net
from exporter.probes.base import ProbeRequest, ProberKind
from exporter.probes.net import ProbeFailure
from exporter.result import FailureReason, MetricFamily, ProbeResult, Trace
from exporter.types import Secret

# Semantics:
# - The target is a page's base URL (https://www.githubstatus.com) or the full URL of a JSON
#   document in Atlassian Statuspage's /api/v2/summary.json format; a base URL gets
#   /api/v2/summary.json appended to its path.
# - The probe succeeds when the page was fetched (a 2xx, through the http prober's client) and
#   parsed. What the vendor claims is exported, never judged: a "major" page is a successful
#   probe, and the ProbeVendorMajorIncident alert is there to act on it.
# - Every state-set series is always complete, so a query never meets a missing series:
#   probe_statuspage_indicator has all four states (all 0 when the probe failed or the page
#   said something else), each component has all five states, and probe_statuspage_incidents
#   all four impacts. Unknown component statuses and incident impacts count in no state.
# - Components keep the page's order; a component inside a group is named "Group / Name" when
#   its own name is not unique on the page. ``components`` picks some by name; past
#   max_components the rest are counted in probe_statuspage_components_dropped.
# - Reasons: a body that is not a Statuspage summary is ``body``; the rest are the http
#   prober's reasons.

INDICATORS = ("none", "minor", "major", "critical")
COMPONENT_STATES = (
    "operational",
    "degraded_performance",
    "partial_outage",
    "major_outage",
    "under_maintenance",
)
IMPACTS = ("none", "minor", "major", "critical")
SUMMARY_PATH = "/api/v2/summary.json"
# Incidents in these states are over; Statuspage's summary lists only open ones anyway.
_CLOSED_INCIDENTS = frozenset({"resolved", "postmortem", "completed"})
_ACTIVE_MAINTENANCE = frozenset({"in_progress", "verifying"})


# The families this kind writes beyond every probe's own (for help text and docs).
METRICS = (
    httpclient.HTTP_METRICS[0],
    MetricFamily(
        "probe_statuspage_indicator",
        "The status page's overall indicator: 1 for the current state.",
        ("state",),
    ),
    MetricFamily(
        "probe_statuspage_component_status",
        "Each status page component's status: 1 for the current state.",
        ("component", "state"),
    ),
    MetricFamily("probe_statuspage_components_dropped", "Components left out by max_components."),
    MetricFamily(
        "probe_statuspage_incidents",
        "Unresolved incidents on the status page, by impact.",
        ("impact",),
    ),
    MetricFamily(
        "probe_statuspage_maintenance_in_progress",
        "Scheduled maintenances in progress on the status page.",
    ),
    MetricFamily(
        "probe_statuspage_page_updated_timestamp_seconds",
        "When the status page last changed, as a unix time.",
    ),
    *net.ADDRESS_METRICS,
    *net.TLS_METRICS,
)


async def probe_statuspage(request: ProbeRequest) -> ProbeResult:
    """Fetch and read a status page's summary; a failure raises ProbeFailure."""
    trace = request.trace
    httpclient.record_defaults(trace)
    for state in INDICATORS:
        trace.set("probe_statuspage_indicator", 0, (("state", state),))
    settings = request.module.section(StatuspageProbe)
    client = httpclient.HTTPClient(_http_settings(settings), trace, request.guard, keep_body=True)
    response = await client.fetch(summary_url(request.target))
    await client.judge(response)
    data = (response.body.data if response.body is not None else None) or b""
    _record(trace, await offloop.off_loop_if_big(len(data), parse_summary, data), settings)
    return trace.succeed()


KIND = ProberKind("statuspage", StatuspageProbe, probe_statuspage, metrics=METRICS, phases=httpclient.PHASES)


def summary_url(target: str) -> str:
    """The summary document's URL for a page's base URL; a URL of a .json document as it is."""
    url = httpclient.with_scheme(target.strip())
    parts = urlsplit(url)
    if parts.path.endswith(".json"):
        return url
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + SUMMARY_PATH, parts.query, ""))


def _http_settings(settings: StatuspageProbe) -> HTTPProbe:
    headers = {"Accept": Secret("application/json"), **settings.headers}
    return HTTPProbe(
        headers=MappingProxyType(headers),
        preferred_ip_protocol=settings.preferred_ip_protocol,
        ip_protocol_fallback=settings.ip_protocol_fallback,
        tls_config=settings.tls_config,
        body_size_limit=settings.body_size_limit,
        **settings.proxy_options(),
    )


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    status: str


@dataclass(frozen=True, slots=True)
class Summary:
    """The parts of a summary.json the probe exports."""

    indicator: str
    components: tuple[Component, ...]
    incidents: Mapping[str, int]
    maintenances_in_progress: int
    updated_at: float | None


def _not_a_summary(why: str) -> ProbeFailure:
    return ProbeFailure(FailureReason.BODY, f"not a Statuspage summary: {why}")


def _list(document: Mapping[str, object], key: str) -> list[object]:
    value = document.get(key, [])
    if not isinstance(value, list):
        raise _not_a_summary(f"{key} is not a list")
    return value


def parse_summary(text: str | bytes) -> Summary:
    """Read a summary.json; raise ProbeFailure (body) when it is not one."""
    try:
        document = offloop.loads_json(text)
    except ValueError as err:
        detail = err.msg if isinstance(err, json.JSONDecodeError) else str(err)
        raise _not_a_summary(f"the body is not JSON ({detail})") from None
    except RecursionError:
        raise _not_a_summary("the body is JSON nested too deeply") from None
    if not isinstance(document, dict):
        raise _not_a_summary("the body is not a JSON object")
    status = document.get("status")
    indicator = status.get("indicator") if isinstance(status, dict) else None
    if not isinstance(indicator, str):
        raise _not_a_summary("status.indicator is missing")
    incidents = dict.fromkeys(IMPACTS, 0)
    for incident in _list(document, "incidents"):
        if isinstance(incident, dict) and incident.get("status") not in _CLOSED_INCIDENTS:
            impact = incident.get("impact")
            if isinstance(impact, str) and impact in incidents:
                incidents[impact] += 1
    maintenances = sum(
        1
        for item in _list(document, "scheduled_maintenances")
        if isinstance(item, dict) and item.get("status") in _ACTIVE_MAINTENANCE
    )
    page = document.get("page")
    updated = _timestamp(page.get("updated_at")) if isinstance(page, dict) else None
    return Summary(
        indicator=indicator,
        components=_components(_list(document, "components")),
        incidents=MappingProxyType(incidents),
        maintenances_in_progress=maintenances,
        updated_at=updated,
    )


def _components(items: Sequence[object]) -> tuple[Component, ...]:
    entries = [
        item
        for item in items
        if isinstance(item, dict)
        and isinstance(item.get("name"), str)
        and isinstance(item.get("status"), str)
    ]
    group_names = {str(item.get("id")): str(item["name"]) for item in entries if item.get("group") is True}
    counts: dict[str, int] = {}
    for item in entries:
        counts[item["name"]] = counts.get(item["name"], 0) + 1
    out: list[Component] = []
    seen: set[str] = set()
    for item in entries:
        name = str(item["name"]).strip()
        group = group_names.get(str(item.get("group_id")))
        if counts[item["name"]] > 1 and group:
            name = f"{group} / {name}"
        if name in seen:
            continue  # indistinguishable from one already kept
        seen.add(name)
        out.append(Component(name, str(item["status"])))
    return tuple(out)


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _record(trace: Trace, summary: Summary, settings: StatuspageProbe) -> None:
    for state in INDICATORS:
        trace.set("probe_statuspage_indicator", 1 if summary.indicator == state else 0, (("state", state),))
    components = list(summary.components)
    if settings.components:
        wanted = set(settings.components)
        components = [c for c in components if c.name in wanted]
    kept = components[: settings.max_components]
    trace.set("probe_statuspage_components_dropped", len(components) - len(kept))
    for component in kept:
        for state in COMPONENT_STATES:
            labels = (("component", component.name), ("state", state))
            trace.set("probe_statuspage_component_status", 1 if component.status == state else 0, labels)
    for impact in IMPACTS:
        trace.set("probe_statuspage_incidents", summary.incidents[impact], (("impact", impact),))
    trace.set("probe_statuspage_maintenance_in_progress", summary.maintenances_in_progress)
    if summary.updated_at is not None:
        trace.set("probe_statuspage_page_updated_timestamp_seconds", summary.updated_at)
