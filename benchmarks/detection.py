"""Detection: which notifications an outage raises, and when, through the real alerting chain.

Run from the repository root (PYTHONPATH pointing at it):

    python3 benchmarks/detection.py                               # every scenario, 5 runs each
    python3 benchmarks/detection.py --runs 1 --scenarios blip10,flapping --conditions history

Each run starts, on loopback and on fresh storage: three exporters (locations eu, us, ap) with a
15s interval, Prometheus with prometheus/prometheus.yml and prometheus/rules/*.yml as shipped
(only the targets and the Alertmanager address changed), Alertmanager with
prometheus/alertmanager.yml as shipped (only the receiver URLs changed), a webhook receiver, and
one small HTTP server per location that plays the world as seen from there: six services in two
groups (meta: login, feed, upload, messenger; google: mail, search) and a vendor status page
(meta-status). A scenario then breaks something, mends it, and the run records every
notification Alertmanager posts, with its time since the break (or since the mend, for resolved
notifications).

Two conditions: ``fresh`` (empty storage: the case of a Prometheus just deployed) and
``history`` (three days of healthy history backfilled with ``promtool tsdb
create-blocks-from openmetrics``: the scraped series and the recording rules' outputs that the
rules read over long windows, as a Prometheus running the rules for three days has them).

A run is right when exactly the expected notifications arrive: the expected firing ones, their
resolved ones when the scenario mends in time, nothing else. Results go to stdout as a Markdown
table; ``--json PATH`` also writes every notification of every run. A run takes 4 to 8 minutes;
``--parallel`` runs several at once (they share nothing but the machine).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.stack import (  # noqa: E402
    ALERTMANAGER_CONFIG,
    RULES_DIR,
    Notification,
    Process,
    Prometheus,
    WebhookReceiver,
    free_port,
    start_alertmanager,
    start_exporter,
    wait_until,
)

PROMETHEUS_CONFIG = ROOT / "prometheus" / "prometheus.yml"
LOCATIONS = ("eu", "us", "ap")
GROUPS = {"meta": ("login", "feed", "upload", "messenger"), "google": ("mail", "search")}
SERVICES = tuple(name for names in GROUPS.values() for name in names)
GROUP_OF = {name: group for group, names in GROUPS.items() for name in names}
STATUS_PAGE = "meta-status"
INTERVAL = "15s"
HISTORY_DAYS = 3
# Backfilled history older than this is regenerated, so its end stays close to the runs' start.
HISTORY_MAX_AGE = 20 * 60.0
# After everything is scraped healthy, this long passes before the break, so the rules have
# settled (a `for:` that started during start-up has nothing to do with the scenario).
SETTLE = 30.0


class World:
    """What the services and the status page answer, per location; scenarios change it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.down: set[str] = set()  # services failing everywhere
        self.cut_pairs: set[tuple[str, str]] = set()  # (service, location) paths broken
        self.cut_locations: set[str] = set()  # a location's own network broken
        self.indicator = "none"

    def answer(self, location: str, service: str) -> int:
        """The status code ``service`` answers a probe from ``location`` with."""
        with self.lock:
            broken = (
                service in self.down
                or (service, location) in self.cut_pairs
                or location in self.cut_locations
            )
        return 503 if broken else 200

    def summary(self, location: str) -> tuple[int, bytes]:
        """The status page document as ``location`` sees it."""
        with self.lock:
            if location in self.cut_locations:
                return 503, b"unreachable"
            indicator = self.indicator
        document = {
            "page": {"id": "p", "name": "Meta", "url": "http://status.invalid"},
            "status": {"indicator": indicator, "description": indicator},
            "components": [],
            "incidents": [],
            "scheduled_maintenances": [],
        }
        return 200, json.dumps(document).encode()


class _LocationServer(ThreadingHTTPServer):
    daemon_threads = True
    world: World
    location: str


class _LocationHandler(BaseHTTPRequestHandler):
    server: _LocationServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith("/svc/"):
            status, body = self.server.world.answer(self.server.location, path[5:]), b"service"
        elif path.startswith("/status/"):
            status, body = self.server.world.summary(self.server.location)
        else:
            status, body = 404, b"no such path"
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # an exporter stopped or gave up mid-answer: nothing to tell it

    def log_message(self, format: str, *args: Any) -> None:
        pass


class LocationView:
    """An HTTP server on loopback answering for ``location``."""

    def __init__(self, world: World, location: str) -> None:
        self.server = _LocationServer(("127.0.0.1", 0), _LocationHandler)
        self.server.world = world
        self.server.location = location
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


class TimedWebhook(WebhookReceiver):
    """A webhook receiver that also notes when each notification arrived."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, Notification]] = []
        super().__init__()

    def _record(self, notification: Notification) -> None:
        with self._lock:
            self.arrivals.append((time.monotonic(), notification))
            self._notifications.append(notification)


# --- the scenarios -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """A notification a scenario must raise: receiver path, alert name, identifying labels."""

    path: str
    alertname: str
    labels: tuple[tuple[str, str], ...]

    def matches(self, path: str, labels: dict[str, str]) -> bool:
        return (
            path == self.path
            and labels.get("alertname") == self.alertname
            and all(labels.get(k) == v for k, v in self.labels)
        )

    def __str__(self) -> str:
        inner = ",".join(f"{k}={v}" for k, v in self.labels)
        return f"{self.path[1:]} {self.alertname}{{{inner}}}"


def page(alertname: str, **labels: str) -> Expected:
    return Expected("/pager", alertname, tuple(sorted(labels.items())))


def ticket(alertname: str, **labels: str) -> Expected:
    return Expected("/ticket", alertname, tuple(sorted(labels.items())))


Action = Callable[["Run"], None]


@dataclass(frozen=True)
class Scenario:
    """A fault: what happens when (seconds after the break), what must be notified."""

    name: str
    what: str
    actions: tuple[tuple[float, Action], ...]
    end: float  # seconds after the break the run stops observing
    fixed_at: float | None  # when the fault is mended (resolved notifications are due after it)
    expected: dict[str, tuple[Expected, ...]]  # by condition
    needs: str = ""  # an exporter feature the scenario needs


def set_down(*services: str) -> Action:
    def act(run: Run) -> None:
        with run.world.lock:
            run.world.down |= set(services)

    return act


def clear_down(*services: str) -> Action:
    def act(run: Run) -> None:
        with run.world.lock:
            run.world.down -= set(services)

    return act


def cut(service: str | None, *locations: str) -> Action:
    def act(run: Run) -> None:
        with run.world.lock:
            if service is None:
                run.world.cut_locations |= set(locations)
            else:
                run.world.cut_pairs |= {(service, loc) for loc in locations}

    return act


def mend(service: str | None, *locations: str) -> Action:
    def act(run: Run) -> None:
        with run.world.lock:
            if service is None:
                run.world.cut_locations -= set(locations)
            else:
                run.world.cut_pairs -= {(service, loc) for loc in locations}

    return act


def indicator(value: str) -> Action:
    def act(run: Run) -> None:
        with run.world.lock:
            run.world.indicator = value

    return act


def kill_exporter(location: str) -> Action:
    def act(run: Run) -> None:
        run.exporters[location].stop()

    return act


def both(expected: tuple[Expected, ...]) -> dict[str, tuple[Expected, ...]]:
    return {"fresh": expected, "history": expected}


def flapping_actions(service: str, down: float, up: float, until: float) -> tuple[tuple[float, Action], ...]:
    actions: list[tuple[float, Action]] = []
    t = 0.0
    while t < until:
        actions.append((t, set_down(service)))
        actions.append((t + down, clear_down(service)))
        t += down + up
    return tuple(actions)


META = GROUPS["meta"]
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "global",
            "login down everywhere for 120s",
            ((0, set_down("login")), (120, clear_down("login"))),
            end=270,
            fixed_at=120,
            expected=both((page("ProbeServiceDown", service="login"),)),
        ),
        Scenario(
            "recovery",
            "login down everywhere for 120s, then watched for 6 minutes after the fix",
            ((0, set_down("login")), (120, clear_down("login"))),
            end=480,
            fixed_at=120,
            # Its failures stay in the 5m and 30m burn windows after the fix: no page from them.
            expected=both((page("ProbeServiceDown", service="login"),)),
        ),
        Scenario(
            "group",
            "the four meta services down everywhere for 120s",
            ((0, set_down(*META)), (120, clear_down(*META))),
            end=270,
            fixed_at=120,
            expected=both((page("ProbeGroupOutage", group="meta"),)),
        ),
        Scenario(
            "two-of-three",
            "login unreachable from eu and us for 120s, fine from ap",
            ((0, cut("login", "eu", "us")), (120, mend("login", "eu", "us"))),
            end=270,
            fixed_at=120,
            expected=both((page("ProbeServiceDown", service="login"),)),
        ),
        Scenario(
            "regional",
            "login unreachable from eu only for 200s",
            ((0, cut("login", "eu")), (200, mend("login", "eu"))),
            end=350,
            fixed_at=200,
            expected=both((ticket("ProbeServiceDownInLocation", service="login", location="eu"),)),
        ),
        Scenario(
            "prober-cut",
            "eu's own network broken (every service fails from eu) for 120s",
            ((0, cut(None, "eu")), (120, mend(None, "eu"))),
            end=270,
            fixed_at=120,
            expected=both((ticket("ProbeLocationDown", location="eu"),)),
        ),
        Scenario(
            "exporter-down",
            "the eu exporter killed",
            ((0, kill_exporter("eu")),),
            end=150,
            fixed_at=None,
            expected=both((ticket("ProbeExporterDown", location="eu"),)),
        ),
        Scenario(
            "blip10",
            "every service down everywhere for 10s (less than the 15s interval)",
            ((0, set_down(*SERVICES)), (10, clear_down(*SERVICES))),
            end=200,
            fixed_at=10,
            expected=both(()),
        ),
        Scenario(
            "blip20",
            "every service down everywhere for 20s",
            ((0, set_down(*SERVICES)), (20, clear_down(*SERVICES))),
            end=200,
            fixed_at=20,
            expected=both(()),
        ),
        Scenario(
            "flapping",
            "login down 10s of every 37s, everywhere, for 7 minutes",
            flapping_actions("login", 10, 27, 420),
            end=480,
            fixed_at=None,
            # With no history the budget windows are not trusted yet: nothing. With history the
            # quorum sees login down about a quarter of the time: the burn-rate page.
            expected={
                "fresh": (),
                "history": (page("ProbeErrorBudgetBurn", service="login", severity="critical"),),
            },
        ),
        Scenario(
            "vendor-major",
            "the meta status page says major for 200s while every probe passes",
            ((0, indicator("major")), (200, indicator("none"))),
            end=350,
            fixed_at=200,
            expected=both((ticket("ProbeVendorMajorIncident", service=STATUS_PAGE),)),
        ),
        Scenario(
            "maintenance",
            "login down everywhere from the break for 240s, inside a maintenance window until 120s",
            ((0, set_down("login")), (240, clear_down("login"))),
            end=390,
            fixed_at=240,
            # Silent in the window; the fault outlasts it, so ProbeServiceDown pages after it.
            expected=both((page("ProbeServiceDown", service="login"),)),
            needs="maintenance",
        ),
    )
}
MAINTENANCE_END = 120.0


# --- one run -----------------------------------------------------------------------------------


def exporter_config(view: LocationView, maintenance: str = "") -> str:
    lines = [
        f"global: {{interval: {INTERVAL}, timeout: 5s}}",
        "services:",
    ]
    for name in SERVICES:
        lines.append(
            f"  - {{name: {name}, group: {GROUP_OF[name]}, prober: http, target: '{view.url}/svc/{name}',"
            " objectives: {availability: 0.999}}"
        )
    lines.append(f"  - {{name: {STATUS_PAGE}, group: meta, prober: statuspage, target: '{view.url}/status'}}")
    return "\n".join(lines) + "\n" + maintenance


def maintenance_block(start: float, end: float) -> str:
    """A ``maintenance:`` section putting login in a window from ``start`` to ``end`` (unix time)."""
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return (
        "maintenance:\n"
        f"  - {{services: [login], start: '{time.strftime(fmt, time.gmtime(start))}',"
        f" end: '{time.strftime(fmt, time.gmtime(end))}', reason: detection benchmark}}\n"
    )


def exporter_supports(feature: str, workdir: Path) -> bool:
    """Whether the exporter under test accepts a config using ``feature``."""
    if feature != "maintenance":
        return True
    view_url = "http://127.0.0.1:9/"
    text = (
        f"services:\n  - {{name: login, group: meta, prober: http, target: '{view_url}'}}\n"
        + maintenance_block(time.time(), time.time() + 60)
    )
    path = workdir / "feature-check.yml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode == 0


def prometheus_config(exporters: dict[str, str], alertmanager: str) -> str:
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "outage-exporter"]
    job["static_configs"] = [
        {"targets": [url.removeprefix("http://")], "labels": {"location": location}}
        for location, url in exporters.items()
    ]
    config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [
        alertmanager.removeprefix("http://")
    ]
    config["rule_files"] = [str(path) for path in sorted(RULES_DIR.glob("*.yml"))]
    return yaml.safe_dump(config, sort_keys=False)


def alertmanager_config(webhook: WebhookReceiver) -> str:
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for receiver in config["receivers"]:
        for webhook_config in receiver["webhook_configs"]:
            webhook_config["url"] = webhook.url + "/" + webhook_config["url"].split("/", 3)[3]
    return yaml.safe_dump(config, sort_keys=False)


@dataclass
class Arrival:
    at: float  # seconds after the break
    path: str
    status: str
    labels: dict[str, str]

    def describe(self) -> str:
        keys = ("service", "group", "location", "severity")
        inner = ",".join(f"{k}={self.labels[k]}" for k in keys if k in self.labels)
        return f"+{self.at:.0f}s {self.path[1:]} {self.labels['alertname']}{{{inner}}} {self.status}"


@dataclass
class Result:
    scenario: str
    condition: str
    index: int
    arrivals: list[Arrival] = field(default_factory=list)
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    first: float | None = None  # first expected firing notification, seconds after the break
    resolved: float | None = None  # its resolved notification, seconds after the mend
    skipped: str = ""


class Run:
    """One scenario under one condition on its own stack."""

    def __init__(self, scenario: Scenario, condition: str, index: int, history: Path | None) -> None:
        self.scenario = scenario
        self.condition = condition
        self.index = index
        self.history = history
        self.world = World()
        self.exporters: dict[str, Process] = {}

    def execute(self, keep: bool) -> Result:
        result = Result(self.scenario.name, self.condition, self.index)
        workdir = Path(tempfile.mkdtemp(prefix=f"detection-{self.scenario.name}-{self.condition}-"))
        views: list[LocationView] = []
        processes: list[Process] = []
        webhook = TimedWebhook()
        try:
            if self.scenario.needs and not exporter_supports(self.scenario.needs, workdir):
                result.skipped = f"the exporter has no `{self.scenario.needs}` support"
                return result
            views = [LocationView(self.world, location) for location in LOCATIONS]
            maintenance = ""
            break_at_wall = time.time() + 60.0  # refined below; only the maintenance window uses it
            if self.scenario.needs == "maintenance":
                # The window opens now and closes MAINTENANCE_END after the break; the break comes
                # after start-up and SETTLE, at most START_BUDGET from now.
                break_at_wall = time.time() + START_BUDGET
                maintenance = maintenance_block(time.time(), break_at_wall + MAINTENANCE_END)
            for location, view in zip(LOCATIONS, views, strict=True):
                config = workdir / f"exporter-{location}.yml"
                config.write_text(exporter_config(view, maintenance))
                process = start_exporter(config, location, workdir)
                processes.append(process)
                self.exporters[location] = process
            webhook_am = start_alertmanager(alertmanager_config(webhook), workdir)
            processes.append(webhook_am)
            prometheus = self.start_prometheus(workdir, webhook_am.url)
            processes.append(prometheus)

            def healthy() -> bool:
                # Live series only: backfilled ones may still be within the lookback.
                samples = prometheus.query('probe_success{job="outage-exporter", instance!~"history-.*"}')
                live = [s for s in samples if float(s["value"][1]) == 1.0]
                return len(live) == (len(SERVICES) + 1) * len(LOCATIONS) and bool(prometheus.alertmanagers())

            wait_until(healthy, 120.0, "every service scraped as up from every location")
            if self.scenario.needs == "maintenance":
                pause = break_at_wall - time.time()
                if pause < 0:
                    raise AssertionError("start-up took longer than the maintenance window allows")
                time.sleep(pause)
            else:
                time.sleep(SETTLE)
            if webhook.arrivals:
                result.problems.append("notifications before the break")
            broke = time.monotonic()
            pending = sorted(self.scenario.actions, key=lambda item: item[0])
            while time.monotonic() - broke < self.scenario.end:
                now = time.monotonic() - broke
                while pending and pending[0][0] <= now:
                    pending.pop(0)[1](self)
                time.sleep(0.05)
            result.arrivals = [
                Arrival(at - broke, n.path, alert["status"], dict(alert["labels"]))
                for at, n in list(webhook.arrivals)
                for alert in n.alerts
            ]
            judge(self.scenario, self.condition, result)
            if result.problems:
                # What Prometheus saw, for the report of a wrong run.
                window = f"[{int(self.scenario.end) + 60}s]"
                for expr in (
                    f"count_over_time(ALERTS{{alertstate='firing'}}{window})",
                    f"max_over_time(service:probe_failing_locations:ratio{window})",
                ):
                    seen = [(s["metric"], s["value"][1]) for s in prometheus.query(expr)]
                    result.problems.append(f"{expr}: {seen}")
        except AssertionError as err:
            result.problems.append(f"harness: {err}")
        finally:
            for process in reversed(processes):
                process.stop()
            for view in views:
                view.close()
            webhook.close()
            if result.problems and not result.skipped:
                logs = workdir / "logs.txt"
                logs.write_text("\n".join(f"===== {p.name} =====\n{p.logs()}" for p in processes))
                result.problems.append(f"logs: {logs}")
            elif not keep:
                shutil.rmtree(workdir, ignore_errors=True)
        return result

    def start_prometheus(self, workdir: Path, alertmanager: str) -> Prometheus:
        port = free_port()
        pdir = workdir / f"prometheus-{port}"
        data = pdir / "data"
        data.mkdir(parents=True)
        if self.history is not None:
            for block in self.history.iterdir():
                if block.is_dir():
                    shutil.copytree(block, data / block.name)
        config_path = pdir / "prometheus.yml"
        exporters = {location: process.url for location, process in self.exporters.items()}
        config_path.write_text(prometheus_config(exporters, alertmanager))
        args = [
            shutil.which("prometheus") or "prometheus",
            f"--config.file={config_path}",
            f"--storage.tsdb.path={data}",
            "--storage.tsdb.retention.time=30d",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        process = Prometheus("prometheus", args, f"http://127.0.0.1:{port}", pdir)
        try:
            process.wait_ready(timeout=120.0)
        except BaseException:
            process.stop()
            raise
        return process


# The break of a maintenance run comes this long after its exporters are configured.
START_BUDGET = 75.0


def judge(scenario: Scenario, condition: str, result: Result) -> None:
    """Compare what arrived with what the scenario expects."""
    expected = scenario.expected[condition]
    firing = [a for a in result.arrivals if a.status == "firing"]
    resolved = [a for a in result.arrivals if a.status == "resolved"]
    for want in expected:
        hits = [a for a in firing if want.matches(a.path, a.labels)]
        if not hits:
            result.problems.append(f"missing: {want}")
            continue
        if len(hits) > 1:
            result.problems.append(f"{len(hits)} firing notifications for {want}")
        if result.first is None:
            result.first = hits[0].at
        fixed = scenario.fixed_at
        done = [a for a in resolved if want.matches(a.path, a.labels)]
        if fixed is not None and fixed + 150 <= scenario.end and hits[0].at < fixed:
            if not done:
                result.problems.append(f"no resolved notification for {want}")
            elif result.resolved is None:
                result.resolved = done[0].at - fixed
    for arrival in result.arrivals:
        if not any(want.matches(arrival.path, arrival.labels) for want in expected):
            result.problems.append(f"unexpected: {arrival.describe()}")
    result.ok = not result.problems


# --- history -----------------------------------------------------------------------------------


def write_history(path: Path, end: float) -> None:
    """Three days of healthy history in OpenMetrics, ending at ``end``.

    Scraped series get a sample a minute. The recording rules' outputs that the rules average
    over long windows get one per evaluation of their group (5s, 30s) as a running Prometheus
    records them: avg_over_time weighs samples, not seconds, so coarser history would outweigh
    the live samples.
    """
    start = end - HISTORY_DAYS * 86400 - 3600
    with path.open("w") as out:

        def family(name: str, kind: str, labelsets: list[str], value: float, step: float) -> None:
            out.write(f"# TYPE {name} {kind}\n")
            sample = name + ("_total" if kind == "counter" else "")
            count = int((end - start) // step) + 1
            for labels in labelsets:
                for i in range(count):
                    current = value * i if kind == "counter" else value
                    out.write(f"{sample}{{{labels}}} {current:g} {start + step * i:.3f}\n")

        def probe_labels(service: str, location: str) -> str:
            return (
                f'job="outage-exporter",instance="history-{location}:9715",'
                f'service="{service}",group="{GROUP_OF[service]}",location="{location}"'
            )

        pairs = [probe_labels(s, loc) for s in SERVICES for loc in LOCATIONS]
        family("probe_success", "gauge", pairs, 1, 60)
        family("probe_runs", "counter", pairs, 4, 60)
        family("probe_objective_availability_ratio", "gauge", pairs, 0.999, 60)
        up = [f'job="outage-exporter",instance="history-{loc}:9715",location="{loc}"' for loc in LOCATIONS]
        family("up", "gauge", up, 1, 60)
        # The recording rules' outputs that the rules read over long windows or with offset.
        per_location = [
            f'service="{s}",group="{GROUP_OF[s]}",location="{loc}"' for s in SERVICES for loc in LOCATIONS
        ]
        per_service = [f'service="{s}",group="{GROUP_OF[s]}"' for s in SERVICES]
        family("service_location:probe_success:max", "gauge", per_location, 1, 60)
        family("service:probe_failing_locations:ratio", "gauge", per_service, 0, 60)
        family("service:probe_down:quorum", "gauge", per_service, 0, 5)
        family("service:probe_down:ratio_avg5m", "gauge", per_service, 0, 30)
        out.write("# EOF\n")


class History:
    """Backfilled TSDB blocks, made once and regenerated when they grow old."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.Lock()
        self.made = 0.0
        self.current: Path | None = None
        self.generation = 0

    def blocks(self) -> Path:
        with self.lock:
            if self.current is None or time.time() - self.made > HISTORY_MAX_AGE:
                self.generation += 1
                # Ten minutes before now: the backfilled series must have left the 5-minute
                # lookback before the run breaks anything, or their healthy last samples would
                # still count beside the live ones.
                end = time.time() - 600
                text = self.root / f"history-{self.generation}.om"
                write_history(text, end)
                out = self.root / f"blocks-{self.generation}"
                out.mkdir()
                subprocess.run(
                    [
                        shutil.which("promtool") or "promtool",
                        "tsdb",
                        "create-blocks-from",
                        "openmetrics",
                        "--max-block-duration=24h",
                        str(text),
                        str(out),
                    ],
                    check=True,
                    capture_output=True,
                    timeout=900,
                )
                text.unlink()
                self.current, self.made = out, time.time()
            return self.current


# --- reporting ---------------------------------------------------------------------------------


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.0f} / {max(values):.0f}"


def table(results: list[Result]) -> str:
    lines = [
        "| scenario | condition | expected | runs right | first notification, s after the break"
        " (median / max) | resolved, s after the fix (median / max) | wrong runs got |",
        "|---|---|---|---|---|---|---|",
    ]
    keys: list[tuple[str, str]] = []
    for r in results:
        if (r.scenario, r.condition) not in keys:
            keys.append((r.scenario, r.condition))
    for name, condition in keys:
        group = [r for r in results if (r.scenario, r.condition) == (name, condition)]
        scenario = SCENARIOS[name]
        expected = ", ".join(str(e) for e in scenario.expected[condition]) or "nothing"
        if all(r.skipped for r in group):
            lines.append(f"| {name} | {condition} | {expected} | not run: {group[0].skipped} | | | |")
            continue
        ran = [r for r in group if not r.skipped]
        right = sum(r.ok for r in ran)
        firsts = [r.first for r in ran if r.first is not None]
        resolved = [r.resolved for r in ran if r.resolved is not None]
        wrong = "; ".join(
            sorted({p for r in ran if not r.ok for p in r.problems if not p.startswith("logs:")})
        )
        lines.append(
            f"| {name} | {condition} | {expected} | {right}/{len(ran)} | {fmt(firsts)} "
            f"| {fmt(resolved)} | {wrong} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each scenario and condition")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated names")
    parser.add_argument("--conditions", default="fresh,history", help="fresh, history or both")
    parser.add_argument("--parallel", type=int, default=4, help="runs at once")
    parser.add_argument("--json", type=Path, help="write every run's notifications here")
    parser.add_argument("--keep", action="store_true", help="keep the work directories of right runs too")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    bad_conditions = [c for c in conditions if c not in ("fresh", "history")]
    if unknown or bad_conditions or args.runs < 1 or args.parallel < 1:
        parser.error(
            f"unknown scenarios {unknown} (known: {', '.join(SCENARIOS)}), "
            f"unknown conditions {bad_conditions}, or --runs/--parallel below 1"
        )
    for tool in ("prometheus", "prometheus-alertmanager", "promtool"):
        if shutil.which(tool) is None:
            print(f"detection: {tool} is not on PATH (Debian packages prometheus, prometheus-alertmanager)")
            return 2
    root = Path(tempfile.mkdtemp(prefix="detection-history-"))
    history = History(root)
    jobs = [
        (SCENARIOS[name], condition, i)
        for i in range(args.runs)
        for name in names
        for condition in conditions
    ]
    results: list[Result] = []
    started = time.monotonic()

    def one(job: tuple[Scenario, str, int]) -> Result:
        scenario, condition, index = job
        blocks = history.blocks() if condition == "history" else None
        result = Run(scenario, condition, index, blocks).execute(args.keep)
        status = "skipped" if result.skipped else ("right" if result.ok else "WRONG")
        got = "; ".join(a.describe() for a in result.arrivals) or "no notifications"
        print(
            f"[{time.monotonic() - started:5.0f}s] {scenario.name} {condition} #{index + 1}: {status}: {got}",
            flush=True,
        )
        for problem in result.problems:
            print(f"        {problem}", flush=True)
        return result

    try:
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            results = list(pool.map(one, jobs))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(
        f"{len(results)} runs in {(time.monotonic() - started) / 60:.1f} minutes, {args.parallel} at a time"
    )
    print()
    print(table(results))
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "scenario": r.scenario,
                        "condition": r.condition,
                        "run": r.index + 1,
                        "ok": r.ok,
                        "skipped": r.skipped,
                        "problems": r.problems,
                        "notifications": [a.__dict__ for a in r.arrivals],
                    }
                    for r in results
                ],
                indent=2,
            )
        )
    return 0 if all(r.ok or r.skipped for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
