"""Tests for the command line: check-config, probe, and the server process with signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.cli import main, parse_listen
from tests.conftest import TargetState
from tests.metrics_util import labelsets, parse, value
from tests.stack import exporter_argv, free_port

DATA = Path(__file__).parent / "testdata"


def test_check_config_valid_prints_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """A valid file exits 0 with a one-line summary."""
    assert main(["check-config", "/etc/prometheus/blackbox.yml"]) == 0
    out = capsys.readouterr().out
    assert out == "/etc/prometheus/blackbox.yml: OK: 0 services, 10 modules, 0 allowlist entries\n"


def test_check_config_invalid_prints_every_error(capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid file exits 1 and prints each error on its own line, with path and line."""
    path = str(DATA / "invalid-many.yml")
    assert main(["check-config", path, "/etc/prometheus/blackbox.yml"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{path}: services[0].timeout (line 8): must be less than interval 10s, got 30s"
    assert len([line for line in lines if line.startswith(path)]) == 4
    assert lines[-1].startswith("/etc/prometheus/blackbox.yml: OK")


def test_check_config_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A missing file is an error line, not a traceback."""
    missing = tmp_path / "nope.yml"
    assert main(["check-config", str(missing)]) == 1
    assert (
        capsys.readouterr().out
        == f"{missing}: <document>: cannot read {missing}: No such file or directory\n"
    )


def test_parse_listen_address() -> None:
    """Listen addresses follow Prometheus' HOST:PORT form."""
    assert parse_listen(":9715") == (None, 9715)
    assert parse_listen("127.0.0.1:1") == ("127.0.0.1", 1)
    assert parse_listen("[::1]:9715") == ("::1", 9715)
    with pytest.raises(ValueError, match="must be HOST:PORT"):
        parse_listen("9715")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


async def test_probe_command_success_and_failure(http_target: tuple[str, TargetState]) -> None:
    """`probe TARGET` prints result, phases and metrics; exit 0 on success, 1 on failure."""
    base, _ = http_target
    # The target server runs in this event loop, so the CLI must run in a thread.
    import asyncio

    ok = await asyncio.to_thread(run_cli, "probe", f"{base}/ok", "--prober", "http")
    assert ok.returncode == 0, ok.stderr
    assert "success: yes" in ok.stdout
    assert "  processing: " in ok.stdout
    series = parse(ok.stdout.split("metrics:\n", 1)[1])
    assert value(series, "probe_http_status_code") == 200
    bad = await asyncio.to_thread(run_cli, "probe", f"{base}/status/500", "--prober", "http")
    assert bad.returncode == 1
    assert "reason: http_status" in bad.stdout


def test_probe_command_unknown_module() -> None:
    """An unknown module is reported clearly."""
    result = run_cli(
        "probe",
        "http://127.0.0.1:1/",
        "--module",
        "nope",
        "--config.file",
        str(DATA / "valid-full.yml"),
        env={"OUTAGE_EXPORTER_TEST_PASSWORD": "x"},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "unknown module 'nope' (modules: http_2xx, tcp_connect)"


def fetch(url: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()


def wait_until(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture
def target_port() -> Iterator[int]:
    """A TCP listener the exporter's services can connect to."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(100)
        yield int(sock.getsockname()[1])


CONFIG = """
global: {{interval: 300ms, timeout: 200ms, location: {location}}}
services:
  - {{name: {name}, group: g, prober: tcp, target: "127.0.0.1:{port}"}}
"""


def test_server_reloads_on_sighup_and_stops_on_sigterm(tmp_path: Path, target_port: int) -> None:
    """The server process reloads on SIGHUP, keeps its config on a bad one, and exits on SIGTERM."""
    config = tmp_path / "config.yml"
    config.write_text(CONFIG.format(location="here", name="first", port=target_port))
    port = free_port()
    proc = subprocess.Popen(
        exporter_argv(config, port, "--log.format", "json", "--location", "flag-loc"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: fetch(f"{base}/-/ready")[0] == 200)
        wait_until(lambda: "probe_success{" in fetch(f"{base}/metrics")[1])
        series = parse(fetch(f"{base}/metrics")[1])
        assert value(series, "probe_success", service="first", location="flag-loc") == 1
        config.write_text(CONFIG.format(location="here", name="second", port=target_port))
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: 'service="second"' in fetch(f"{base}/metrics")[1])
        config.write_text("global: {interval: 1s, timeout: 5s}\n")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "outage_exporter_config_last_reload_successful 0.0" in fetch(f"{base}/metrics")[1])
        series = parse(fetch(f"{base}/metrics")[1])
        assert [lb["service"] for lb in labelsets(series, "probe_service_info")] == ["second"]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr = proc.stderr.read() if proc.stderr else ""
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    messages = [r["msg"] for r in records]
    assert any("config reloaded" in m for m in messages)
    failed = [r for r in records if r["level"] == "error"]
    assert failed and "global.timeout (line 1): must be less than interval 1s, got 5s" in failed[0]["msg"]


def test_server_refuses_invalid_config(tmp_path: Path) -> None:
    """Starting with an invalid config exits 1 and logs each error."""
    config = tmp_path / "bad.yml"
    config.write_text("global:\n  interval: soon\n")
    result = run_cli("--config.file", str(config), "--web.listen-address", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "global.interval (line 2): must be a duration such as 30s or 1m30s, got 'soon'" in result.stderr
    assert "Traceback" not in result.stderr
