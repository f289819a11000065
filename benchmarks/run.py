"""Measures outage-exporter beside blackbox_exporter against a local nginx, and prints the results.

Run from the repository root (Debian packages nginx, wrk and prometheus-blackbox-exporter):

    python3 benchmarks/run.py            # full run, about 4 minutes
    python3 benchmarks/run.py --quick    # shorter windows, about 2 minutes

What it measures, in one run:

- throughput: on-demand ``/probe?target=<nginx>&module=http_2xx`` of both exporters under the same
  ``wrk`` load, and the share of answers that reported probe_success 1; the two take turns, and
  the ratio is the median of the ratios of runs taken side by side;
- cpu: CPU time per probe, each probe on a fresh connection: ours running N scheduled services at
  a 1 s interval, and both exporters driven through ``/probe`` at the same rate (blackbox has no
  scheduler, so its number is on-demand only);
- scale: ours with 10,000 services at a 10 s interval: schedule lag p50/p99 from the
  ``outage_exporter_schedule_lag_seconds`` histogram over whole intervals after a warm-up,
  ``/metrics`` render time and size, RSS and PSS of each process; blackbox's idle RSS for reference.

Results are printed as a markdown table and written as JSON to benchmarks/results/ (git-ignored).
With ``--profile`` our exporter is sampled by py-spy during an extra throughput run and the cpu
and scale phases, and the busiest functions are printed; sampling pauses the process, so take
other numbers from runs without it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Both exporters cut their probe timeout to this minus a margin, as Prometheus would send it.
SCRAPE_TIMEOUT_HEADER = ("X-Prometheus-Scrape-Timeout-Seconds", "5")
READY_TIMEOUT = 120.0
# How often Prometheus would scrape /metrics while the scale phase measures schedule lag.
SCRAPE_EVERY = 15.0
# Scrapes on that rhythm before the scale phase reads memory as the goal means it.
STEADY_SCRAPES = 4
LAG_METRIC = "outage_exporter_schedule_lag_seconds"
# The longest a measurement waits for every service to have been probed once.
WARM_UP_LIMIT = 120.0

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/html;
            return 200 "<!DOCTYPE html><title>ok</title><p>ok</p>\\n";
        }}
    }}
}}
"""

# Counts how many /probe answers reported success, so a fast failure cannot pass for throughput.
WRK_SCRIPT = """\
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; failed = 0 end
function response(status, headers, body)
  if status == 200 and string.find(body, "\\nprobe_success 1", 1, true) then
    ok = ok + 1
  else
    failed = failed + 1
  end
end
function done(summary, latency, requests)
  local o, f = 0, 0
  for _, t in ipairs(threads) do o = o + t:get("ok"); f = f + t:get("failed") end
  io.write(string.format("probe_ok %d\\nprobe_failed %d\\n", o, f))
  for _, p in ipairs({50, 99}) do
    io.write(string.format("latency_p%d_us %d\\n", p, latency:percentile(p)))
  end
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 30.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=dict([SCRAPE_TIMEOUT_HEADER]))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all its threads included."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # Fields 14 and 15 of proc(5), counted from the state field (3).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """Resident memory now, or (``VmHWM``) the most the process has had resident."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def pss_bytes(pid: int) -> int:
    """Proportional set size: resident pages, each shared page split among the processes sharing it.

    Summed over the front and its workers, RSS counts the pages they share (the interpreter, the
    libraries) once per process; PSS counts them once in all.
    """
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss for pid {pid}")


def process_memory(pid: int) -> list[dict[str, Any]]:
    """RSS and PSS of a process and of each of its live children (the front, then its workers)."""
    return [
        {
            "pid": one,
            "role": "front" if one == pid else "worker",
            "rss_bytes": rss_bytes(one),
            "pss_bytes": pss_bytes(one),
            "peak_rss_bytes": rss_bytes(one, "VmHWM"),
        }
        for one in (pid, *children(pid))
    ]


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live children: our probe workers are children of the front."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in children(pid))


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and its live children."""
    return rss_bytes(pid) + sum(rss_bytes(child) for child in children(pid))


def children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Process:
    """A child process with its output in a log file, stopped for sure by stop()."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, url: str, timeout: float = READY_TIMEOUT) -> float:
        """Poll ``url`` until it answers 200; return how long that took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            try:
                if http_get(url, timeout=5)[0] == 200:
                    return time.monotonic() - start
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready within {timeout:.0f}s: {self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


@dataclass
class Scrape:
    """What one GET /metrics of our exporter returned."""

    at: float
    seconds: float
    size: int
    runs: float
    failures: float
    lag: list[tuple[float, float]]
    # Services not probed yet (probe_runs_total still 0): a worker may still be starting.
    unprobed: int = 0


# A full parse of 40 MB of text takes longer than the windows measured here; these few series
# are found with regular expressions instead (names and label order as our exporter writes them).
# A literal prefix lets the regex engine skip ahead quickly.
_RUNS = re.compile(rb"\nprobe_runs_total\{[^}\n]*\} (\S+)")
_FAILURES = re.compile(rb"\nprobe_failures_total\{[^}\n]*\} (\S+)")
_LAG = re.compile(rb"\n" + LAG_METRIC.encode() + rb'_bucket\{le="([^"]+)"\} (\S+)')


def scrape(base: str) -> Scrape:
    start = time.monotonic()
    status, body = http_get(f"{base}/metrics", timeout=60)
    seconds = time.monotonic() - start
    if status != 200:
        raise RuntimeError(f"GET {base}/metrics: {status}")
    lag = sorted((float(le), float(count)) for le, count in _LAG.findall(body))
    if not lag:
        raise RuntimeError(f"no {LAG_METRIC} in GET {base}/metrics")
    runs = [float(v) for v in _RUNS.findall(body)]
    return Scrape(
        # The exporter reads its counters somewhere inside the request; the middle is the best guess.
        at=start + seconds / 2,
        seconds=seconds,
        size=len(body),
        runs=sum(runs),
        failures=sum(float(v) for v in _FAILURES.findall(body)),
        lag=lag,
        unprobed=runs.count(0.0),
    )


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over cumulative (le, count) pairs ending with +Inf."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return previous_bound
            if count == previous_count:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (
                count - previous_count
            )
        previous_bound, previous_count = bound, count
    return previous_bound


def bucket_delta(before: Scrape, after: Scrape) -> list[tuple[float, float]]:
    earlier = dict(before.lag)
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in after.lag]


def share_within(bound: float, buckets: list[tuple[float, float]]) -> float:
    total = buckets[-1][1] if buckets else 0.0
    within = max((count for le, count in buckets if le <= bound), default=0.0)
    return within / total if total else math.nan


# --- the processes under test ------------------------------------------------------------------


@dataclass
class Bench:
    """The shared pieces of one run: temp dir, nginx, and the options."""

    args: argparse.Namespace
    tmp: Path
    nginx_url: str = ""
    procs: list[Process] = field(default_factory=list)
    profiles: dict[str, Any] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        proc = Process(name, argv, self.tmp / f"{name}.log", env)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Process) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    def start_nginx(self) -> Process:
        argv, self.nginx_url = nginx_argv(self.tmp)
        proc = self.start("nginx", argv)
        proc.wait_ready(self.nginx_url, timeout=30)
        return proc

    def start_blackbox(self) -> tuple[Process, str]:
        argv, base = blackbox_argv(self.tmp)
        proc = self.start("blackbox", argv)
        proc.wait_ready(f"{base}/-/healthy")
        return proc, base

    def start_ours(
        self, name: str, services: int, interval: float, extra: tuple[str, ...] = ()
    ) -> tuple[Process, str, float]:
        """Our exporter with ``services`` services probing nginx; returns the time to ready."""
        conf = self.tmp / f"{name}.yml"
        conf.write_text(our_config(self.nginx_url, services, interval))
        argv, base = ours_argv(conf, self.args.workers, *extra)
        proc = self.start(name, argv, env={"PYTHONPATH": str(ROOT)})
        return proc, base, proc.wait_ready(f"{base}/-/ready")


def nginx_argv(tmp: Path) -> tuple[list[str], str]:
    """The command line of an nginx serving NGINX_CONF from ``tmp`` on a free port, and its URL."""
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return [nginx, "-p", str(tmp), "-c", str(conf), "-e", "stderr"], f"http://127.0.0.1:{port}/"


def ours_argv(conf: Path, workers: int | None, *flags: str) -> tuple[list[str], str]:
    """The command line of our exporter on ``conf`` on a free port (``--workers`` if given), and its URL."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "exporter",
        "--config.file",
        str(conf),
        "--web.listen-address",
        f"127.0.0.1:{port}",
        "--log.level",
        "warn",
        *(("--workers", str(workers)) if workers else ()),
        *flags,
    ]
    return argv, f"http://127.0.0.1:{port}"


def blackbox_argv(tmp: Path, *flags: str) -> tuple[list[str], str]:
    """The command line of a blackbox_exporter with one http_2xx module on a free port, and its URL."""
    port = free_port()
    conf = tmp / "blackbox.yml"
    conf.write_text("modules:\n  http_2xx:\n    prober: http\n    http:\n      preferred_ip_protocol: ip4\n")
    binary = shutil.which("prometheus-blackbox-exporter")
    if binary is None:
        raise RuntimeError("prometheus-blackbox-exporter is not installed")
    argv = [
        binary,
        f"--config.file={conf}",
        f"--web.listen-address=127.0.0.1:{port}",
        *flags,
        "--log.level=warn",
    ]
    return argv, f"http://127.0.0.1:{port}"


def ms(seconds: float) -> str:
    """A duration as Prometheus writes it; its syntax has no fractions."""
    return f"{round(seconds * 1000)}ms"


def our_config(target: str, services: int, interval: float) -> str:
    timeout = min(5.0, interval / 2)
    lines = [
        f"global: {{interval: {ms(interval)}, timeout: {ms(timeout)}, location: bench}}",
        "probe_allowlist: [127.0.0.0/8]",
        "modules:",
        "  http_2xx: {prober: http, http: {preferred_ip_protocol: ip4}}",
        "services:" if services else "services: []",
    ]
    lines.extend(
        f"  - {{name: svc-{i:05d}, group: g{i % 20:02d}, target: '{target}', module: http_2xx}}"
        for i in range(services)
    )
    return "\n".join(lines) + "\n"


def probe_url(base: str, target: str) -> str:
    return f"{base}/probe?target={target}&module=http_2xx"


def check_probe(base: str, target: str) -> None:
    status, body = http_get(probe_url(base, target))
    if status != 200 or b"\nprobe_success 1" not in body:
        raise RuntimeError(f"{base}: a probe of {target} did not succeed: {status} {body[:500]!r}")


# --- profiling -----------------------------------------------------------------------------------


class Profiler:
    """py-spy attached to a running process for a fixed time, summarised by function."""

    def __init__(self, bench: Bench, name: str, pid: int, seconds: float) -> None:
        self.bench = bench
        self.name = name
        self.output = bench.tmp / f"profile-{name}.txt"
        self.proc: subprocess.Popen[bytes] | None = None
        py_spy = shutil.which("py-spy")
        if not bench.args.profile:
            return
        if py_spy is None:
            raise RuntimeError("--profile needs py-spy: python3 -m pip install py-spy")
        self.proc = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, int(seconds))),
                "--rate",
                "100",
                "--format",
                "raw",
                "--nolineno",
                "--subprocesses",
                "--output",
                str(self.output),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def finish(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)
        if self.output.exists():
            self.bench.profiles[self.name] = summarise_profile(self.output)


def _frame_name(frame: str) -> str:
    # "function (path/to/file.py)" -> "file.py:function"
    match = re.match(r"(.*) \((.*)\)$", frame)
    if not match:
        return frame
    function, path = match.groups()
    parts = Path(path).parts
    for anchor in ("exporter", "aiohttp", "prometheus_client", "asyncio", "h11", "uvloop"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) :]) + ":" + function
    return Path(path).name + ":" + function


def summarise_profile(path: Path, top: int = 20) -> dict[str, Any]:
    """Self and inclusive shares of sampled time per function, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")[1:]]  # the first frame is the thread
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return {
        "samples": total,
        "self": [(name, round(100 * n / total, 1)) for name, n in own.most_common(top)],
        "inclusive": [(name, round(100 * n / total, 1)) for name, n in inclusive.most_common(top * 2)],
    }


# --- phases --------------------------------------------------------------------------------------


def run_wrk(bench: Bench, url: str, seconds: float) -> dict[str, float]:
    script = bench.tmp / "count.lua"
    script.write_text(WRK_SCRIPT)
    argv = [
        "wrk",
        f"-t{bench.args.wrk_threads}",
        f"-c{bench.args.wrk_connections}",
        f"-d{max(1, int(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        "-H",
        f"{SCRAPE_TIMEOUT_HEADER[0]}: {SCRAPE_TIMEOUT_HEADER[1]}",
        url,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    found: dict[str, float] = {}
    for key, pattern in {
        "requests_per_second": r"Requests/sec:\s+([\d.]+)",
        "requests": r"(\d+) requests in",
        "probe_ok": r"probe_ok (\d+)",
        "probe_failed": r"probe_failed (\d+)",
        "latency_p50_ms": r"latency_p50_us (\d+)",
        "latency_p99_ms": r"latency_p99_us (\d+)",
    }.items():
        match = re.search(pattern, out)
        if match is None:
            raise RuntimeError(f"unexpected wrk output:\n{out}")
        found[key] = float(match.group(1))
    for key in ("latency_p50_ms", "latency_p99_ms"):
        found[key] /= 1000
    errors = re.search(r"Socket errors: (.*)", out)
    found["socket_errors"] = errors.group(1) if errors else "none"  # type: ignore[assignment]
    return found


def phase_throughput(
    bench: Bench, ours: tuple[Process, str], blackbox: tuple[Process, str]
) -> dict[str, Any]:
    args = bench.args
    out: dict[str, Any] = {
        "load": f"wrk -t{args.wrk_threads} -c{args.wrk_connections} -d{args.duration:g}s",
        "target": bench.nginx_url,
        "repeats": args.repeats,
    }
    sides = (("ours", ours), ("blackbox", blackbox))
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "blackbox": []}
    for _, (_, base) in sides:
        check_probe(base, bench.nginx_url)
        run_wrk(bench, probe_url(base, bench.nginx_url), 2)  # warm-up
    # Alternating runs share out whatever else the machine is doing between both sides; the
    # side that goes first alternates too, so a machine getting busier or quieter favours
    # neither. Each repeat's two runs are seconds apart: their ratio is the steady figure
    # on a shared machine, where either side's own rate may move twofold between repeats.
    pair_ratios: list[float] = []
    for repeat in range(args.repeats):
        rates: dict[str, float] = {}
        for name, (proc, base) in sides if repeat % 2 == 0 else sides[::-1]:
            load = os.getloadavg()[0]
            before = tree_cpu_seconds(proc.pid)
            result = run_wrk(bench, probe_url(base, bench.nginx_url), args.duration)
            cpu = tree_cpu_seconds(proc.pid) - before
            result["cpu_cores"] = cpu / args.duration
            result["cpu_us_per_request"] = 1e6 * cpu / result["requests"]
            result["load_average"] = load
            runs[name].append(result)
            rates[name] = result["requests_per_second"]
            print(
                f"  {name}: {result['requests_per_second']:.0f} req/s, "
                f"{result['probe_failed']:.0f} probes not successful, {result['cpu_cores']:.2f} cores, "
                f"load average {load:.1f}",
                flush=True,
            )
        pair_ratios.append(rates["ours"] / rates["blackbox"])
    if args.profile:
        # One more run of ours, sampled: sampling pauses the process, so it is not counted.
        proc, base = ours
        profiler = Profiler(bench, "throughput", proc.pid, args.duration)
        run_wrk(bench, probe_url(base, bench.nginx_url), args.duration)
        profiler.finish()
    for name, results in runs.items():
        # The run with the median rate stands for the side; every run is kept in the JSON.
        ranked = sorted(results, key=lambda r: r["requests_per_second"])
        out[name] = {**ranked[len(ranked) // 2], "runs": results}
        out[name]["probe_failed"] = sum(r["probe_failed"] for r in results)
        out[name]["cpu_us_per_request"] = statistics.median(r["cpu_us_per_request"] for r in results)
    out["pair_ratios"] = pair_ratios
    out["ratio"] = statistics.median(pair_ratios)
    return out


async def _drive(url: str, rate: float, seconds: float) -> dict[str, float]:
    """GET ``url`` ``rate`` times a second, evenly spread, for ``seconds``; count the outcomes."""
    counts = Counter[str]()
    headers = dict([SCRAPE_TIMEOUT_HEADER])
    tick = 0.01
    limit = asyncio.Semaphore(512)

    async def one(session: aiohttp.ClientSession) -> None:
        try:
            async with session.get(url, headers=headers) as response:
                body = await response.read()
                good = response.status == 200 and b"\nprobe_success 1" in body
                counts["ok" if good else "failed"] += 1
        except (aiohttp.ClientError, TimeoutError):
            counts["error"] += 1
        finally:
            limit.release()

    connector = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks: set[asyncio.Task[None]] = set()
        owed = 0.0
        ticks = 0
        while loop.time() - start < seconds:
            owed += rate * tick
            while owed >= 1:
                owed -= 1
                if limit.locked():
                    counts["skipped"] += 1
                    continue
                await limit.acquire()
                task = asyncio.create_task(one(session))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            ticks += 1
            await asyncio.sleep(max(0.0, start + ticks * tick - loop.time()))
        if tasks:
            await asyncio.wait(tasks, timeout=15)
    return {key: float(counts[key]) for key in ("ok", "failed", "error", "skipped")}


def measure_on_demand(bench: Bench, proc: Process, base: str, rate: float) -> dict[str, float]:
    seconds = bench.args.cpu_duration
    url = probe_url(base, bench.nginx_url)
    asyncio.run(_drive(url, rate, 2))  # warm-up
    before = tree_cpu_seconds(proc.pid)
    start = time.monotonic()
    counts = asyncio.run(_drive(url, rate, seconds))
    elapsed = time.monotonic() - start
    cpu = tree_cpu_seconds(proc.pid) - before
    probes = counts["ok"] + counts["failed"]
    return {
        "probes_per_second": probes / elapsed,
        "success_ratio": counts["ok"] / probes if probes else math.nan,
        "errors": counts["error"] + counts["skipped"],
        "cpu_cores": cpu / elapsed,
        "cpu_us_per_probe": 1e6 * cpu / probes if probes else math.nan,
    }


Fleet = list[tuple[Process, str]]


def scrape_fleet(fleet: Fleet) -> tuple[Scrape, list[Scrape]]:
    """Scrape every process in turn; their counters and lag buckets added up as one exporter."""
    each = [scrape(base) for _, base in fleet]
    lag: dict[float, float] = {}
    for one in each:
        for bound, count in one.lag:
            lag[bound] = lag.get(bound, 0.0) + count
    combined = Scrape(
        at=statistics.fmean(one.at for one in each),
        seconds=max(one.seconds for one in each),
        size=sum(one.size for one in each),
        runs=sum(one.runs for one in each),
        failures=sum(one.failures for one in each),
        lag=sorted(lag.items()),
        unprobed=sum(one.unprobed for one in each),
    )
    return combined, each


def fleet_cpu(fleet: Fleet) -> float:
    return sum(tree_cpu_seconds(proc.pid) for proc, _ in fleet)


def measure_scheduled(bench: Bench, fleet: Fleet, seconds: float, interval: float) -> dict[str, Any]:
    """Probe rate, CPU per probe and schedule lag of our exporter over ``seconds`` after a warm-up."""
    time.sleep(interval + 2)  # every service has had its first run...
    # ...unless a worker process is still starting (seconds on a busy machine): its imports and
    # first runs must not land in the window, nor its missing probes in the rate.
    deadline = time.monotonic() + WARM_UP_LIMIT
    while scrape_fleet(fleet)[0].unprobed and time.monotonic() < deadline:
        time.sleep(1)
    first, _ = scrape_fleet(fleet)
    cpu_first, cpu_start = fleet_cpu(fleet), time.monotonic()
    profiler = Profiler(bench, fleet[0][0].name, fleet[0][0].pid, seconds)
    scrape_seconds = [first.seconds]
    end = cpu_start + seconds
    # Scrape on Prometheus' rhythm inside the window, so lag and CPU include what scrapes cost.
    while (now := time.monotonic()) < end - 1:
        time.sleep(min(SCRAPE_EVERY, end - now))
        if time.monotonic() < end - 1:
            scrape_seconds.append(scrape_fleet(fleet)[0].seconds)
    cpu_last, cpu_end = fleet_cpu(fleet), time.monotonic()
    last, _ = scrape_fleet(fleet)
    scrape_seconds.append(last.seconds)
    profiler.finish()
    elapsed = last.at - first.at
    probes = last.runs - first.runs
    lag = bucket_delta(first, last)
    probes_per_second = probes / elapsed
    cpu_cores = (cpu_last - cpu_first) / (cpu_end - cpu_start)
    return {
        "window_seconds": elapsed,
        "probes": probes,
        "probes_per_second": probes_per_second,
        "success_ratio": 1 - (last.failures - first.failures) / probes if probes else math.nan,
        "cpu_cores": cpu_cores,
        "cpu_us_per_probe": 1e6 * cpu_cores / probes_per_second if probes else math.nan,
        "lag_p50_ms": 1000 * histogram_quantile(0.5, lag),
        "lag_p99_ms": 1000 * histogram_quantile(0.99, lag),
        "lag_share_within_100ms": share_within(0.1, lag),
        "lag_buckets": lag,
        "scrape_seconds_in_window": scrape_seconds,
    }


def phase_cpu(bench: Bench, ours_idle: tuple[Process, str], blackbox: tuple[Process, str]) -> dict[str, Any]:
    args = bench.args
    rate = float(args.cpu_services)  # N services at 1 s = N probes a second
    out: dict[str, Any] = {"services": args.cpu_services, "interval_seconds": 1.0, "rate": rate}
    proc, base, _ = bench.start_ours("ours-cpu", args.cpu_services, 1.0)
    try:
        out["ours_scheduled"] = measure_scheduled(bench, [(proc, base)], args.cpu_duration, 1.0)
    finally:
        bench.stop(proc)
    print(f"  ours scheduled: {out['ours_scheduled']['cpu_us_per_probe']:.0f} us/probe", flush=True)
    out["ours_on_demand"] = measure_on_demand(bench, *ours_idle, rate)
    print(f"  ours on-demand: {out['ours_on_demand']['cpu_us_per_probe']:.0f} us/probe", flush=True)
    out["blackbox_on_demand"] = measure_on_demand(bench, *blackbox, rate)
    print(f"  blackbox on-demand: {out['blackbox_on_demand']['cpu_us_per_probe']:.0f} us/probe", flush=True)
    return out


def phase_scale(bench: Bench) -> dict[str, Any]:
    args = bench.args
    count = args.shards
    out: dict[str, Any] = {"services": args.services, "interval_seconds": args.interval, "processes": count}
    fleet: Fleet = []
    try:
        ready = []
        for index in range(count):
            shard = ("--shard.count", str(count), "--shard.index", str(index)) if count > 1 else ()
            proc, base, seconds = bench.start_ours(f"ours-scale-{index}", args.services, args.interval, shard)
            fleet.append((proc, base))
            ready.append(seconds)
        out["seconds_to_ready"] = max(ready)
        out.update(measure_scheduled(bench, fleet, args.intervals * args.interval, args.interval))
        # What the goal asks about: memory while probing and scraped every SCRAPE_EVERY seconds,
        # read after a few scrapes on that rhythm (the warm-up scraped every second).
        for _ in range(STEADY_SCRAPES):
            time.sleep(SCRAPE_EVERY)
            scrape_fleet(fleet)
        steady = [process_memory(proc.pid) for proc, _ in fleet]
        out["memory_steady"] = steady
        out["rss_steady_bytes"] = sum(one["rss_bytes"] for tree in steady for one in tree)
        out["pss_steady_bytes"] = sum(one["pss_bytes"] for tree in steady for one in tree)
        renders = []
        for _ in range(args.renders):
            renders.append(scrape_fleet(fleet)[1])
            time.sleep(0.5)
        # With shards, each process renders its share; Prometheus scrapes them in parallel.
        out["metrics_render_seconds"] = [max(one.seconds for one in each) for each in renders]
        out["metrics_render_median_seconds"] = statistics.median(out["metrics_render_seconds"])
        out["metrics_bytes"] = sum(one.size for one in renders[-1])
        out["memory"] = [process_memory(proc.pid) for proc, _ in fleet]
        out["rss_bytes_each"] = [sum(one["rss_bytes"] for one in tree) for tree in out["memory"]]
        out["rss_bytes"] = sum(out["rss_bytes_each"])
        out["pss_bytes"] = sum(one["pss_bytes"] for tree in out["memory"] for one in tree)
        out["peak_rss_bytes"] = sum(one["peak_rss_bytes"] for tree in out["memory"] for one in tree)
        for when, trees in (("scraped every 15 s", steady), ("after the back-to-back GETs", out["memory"])):
            for tree in trees:
                for one in tree:
                    print(
                        f"  {when}: {one['role']} {one['pid']}: RSS {one['rss_bytes'] / 2**20:.1f} MiB,"
                        f" PSS {one['pss_bytes'] / 2**20:.1f} MiB,"
                        f" peak RSS {one['peak_rss_bytes'] / 2**20:.1f} MiB",
                        flush=True,
                    )
    finally:
        for proc, _ in fleet:
            bench.stop(proc)
    return out


# --- report --------------------------------------------------------------------------------------


def fmt(value: float, digits: int = 0) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _process_memory_text(tree: list[dict[str, Any]]) -> str:
    """``front 180/170`` then each worker's: RSS/PSS in MiB."""
    return " ".join(
        f"{one['role']} {one['rss_bytes'] / 2**20:.0f}/{one['pss_bytes'] / 2**20:.0f}" for one in tree
    )


def table(results: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, str]] = []
    t = results.get("throughput")
    if t:
        ours, theirs = t["ours"], t["blackbox"]
        rows += [
            (
                f"/probe throughput, req/s ({t['load']}, median of {t['repeats']} alternating runs)",
                fmt(ours["requests_per_second"]),
                fmt(theirs["requests_per_second"]),
                f"ours/blackbox = {t['ratio']:.2f}, median of the runs' pairs "
                f"({' '.join(f'{r:.2f}' for r in t['pair_ratios'])}; goal >= 2)",
            ),
            (
                "CPU per /probe request under that load, us (median)",
                fmt(ours["cpu_us_per_request"]),
                fmt(theirs["cpu_us_per_request"]),
                "",
            ),
            (
                "/probe latency p50 / p99, ms (same load)",
                f"{fmt(ours['latency_p50_ms'], 2)} / {fmt(ours['latency_p99_ms'], 2)}",
                f"{fmt(theirs['latency_p50_ms'], 2)} / {fmt(theirs['latency_p99_ms'], 2)}",
                "",
            ),
            (
                "probes not successful during the load (all runs)",
                fmt(ours["probe_failed"]),
                fmt(theirs["probe_failed"]),
                "",
            ),
            (
                "CPU used under that load, cores (median run)",
                fmt(ours["cpu_cores"], 2),
                fmt(theirs["cpu_cores"], 2),
                "",
            ),
        ]
    c = results.get("cpu")
    if c:
        s, od, bb = c["ours_scheduled"], c["ours_on_demand"], c["blackbox_on_demand"]
        rows += [
            (
                f"CPU per probe, scheduled ({c['services']} services at 1 s), us",
                f"{fmt(s['cpu_us_per_probe'])} ({fmt(s['probes_per_second'])}/s)",
                "n/a (no scheduler)",
                "",
            ),
            (
                f"CPU per probe, on-demand /probe at {c['rate']:g}/s, us",
                f"{fmt(od['cpu_us_per_probe'])} ({fmt(od['probes_per_second'])}/s)",
                f"{fmt(bb['cpu_us_per_probe'])} ({fmt(bb['probes_per_second'])}/s)",
                "",
            ),
        ]
    sc = results.get("scale")
    if sc:
        n, every = sc["services"], sc["interval_seconds"]
        expected = n / every
        where = f"{n:,} services at {every:g} s" + (
            f", {sc['processes']} shard processes" if sc["processes"] > 1 else ""
        )
        lag_ok = sc["lag_p99_ms"] < 50
        render_ok = sc["metrics_render_median_seconds"] < 0.25
        rows += [
            (
                f"schedule lag p50 / p99, ms ({where})",
                f"{fmt(sc['lag_p50_ms'], 1)} / {fmt(sc['lag_p99_ms'], 1)}",
                "n/a",
                f"p99 < 50 ms: {'met' if lag_ok else 'MISSED'}",
            ),
            (
                "probes/s achieved (expected) and success ratio",
                f"{fmt(sc['probes_per_second'])} ({fmt(expected)}), {sc['success_ratio']:.4f}",
                "n/a",
                "",
            ),
            ("share of probes started within 100 ms", f"{sc['lag_share_within_100ms']:.3f}", "n/a", ""),
            ("CPU while probing and scraped every 15 s, cores", fmt(sc["cpu_cores"], 2), "n/a", ""),
            (
                f"/metrics render, median of {len(sc['metrics_render_seconds'])} GETs, ms",
                fmt(1000 * sc["metrics_render_median_seconds"]),
                "n/a",
                f"< 250 ms: {'met' if render_ok else 'MISSED'}",
            ),
            ("/metrics size, bytes", fmt(sc["metrics_bytes"]), "n/a", ""),
            (
                f"RSS, MiB, all processes, probing and scraped every {SCRAPE_EVERY:g} s (blackbox idle)",
                fmt(sc["rss_steady_bytes"] / 2**20, 1),
                fmt(results["blackbox_rss_idle_bytes"] / 2**20, 1),
                f"< 250 MiB: {'met' if sc['rss_steady_bytes'] < 250 * 2**20 else 'MISSED'}; per process: "
                + ", ".join(_process_memory_text(tree) for tree in sc["memory_steady"]),
            ),
            (
                f"RSS, MiB, after {len(sc['metrics_render_seconds'])} GETs of /metrics 0.5 s apart; peak RSS",
                f"{fmt(sc['rss_bytes'] / 2**20, 1)}; {fmt(sc['peak_rss_bytes'] / 2**20, 1)}",
                "n/a",
                "",
            ),
            (
                "PSS, MiB (ours at scale: shared pages counted once)",
                fmt(sc["pss_bytes"] / 2**20, 1),
                "n/a",
                "per process: " + ", ".join(_process_memory_text(tree) for tree in sc["memory"]),
            ),
            ("start-up to /-/ready, s", fmt(sc["seconds_to_ready"], 1), "n/a", ""),
        ]
    lines = ["| measurement | outage-exporter | blackbox_exporter | note |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c_} | {d} |" for a, b, c_, d in rows]
    return "\n".join(lines)


def profile_text(profiles: dict[str, Any]) -> str:
    lines: list[str] = []
    for name, summary in profiles.items():
        lines.append(f"\nprofile of {name} ({summary['samples']} samples, all threads, idle excluded)")
        lines.append("  self time:")
        lines += [f"    {share:5.1f}%  {fn}" for fn, share in summary["self"]]
        lines.append("  inclusive time:")
        lines += [f"    {share:5.1f}%  {fn}" for fn, share in summary["inclusive"]]
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except OSError:
            return "missing"
        return (done.stdout or done.stderr).strip().splitlines()[0]

    try:
        # The exporter switches to uvloop whenever it is installed.
        loop = f"uvloop {importlib.metadata.version('uvloop')}"
    except importlib.metadata.PackageNotFoundError:
        loop = "asyncio"
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "event_loop": loop,
        "aiohttp": aiohttp.__version__,
        "kernel": platform.release(),
        "blackbox": first_line(["prometheus-blackbox-exporter", "--version"]),
        "nginx": first_line(["nginx", "-v"]),
        "wrk": first_line(["wrk", "--version"]),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--cpu-duration", type=float, default=20, help="CPU windows, seconds (default 20)")
    parser.add_argument("--cpu-services", type=int, default=500, help="services at 1 s for CPU per probe")
    parser.add_argument("--services", type=int, default=10_000, help="services for the scale phase")
    parser.add_argument("--interval", type=float, default=10, help="their interval, seconds (default 10)")
    parser.add_argument("--intervals", type=int, default=3, help="intervals measured after warm-up")
    parser.add_argument("--renders", type=int, default=7, help="GET /metrics this many times for the median")
    parser.add_argument(
        "--shards", type=int, default=1, help="scale phase: split the services over this many processes"
    )
    parser.add_argument("--repeats", type=int, default=3, help="alternating wrk runs per side (default 3)")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--wrk-connections", type=int, default=16)
    parser.add_argument(
        "--phases",
        default="throughput,cpu,scale",
        help="comma-separated subset of throughput,cpu,scale (default all)",
    )
    parser.add_argument("--workers", type=int, default=None, help="our --workers (default: the exporter's)")
    parser.add_argument("--quick", action="store_true", help="shorter windows: about 2 minutes in all")
    parser.add_argument("--profile", action="store_true", help="sample our exporter with py-spy")
    args = parser.parse_args(argv)
    if args.quick:
        # Throughput: five short pairs rather than one long one, for a median of ratios.
        args.duration, args.cpu_duration, args.intervals, args.renders, args.repeats = 3, 10, 2, 5, 5
    args.phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    unknown = args.phases - {"throughput", "cpu", "scale"}
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("nginx", "wrk", "prometheus-blackbox-exporter"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"{tool} is not installed (Debian packages nginx-light, wrk, prometheus-blackbox-exporter)")
            return 2
    started = time.monotonic()
    results: dict[str, Any] = {
        "load_average_before": os.getloadavg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:] if argv is None else argv,
        "environment": environment(),
    }
    with tempfile.TemporaryDirectory(prefix="outage-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            bench.start_nginx()
            bb_proc, bb_base = bench.start_blackbox()
            check_probe(bb_base, bench.nginx_url)
            results["blackbox_rss_idle_bytes"] = rss_bytes(bb_proc.pid)
            ours_proc, ours_base, _ = bench.start_ours("ours-probe", 0, 10)
            check_probe(ours_base, bench.nginx_url)
            results["ours_rss_idle_bytes"] = tree_rss_bytes(ours_proc.pid)
            timings = results["phase_seconds"] = {}
            if "throughput" in args.phases:
                print("throughput: /probe under wrk", flush=True)
                begin = time.monotonic()
                results["throughput"] = phase_throughput(bench, (ours_proc, ours_base), (bb_proc, bb_base))
                timings["throughput"] = time.monotonic() - begin
            if "cpu" in args.phases:
                print("cpu: CPU time per probe", flush=True)
                begin = time.monotonic()
                results["cpu"] = phase_cpu(bench, (ours_proc, ours_base), (bb_proc, bb_base))
                timings["cpu"] = time.monotonic() - begin
            if "scale" in args.phases:
                bench.stop(ours_proc)
                print(f"scale: {args.services:,} services at {args.interval:g}s", flush=True)
                begin = time.monotonic()
                results["scale"] = phase_scale(bench)
                timings["scale"] = time.monotonic() - begin
        finally:
            bench.stop_all()
        results["profiles"] = bench.profiles
    results["seconds"] = time.monotonic() - started
    results["load_average_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"run-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    env = results["environment"]
    print(
        f"\n{env['cpus']} CPUs, Python {env['python']} with {env['event_loop']}, "
        f"{env['blackbox']}, {env['nginx']}; {results['seconds']:.0f} s in all; load average "
        f"{results['load_average_before'][0]:.1f} before, {results['load_average_after'][0]:.1f} after\n"
    )
    print(table(results))
    if bench.profiles:
        print(profile_text(bench.profiles))
    print(f"\nwrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
