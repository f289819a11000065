"""End to end: exporter, Prometheus with the bundled rules, and Alertmanager with the bundled routing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.stack import (
    ALERTMANAGER_CONFIG,
    ROOT,
    Prometheus,
    Stack,
    WebhookReceiver,
    free_port,
    shortened_rules,
    stack_fixture,  # noqa: F401
    wait_until,
)

PROMETHEUS_CONFIG = ROOT / "prometheus" / "prometheus.yml"

# The bundled durations scaled down. The global alerts (1m) still fire before
# ProbeServiceDownInLocation (2m), as prometheus/README.md requires, so the
# inhibition in alertmanager.yml takes effect. Longer durations (5m, 15m) are
# left alone: the alerts that use them must not fire in these tests. The gap is
# wide because the global alerts read recording rules, which on a loaded machine
# can lag the per-location rule by a few evaluations.
FOR_DURATIONS = {"1m": "2s", "2m": "12s"}

# Every wait is bounded; these bounds leave room for a slow machine, and a
# healthy run needs a few seconds for each.
STARTUP = 20.0
ALERTING = 40.0

EXPORTER_CONFIG = """
global: {{interval: 500ms, timeout: 300ms}}
services:
{services}
"""


def service_line(name: str, group: str, target: str) -> str:
    return f"  - {{name: {name}, group: {group}, prober: http, target: '{target}'}}"


def prometheus_config(exporters: dict[str, str], alertmanager: str | None = None) -> str:
    """The bundled prometheus.yml, pointed at these exporters (location: URL) and evaluated every second."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "outage-exporter"]
    job["static_configs"] = [
        {"targets": [url.removeprefix("http://")], "labels": {"location": location}}
        for location, url in exporters.items()
    ]
    if alertmanager is None:
        del config["alerting"]
    else:
        config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [
            alertmanager.removeprefix("http://")
        ]
    return yaml.safe_dump(config, sort_keys=False)


def alertmanager_config(webhook: WebhookReceiver) -> str:
    """The bundled alertmanager.yml with short timings and its receivers posting to ``webhook``."""
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    config["global"] = {"resolve_timeout": "5s"}
    config["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    for route in config["route"]["routes"]:
        route.pop("repeat_interval", None)
    for receiver in config["receivers"]:
        for webhook_config in receiver["webhook_configs"]:
            # Keep the path (/pager, /ticket) so the test sees which receiver was chosen.
            path = "/" + webhook_config["url"].split("/", 3)[3]
            webhook_config["url"] = webhook.url + path
    return yaml.safe_dump(config, sort_keys=False)


def probe_success(prometheus: Prometheus) -> dict[tuple[str, str], float]:
    """probe_success as Prometheus last scraped it, by (service, location)."""
    return {
        (sample["metric"]["service"], sample["metric"]["location"]): float(sample["value"][1])
        for sample in prometheus.query('probe_success{job="outage-exporter"}')
    }


def test_outage_notifies_and_resolves(stack: Stack, tmp_path: Path) -> None:
    """A target going down reaches the webhook as ProbeServiceDown, and its recovery as resolved."""
    broken, healthy = stack.target(), stack.target()
    webhook = stack.webhook()
    services = "\n".join(
        [service_line("checkout", "shop", broken.url), service_line("catalog", "shop", healthy.url)]
    )
    exporter = stack.exporter(EXPORTER_CONFIG.format(services=services), location="eu-west")
    alertmanager = stack.alertmanager(alertmanager_config(webhook))
    rules = shortened_rules(tmp_path / "rules", FOR_DURATIONS)
    prometheus = stack.prometheus(
        prometheus_config({"eu-west": exporter.url}, alertmanager.url), rule_files=rules
    )

    # Before breaking anything: both services are scraped as up and Prometheus
    # knows where to send alerts, so what follows is caused by the outage.
    healthy_view = {("checkout", "eu-west"): 1.0, ("catalog", "eu-west"): 1.0}
    wait_until(lambda: probe_success(prometheus) == healthy_view, STARTUP, "both services scraped as up")
    wait_until(prometheus.alertmanagers, STARTUP, "Prometheus to discover Alertmanager")

    broken.status = 500
    firing = wait_until(
        lambda: webhook.alerts("firing", service="checkout"), ALERTING, "a firing notification for checkout"
    )
    # With one location, the failing one is all of them: a majority, so the
    # global ProbeServiceDown fires (critical, paged). ProbeServiceDownInLocation
    # fires for the same service later and is inhibited by it, so it never
    # notifies. Neither catalog (healthy) nor the shop group (one of two
    # services down is not most of it) nor the location (no healthier location
    # to compare with) alerts.
    (path, alert), *_ = firing
    assert path == "/pager"
    assert alert["labels"] == {
        "alertname": "ProbeServiceDown",
        "service": "checkout",
        "group": "shop",
        "severity": "critical",
    }
    annotations = alert["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    assert annotations["summary"] == "checkout is down from most locations"
    assert annotations["description"] == "checkout (group shop) fails from 100% of the locations probing it."
    assert annotations["runbook_url"].endswith("/docs/runbook.md#probeservicedown")

    # ProbeServiceDownInLocation fires too, later, and reaches Alertmanager,
    # which holds it back because ProbeServiceDown explains it.
    def inhibited() -> list[dict[str, Any]]:
        return [
            alert
            for alert in alertmanager.alerts(alertname="ProbeServiceDownInLocation", service="checkout")
            if alert["status"]["state"] == "suppressed" and alert["status"]["inhibitedBy"]
        ]

    (held,) = wait_until(inhibited, ALERTING, "ProbeServiceDownInLocation to reach Alertmanager, inhibited")
    assert held["labels"]["location"] == "eu-west"

    broken.status = 200
    resolved = wait_until(
        lambda: webhook.alerts("resolved", alertname="ProbeServiceDown", service="checkout"),
        ALERTING,
        "a resolved notification for checkout",
    )
    assert resolved[0][0] == "/pager"
    assert resolved[0][1]["labels"] == alert["labels"]

    # Only checkout notified, and only as the alerts its outage explains. Which of
    # them resolves first on recovery depends on when each rule group is
    # evaluated, so a last ProbeServiceDownInLocation notification in that
    # moment is not held against the routing; while ProbeServiceDown was firing
    # it was inhibited (checked above).
    received = [alert for _, alert in webhook.alerts()]
    notified = {(a["labels"]["alertname"], a["labels"].get("service")) for a in received}
    assert notified <= {("ProbeServiceDown", "checkout"), ("ProbeServiceDownInLocation", "checkout")}
    assert [a["status"] for a in received if a["labels"]["alertname"] == "ProbeServiceDown"] == [
        "firing",
        "resolved",
    ]
    assert not prometheus.query('count_over_time(ALERTS{service="catalog"}[10m])')


def test_regional_outage_is_not_global(stack: Stack, tmp_path: Path) -> None:
    """A service failing from one location of two is a regional alert there, not ProbeServiceDown."""
    everywhere, regional = stack.target(), stack.target()
    # Location b reaches "regional" through a port nothing listens on: same
    # service name, broken from b only.
    closed = f"http://127.0.0.1:{free_port()}/"
    exporters = {}
    for location, regional_url in (("a", regional.url), ("b", closed)):
        services = "\n".join(
            [
                service_line("everywhere", "web", everywhere.url),
                service_line("regional", "web", regional_url),
            ]
        )
        exporters[location] = stack.exporter(EXPORTER_CONFIG.format(services=services), location).url
    rules = shortened_rules(tmp_path / "rules", FOR_DURATIONS)
    prometheus = stack.prometheus(prometheus_config(exporters), rule_files=rules)

    expected_view = {
        ("everywhere", "a"): 1.0,
        ("everywhere", "b"): 1.0,
        ("regional", "a"): 1.0,
        ("regional", "b"): 0.0,
    }
    wait_until(lambda: probe_success(prometheus) == expected_view, STARTUP, "both exporters scraped")

    def firing() -> list[dict[str, Any]]:
        return [alert for alert in prometheus.alerts() if alert["state"] == "firing"]

    wait_until(firing, ALERTING, "an alert to fire")
    # One location of two failing is not a majority (the ratio is 0.5, and the
    # rule wants more), so the regional alert fires alone. Its `for` is the
    # longest of the outage alerts, so had ProbeServiceDown or
    # ProbeLocationDown (b fails half its services, a none: a gap of 0.5, not
    # more) been going to fire, they would be firing already.
    alerts = prometheus.alerts()
    assert [(alert["state"], alert["labels"]) for alert in alerts] == [
        (
            "firing",
            {
                "alertname": "ProbeServiceDownInLocation",
                "service": "regional",
                "group": "web",
                "location": "b",
                "severity": "warning",
            },
        )
    ]
    assert alerts[0]["annotations"]["summary"] == "regional is down from b"
    assert not prometheus.query('ALERTS{alertname="ProbeServiceDown"}')
    (ratio,) = prometheus.query('service:probe_failing_locations:ratio{service="regional"}')
    assert float(ratio["value"][1]) == 0.5
