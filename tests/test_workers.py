"""Worker processes, run for real: who probes what, restarts, reloads, /probe, SIGTERM, --workers 1.

The exporter runs as ``python -m exporter --workers 2``. The target is an HTTP server in this
test process that finds, for every request, which process of the exporter opened the
connection (through /proc/net/tcp and the processes' descriptors), so the tests see where each
probe ran instead of trusting the exporter's own account.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from exporter.config import parse_config
from exporter.result import FailureReason, ProbeResult, Sample, Trace
from exporter.sharding import owner, worker_of
from exporter.web import EXPORTER, make_app
from exporter.workers import MIN_BACKOFF, Supervision, concurrency_share, pack_result, unpack_result
from tests.conftest import wait_for
from tests.metrics_util import Series, parse, value
from tests.stack import Process, _ThreadedServer, running_exporter, wait_until

TOKEN = "worker-push-token"
WAIT = 30.0


def children(pid: int) -> dict[int, int]:
    """The worker processes of exporter ``pid``: worker index -> pid."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return {}
    out = {}
    for child in map(int, text.split()):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"exporter.workers" in argv and b"--index" in argv:
            out[int(argv[argv.index(b"--index") + 1])] = child
    return out


def _diag_inode(local_port: int, remote_port: int) -> int | None:
    """The inode of the loopback TCP socket local_port -> remote_port, asked of the kernel by name.

    One sock_diag look-up (netlink) costs a tenth of a millisecond where /proc/net/tcp lists every
    socket of the machine, tens of thousands while a benchmark runs; 0 or None when there is none.
    """
    loopback = socket.inet_aton("127.0.0.1") + bytes(12)
    no_cookie = struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)  # any interface, no cookie
    sockid = struct.pack("!HH", local_port, remote_port) + loopback + loopback + no_cookie
    request = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    sock_diag_by_family, nlm_f_request = 20, 1
    header = struct.pack("=IHHII", 16 + len(request), sock_diag_by_family, nlm_f_request, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 4) as netlink:  # NETLINK_SOCK_DIAG
        netlink.send(header + request)
        answer = netlink.recv(65536)
    if struct.unpack_from("=H", answer, 4)[0] != sock_diag_by_family:
        return None  # an error message: no such socket
    # nlmsghdr, then family/state/timer/retrans, the 48-byte id, expires, rqueue, wqueue, uid.
    return int(struct.unpack_from("=I", answer, 16 + 4 + 48 + 16)[0])


def socket_owner(local_port: int, remote_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the loopback TCP socket local_port -> remote_port."""
    # A closed connection of the same ports may linger in TIME_WAIT, with no inode.
    inode = _diag_inode(local_port, remote_port)
    if not inode:
        return None
    wanted = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == wanted:
                        return pid
    return None


class Target(_ThreadedServer):
    """Answers 200 to any path and notes which exporter process asked, per path."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.seen: dict[str, set[int]] = {}
        self.lock = threading.Lock()
        super().__init__(_Handler)

    def note(self, path: str, client_port: int) -> None:
        if not self.pids:
            return  # the exporter's processes are not known yet
        owner = socket_owner(client_port, self.port, self.pids)
        if owner is None:
            return  # the prober gave up (a busy machine) and closed it before we looked
        with self.lock:
            self.seen.setdefault(path, set()).add(owner)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_POST(self) -> None:
        # An oauth2 token endpoint: any client gets a token valid for an hour.
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = json.dumps(
            {"access_token": "worker-token", "token_type": "bearer", "expires_in": 3600}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        # Looked up while the connection is open: the prober waits for this answer.
        self.server.owner.note(self.path, self.client_address[1])  # type: ignore[attr-defined]
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def target() -> Iterator[Target]:
    server = Target()
    try:
        yield server
    finally:
        server.close()


def config(target: Target, tmp_path: Path, names: list[str], push: bool = True) -> dict[str, Any]:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    services: list[dict[str, Any]] = [
        {"name": name, "prober": "http", "target": f"{target.url}/{name}"} for name in names
    ]
    if push:
        services.append(
            {"name": "beat", "prober": "push", "push": {"token_file": str(token), "max_silence": "1h"}}
        )
    return {
        "global": {"interval": "1s", "timeout": "900ms", "location": "test"},
        "probe_allowlist": ["127.0.0.0/8"],
        "modules": {"http_2xx": {"prober": "http"}},
        "services": services,
    }


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=20) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()


def metrics(process: Process) -> Series:
    status, text = get(process.url + "/metrics")
    assert status == 200
    return parse(text)


def runs(series: Series) -> dict[str, float]:
    return {dict(lb)["service"]: v for (n, lb), v in series.items() if n == "probe_runs_total"}


def run_counts(process: Process) -> dict[str, float]:
    return runs(metrics(process))


NAMES = [f"svc-{i}" for i in range(12)]


def expected_share(names: list[str]) -> dict[int, set[str]]:
    share: dict[int, set[str]] = {0: set(), 1: set()}
    for name in names:
        share[worker_of(name, 2)].add(name)
    return share


def test_services_are_partitioned_among_workers(target: Target, tmp_path: Path) -> None:
    """Each service is probed only by its rendezvous worker; the push service by none of them."""
    share = expected_share(NAMES)
    assert share[0] and share[1], "the names should land on both workers"
    with running_exporter(tmp_path, config(target, tmp_path, NAMES), "--workers", "2") as process:
        front = process.popen.pid
        workers = wait_until(lambda: len(children(front)) == 2 and children(front), WAIT, "two workers")
        target.pids = [front, *workers.values()]
        wait_until(
            lambda: all(count >= 3 for count in run_counts(process).values()),
            WAIT,
            "every service probed three times",
        )
        series = metrics(process)
        assert value(series, "outage_exporter_worker_services", worker="0") == len(share[0])
        assert value(series, "outage_exporter_worker_services", worker="1") == len(share[1])
        assert value(series, "outage_exporter_worker_services", worker="front") == 1
        assert value(series, "outage_exporter_worker_restarts_total") == 0
        with target.lock:
            seen = {path.lstrip("/"): owners for path, owners in target.seen.items()}
        for index, names in share.items():
            for name in names:
                assert seen.get(name) == {workers[index]}, (name, index, seen.get(name), workers)
        # The push service is judged in the front, from a heartbeat the front received.
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        push = urllib.request.Request(process.url + "/push/beat?status=down", method="POST", headers=bearer)
        with urllib.request.urlopen(push, timeout=20) as reply:
            assert reply.status == 200
        wait_until(
            lambda: (
                [v for (n, _), v in metrics(process).items() if n == "probe_push_reported_success"] == [0.0]
            ),
            WAIT,
            "the pushed failure judged",
        )
        assert value(metrics(process), "probe_success", service="beat") == 0


def test_killed_worker_is_restarted_with_its_services(target: Target, tmp_path: Path) -> None:
    """SIGKILL a worker: it is started again, its services resume and no counter goes back."""
    share = expected_share(NAMES)
    with running_exporter(tmp_path, config(target, tmp_path, NAMES), "--workers", "2") as process:
        front = process.popen.pid
        workers = wait_until(lambda: len(children(front)) == 2 and children(front), WAIT, "two workers")
        wait_until(lambda: all(c >= 2 for c in run_counts(process).values()), WAIT, "first runs")
        os.kill(workers[0], signal.SIGKILL)
        before = run_counts(process)
        restarted = wait_until(
            lambda: (w := children(front)).get(0) not in (None, workers[0]) and len(w) == 2 and w,
            WAIT,
            "worker 0 started again",
        )
        assert restarted[1] == workers[1], "the other worker keeps running"
        wait_until(
            lambda: all(run_counts(process)[name] >= before[name] + 2 for name in share[0]),
            WAIT,
            "worker 0's services probed again",
        )
        series = metrics(process)
        assert value(series, "outage_exporter_worker_restarts_total") == 1
        after = runs(series)
        assert set(after) == set(before)
        assert all(after[name] >= before[name] for name in before)
        assert value(series, "outage_exporter_worker_services", worker="0") == len(share[0])
        logs = process.logs()
        assert "probe worker 0 exited (code -9); starting it again" in logs
        assert "Traceback" not in logs


def test_reload_keeps_series_and_counters_while_services_change_process(
    target: Target, tmp_path: Path
) -> None:
    """A reload adds, removes, changes and moves services (worker to front, back): series, counters kept."""
    names = NAMES[:6]
    cfg = config(target, tmp_path, names)
    with running_exporter(tmp_path, cfg, "--workers", "2") as process:
        wait_until(lambda: all(c >= 2 for c in run_counts(process).values()), WAIT, "first runs")
        mover = names[0]
        # mover becomes a push service (judged in the front), svc-5 goes, svc-1 changes, new-1 comes.
        token = str(tmp_path / "token")
        moved = config(target, tmp_path, [n for n in names if n not in (mover, "svc-5")] + ["new-1"])
        moved["services"].append(
            {"name": mover, "prober": "push", "push": {"token_file": token, "max_silence": "1h"}}
        )
        for service in moved["services"]:
            if service["name"] == "svc-1":
                service["timeout"] = "800ms"
        before = run_counts(process)
        (tmp_path / "config.yml").write_text(yaml.safe_dump(moved))
        request = urllib.request.Request(process.url + "/-/reload", method="POST")
        with urllib.request.urlopen(request, timeout=20) as reply:
            assert reply.status == 200
        series = metrics(process)
        assert value(series, "outage_exporter_worker_services", worker="front") == 2
        wait_until(
            lambda: all(run_counts(process).get(n, 0) >= before.get(n, 0) + 2 for n in (*names[:5], "new-1")),
            WAIT,
            "every service probed twice since the reload",
        )
        series = metrics(process)
        counted = runs(series)
        assert set(counted) == {*names[:5], "new-1", "beat"}
        assert all(counted[n] >= before[n] for n in names[:5])
        info = [dict(lb) for (n, lb) in series if n == "probe_service_info" and dict(lb)["service"] == mover]
        assert len(info) == 1 and info[0]["prober"] == "push"
        # And back to a worker: the series is still one, its counter still not reset.
        mid = run_counts(process)
        (tmp_path / "config.yml").write_text(yaml.safe_dump(cfg))
        with urllib.request.urlopen(request, timeout=20) as reply:
            assert reply.status == 200
        wait_until(
            lambda: run_counts(process)[mover] >= mid[mover] + 2, WAIT, "the mover probed by its worker"
        )
        series = metrics(process)
        assert len([1 for (n, lb) in series if n == "probe_runs_total" and dict(lb)["service"] == mover]) == 1
        assert runs(series)[mover] >= mid[mover]
        assert value(series, "probe_success", service=mover) == 1
        assert value(series, "outage_exporter_worker_services", worker="front") == 1
        assert "new-1" not in runs(series)


def test_probe_runs_in_a_worker(target: Target, tmp_path: Path) -> None:
    """/probe is answered by a worker process, not by the front, with blackbox's output."""
    with running_exporter(tmp_path, config(target, tmp_path, [], push=False), "--workers", "2") as process:
        front = process.popen.pid
        workers = wait_until(lambda: len(children(front)) == 2 and children(front), WAIT, "two workers")
        target.pids = [front, *workers.values()]
        for attempt in range(4):
            status, text = get(f"{process.url}/probe?module=http_2xx&target={target.url}/adhoc-{attempt}")
            assert status == 200, text
            assert value(parse(text), "probe_success") == 1
        with target.lock:
            owners = set().union(*(target.seen.get(f"/adhoc-{attempt}", set()) for attempt in range(4)))
        assert owners and owners <= set(workers.values()), (owners, workers, front)
        status, text = get(f"{process.url}/probe?module=http_2xx&target=http://10.1.2.3/")
        assert status == 403


def test_concurrent_probes_each_get_their_own_answer(target: Target, tmp_path: Path) -> None:
    """Many /probe requests at once, sent and answered in shared messages: each gets its own result."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connecting is refused
    refused = f"http://127.0.0.1:{closed.getsockname()[1]}/"
    settings = config(target, tmp_path, [], push=False)
    # The test server's listen queue is short: a connection it drops is retried after a second.
    settings["modules"]["http_2xx"]["timeout"] = "5s"
    with closed, running_exporter(tmp_path, settings, "--workers", "2") as process:
        urls = [target.url + f"/many-{n}" if n % 3 else refused for n in range(30)]
        with ThreadPoolExecutor(max_workers=10) as pool:
            answers = list(
                pool.map(lambda url: get(f"{process.url}/probe?module=http_2xx&target={url}"), urls)
            )
        for url, (status, text) in zip(urls, answers, strict=True):
            assert status == 200, text
            assert value(parse(text), "probe_success") == (0 if url == refused else 1), (url, text)
            assert value(parse(text), "probe_timeout_seconds") == 5


def test_sigterm_with_probes_in_flight_stops_every_process(tmp_path: Path) -> None:
    """SIGTERM while 60 probes hang in the workers: exit 0 within the bound, no worker left behind."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1024)
    port = silent.getsockname()[1]
    cfg = {
        "global": {"interval": "2s", "timeout": "1900ms"},
        "services": [
            {
                "name": f"hang-{i}",
                "prober": "tcp",
                "target": f"127.0.0.1:{port}",
                "tcp": {"query_response": [{"expect": "never"}]},
            }
            for i in range(60)
        ],
    }
    try:
        with running_exporter(tmp_path, cfg, "--workers", "2") as process:
            front = process.popen.pid
            workers = wait_until(lambda: len(children(front)) == 2 and children(front), WAIT, "two workers")
            wait_until(
                lambda: value(metrics(process), "outage_exporter_probes_in_flight") >= 40,
                WAIT,
                "probes in flight",
            )
            process.popen.send_signal(signal.SIGTERM)
            code = process.popen.wait(timeout=30)
            logs = process.logs()
            assert code == 0, logs
            assert "outage-exporter stopped" in logs
            assert "Traceback" not in logs
            for pid in workers.values():
                wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 10, f"worker {pid} gone")
    finally:
        silent.close()


Client = TestClient[Any, Any]


async def wait_until_async(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """wait_until for a test whose event loop runs the exporter: polls without blocking it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (result := predicate()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return result


async def scrape(client: Client) -> Series:
    response = await client.get("/metrics")
    assert response.status == 200
    return parse(await response.text())


async def test_silent_worker_is_killed_and_restarted_with_its_services(
    target: Target, tmp_path: Path, aiohttp_client: AiohttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker stopped (SIGSTOP) for the silence limit is killed; a new one probes its services."""
    caplog.set_level(logging.INFO, logger="exporter")
    share = expected_share(NAMES)
    cfg = parse_config(yaml.safe_dump(config(target, tmp_path, NAMES, push=False)))
    app = make_app(cfg, workers=2, worker_supervision=Supervision(silence_limit=5.0))
    client = await aiohttp_client(app)
    front = os.getpid()  # the app runs in this process; its workers are our children
    workers = await wait_until_async(lambda: len(children(front)) == 2 and children(front), "two workers")
    store = app[EXPORTER].store
    await wait_for(lambda: all(store.get(n).runs >= 2 for n in NAMES), WAIT, "first runs")
    os.kill(workers[0], signal.SIGSTOP)
    try:
        new = await wait_until_async(
            lambda: (w := children(front)).get(0) not in (None, workers[0]) and len(w) == 2 and w,
            "worker 0 replaced",
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(workers[0], signal.SIGCONT)  # if it is still there, let it die of the stop
    with pytest.raises(ProcessLookupError):
        os.kill(workers[0], 0)  # the stopped worker is killed and reaped: no such process
    assert new[1] == workers[1], "the other worker keeps running"
    with target.lock:
        target.pids = [new[0], new[1]]
        target.seen.clear()
    await wait_for(
        lambda: all(f"/{name}" in target.seen for name in NAMES), WAIT, "every service probed since"
    )
    with target.lock:
        seen = {path.lstrip("/"): owners for path, owners in target.seen.items()}
    for index, names in share.items():
        assert all(seen[name] == {new[index]} for name in names), (index, seen, new)
    series = await scrape(client)
    assert value(series, "outage_exporter_worker_restarts_total") == 1
    assert value(series, "outage_exporter_worker_services", worker="0") == len(share[0])
    assert all(value(series, "probe_success", service=name) == 1 for name in NAMES)
    assert "probe worker 0 sent nothing for 5s; killing it" in caplog.text
    assert "probe worker 0 exited (code -9); starting it again with its" in caplog.text


async def test_worker_dying_at_start_is_restarted_ever_slower_while_the_front_serves(
    target: Target, tmp_path: Path, aiohttp_client: AiohttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Workers that cannot start are retried with a doubling wait up to the cap; /metrics keeps answering."""
    caplog.set_level(logging.INFO, logger="exporter")
    cfg = parse_config(yaml.safe_dump(config(target, tmp_path, NAMES[:4], push=False)))
    # A worker that refuses its command line dies before it says hello, every time.
    app = make_app(
        cfg, workers=2, worker_argv=("--no-such-flag",), worker_supervision=Supervision(max_backoff=0.5)
    )
    client = await aiohttp_client(app)
    pattern = re.compile(r"probe worker 0 died right after start (\d+) times in a row; next start in (\S+)s")

    def waits() -> list[tuple[int, float]]:
        return [(int(m[1]), float(m[2])) for m in pattern.finditer(caplog.text)]

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2 * WAIT
    while len(waits()) < 3:
        assert loop.time() < deadline, f"worker 0 never waited three times: {waits()}"
        exits_before = caplog.text.count("exited (code 2)")
        series = await scrape(client)
        restarts = value(series, "outage_exporter_worker_restarts_total")
        # Every exit is counted as it is logged: the metric sits between the two log counts.
        assert exits_before <= restarts <= caplog.text.count("exited (code 2)")
        response = await client.get("/-/healthy")
        assert response.status == 200
        await asyncio.sleep(0.05)
    # Doubling from MIN_BACKOFF, capped; counted deaths in a row, never reset (none lived).
    assert waits()[:3] == [(1, MIN_BACKOFF), (2, 2 * MIN_BACKOFF), (3, 0.5)]
    assert "probe worker 0 exited (code 2); starting it again with its" in caplog.text
    assert app[EXPORTER].pool is not None and app[EXPORTER].pool.restarts >= 3


def logged_lines(text: str) -> list[str]:
    """The log lines of the latest account in /logs, without their times and durations."""
    lines = text.split("Logs for the probe:\n", 1)[1].split("\n\n\n", 1)[0].splitlines()
    return [re.sub(r"(ts|duration_seconds)=\S+ ?", "", line) for line in lines]


def test_logs_of_a_probe_hold_its_records_whichever_process_ran_it(target: Target, tmp_path: Path) -> None:
    """/logs?target=&module= shows the same account, the probe's records included, with 1 or 2 workers."""
    cfg = config(target, tmp_path, [], push=False)
    token_url = f"{target.url}/token"
    oauth = {"client_id": "c", "client_secret": "s", "token_url": token_url}
    cfg["modules"]["http_oauth"] = {"prober": "http", "http": {"oauth2": oauth}}
    probed = f"{target.url}/logged"
    accounts = {}
    for workers in ("1", "2"):
        with running_exporter(tmp_path, cfg, "--workers", workers, "--log.level", "debug") as process:
            status, text = get(f"{process.url}/probe?module=http_oauth&target={probed}")
            assert status == 200 and value(parse(text), "probe_success") == 1, text
            query = urllib.parse.urlencode({"target": probed, "module": "http_oauth"})
            status, text = get(f"{process.url}/logs?{query}")
            assert status == 200, text
            accounts[workers] = logged_lines(text)
    fetched = (
        "level=debug logger=exporter.probes.oauth2"
        f' msg="oauth2 token fetched from {token_url}, valid for 3600s"'
    )
    assert fetched in accounts["1"], accounts["1"]
    assert accounts["2"] == accounts["1"]
    assert accounts["1"][0].startswith('level=info msg="Beginning probe" probe=http module=http_oauth')
    assert accounts["1"][-1].startswith('level=info msg="Probe succeeded"')


def test_one_worker_probes_in_the_front(target: Target, tmp_path: Path) -> None:
    """--workers 1 starts no child process; the front probes and serves as one process always did."""
    with running_exporter(tmp_path, config(target, tmp_path, NAMES[:3]), "--workers", "1") as process:
        front = process.popen.pid
        target.pids = [front]
        wait_until(lambda: all(c >= 2 for c in run_counts(process).values()), WAIT, "runs")
        assert children(front) == {}
        series = metrics(process)
        assert not [1 for (n, _) in series if n == "outage_exporter_worker_services"]
        assert value(series, "outage_exporter_worker_restarts_total") == 0
        with target.lock:
            assert set().union(*target.seen.values()) == {front}
        status, text = get(f"{process.url}/probe?module=http_2xx&target={target.url}/one")
        assert status == 200 and value(parse(text), "probe_success") == 1


def test_workers_flag_rejects_nonsense(tmp_path: Path) -> None:
    """--workers 0 is refused with a message naming the flag."""
    path = tmp_path / "config.yml"
    path.write_text("services: []\n")
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(path), "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "--workers: must be a whole number, 1 or more, got '0'" in done.stderr


def test_results_cross_the_socket_unchanged() -> None:
    """A result packed by a worker reads back equal, phases, samples, retries and stall included."""
    trace = Trace()
    trace.add_phase("connect", 0.25)
    trace.set("probe_http_status_code", 503)
    trace.set("probe_tls_version_info", 1, (("version", "TLS 1.3"),))
    failed = trace.fail(FailureReason.HTTP_STATUS, "status 503")
    result = dataclasses.replace(failed, failed_attempts=(FailureReason.TIMEOUT,), stalled=0.2)
    back = unpack_result(pack_result(result))
    assert back == result
    assert dict(back.phases) == {"connect": 0.25}
    assert back.samples[1] == Sample("probe_tls_version_info", 1.0, (("version", "TLS 1.3"),))
    ok = ProbeResult(success=True, duration=0.001, started_at=1.0)
    assert unpack_result(pack_result(ok)) == ok


def test_unpacked_samples_are_shared_and_exact() -> None:
    """Whole-number samples of two results are one object; -0.0, fractions and ints keep their value."""

    def run(duration: float) -> ProbeResult:
        trace = Trace()
        trace.set("probe_http_status_code", 200)
        trace.set("probe_dns_lookup_time_seconds", duration)
        return dataclasses.replace(
            trace.succeed(),
            samples=(*trace.succeed().samples, Sample("minus_zero", -0.0), Sample("an_int", 3)),
        )

    first, second = (unpack_result(pack_result(run(d))) for d in (0.0015, 0.0025))
    assert first.samples[0] is second.samples[0]
    assert first.samples[0] == Sample("probe_http_status_code", 200.0)
    assert [s.value for s in first.samples[1:]] == [0.0015, -0.0, 3]
    assert [s.value for s in second.samples[1:]] == [0.0025, -0.0, 3]
    assert math.copysign(1.0, second.samples[2].value) == -1.0
    assert type(second.samples[3].value) is int
    assert first.samples[1] is not second.samples[1]


def test_concurrency_cap_is_split_among_workers() -> None:
    """The global cap is shared out: the parts add up to it, each at least 1."""
    assert [concurrency_share(10, 3, i) for i in range(3)] == [4, 3, 3]
    assert [concurrency_share(1, 2, i) for i in range(2)] == [1, 1]
    assert sum(concurrency_share(1000, 7, i) for i in range(7)) == 1000


def test_restart_waits_double_up_to_the_cap() -> None:
    """The wait before a restart doubles with each quick death in a row, up to max_backoff."""
    ladder = Supervision(max_backoff=10.0)
    assert [ladder.backoff(n) for n in range(8)] == [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert ladder.backoff(10_000) == 10.0
    assert Supervision().max_backoff == 10.0 and Supervision().silence_limit == 60.0


def test_worker_hashing_is_independent_of_shards() -> None:
    """With as many shards as workers, one shard's services still spread over every worker."""
    names = [f"service-{i}" for i in range(2000)]
    mine = [name for name in names if owner(name, 2) == 0]
    per_worker = [sum(1 for name in mine if worker_of(name, 2) == w) for w in range(2)]
    assert min(per_worker) > 0.4 * len(mine), per_worker
    # And adding a worker moves only the services the new one wins.
    moved = [name for name in names if worker_of(name, 3) != worker_of(name, 2)]
    assert all(worker_of(name, 3) == 2 for name in moved)
    assert 0.2 * len(names) < len(moved) < 0.45 * len(names)


def test_default_worker_count_follows_a_cpu_limit(tmp_path: Path) -> None:
    """A cgroup CPU quota caps the default; no quota leaves the affinity mask's count."""
    from exporter.cli import usable_cpus

    mask = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("50000 100000\n")
    assert usable_cpus(str(cpu_max)) == 1
    cpu_max.write_text("max 100000\n")
    assert usable_cpus(str(cpu_max)) == mask
    cpu_max.write_text(f"{mask * 300000} 100000\n")
    assert usable_cpus(str(cpu_max)) == mask
    assert usable_cpus(str(tmp_path / "absent")) == mask
