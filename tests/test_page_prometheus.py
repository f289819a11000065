"""The page's long windows and other locations, read from a real Prometheus scraping two real exporters."""

from __future__ import annotations

import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.page_fixtures import api
from tests.stack import (
    Stack,
    free_port,
    http_status,
    shortened_rules,
    stack_fixture,  # noqa: F401
    wait_until,
)
from tests.test_end_to_end import EXPORTER_CONFIG, FOR_DURATIONS, prometheus_config, service_line

STARTUP = 30.0


def page(url: str) -> str:
    with urllib.request.urlopen(url + "/", timeout=15) as response:
        return str(response.read().decode())


def exporter_config(regional_url: str, everywhere_url: str, status_page: str = "") -> str:
    services = "\n".join(
        [service_line("everywhere", "web", everywhere_url), service_line("regional", "web", regional_url)]
    )
    return EXPORTER_CONFIG.format(services=services) + status_page


def test_regional_failure_and_long_windows_come_from_prometheus(stack: Stack, tmp_path: Path) -> None:
    """Exporter a, asking Prometheus, shows b's failure of one service as regional, with 30d uptime."""
    everywhere, regional = stack.target(), stack.target()
    closed = f"http://127.0.0.1:{free_port()}/"
    a = stack.exporter(exporter_config(regional.url, everywhere.url), "a")
    b = stack.exporter(exporter_config(closed, everywhere.url), "b")
    rules = shortened_rules(tmp_path / "rules", FOR_DURATIONS)
    prometheus = stack.prometheus(prometheus_config({"a": a.url, "b": b.url}), rule_files=rules)

    def both_locations_recorded() -> bool:
        seen = {
            (s["metric"]["service"], s["metric"]["location"]): s["value"][1]
            for s in prometheus.query("service_location:probe_success:max")
        }
        runs = prometheus.query('increase(probe_runs_total{job="outage-exporter"}[30d]) > 0')
        return seen.get(("regional", "b")) == "0" and seen.get(("regional", "a")) == "1" and len(runs) == 4

    wait_until(both_locations_recorded, STARTUP, "Prometheus to record both locations' views")

    # Only now does exporter a learn where Prometheus is: a reload picks up status_page.
    settings = f"status_page: {{prometheus_url: '{prometheus.url}', prometheus_cache: 1s}}\n"
    (tmp_path / "exporter-a.yml").write_text(exporter_config(regional.url, everywhere.url, settings))
    request = urllib.request.Request(a.url + "/-/reload", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200

    def regional_seen() -> dict[str, Any] | None:
        status = api(a.url)
        services = {s["name"]: s for s in status["services"]}
        if "30d" not in services["regional"]["uptime"] or not services["regional"]["scope"]:
            return None
        return status

    status = wait_until(regional_seen, STARTUP, "exporter a to show Prometheus' view")
    services = {s["name"]: s for s in status["services"]}
    regional_view = services["regional"]
    # Up from here (a), down from b: neither plainly up nor down everywhere.
    assert regional_view["state"] == "degraded"
    assert regional_view["locations"] == {"a": "up", "b": "down"}
    assert regional_view["scope"] == "down from b; up from a"
    assert regional_view["note"] == "regional: down from b"
    assert regional_view["uptime_sources"]["30d"] == "prometheus"
    # a's probes all succeed and b's all fail, at the same rate: about half of them.
    assert 0.2 < regional_view["uptime"]["30d"] < 0.8
    assert services["everywhere"]["state"] == "up"
    assert services["everywhere"]["uptime"]["30d"] == 1.0
    assert services["everywhere"]["locations"] == {"a": "up", "b": "up"}
    (web,) = status["groups"]
    assert (web["verdict"], web["scope"]) == ("degraded", "regional: failing from b")
    assert status["prometheus"] == {"url": prometheus.url, "ok": True, "error": None}
    # A Prometheus started a minute ago holds a minute: every window says so.
    covered = regional_view["uptime_covered_seconds"]
    assert set(covered) == {"24h", "7d", "30d", "90d"}
    assert all(0 <= seconds < 600 for seconds in covered.values())
    (notice,) = status["notices"]
    assert notice.startswith("Prometheus holds ") and "24h, 7d, 30d, 90d uptime covers only that" in notice
    html = page(a.url)
    assert "regional: failing from b" in html and "down from b; up from a" in html
    assert "30d 100% (" in html and " of data)" in html


class Silent:
    """A TCP listener that accepts connections and never answers: a Prometheus that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    yield server
    server.close()


def test_page_says_which_windows_it_lacks_when_prometheus_fails(stack: Stack, silent: Silent) -> None:
    """Prometheus refusing or hanging: the page still answers and names the windows it lacks."""
    target = stack.target()
    refused = f"status_page: {{prometheus_url: 'http://127.0.0.1:{free_port()}'}}\n"
    hanging = (
        f"status_page: {{prometheus_url: 'http://127.0.0.1:{silent.port}', prometheus_timeout: 500ms}}\n"
    )
    for location, settings, why in (
        ("refused", refused, "failed: uptime_24h: cannot connect"),
        ("hanging", hanging, "no answer within 0.5s"),
    ):
        exporter = stack.exporter(exporter_config(target.url, target.url, settings), location)
        status = api(exporter.url)
        (notice, *_) = status["notices"]
        assert why in notice, notice
        assert "Windows missing: 24h, 7d, 30d, 90d." in notice
        assert status["prometheus"]["ok"] is False
        assert why in page(exporter.url)
        assert http_status(exporter.url + "/-/healthy") == 200
