"""What a probe result means for a person: up, degraded, down, maintenance or unknown, and why."""

from __future__ import annotations

from enum import StrEnum

from exporter.config import Service
from exporter.result import ProbeResult
from exporter.types import format_duration


class Health(StrEnum):
    """The state of a service as the status page shows it; ``probe_degraded`` exports the middle one."""

    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"
    MAINTENANCE = "maintenance"
    UNKNOWN = "unknown"


# The words the page says beside the colour, so the state never rests on colour alone.
WORDS = {
    Health.UP: "Operational",
    Health.DEGRADED: "Degraded",
    Health.DOWN: "Down",
    Health.MAINTENANCE: "Maintenance",
    Health.UNKNOWN: "No data yet",
}

VENDOR_WORDS = {
    "none": "All systems operational",
    "minor": "Minor incident",
    "major": "Major outage",
    "critical": "Critical outage",
}
# Component states that mean the vendor's service is not fully working.
_TROUBLED_COMPONENTS = frozenset({"degraded_performance", "partial_outage", "major_outage"})


def vendor_indicator(result: ProbeResult | None) -> str | None:
    """What a status page said overall (none, minor, major, critical), for statuspage results."""
    if result is None or not result.success:
        return None
    for sample in result.samples:
        if sample.name == "probe_statuspage_indicator" and sample.value == 1:
            return dict(sample.labels).get("state")
    return None


def troubled_components(result: ProbeResult | None) -> list[tuple[str, str]]:
    """(component, status) of every component a status page shows as not operational."""
    if result is None or not result.success:
        return []
    found = []
    for sample in result.samples:
        if sample.name == "probe_statuspage_component_status" and sample.value == 1:
            labels = dict(sample.labels)
            if labels.get("state") in _TROUBLED_COMPONENTS:
                found.append((labels.get("component", ""), labels["state"]))
    return found


def degraded_reason(service: Service, result: ProbeResult | None) -> str | None:
    """Why a successful probe counts as degraded, or None when it does not.

    Degraded: the probe succeeded but took longer than the latency objective, needed a retry,
    or the vendor's status page (statuspage services) reports anything but all operational.
    """
    if result is None or not result.success:
        return None
    objective = service.objectives.latency
    # A run that overlapped a stall of our own loop holds our time: it is no evidence of slowness.
    if objective is not None and result.duration > objective and not result.stalled:
        return f"took {format_duration(result.duration)}, over its {format_duration(objective)} objective"
    if result.failed_attempts:
        return f"needed {result.attempts} attempts ({', '.join(r.value for r in result.failed_attempts)})"
    indicator = vendor_indicator(result)
    if indicator is not None and indicator != "none":
        return f"vendor reports: {VENDOR_WORDS.get(indicator, indicator)}"
    components = troubled_components(result)
    if components:
        name, status = components[0]
        more = f" and {len(components) - 1} more" if len(components) > 1 else ""
        return f"vendor reports {name}: {status.replace('_', ' ')}{more}"
    return None


def health_of(service: Service, result: ProbeResult | None, in_maintenance: bool) -> Health:
    """The page's state of a service from its last result."""
    if in_maintenance:
        return Health.MAINTENANCE
    if result is None:
        return Health.UNKNOWN
    if not result.success:
        return Health.DOWN
    # A vendor saying major or critical is an outage of theirs, though fetching the page worked.
    if vendor_indicator(result) in ("major", "critical"):
        return Health.DOWN
    return Health.DEGRADED if degraded_reason(service, result) is not None else Health.UP
