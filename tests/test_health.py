"""Up, degraded or down: latency objectives, retries and what a vendor's status page says."""

from __future__ import annotations

from exporter.config import parse_config
from exporter.health import Health, degraded_reason, health_of
from exporter.result import FailureReason, ProbeResult, Sample

SERVICE, VENDOR = parse_config(
    """
services:
  - {name: api, prober: tcp, target: "h:1", objectives: {latency: 200ms}}
  - {name: cloud, prober: statuspage, target: "https://status.example.com"}
"""
).services


def page(indicator: str, components: dict[str, str] | None = None) -> ProbeResult:
    samples = [
        Sample("probe_statuspage_indicator", 1.0 if state == indicator else 0.0, (("state", state),))
        for state in ("none", "minor", "major", "critical")
    ]
    for name, status in (components or {}).items():
        samples.append(
            Sample("probe_statuspage_component_status", 1.0, (("component", name), ("state", status)))
        )
    return ProbeResult(True, 0.05, 0.0, samples=tuple(samples))


def test_success_within_objective_is_up() -> None:
    """A quick success is up; no result yet is unknown; a failure is down; a window wins over all."""
    quick = ProbeResult(True, 0.1, 0.0)
    assert degraded_reason(SERVICE, quick) is None
    assert health_of(SERVICE, quick, False) is Health.UP
    assert health_of(SERVICE, None, False) is Health.UNKNOWN
    failed = ProbeResult(False, 0.1, 0.0, FailureReason.CONNECT, "refused")
    assert health_of(SERVICE, failed, False) is Health.DOWN
    assert degraded_reason(SERVICE, failed) is None
    assert health_of(SERVICE, failed, True) is Health.MAINTENANCE


def test_slow_or_retried_success_is_degraded() -> None:
    """Over the latency objective, or saved by a retry: degraded, with the reason in words."""
    slow = ProbeResult(True, 0.25, 0.0)
    assert degraded_reason(SERVICE, slow) == "took 250ms, over its 200ms objective"
    assert health_of(SERVICE, slow, False) is Health.DEGRADED
    retried = ProbeResult(True, 0.1, 0.0, failed_attempts=(FailureReason.TIMEOUT,))
    assert degraded_reason(SERVICE, retried) == "needed 2 attempts (timeout)"


def test_vendor_pages() -> None:
    """Minor or a troubled component is degraded; major and critical are down; none is up."""
    assert health_of(VENDOR, page("none"), False) is Health.UP
    assert degraded_reason(VENDOR, page("minor")) == "vendor reports: Minor incident"
    assert health_of(VENDOR, page("minor"), False) is Health.DEGRADED
    troubled = page("none", {"API": "degraded_performance", "Web": "operational"})
    assert degraded_reason(VENDOR, troubled) == "vendor reports API: degraded performance"
    assert health_of(VENDOR, page("major"), False) is Health.DOWN
    assert health_of(VENDOR, page("critical"), False) is Health.DOWN
    assert degraded_reason(VENDOR, page("major")) == "vendor reports: Major outage"
