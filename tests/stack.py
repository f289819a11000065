"""Harness for tests that run real binaries: the exporter, Prometheus, Alertmanager and a webhook."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "prometheus" / "rules"
ALERTMANAGER_CONFIG = ROOT / "prometheus" / "alertmanager.yml"

# Long enough for a cold start on a loaded machine; a healthy start takes about a second.
START_TIMEOUT = 30.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server_child(module: str, lifetime: int = 600, *args: str) -> Iterator[dict[str, int]]:
    """Run ``python -m module LIFETIME ARGS...``, a child that prints its ports as JSON and serves
    until its stdin closes; yield the ports. Its load stays out of the test process's measurements."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, str(lifetime), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        yield json.loads(proc.stdout.readline())
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy and return it; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = predicate()
        except (OSError, ValueError) as err:  # a server still starting, or half-written JSON
            last_error, result = err, None
        if result:
            return result
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(0.05)


def http_json(method: str, url: str, body: Any = None) -> Any:
    """Send a request with an optional JSON body and decode the JSON reply."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def http_status(url: str) -> int:
    """GET ``url`` and return the status code, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as err:
        err.close()
        return int(err.code)


def binary(name: str) -> str:
    """Return the path of an installed binary, or skip the test when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not on PATH; install the prometheus and prometheus-alertmanager packages")
    return path


class Process:
    """A server subprocess whose output goes to files, stopped for sure by ``stop()``."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        url: str,
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.stdout_path = log_dir / f"{name}.stdout.log"
        self.stderr_path = log_dir / f"{name}.stderr.log"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.popen = subprocess.Popen(
                list(args), stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=cwd
            )

    def wait_ready(self, path: str = "/-/ready", timeout: float = START_TIMEOUT) -> None:
        """Wait until ``path`` answers 200, failing early with the logs if the process exits."""

        def ready() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.popen.returncode}:\n{self.logs()}")
            return http_status(self.url + path) == 200

        wait_until(ready, timeout, f"{self.name} to be ready at {self.url}{path}")

    def logs(self) -> str:
        """Return what the process wrote to stdout and stderr so far."""
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            text = path.read_text(errors="replace") if path.exists() else ""
            if text:
                parts.append(f"--- {path.name} ---\n{text}")
        return "\n".join(parts) or f"--- {self.name} wrote nothing ---"

    def stop(self) -> None:
        """Terminate the process, and kill it if it does not exit in time."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def exporter_argv(config_path: Path, port: int, *flags: str) -> list[str]:
    """The command line of ``python -m exporter`` serving ``config_path`` on 127.0.0.1:``port``."""
    return [
        sys.executable,
        "-m",
        "exporter",
        "--config.file",
        str(config_path),
        "--web.listen-address",
        f"127.0.0.1:{port}",
        *flags,
    ]


@contextlib.contextmanager
def running_exporter(
    tmp_path: Path, config: dict[str, Any], *flags: str, ready: bool = True
) -> Iterator[Process]:
    """``python -m exporter`` on ``config`` (written as YAML) on a free port, stopped afterwards.

    With ``ready`` it has answered /-/ready first (a test behind basic auth waits itself).
    """
    config_path = tmp_path / "config.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    process = Process(
        f"exporter-{port}", exporter_argv(config_path, port, *flags), f"http://127.0.0.1:{port}", tmp_path
    )
    try:
        if ready:
            process.wait_ready()
        yield process
    finally:
        process.stop()


def start_exporter(config_path: Path, location: str, tmp_path: Path) -> Process:
    """Start ``python -m exporter`` on a free loopback port and wait until it is ready."""
    port = free_port()
    args = exporter_argv(config_path, port, "--location", location)
    process = Process(f"exporter-{location}-{port}", args, f"http://127.0.0.1:{port}", tmp_path)
    try:
        process.wait_ready()
    except BaseException:
        process.stop()
        raise
    return process


class Prometheus(Process):
    """A running Prometheus server."""

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate an instant query and return its result vector."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        reply = http_json("GET", url)
        assert reply["status"] == "success", reply
        return list(reply["data"]["result"])

    def alerts(self) -> list[dict[str, Any]]:
        """Return the pending and firing alerts from /api/v1/alerts."""
        reply = http_json("GET", f"{self.url}/api/v1/alerts")
        assert reply["status"] == "success", reply
        return list(reply["data"]["alerts"])

    def alertmanagers(self) -> list[str]:
        """URLs of the Alertmanagers Prometheus currently sends alerts to."""
        reply = http_json("GET", f"{self.url}/api/v1/alertmanagers")
        return [am["url"] for am in reply["data"]["activeAlertmanagers"]]

    def targets_up(self) -> int:
        """Count the active scrape targets whose last scrape succeeded."""
        reply = http_json("GET", f"{self.url}/api/v1/targets?state=active")
        return sum(1 for target in reply["data"]["activeTargets"] if target["health"] == "up")


def start_prometheus(
    config_text: str,
    tmp_path: Path,
    rule_files: Iterable[Path] = (),
    lifecycle: bool = False,
    extra_args: Sequence[str] = (),
) -> Prometheus:
    """Start Prometheus on ``config_text`` and temporary storage, loading ``rule_files`` if given."""
    port = free_port()
    workdir = tmp_path / f"prometheus-{port}"
    workdir.mkdir()
    config = yaml.safe_load(config_text) or {}
    rules = [str(Path(path).resolve()) for path in rule_files]
    if rules:
        config["rule_files"] = rules
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    args = [
        binary("prometheus"),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    if lifecycle:
        args.append("--web.enable-lifecycle")
    args.extend(extra_args)
    process = Prometheus("prometheus", args, f"http://127.0.0.1:{port}", workdir)
    try:
        process.wait_ready()
    except BaseException:
        process.stop()
        raise
    return process


class Alertmanager(Process):
    """A running Alertmanager."""

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        """Return the alerts Alertmanager holds (/api/v2/alerts), optionally filtered by label."""
        query = urllib.parse.urlencode([("filter", f'{name}="{value}"') for name, value in filters.items()])
        return list(http_json("GET", f"{self.url}/api/v2/alerts?{query}"))


def start_alertmanager(config_text: str, tmp_path: Path) -> Alertmanager:
    """Start a single, unclustered Alertmanager with ``config_text`` and temporary storage."""
    port = free_port()
    workdir = tmp_path / f"alertmanager-{port}"
    workdir.mkdir()
    config_path = workdir / "alertmanager.yml"
    config_path.write_text(config_text)
    args = [
        binary("prometheus-alertmanager"),
        f"--config.file={config_path}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    process = Alertmanager("alertmanager", args, f"http://127.0.0.1:{port}", workdir)
    try:
        process.wait_ready()
    except BaseException:
        process.stop()
        raise
    return process


@dataclass(frozen=True)
class Notification:
    """One webhook payload Alertmanager posted, with the path it was posted to."""

    path: str
    payload: dict[str, Any]

    @property
    def status(self) -> str:
        """``firing`` or ``resolved``, for the notification as a whole."""
        return str(self.payload["status"])

    @property
    def alerts(self) -> list[dict[str, Any]]:
        """The alerts the notification carries, each with status, labels and annotations."""
        return list(self.payload["alerts"])


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _ThreadedServer:
    """An http.server running in a background thread on a loopback port."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.owner = self  # type: ignore[attr-defined]
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()
        self._closed = False

    def close(self) -> None:
        """Stop serving and close the listening socket, so connections are refused."""
        if not self._closed:
            self._closed = True
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)


class _WebhookHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        payload = json.loads(self.rfile.read(length))
        self.server.owner._record(Notification(self.path, payload))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class WebhookReceiver(_ThreadedServer):
    """Collects the payloads Alertmanager's webhook_configs post to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._notifications: list[Notification] = []
        super().__init__(_WebhookHandler)

    def _record(self, notification: Notification) -> None:
        with self._lock:
            self._notifications.append(notification)

    @property
    def notifications(self) -> list[Notification]:
        """Every notification received so far, oldest first."""
        with self._lock:
            return list(self._notifications)

    def alerts(self, status: str | None = None, **labels: str) -> list[tuple[str, dict[str, Any]]]:
        """(path, alert) pairs of every received alert with this status and these labels."""
        return [
            (notification.path, alert)
            for notification in self.notifications
            for alert in notification.alerts
            if (status is None or alert["status"] == status)
            and all(alert["labels"].get(name) == value for name, value in labels.items())
        ]


class _TargetHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = self.server.owner.status  # type: ignore[attr-defined]
        body = b"target"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HttpTarget(_ThreadedServer):
    """A service to probe: answers every GET with ``status``, which the test may change at any time."""

    def __init__(self) -> None:
        self.status = 200
        super().__init__(_TargetHandler)


def shortened_rules(
    dest: Path,
    durations: dict[str, str],
    source: Path = RULES_DIR,
    intervals: dict[str, str] | None = None,
) -> list[Path]:
    """Copy the rule files into ``dest`` with each ``for:`` and ``keep_firing_for:`` value mapped
    through ``durations`` and each group ``interval:`` through ``intervals``."""
    dest.mkdir(parents=True, exist_ok=True)
    group_intervals = intervals or {}
    copies = []
    for rule_file in sorted(source.glob("*.yml")):

        def replace(match: re.Match[str]) -> str:
            return match.group(1) + durations.get(match.group(2), match.group(2))

        def replace_interval(match: re.Match[str]) -> str:
            return match.group(1) + group_intervals.get(match.group(2), match.group(2))

        text = re.sub(
            r"^([ \t]+(?:for|keep_firing_for):[ \t]*)(\S+)[ \t]*$",
            replace,
            rule_file.read_text(),
            flags=re.MULTILINE,
        )
        text = re.sub(r"^([ \t]+interval:[ \t]*)(\S+)[ \t]*$", replace_interval, text, flags=re.MULTILINE)
        copy = dest / rule_file.name
        copy.write_text(text)
        copies.append(copy)
    return copies


class Stack:
    """Starts the pieces of a test's monitoring stack and stops all of them at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self._processes: list[Process] = []
        self._servers: list[_ThreadedServer] = []

    def exporter(self, config_text: str, location: str) -> Process:
        """Write ``config_text`` to a file and start an exporter for ``location`` on it."""
        config_path = self.tmp_path / f"exporter-{location}.yml"
        config_path.write_text(config_text)
        process = start_exporter(config_path, location, self.tmp_path)
        self._processes.append(process)
        return process

    def prometheus(
        self,
        config_text: str,
        rule_files: Iterable[Path] = (),
        lifecycle: bool = False,
        extra_args: Sequence[str] = (),
    ) -> Prometheus:
        """Start Prometheus; see ``start_prometheus``."""
        process = start_prometheus(config_text, self.tmp_path, rule_files, lifecycle, extra_args)
        self._processes.append(process)
        return process

    def alertmanager(self, config_text: str) -> Alertmanager:
        """Start Alertmanager; see ``start_alertmanager``."""
        process = start_alertmanager(config_text, self.tmp_path)
        self._processes.append(process)
        return process

    def webhook(self) -> WebhookReceiver:
        """Start a webhook receiver."""
        receiver = WebhookReceiver()
        self._servers.append(receiver)
        return receiver

    def target(self) -> HttpTarget:
        """Start an HTTP target that answers 200 until told otherwise."""
        target = HttpTarget()
        self._servers.append(target)
        return target

    def logs(self) -> str:
        """The output of every process started so far."""
        return "\n".join(f"===== {process.name} =====\n{process.logs()}" for process in self._processes)

    def stop(self) -> None:
        """Stop processes newest first, then the in-process servers."""
        for process in reversed(self._processes):
            process.stop()
        for server in reversed(self._servers):
            server.close()


@pytest.fixture(name="stack")
def stack_fixture(tmp_path: Path) -> Iterator[Stack]:
    """A Stack for one test; the process logs are printed at teardown, which pytest shows on failure."""
    stack = Stack(tmp_path)
    try:
        yield stack
    finally:
        stack.stop()
        print(stack.logs())


def load_verdicts(blackbox: str, path: Path) -> tuple[bool, bool, str]:
    """Whether blackbox_exporter's --config.check and our loader accept the file, and why not."""
    from exporter.config import load_config
    from exporter.errors import ConfigError

    checked = subprocess.run(
        [blackbox, f"--config.file={path}", "--config.check"], capture_output=True, text=True, timeout=30
    )
    try:
        load_config(path)
        ours, why = True, ""
    except ConfigError as err:
        ours, why = False, "; ".join(str(issue) for issue in err.issues)
    return checked.returncode == 0, ours, f"blackbox: {checked.stderr[-300:]}\nours: {why}"
