"""The Grafana dashboards: generated from grafana/generate.py, well formed, and every query answers."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import dns.message
import dns.rrset
import pytest
import trustme
import yaml

from tests.stack import ROOT, Prometheus, Stack, free_port, http_json, shortened_rules, wait_until

GRAFANA_DIR = ROOT / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"
DASHBOARD_FILES = sorted(DASHBOARD_DIR.glob("*.json"))
PROMETHEUS_CONFIG = ROOT / "prometheus" / "prometheus.yml"

# The uids other dashboards, links and bookmarks rely on.
UIDS = {
    "overview.json": "outage-exporter-overview",
    "service-detail.json": "outage-exporter-service",
    "slo.json": "outage-exporter-slo",
    "exporter.json": "outage-exporter-exporter",
}
DATASOURCE_UID = "${datasource}"
RATE_INTERVAL = "$__rate_interval"
# Fixed windows allowed in instant queries: the SLO period, which does not follow the time picker.
SLO_WINDOWS = {"30d"}

# The stack below scrapes and evaluates every second. Grafana would make $__rate_interval at
# least four scrape intervals; a few more leave room for a slow machine.
SCRAPE_INTERVAL = "1s"
RATE_WINDOW = "15s"
# Upper bounds for the stack to start and for a query to see data; safety nets, not expectations.
STARTUP = 30.0
DATA = 45.0

# Every alert waits for nothing, and every rule group is evaluated at the global interval, so the
# long-window rules and the alerts exist within seconds.
FOR_DURATIONS = {"1m": "0s", "2m": "0s", "5m": "0s", "15m": "0s"}


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in DASHBOARD_FILES}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_generate", GRAFANA_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside rows included."""
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def query_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in panels(board) if panel["type"] != "row"]


def variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in board["templating"]["list"]}


# ---------------------------------------------------------------- generated and well formed


def test_thresholds_come_from_the_rules(tmp_path: Path) -> None:
    """The lines panels draw are read from the alert rules: edit a rule, the reading follows."""
    generator = load_generator()
    rules_dir = ROOT / "prometheus" / "rules"
    read = generator.read_alert_thresholds(rules_dir)
    assert read["burn_rate_windows"][0] == ("1h", "5m", 14.4, "page")
    assert {w[3] for w in read["burn_rate_windows"]} == {"page", "ticket"}
    for path in rules_dir.glob("*.yml"):
        text = path.read_text()
        text = text.replace("ratio_rate5m < 0.9", "ratio_rate5m < 0.8")
        text = text.replace("< 14 * 86400", "< 21 * 86400")
        (tmp_path / path.name).write_text(text)
    edited = generator.read_alert_thresholds(tmp_path)
    assert edited["latency_objective_share"] == 0.8
    assert edited["tls_soon_days"] == 21
    assert edited["stale_seconds"] == read["stale_seconds"]
    for path in tmp_path.glob("*.yml"):
        path.write_text(path.read_text().replace("clamp_min(", "clamp_max("))
    with pytest.raises(generator.RulesChanged, match="ProbeStale"):
        generator.read_alert_thresholds(tmp_path)


def test_dashboards_are_generated() -> None:
    """Running grafana/generate.py reproduces the committed JSON exactly, file for file."""
    rendered = load_generator().render_all()
    assert sorted(rendered) == [path.name for path in DASHBOARD_FILES]
    for path in DASHBOARD_FILES:
        assert path.read_text() == rendered[path.name], (
            f"{path.relative_to(ROOT)} is stale: run python grafana/generate.py"
        )


def test_dashboard_uids_are_stable() -> None:
    """Each dashboard keeps its uid, and none is imported with a data source input."""
    boards = load_dashboards()
    assert {name: board["uid"] for name, board in boards.items()} == UIDS
    for name, path in zip(boards, DASHBOARD_FILES, strict=True):
        text = path.read_text()
        assert "${DS_" not in text and "__inputs" not in text, name
        assert "id" not in boards[name], f"{name}: a provisioned dashboard must not carry a numeric id"


@pytest.mark.parametrize("name", sorted(UIDS))
def test_variables(name: str) -> None:
    """A Prometheus data source variable, and group, service and location from label_values."""
    found = variables(load_dashboards()[name])
    assert list(found) == ["datasource", "group", "service", "location"]
    assert found["datasource"]["type"] == "datasource"
    assert found["datasource"]["query"] == "prometheus"
    for label in ("group", "service", "location"):
        var = found[label]
        assert var["type"] == "query"
        assert var["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}
        assert re.fullmatch(rf"label_values\(\w+\{{[^}}]*\}}, {label}\)", var["query"]), var["query"]
        assert var.get("description"), label


@pytest.mark.parametrize("name", sorted(UIDS))
def test_panel_ids_are_unique(name: str) -> None:
    """Panel ids and titles are unique within a dashboard, and refIds within a panel."""
    board = load_dashboards()[name]
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), ids
    titles = [panel["title"] for panel in panels(board)]
    assert len(titles) == len(set(titles)), titles
    for panel in query_panels(board):
        refs = [target["refId"] for target in panel["targets"]]
        assert all(refs) and len(refs) == len(set(refs)), (panel["title"], refs)


@pytest.mark.parametrize("name", sorted(UIDS))
def test_panels_do_not_overlap(name: str) -> None:
    """Every panel fits the 24-column grid and no two panels share a cell."""
    taken: dict[tuple[int, int], str] = {}
    for panel in panels(load_dashboards()[name]):
        pos = panel["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                other = taken.setdefault((x, y), panel["title"])
                assert other == panel["title"], f"{panel['title']!r} overlaps {other!r} at x={x} y={y}"


@pytest.mark.parametrize("name", sorted(UIDS))
def test_panels_are_complete(name: str) -> None:
    """Every panel reads the datasource variable and has a title, a description, a unit and queries."""
    for panel in query_panels(load_dashboards()[name]):
        title = panel.get("title")
        assert title, panel["id"]
        assert panel.get("description"), title
        assert panel["fieldConfig"]["defaults"].get("unit"), title
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, title
        assert panel["targets"], title
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, title
            assert target["expr"].strip(), title


@pytest.mark.parametrize("name", sorted(UIDS))
def test_rates_use_rate_interval(name: str) -> None:
    """Range selectors are [$__rate_interval], except the fixed SLO window of instant queries."""
    for panel in query_panels(load_dashboards()[name]):
        for target in panel["targets"]:
            for window in re.findall(r"\[([^\]]*)\]", target["expr"]):
                allowed = {RATE_INTERVAL} | (SLO_WINDOWS if target.get("instant") else set())
                assert window in allowed, f"{panel['title']}: [{window}] in {target['expr']}"


# ---------------------------------------------------------------- every query against a real stack


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class TLSTarget:
    """An HTTPS server on 127.0.0.1 with a certificate from the test CA."""

    def __init__(self, cert: trustme.LeafCert) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(
            self._server.socket, server_side=True, do_handshake_on_connect=False
        )
        self.url = f"https://localhost:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class DNSTarget:
    """A UDP DNS server on 127.0.0.1 answering every A query with 127.0.0.1."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            question = dns.message.from_wire(data)
            reply = dns.message.make_response(question)
            for asked in question.question:
                reply.answer.append(dns.rrset.from_text(asked.name, 60, "IN", "A", "127.0.0.1"))
            self._sock.sendto(reply.to_wire(), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._sock.close()


def exporter_config(
    healthy: str, failing: str, regional: str, tls: str, ca_file: Path, dns_server: str
) -> str:
    """Services of every prober kind; objectives on those the SLO panels show."""
    objectives = {"availability": 0.99, "latency": "250ms"}
    config = {
        "global": {"interval": "500ms", "timeout": "400ms"},
        "services": [
            {
                "name": "web-healthy",
                "group": "web",
                "prober": "http",
                "target": healthy,
                "objectives": objectives,
            },
            {
                "name": "web-failing",
                "group": "web",
                "prober": "http",
                "target": failing,
                "objectives": objectives,
            },
            {"name": "web-regional", "group": "web", "prober": "http", "target": regional},
            {
                "name": "web-tls",
                "group": "web",
                "prober": "http",
                "target": tls,
                "http": {"tls_config": {"ca_file": str(ca_file)}},
                "objectives": objectives,
            },
            {
                "name": "loopback-ping",
                "group": "network",
                "prober": "icmp",
                "target": "127.0.0.1",
                "icmp": {"preferred_ip_protocol": "ip4"},
            },
            {
                "name": "local-dns",
                "group": "network",
                "prober": "dns",
                "target": dns_server,
                "dns": {"query_name": "www.example.test", "preferred_ip_protocol": "ip4"},
            },
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def prometheus_config(exporters: dict[str, str]) -> str:
    """The bundled prometheus.yml scraping these exporters (location: URL) every second."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"] = {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL}
    config.pop("alerting", None)
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "outage-exporter"]
    job["static_configs"] = [
        {"targets": [url.removeprefix("http://")], "labels": {"location": location}}
        for location, url in exporters.items()
    ]
    return yaml.safe_dump(config, sort_keys=False)


def fast_rules(dest: Path) -> list[Path]:
    """The bundled rules with no `for:` and every group evaluated at the global interval."""
    copies = shortened_rules(dest, FOR_DURATIONS)
    for path in copies:
        rules = yaml.safe_load(path.read_text())
        for group in rules["groups"]:
            group.pop("interval", None)
        path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return copies


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Prometheus]:
    """Prometheus with the bundled rules, scraping two exporters that probe local targets.

    Location a reaches every target; location b finds web-regional on a closed port, so
    the dashboards see a service down everywhere, one down somewhere, and firing alerts.
    """
    tmp_path = tmp_path_factory.mktemp("dashboards")
    stack = Stack(tmp_path)
    tls = TLSTarget(ca.issue_cert("localhost", "127.0.0.1"))
    dns_server = DNSTarget()
    try:
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        healthy, failing = stack.target(), stack.target()
        failing.status = 503
        closed = f"http://127.0.0.1:{free_port()}/"
        exporters = {}
        for location, regional in (("a", healthy.url), ("b", closed)):
            config = exporter_config(healthy.url, failing.url, regional, tls.url, ca_file, dns_server.address)
            exporters[location] = stack.exporter(config, location).url
        server = stack.prometheus(prometheus_config(exporters), rule_files=fast_rules(tmp_path / "rules"))
        wait_until(lambda: server.targets_up() == 2, STARTUP, "both exporters to be scraped")
        yield server
    finally:
        stack.stop()
        tls.close()
        dns_server.close()
        print(stack.logs())


def label_values(prometheus: Prometheus, query: str, substitutions: dict[str, str]) -> list[str]:
    """Evaluate a variable's label_values(selector, label) query as Grafana does."""
    match = re.fullmatch(r"label_values\((.*), (\w+)\)", substitute(query, substitutions))
    assert match, query
    selector, label = match.groups()
    params = urllib.parse.urlencode({"match[]": selector})
    reply = http_json("GET", f"{prometheus.url}/api/v1/label/{label}/values?{params}")
    return list(reply["data"])


def substitute(expr: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return expr.replace(RATE_INTERVAL, RATE_WINDOW)


def evaluate(prometheus: Prometheus, expr: str, instant: bool) -> list[dict[str, Any]]:
    """The result of a query as Grafana would send it: instant now, or over the last minute."""
    now = time.time()
    if instant:
        params = {"query": expr, "time": f"{now:.3f}"}
        path = "query"
    else:
        params = {"query": expr, "start": f"{now - 60:.3f}", "end": f"{now:.3f}", "step": "1"}
        path = "query_range"
    reply = http_json("GET", f"{prometheus.url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
    assert reply["status"] == "success", reply
    return list(reply["data"]["result"])


def has_numbers(result: list[dict[str, Any]]) -> bool:
    """True when some series has a value that is a number (NaN is not data)."""
    values = [v for series in result for v in ([series["value"]] if "value" in series else series["values"])]
    return any(not math.isnan(float(value)) for _, value in values)


@pytest.mark.parametrize("name", sorted(UIDS))
def test_every_query_returns_data(name: str, prometheus: Prometheus) -> None:
    """Each panel query, with the variables as Grafana substitutes them, answers with numbers.

    Multi-value variables take their "All" value. A single-value variable takes each value its
    own query offers in turn, and a query passes when one of them gives data: the DNS panel of
    the Service detail dashboard has data for the DNS service, not for the HTTP ones.
    """
    board = load_dashboards()[name]
    found = variables(board)
    fixed = {"datasource": DATASOURCE_UID}
    fixed |= {var["name"]: var["allValue"] for var in found.values() if var.get("includeAll")}
    choices: list[dict[str, str]] = [fixed]
    for var in found.values():
        if var["type"] == "query" and not var.get("includeAll"):
            offered = wait_until(
                lambda var=var: label_values(prometheus, var["query"], fixed),
                STARTUP,
                f"values of ${var['name']}",
            )
            choices = [choice | {var["name"]: value} for choice in choices for value in offered]
    for var in found.values():
        if var["type"] == "query" and var.get("includeAll"):
            assert wait_until(
                lambda var=var: label_values(prometheus, var["query"], fixed),
                STARTUP,
                f"values of ${var['name']}",
            )

    pending = [
        (panel["title"], target["refId"], target["expr"], bool(target.get("instant")))
        for panel in query_panels(board)
        for target in panel["targets"]
    ]
    deadline = time.monotonic() + DATA
    while True:
        still_pending = []
        for title, ref, expr, instant in pending:
            queries = [substitute(expr, choice) for choice in choices]
            for query in queries:
                assert "$" not in query, f"{title} {ref}: unsubstituted variable in {query}"
            try:
                answered = any(has_numbers(evaluate(prometheus, query, instant)) for query in queries)
            except urllib.error.HTTPError as err:
                detail = err.read().decode(errors="replace")
                err.close()
                pytest.fail(f"{name}: {title} ({ref}) is rejected by Prometheus: {detail}\n{queries[0]}")
            if not answered:
                still_pending.append((title, ref, expr, instant))
        pending = still_pending
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not pending, f"{name}: queries without data: " + "; ".join(
        f"{t} ({r}): {e}" for t, r, e, _ in pending
    )


def test_overview_counts_services(prometheus: Prometheus) -> None:
    """The Overview's counters split the selected services as the probes see them."""
    board = load_dashboards()["overview.json"]
    values = {var["name"]: var.get("allValue", DATASOURCE_UID) for var in variables(board).values()}
    # The HTTP and DNS services, whose state does not depend on ICMP sockets being allowed.
    values["service"] = "web-.*|local-dns"
    counters = {
        panel["title"]: substitute(panel["targets"][0]["expr"], values)
        for panel in query_panels(board)
        if panel["title"] in {"Services up", "Down everywhere", "Down somewhere"}
    }

    def counts() -> dict[str, float]:
        return {title: float(prometheus.query(expr)[0]["value"][1]) for title, expr in counters.items()}

    # web-healthy, web-tls and local-dns answer everywhere, web-failing nowhere, web-regional from a.
    expected = {"Services up": 3.0, "Down everywhere": 1.0, "Down somewhere": 1.0}
    wait_until(lambda: counts() == expected, DATA, f"the counters to read {expected}")
