"""A local fixture set for the status page: one service in each state, served by real local servers."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.stack import Process, _ThreadedServer, exporter_argv, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "statuspage"
# The states the fixture set shows, by service: (state, words on the page).
EXPECTED = {
    "checkout": ("up", "Operational"),
    "search": ("degraded", "Degraded"),
    "payments": ("down", "Down"),
    "reports": ("maintenance", "Maintenance"),
    "vendor-cloud": ("down", "Down"),
}
SECRET_PATH = "/private-path-7Hq2"


def summary(indicator: str) -> bytes:
    """A Statuspage summary.json with one component per state of the indicator."""
    component = {"none": "operational", "minor": "degraded_performance"}.get(indicator, "major_outage")
    return json.dumps(
        {
            "page": {"id": "x", "name": "Cloud", "updated_at": "2026-12-01T10:00:00Z"},
            "status": {"indicator": indicator, "description": "Major outage"},
            "components": [{"id": "c1", "name": "API", "status": component}],
            "incidents": [{"status": "investigating", "impact": indicator}],
            "scheduled_maintenances": [],
        }
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        status, body, kind = 200, b"ok", "text/plain"
        if path.startswith("/slow"):
            time.sleep(0.12)
        elif path.startswith("/status/"):
            status = int(path.split("/")[2])
        elif path.endswith("/api/v2/summary.json"):
            body, kind = summary("major"), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FixtureServer(_ThreadedServer):
    """Answers /ok, /slow (120 ms), /status/{code} and a status page's summary.json saying major."""

    def __init__(self) -> None:
        super().__init__(_Handler)


def fixture_config(url: str, extra: str = "") -> str:
    return f"""
global: {{interval: 1s, timeout: 800ms}}
services:
  - {{name: checkout, group: shop, prober: http, target: "{url}/ok{SECRET_PATH}",
      labels: {{team: payments-team}}}}
  - {{name: search, group: shop, prober: http, target: "{url}/slow{SECRET_PATH}",
      objectives: {{latency: 50ms}}}}
  - {{name: payments, group: shop, prober: http, target: "{url}/status/503{SECRET_PATH}"}}
  - {{name: reports, group: back-office, prober: http, target: "{url}/status/500{SECRET_PATH}"}}
  - {{name: vendor-cloud, group: vendors, prober: statuspage, target: "{url}/vendor"}}
maintenance:
  - services: [reports]
    start: 2020-01-01T00:00:00Z
    end: 2099-01-01T00:00:00Z
    reason: Moving the reporting database
status_page:
  title: Fixture status
  slot: 10s
  slots: 90
  refresh: 0s
{extra}
"""


def api(url: str, path: str = "/api/v1/status", headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(url + path, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def all_probed(url: str, headers: dict[str, str] | None = None) -> bool:
    """Every service has its expected state (each was probed at least twice)."""
    status = api(url, headers=headers)
    states = {s["name"]: s["state"] for s in status["services"]}
    runs = [sum(slot["runs"] for slot in s["history"]["slots"] if slot) for s in status["services"]]
    return states == {name: state for name, (state, _) in EXPECTED.items()} and min(runs) >= 2


@pytest.fixture(scope="module")
def fixture_server() -> Iterator[FixtureServer]:
    server = FixtureServer()
    try:
        yield server
    finally:
        server.close()


def start_fixture_exporter(
    server: FixtureServer,
    tmp: Path,
    extra: str = "",
    flags: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
) -> Process:
    """Start ``python -m exporter`` on the fixture set, located in eu-west, and wait until it is ready.

    ``headers`` (basic auth) are sent with the readiness checks when the exporter asks for them.
    """
    config = tmp / "exporter.yml"
    config.write_text(fixture_config(server.url, extra))
    port = free_port()
    args = exporter_argv(config, port, "--location", "eu-west", *flags)
    process = Process(f"exporter-page-{port}", args, f"http://127.0.0.1:{port}", tmp)

    def ready() -> bool:
        if process.popen.poll() is not None:
            raise AssertionError(f"the exporter exited with {process.popen.returncode}:\n{process.logs()}")
        request = urllib.request.Request(process.url + "/-/ready", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status) == 200
        except urllib.error.HTTPError as err:
            err.close()
            return False

    try:
        wait_until(ready, 30.0, f"the exporter at {process.url} to be ready")
    except BaseException:
        process.stop()
        raise
    return process


def wait_all_probed(process: Process, headers: dict[str, str] | None = None) -> None:
    wait_until(lambda: all_probed(process.url, headers), 30.0, "every fixture service probed into its state")
