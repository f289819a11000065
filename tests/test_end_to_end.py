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

# The bundled durations scaled down, keeping their order: the explaining alerts
# (30s) fire before ProbeServiceDownInLocation (2m) could, so its expression
# leaves it out (see prometheus/rules/outage-exporter.rules.yml). keep_firing_for
# (1m) is shortened so a recovery resolves within the test's bounds, and the
# rule groups run every second like the global evaluation. Longer durations
# (5m, 15m) are left alone: the alerts that use them must not fire here.
FOR_DURATIONS = {"30s": "2s", "1m": "2s", "2m": "12s"}
GROUP_INTERVALS = {"5s": "1s", "30s": "1s", "1m": "1s"}

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
        for timing in ("group_wait", "group_interval", "repeat_interval"):
            route.pop(timing, None)
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
    rules = shortened_rules(tmp_path / "rules", FOR_DURATIONS, intervals=GROUP_INTERVALS)
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
    # global ProbeServiceDown fires (critical, paged). It explains
    # ProbeServiceDownInLocation for the same service, whose expression leaves
    # it out from then on, so it never fires. Neither catalog (healthy) nor the
    # shop group (one of two services down is not most of it) nor the location
    # (no healthier location to compare with) alerts.
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

    # Well past the regional alert's own `for:` (12s), it is still not firing.
    wait_until(
        lambda: prometheus.query(
            'time() - ALERTS_FOR_STATE{alertname="ProbeServiceDown", service="checkout"} > 20'
        ),
        ALERTING,
        "checkout down for longer than ProbeServiceDownInLocation's for:",
    )
    assert not prometheus.query('ALERTS{alertname="ProbeServiceDownInLocation", alertstate="firing"}')

    broken.status = 200
    resolved = wait_until(
        lambda: webhook.alerts("resolved", alertname="ProbeServiceDown", service="checkout"),
        ALERTING,
        "a resolved notification for checkout",
    )
    assert resolved[0][0] == "/pager"
    assert resolved[0][1]["labels"] == alert["labels"]

    # Only checkout notified, as one page and its resolution: during the
    # outage and after it the regional alert stayed out.
    received = [(path, alert["labels"]["alertname"], alert["status"]) for path, alert in webhook.alerts()]
    assert received == [("/pager", "ProbeServiceDown", "firing"), ("/pager", "ProbeServiceDown", "resolved")]
    others = 'count_over_time(ALERTS{alertname!="ProbeServiceDown", alertstate="firing"}[10m])'
    assert not prometheus.query(others)
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
    rules = shortened_rules(tmp_path / "rules", FOR_DURATIONS, intervals=GROUP_INTERVALS)
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
