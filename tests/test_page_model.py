"""What the page concludes: group verdicts, and whether trouble is global, regional or the prober's side."""

from __future__ import annotations

from exporter.config import parse_config
from exporter.health import Health
from exporter.page.model import GroupView, ServiceView, judge
from exporter.store import ServiceState

SERVICES = parse_config(
    "services:\n"
    + "\n".join(f"  - {{name: s{i}, group: g, prober: tcp, target: 'h:{i + 1}'}}" for i in range(4))
).services


def group(*specs: tuple[Health, dict[str, bool]]) -> GroupView:
    views = [
        ServiceView(service, ServiceState(service), health, locations=dict(places))
        for service, (health, places) in zip(SERVICES, specs, strict=False)
    ]
    return GroupView("g", views)


UP_BOTH = (Health.UP, {"a": True, "b": True})


def test_verdicts_count_services_outside_maintenance() -> None:
    """All up, degraded, partial (some down), major (most down) and in maintenance (all of them)."""
    cases = [
        ((UP_BOTH, UP_BOTH), "up"),
        ((UP_BOTH, (Health.DEGRADED, {})), "degraded"),
        ((UP_BOTH, UP_BOTH, (Health.DOWN, {})), "partial"),
        ((UP_BOTH, (Health.DOWN, {}), (Health.DOWN, {})), "major"),
        (((Health.MAINTENANCE, {}), (Health.MAINTENANCE, {})), "maintenance"),
        (((Health.UNKNOWN, {}),), "unknown"),
        (((Health.DOWN, {}), (Health.MAINTENANCE, {})), "major"),
    ]
    for specs, verdict in cases:
        view = group(*specs)
        judge(view, {})
        assert view.verdict == verdict, specs


def test_failures_from_every_location_are_global() -> None:
    """A service failing from every location that probes it is a global failure."""
    view = group(UP_BOTH, (Health.DOWN, {"a": False, "b": False}))
    judge(view, {"a": 0.5, "b": 0.5})
    assert (view.verdict, view.scope) == ("partial", "global: failing from every location")


def test_failures_from_some_locations_are_regional() -> None:
    """Failing from b only, with b not failing most of its services, is regional."""
    view = group(UP_BOTH, UP_BOTH, (Health.DEGRADED, {"a": True, "b": False}))
    judge(view, {"a": 0.0, "b": 0.34})
    assert (view.verdict, view.scope) == ("degraded", "regional: failing from b")


def test_one_location_failing_most_services_is_the_probers_side() -> None:
    """b sees most services fail while a sees them fine: the prober's side, not the services."""
    failing_from_b = (Health.DEGRADED, {"a": True, "b": False})
    view = group(failing_from_b, failing_from_b, failing_from_b, UP_BOTH)
    judge(view, {"a": 0.0, "b": 0.75})
    assert view.scope == "prober-side: b sees most services fail, other locations do not"
