"""Checks of the bundled Prometheus rules and Alertmanager configuration, run with the real binaries."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTMANAGER_CONFIG = PROMETHEUS_DIR / "alertmanager.yml"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/outage-exporter/outage-exporter/blob/main/docs/runbook.md#"

# The alert names DESIGN.md promises.
DESIGN_ALERTS = {
    "ProbeServiceDown",
    "ProbeServiceDownInLocation",
    "ProbeGroupOutage",
    "ProbeLocationDown",
    "ProbeSlow",
    "ProbeErrorBudgetBurn",
    "ProbeTLSCertificateExpiringSoon",
    "ProbeTLSCertificateExpiringVerySoon",
    "ProbeTLSCertificateExpired",
    "ProbeStale",
    "ProbeExporterDown",
    "ProbeExporterAbsent",
    "ProbeExporterConfigReloadFailed",
}
# Alerts beyond the design's first list: for probe kinds added since, and the
# names DESIGN.md plans.
EXTRA_ALERTS = {"ProbeVendorMajorIncident", "ProbeExporterStalled"}
RECEIVER_FOR_SEVERITY = {"critical": "pager", "warning": "ticket"}

# Upper bound for a subprocess or for Alertmanager to reach a state; a
# safety net against hangs, never an expectation about speed.
DEADLINE_SECONDS = 60.0

# Requests to 127.0.0.1 must not go through a proxy set in the environment.
LOCAL_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def binary(name: str) -> str:
    """Return the path of a required tool, failing (not skipping) when it is missing."""
    path = shutil.which(name)
    assert path is not None, (
        f"{name} is not on PATH; install the prometheus and prometheus-alertmanager packages"
    )
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root and capture its output."""
    return subprocess.run(
        [str(arg) for arg in args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
        check=False,
    )


def load_rule_groups() -> list[dict[str, Any]]:
    """Return every rule group of every rule file."""
    groups: list[dict[str, Any]] = []
    for path in RULE_FILES:
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    return groups


def alert_rules() -> list[dict[str, Any]]:
    """Return every alerting rule."""
    return [rule for group in load_rule_groups() for rule in group["rules"] if "alert" in rule]


def recording_rules() -> list[dict[str, Any]]:
    """Return every recording rule."""
    return [rule for group in load_rule_groups() for rule in group["rules"] if "record" in rule]


def github_anchor(heading: str) -> str:
    """Return the anchor GitHub generates for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_anchors() -> set[str]:
    """Return the anchors of the runbook's headings."""
    headings = re.findall(r"^#{1,6} (.+)$", RUNBOOK.read_text(), flags=re.MULTILINE)
    return {github_anchor(heading) for heading in headings}


def test_rule_files_exist() -> None:
    """The rule files and their promtool tests are where the globs look for them."""
    assert [path.name for path in RULE_FILES] == [
        "outage-exporter.alerts.yml",
        "outage-exporter.rules.yml",
        "outage-exporter.statuspage.yml",
    ]
    assert len(RULE_TESTS) >= 5


def test_rules_pass_check_and_lint() -> None:
    """promtool check rules accepts every rule file with all lint checks fatal."""
    result = run(binary("promtool"), "check", "rules", "--lint=all", "--lint-fatal", *RULE_FILES)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("SUCCESS") == len(RULE_FILES), output
    assert "duplicate" not in output.lower(), output


def test_prometheus_config_is_valid() -> None:
    """promtool check config accepts prometheus.yml and loads both rule files through it."""
    result = run(binary("promtool"), "check", "config", PROMETHEUS_CONFIG)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in output, output


def test_prometheus_config_scrapes_exporters_by_location() -> None:
    """The exporter job honours the exporter's labels and gives every target a location."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "outage-exporter"]
    assert job["honor_labels"] is True
    assert all(static["labels"]["location"] for static in job["static_configs"])
    assert config["rule_files"] == ["rules/*.yml"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["localhost:9093"]


def test_commented_probe_example_is_valid(tmp_path: Path) -> None:
    """The commented blackbox-style /probe job is a valid scrape config once uncommented."""
    text = PROMETHEUS_CONFIG.read_text()
    block = re.search(
        r"^ *# BEGIN probe example\n(.*?)^ *# END probe example$", text, flags=re.MULTILINE | re.DOTALL
    )
    assert block is not None
    uncommented = re.sub(r"^( *)# ?", r"\1", block.group(1), flags=re.MULTILINE)
    config = tmp_path / "prometheus.yml"
    config.write_text("scrape_configs:\n" + uncommented)
    parsed = yaml.safe_load(config.read_text())
    (job,) = parsed["scrape_configs"]
    # Another job name keeps /probe series out of the bundled rules.
    assert job["job_name"] != "outage-exporter"
    assert job["metrics_path"] == "/probe"
    result = run(binary("promtool"), "check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    """Every promtool unit test in prometheus/tests passes."""
    result = run(binary("promtool"), "test", "rules", *RULE_TESTS)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("SUCCESS") == len(RULE_TESTS), output


def test_alert_names_match_the_design() -> None:
    """The rules raise the alerts DESIGN.md names, plus only the listed additions."""
    assert {rule["alert"] for rule in alert_rules()} == DESIGN_ALERTS | EXTRA_ALERTS


@pytest.mark.parametrize(
    "rule", alert_rules(), ids=lambda rule: f"{rule['alert']}-{rule['labels']['severity']}"
)
def test_alert_has_severity_annotations_and_runbook(rule: dict[str, Any]) -> None:
    """An alert has a routable severity, a summary, a description and a runbook link that resolves."""
    assert rule["labels"]["severity"] in RECEIVER_FOR_SEVERITY
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    assert annotations["summary"].strip() and annotations["description"].strip()
    assert annotations["runbook_url"] == RUNBOOK_URL + rule["alert"].lower()
    assert rule["alert"].lower() in runbook_anchors()


@pytest.mark.parametrize("rule", recording_rules(), ids=lambda rule: rule["record"])
def test_recording_rule_names_follow_convention(rule: dict[str, Any]) -> None:
    """A recording rule is named level:metric:operations."""
    assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", rule["record"])


def test_alertmanager_config_is_valid() -> None:
    """amtool check-config accepts alertmanager.yml."""
    result = run(binary("amtool"), "check-config", ALERTMANAGER_CONFIG)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS" in output, output


def routed_receivers(labels: dict[str, str]) -> str:
    """Return the receivers amtool resolves a label set to, as it prints them."""
    result = run(
        binary("amtool"),
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG}",
        *(f"{name}={value}" for name, value in labels.items()),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (
            {
                "alertname": "ProbeServiceDown",
                "severity": "critical",
                "service": "instagram-login",
                "group": "meta",
            },
            "pager",
        ),
        (
            {
                "alertname": "ProbeServiceDownInLocation",
                "severity": "warning",
                "service": "instagram-login",
                "group": "meta",
                "location": "eu-west",
            },
            "ticket",
        ),
        ({"alertname": "ProbeGroupOutage", "severity": "critical", "group": "meta"}, "pager"),
        ({"alertname": "ProbeLocationDown", "severity": "warning", "location": "ap-south"}, "ticket"),
        (
            {
                "alertname": "ProbeErrorBudgetBurn",
                "severity": "critical",
                "service": "gmail",
                "group": "google",
            },
            "pager",
        ),
        (
            {
                "alertname": "ProbeErrorBudgetBurn",
                "severity": "warning",
                "service": "gmail",
                "group": "google",
            },
            "ticket",
        ),
        ({"alertname": "ProbeExporterAbsent", "severity": "critical", "job": "outage-exporter"}, "pager"),
        # An alert from elsewhere without a severity still reaches someone.
        ({"alertname": "SomethingElse"}, "ticket"),
        ({"alertname": "SomethingElse", "severity": "info"}, "ticket"),
    ],
)
def test_route(labels: dict[str, str], receiver: str) -> None:
    """amtool config routes test sends the alert to the receiver of its severity."""
    assert routed_receivers(labels) == receiver


@pytest.mark.parametrize(
    "rule", alert_rules(), ids=lambda rule: f"{rule['alert']}-{rule['labels']['severity']}"
)
def test_every_alert_reaches_the_receiver_of_its_severity(rule: dict[str, Any]) -> None:
    """Each alert the rules can raise routes to pager when critical and ticket when warning."""
    severity = rule["labels"]["severity"]
    assert (
        routed_receivers({"alertname": rule["alert"], "severity": severity})
        == RECEIVER_FOR_SEVERITY[severity]
    )


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(condition: Callable[[], bool]) -> bool:
    """Poll condition until it holds or the deadline passes; return its last result."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def http(method: str, url: str, body: Any = None) -> Any:
    """Send a request to the local Alertmanager and return its decoded JSON answer, if any."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with LOCAL_HTTP.open(request, timeout=10) as response:
        payload = response.read()
    return json.loads(payload) if payload else None


def is_ready(url: str) -> bool:
    """Return whether Alertmanager answers its readiness endpoint."""
    try:
        with LOCAL_HTTP.open(f"{url}/-/ready", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """Start Alertmanager with the bundled configuration on a free loopback port; yield its URL."""
    port = free_loopback_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "alertmanager.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                binary("prometheus-alertmanager"),
                f"--config.file={ALERTMANAGER_CONFIG}",
                f"--storage.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            started = wait_for(lambda: process.poll() is not None or is_ready(url))
            assert started and process.poll() is None, log_path.read_text()
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=DEADLINE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def alert(alertname: str, severity: str, **labels: str) -> dict[str, str]:
    """Return the label set of an alert."""
    return {"alertname": alertname, "severity": severity, **labels}


# Alerts that inhibit others in the scenario below.
GROUP_OUTAGE_META = alert("ProbeGroupOutage", "critical", group="meta")
SERVICE_DOWN_GMAIL = alert("ProbeServiceDown", "critical", service="gmail", group="google")
LOCATION_DOWN_AP_SOUTH = alert("ProbeLocationDown", "warning", location="ap-south")
EXPORTER_DOWN_SA_EAST = alert(
    "ProbeExporterDown", "warning", job="outage-exporter", instance="sa-east:9715", location="sa-east"
)
EXPORTER_DOWN_AF_SOUTH = alert(
    "ProbeExporterDown", "warning", job="outage-exporter", instance="af-south:9715", location="af-south"
)
FAST_BURN_YOUTUBE = alert("ProbeErrorBudgetBurn", "critical", service="youtube", group="google")
EXPORTER_STALLED_EU_CENTRAL = alert(
    "ProbeExporterStalled",
    "warning",
    job="outage-exporter",
    instance="eu-central:9715",
    location="eu-central",
)
EXPORTER_STALLED_EU_NORTH = alert(
    "ProbeExporterStalled", "warning", job="outage-exporter", instance="eu-north:9715", location="eu-north"
)
# A scrape target whose `location` label was forgotten.
EXPORTER_DOWN_UNLABELLED = alert(
    "ProbeExporterDown", "warning", job="outage-exporter", instance="unlabelled:9715"
)

# Every alert posted, with the alert expected to inhibit it (None: stays active).
INHIBITION_CASES: list[tuple[dict[str, str], dict[str, str] | None]] = [
    (GROUP_OUTAGE_META, None),
    (alert("ProbeServiceDown", "critical", service="instagram-login", group="meta"), GROUP_OUTAGE_META),
    (
        alert(
            "ProbeServiceDownInLocation", "warning", service="facebook-feed", group="meta", location="eu-west"
        ),
        GROUP_OUTAGE_META,
    ),
    (alert("ProbeErrorBudgetBurn", "critical", service="whatsapp-api", group="meta"), GROUP_OUTAGE_META),
    # Certificates are not explained by an outage.
    (
        alert(
            "ProbeTLSCertificateExpiringSoon",
            "warning",
            service="instagram-login",
            group="meta",
            location="eu-west",
        ),
        None,
    ),
    # Another group is not under the outage.
    (SERVICE_DOWN_GMAIL, None),
    (
        alert("ProbeServiceDownInLocation", "warning", service="gmail", group="google", location="eu-west"),
        SERVICE_DOWN_GMAIL,
    ),
    (alert("ProbeErrorBudgetBurn", "warning", service="gmail", group="google"), SERVICE_DOWN_GMAIL),
    # A service being down does not explain its latency.
    (alert("ProbeSlow", "warning", service="gmail", group="google", location="eu-west"), None),
    (LOCATION_DOWN_AP_SOUTH, None),
    (
        alert(
            "ProbeServiceDownInLocation", "warning", service="youtube", group="google", location="ap-south"
        ),
        LOCATION_DOWN_AP_SOUTH,
    ),
    (
        alert("ProbeSlow", "warning", service="youtube", group="google", location="ap-south"),
        LOCATION_DOWN_AP_SOUTH,
    ),
    # The same service from a healthy location: nothing explains it.
    (
        alert("ProbeServiceDownInLocation", "warning", service="youtube", group="google", location="us-east"),
        None,
    ),
    (EXPORTER_DOWN_SA_EAST, None),
    (
        alert("ProbeServiceDownInLocation", "warning", service="search", group="google", location="sa-east"),
        EXPORTER_DOWN_SA_EAST,
    ),
    (
        alert(
            "ProbeStale",
            "warning",
            job="outage-exporter",
            instance="sa-east:9715",
            service="search",
            group="google",
            location="sa-east",
        ),
        EXPORTER_DOWN_SA_EAST,
    ),
    # Its own location alert; kept apart from the alerts above, which it
    # would inhibit as well.
    (EXPORTER_DOWN_AF_SOUTH, None),
    (alert("ProbeLocationDown", "warning", location="af-south"), EXPORTER_DOWN_AF_SOUTH),
    # A stalling exporter explains its location's latency and down alerts.
    (EXPORTER_STALLED_EU_CENTRAL, None),
    (
        alert("ProbeSlow", "warning", service="maps", group="google", location="eu-central"),
        EXPORTER_STALLED_EU_CENTRAL,
    ),
    (
        alert("ProbeServiceDownInLocation", "warning", service="maps", group="google", location="eu-central"),
        EXPORTER_STALLED_EU_CENTRAL,
    ),
    # Its own location, as for ProbeExporterDown above.
    (EXPORTER_STALLED_EU_NORTH, None),
    (alert("ProbeLocationDown", "warning", location="eu-north"), EXPORTER_STALLED_EU_NORTH),
    # but not a certificate, nor a service down from most locations.
    (
        alert(
            "ProbeTLSCertificateExpiringSoon",
            "warning",
            service="maps",
            group="google",
            location="eu-central",
        ),
        None,
    ),
    (FAST_BURN_YOUTUBE, None),
    (alert("ProbeErrorBudgetBurn", "warning", service="youtube", group="google"), FAST_BURN_YOUTUBE),
    # Neither alert has a location; `equal: [location]` alone would call
    # them equal, the rule's `location=~".+"` matchers must not.
    (EXPORTER_DOWN_UNLABELLED, None),
    (
        alert(
            "ProbeStale",
            "warning",
            job="outage-exporter",
            instance="unlabelled:9715",
            service="maps",
            group="google",
        ),
        None,
    ),
]


def describe(labels: dict[str, str]) -> str:
    """Return an alert's label set in PromQL notation, for readable failures."""
    rest = ", ".join(f'{name}="{value}"' for name, value in sorted(labels.items()) if name != "alertname")
    return f"{labels['alertname']}{{{rest}}}"


def inhibition_state(url: str) -> dict[str, str | None]:
    """Map each alert Alertmanager holds to the alert inhibiting it, or None."""
    alerts = http("GET", f"{url}/api/v2/alerts")
    by_fingerprint = {item["fingerprint"]: describe(item["labels"]) for item in alerts}
    state: dict[str, str | None] = {}
    for item in alerts:
        inhibited_by = item["status"]["inhibitedBy"]
        assert len(inhibited_by) <= 1, item
        assert (item["status"]["state"] == "suppressed") == bool(inhibited_by), item
        state[describe(item["labels"])] = by_fingerprint.get(inhibited_by[0]) if inhibited_by else None
    return state


def test_alertmanager_inhibits_the_alerts_an_outage_explains(alertmanager: str) -> None:
    """A real Alertmanager marks exactly the alerts explained by a wider outage as inhibited."""
    http("POST", f"{alertmanager}/api/v2/alerts", [{"labels": labels} for labels, _ in INHIBITION_CASES])
    expected = {
        describe(labels): None if source is None else describe(source) for labels, source in INHIBITION_CASES
    }
    # Alertmanager learns the inhibiting alerts asynchronously: poll.
    wait_for(lambda: inhibition_state(alertmanager) == expected)
    assert inhibition_state(alertmanager) == expected


def rule_names_read(expr: str) -> set[str]:
    """Recording rule names (level:metric:operations) and alert names (ALERTS) an expression reads."""
    names = set(re.findall(r"\b[a-z_]+:[a-z_]+:[a-z0-9_]+\b", expr))
    for selector in re.findall(r'ALERTS\{alertname=~?"([^"]+)"', expr):
        names.update(selector.split("|"))
    return names


def test_alerts_follow_the_rules_they_read_in_one_group() -> None:
    """An alert reading recording rules sits in a group defining some of them, after all it reads there.

    Rules of a group run in order at one evaluation, so an alert after its recording rules and
    after the alerts that explain it reads their values of the same evaluation.
    """
    for group in load_rule_groups():
        defined_before: set[str] = set()
        in_group = {rule.get("record") or rule["alert"] for rule in group["rules"]}
        for rule in group["rules"]:
            if "alert" in rule:
                reads = rule_names_read(rule["expr"])
                records = {name for name in reads if ":" in name}
                if records:
                    assert records & in_group, (rule["alert"], group["name"])
                late = (reads & in_group) - defined_before - {rule["alert"]}
                assert not late, f"{rule['alert']} reads {late} before {group['name']} defines it"
                defined_before.add(rule["alert"])
            else:
                defined_before.add(rule["record"])


def test_every_service_alert_stays_silent_in_maintenance() -> None:
    """Each alert about a service or its location leaves out services inside a maintenance window."""
    about_exporters = {
        "ProbeExporterDown",
        "ProbeExporterAbsent",
        "ProbeExporterConfigReloadFailed",
        "ProbeExporterStalled",
        # Shares that leave maintenance services out, rather than alerts about one service.
        "ProbeGroupOutage",
        "ProbeLocationDown",
    }
    for rule in alert_rules():
        if rule["alert"] in about_exporters:
            continue
        assert "probe_maintenance" in rule["expr"], rule["alert"]
