"""Measures how much the exporter's own work adds to the probe durations it reports, beside blackbox_exporter.

Run from the repository root (Debian packages nginx-light and prometheus-blackbox-exporter):

    python3 benchmarks/accuracy.py                          # 500 and 1,000 probes/s, about 4 minutes
    python3 benchmarks/accuracy.py --rates 500 --phase-seconds 60 --phases idle,scrape

One loopback nginx answers a tiny static page in well under a millisecond, so every reported
duration above that is the prober's own delay. At each rate R, both exporters probe it at the
same time, R probes a second each:

- ours: R * interval services on its own schedule (``--interval``, default 10 s). Every probe is
  seen through the ``probe_latency_seconds`` histogram, configured with fine buckets through
  ``global.latency_buckets``: the benchmark reads the bucket counts at each phase boundary and
  takes the difference; failed probes are counted from ``probe_failures_total``.
- blackbox_exporter: a load driver (a child process of its own, so its CPU is counted and it
  does not compete with the benchmark's scrapes) GETs ``/probe`` R times a second and keeps each
  answer's ``probe_duration_seconds``. Its values are put through the same buckets, so both
  columns are estimated the same way; its exact p99 and max are printed beside them.

Both run behind ``--web.config.file`` with one bcrypt user. Phases, in order (``--phases``):

- idle: nothing but probing (and the two boundary reads of ours' /metrics);
- scrape: GET /metrics of both every ``--scrape-every`` seconds (default 5), gzip accepted as
  Prometheus does;
- reload: as scrape, plus POST /-/reload to both every ``--reload-every`` seconds (the first
  two seconds into the phase);
- flood: as scrape, plus ``--flood-rate`` requests a second with a wrong password to each
  exporter (a second child process).

Printed per rate and phase, ours beside blackbox: probes seen, failures, the share reported
within 2, 5 and 25 ms, p50, p99, max (for ours the upper bound of the highest non-empty bucket),
and the CPU each process used (nginx, the driver and the benchmark itself included). Results are
also written as JSON to benchmarks/results/ (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (benchmarks/run.py: nginx, process and histogram helpers)

USER, PASSWORD = "bench", "accuracy-bench-password"
# The bounds both columns are read through; DEFAULT_LATENCY_BUCKETS has 11, these are 17.
BUCKETS = (
    0.0005,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
BLACKBOX_CONFIG = "modules:\n  http_2xx:\n    prober: http\n    http:\n      preferred_ip_protocol: ip4\n"
PHASES = ("idle", "scrape", "reload", "flood")
_DURATION = re.compile(rb"\nprobe_duration_seconds (\S+)")
_SUCCESS = re.compile(rb"\nprobe_success (\S+)")
_BUCKET = re.compile(rb'\nprobe_latency_seconds_bucket\{[^}\n]*le="([^"]+)"\} (\S+)')
_FAILURES = re.compile(rb"\nprobe_failures_total\{[^}\n]*\} (\S+)")
_RUNS = re.compile(rb"\nprobe_runs_total\{[^}\n]*\} (\S+)")


def auth_header(password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{USER}:{password}".encode()).decode()


def request(
    url: str, method: str = "GET", timeout: float = 60.0, password: str = PASSWORD
) -> tuple[int, bytes, int]:
    """Status, body (inflated if it came gzip-compressed, as Prometheus asks) and bytes on the wire."""
    headers = {"Authorization": auth_header(password), "Accept-Encoding": "gzip"}
    req = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            body = response.read()
            wire = len(body)
            if response.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            return response.status, body, wire
    except urllib.error.HTTPError as err:
        body = err.read()
        return err.code, body, len(body)


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its live children (nginx's workers are children of its master)."""
    total = run.cpu_seconds(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
            total += run.cpu_seconds(int(stat.parent.name))
    return total


def wait_ready(proc: run.Process, url: str, timeout: float = run.READY_TIMEOUT) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.proc.returncode}: {proc.tail()}")
        try:
            if request(url, timeout=5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready within {timeout:.0f}s: {proc.tail()}")


# --- the load driver (a child process) -----------------------------------------------------------


async def drive(url: str, rate: float, seconds: float, password: str) -> dict[str, Any]:
    """GET ``url`` ``rate`` times a second for ``seconds``; write when each was sent and what it said."""
    records: list[tuple[float, float, int]] = []  # (sent at, reported duration, success)
    counts = {"error": 0, "skipped": 0}
    headers = {"Authorization": auth_header(password), "X-Prometheus-Scrape-Timeout-Seconds": "5"}
    limit = asyncio.Semaphore(256)
    late: list[float] = []

    async def one(session: aiohttp.ClientSession, sent: float) -> None:
        try:
            async with session.get(url, headers=headers) as response:
                body = await response.read()
            found = _DURATION.search(body)
            success = _SUCCESS.search(body)
            if response.status == 200 and found and success:
                records.append((sent, float(found.group(1)), int(float(success.group(1)))))
            elif response.status != 401:
                counts["error"] += 1
            else:
                records.append((sent, math.nan, 0))
        except (aiohttp.ClientError, TimeoutError, ValueError):
            counts["error"] += 1
        finally:
            limit.release()

    tick = 0.005
    stop = asyncio.Event()
    # SIGTERM ends the run early; what was measured is still written.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        owed, ticks = 0.0, 0
        while (now := time.monotonic()) - start < seconds and not stop.is_set():
            owed += rate * tick
            late.append(now - (start + ticks * tick))
            while owed >= 1:
                owed -= 1
                if limit.locked():
                    counts["skipped"] += 1
                    continue
                await limit.acquire()
                task = asyncio.create_task(one(session, now))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            ticks += 1
            await asyncio.sleep(max(0.0, start + ticks * tick - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=15)
    late.sort()
    summary = {
        "records": records,
        **counts,
        "tick_late_p99_ms": 1000 * late[int(0.99 * (len(late) - 1))] if late else math.nan,
    }
    return summary


def driver_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="accuracy.py driver")
    parser.add_argument("url")
    parser.add_argument("rate", type=float)
    parser.add_argument("seconds", type=float)
    parser.add_argument("out", type=Path)
    parser.add_argument("--password", default=PASSWORD)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    summary = asyncio.run(drive(args.url, args.rate, args.seconds, args.password))
    args.out.write_text(json.dumps(summary))
    return 0


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Ours:
    """What one read of our /metrics says about probe durations: summed over all services."""

    buckets: dict[float, float]
    failures: float
    runs: float


def read_ours(base: str) -> tuple[Ours, float, int]:
    start = time.monotonic()
    status, body, _ = request(f"{base}/metrics")
    took = time.monotonic() - start
    if status != 200:
        raise RuntimeError(f"GET {base}/metrics: {status} {body[:200]!r}")
    buckets: dict[float, float] = {}
    for le, count in _BUCKET.findall(body):
        bound = float(le)
        buckets[bound] = buckets.get(bound, 0.0) + float(count)
    ours = Ours(
        buckets=buckets,
        failures=sum(float(v) for v in _FAILURES.findall(body)),
        runs=sum(float(v) for v in _RUNS.findall(body)),
    )
    return ours, took, len(body)


def bucketed(values: list[float]) -> list[tuple[float, float]]:
    """Cumulative (le, count) of ``values`` over BUCKETS and +Inf, as Prometheus would keep them."""
    bounds = (*BUCKETS, math.inf)
    counts = [0] * len(bounds)
    for value in values:
        for index, bound in enumerate(bounds):
            if value <= bound:
                counts[index] += 1
                break
    running, out = 0, []
    for bound, count in zip(bounds, counts, strict=True):
        running += count
        out.append((bound, float(running)))
    return out


def summarise(buckets: list[tuple[float, float]]) -> dict[str, float]:
    total = buckets[-1][1] if buckets else 0.0
    cumulative = dict(buckets)
    top = math.nan
    previous = 0.0
    for bound, count in buckets:
        if count > previous:
            top = bound
        previous = count
    return {
        "seen": total,
        "within_2ms": cumulative.get(0.002, math.nan) / total if total else math.nan,
        "within_5ms": cumulative.get(0.005, math.nan) / total if total else math.nan,
        "within_25ms": cumulative.get(0.025, math.nan) / total if total else math.nan,
        "p50": run.histogram_quantile(0.5, buckets),
        "p99": run.histogram_quantile(0.99, buckets),
        "max_bucket": top,
    }


@dataclass
class Window:
    name: str
    start: float = 0.0
    end: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    ours_before: Ours | None = None
    ours_after: Ours | None = None
    # Midpoints of the two boundary reads of ours' /metrics: its counts span these.
    ours_span: tuple[float, float] = (0.0, 0.0)
    scrapes: list[tuple[float, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Run:
    """One rate: nginx, both exporters, the driver; phases one after another."""

    def __init__(self, args: argparse.Namespace, tmp: Path, rate: float) -> None:
        self.args = args
        self.tmp = tmp
        self.rate = rate
        self.procs: dict[str, run.Process] = {}
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=args.bcrypt_cost)).decode()
        self.web_config = tmp / "web.yml"
        self.web_config.write_text(f"basic_auth_users:\n  {USER}: '{hashed}'\n")

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> run.Process:
        proc = run.Process(name, argv, self.tmp / f"{name}.log", env)
        self.procs[name] = proc
        return proc

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        self.procs.clear()

    def cpu(self) -> dict[str, float]:
        out = {}
        for name, proc in self.procs.items():
            try:
                out[name] = tree_cpu_seconds(proc.pid)
            except (OSError, ValueError):
                out[name] = math.nan
        out["benchmark"] = time.process_time()
        return out

    def setup(self) -> None:
        argv, self.target = run.nginx_argv(self.tmp)
        proc = self.start("nginx", argv)
        proc.wait_ready(self.target, timeout=30)

        argv, self.blackbox = run.blackbox_argv(self.tmp, f"--web.config.file={self.web_config}")
        proc = self.start("blackbox", argv)
        wait_ready(proc, f"{self.blackbox}/-/healthy")

        services = round(self.rate * self.args.interval)
        self.services = services
        conf = self.tmp / "ours.yml"
        text = run.our_config(self.target, services, self.args.interval)
        buckets = ", ".join(repr(b) for b in BUCKETS)
        text = text.replace("location: bench}", f"location: bench, latency_buckets: [{buckets}]}}", 1)
        conf.write_text(text)
        argv, self.ours = run.ours_argv(conf, self.args.workers, "--web.config.file", str(self.web_config))
        proc = self.start("ours", argv, env={"PYTHONPATH": str(ROOT)})
        wait_ready(proc, f"{self.ours}/-/ready")
        for base in (self.ours, self.blackbox):
            status, body, _ = request(f"{base}/probe?target={self.target}&module=http_2xx")
            if status != 200 or b"\nprobe_success 1" not in body:
                raise RuntimeError(f"{base}: a probe of {self.target} failed: {status} {body[:300]!r}")

    def driver(self, name: str, url: str, rate: float, seconds: float, password: str) -> Path:
        out = self.tmp / f"{name}.json"
        argv = [sys.executable, __file__, "driver", url, str(rate), str(seconds), str(out)]
        self.start(name, [*argv, "--password", password], env={"PYTHONPATH": str(ROOT)})
        return out

    def wait_driver(self, name: str, out: Path, timeout: float) -> dict[str, Any]:
        proc = self.procs[name]
        proc.proc.wait(timeout=timeout)
        if proc.proc.returncode != 0:
            raise RuntimeError(f"{name} failed: {proc.tail()}")
        result: dict[str, Any] = json.loads(out.read_text())
        return result

    def scrape_both(self, window: Window) -> None:
        start = time.monotonic()
        status, _, wire = request(f"{self.ours}/metrics")
        window.scrapes.append((time.monotonic() - start, wire))
        if status != 200:
            window.notes.append(f"ours /metrics: {status}")
        request(f"{self.blackbox}/metrics")

    def phase(self, window: Window) -> None:
        args = self.args
        began = time.monotonic()
        window.ours_before, took, size = read_ours(self.ours)
        first = began + took / 2
        window.notes.append(f"boundary read of ours' /metrics: {took:.2f}s, {size / 1e6:.1f} MB of text")
        window.cpu = self.cpu()
        window.start = time.monotonic()
        end = window.start + args.phase_seconds
        flood: Path | None = None
        if window.name == "flood":
            seconds = args.phase_seconds - 1
            for name, base in (("flood-ours", self.ours), ("flood-blackbox", self.blackbox)):
                flood = self.driver(name, f"{base}/metrics", args.flood_rate, seconds, "wrong-password")
        next_scrape = window.start + (args.scrape_every if window.name != "idle" else math.inf)
        next_reload = window.start + 2 if window.name == "reload" else math.inf
        while (now := time.monotonic()) < end:
            if now >= next_reload:
                for base in (self.ours, self.blackbox):
                    status, body, _ = request(f"{base}/-/reload", method="POST")
                    if status != 200:
                        window.notes.append(f"reload {base}: {status} {body[:100]!r}")
                next_reload += args.reload_every
            if now >= next_scrape:
                self.scrape_both(window)
                next_scrape += args.scrape_every
            time.sleep(max(0.0, min(next_scrape, next_reload, end) - time.monotonic()))
        window.end = time.monotonic()
        after = self.cpu()
        window.cpu = {name: after[name] - window.cpu.get(name, 0.0) for name in after}
        if flood is not None:
            for name in ("flood-ours", "flood-blackbox"):
                summary = self.wait_driver(name, self.tmp / f"{name}.json", 30)
                answered = len(summary["records"])
                window.notes.append(
                    f"{name}: {answered} wrong-password requests answered 401, "
                    f"{summary['error']} errors, {summary['skipped']} not sent (256 in flight)"
                )
        began = time.monotonic()
        window.ours_after, took, size = read_ours(self.ours)
        window.ours_span = (first, began + took / 2)

    def measure(self) -> dict[str, Any]:
        args = self.args
        self.setup()
        # Every service has had a first run before anything is measured.
        time.sleep(args.interval + 2)
        phases = [Window(name) for name in args.phases]
        total = len(phases) * (args.phase_seconds + 60) + 60
        load = self.driver(
            "driver",
            f"{self.blackbox}/probe?target={self.target}&module=http_2xx",
            self.rate,
            total,
            PASSWORD,
        )
        time.sleep(3)  # the driver's connections are up
        for window in phases:
            print(f"  {self.rate:g}/s: phase {window.name}", flush=True)
            self.phase(window)
        # The driver runs on past the last phase; stop it there, it writes what it has.
        driver_cpu = run.cpu_seconds(self.procs["driver"].pid)
        self.procs["driver"].proc.terminate()
        self.wait_driver("driver", load, 30)
        del self.procs["driver"]
        return {"phases": phases, "driver_file": load, "driver_cpu_total": driver_cpu}


def driver_records_by_phase(path: Path, phases: list[Window]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    data = json.loads(path.read_text()) if path.exists() else {"records": []}
    for window in phases:
        values, failed = [], 0
        for sent, duration, success in data["records"]:
            if window.start <= sent < window.end:
                if success:
                    values.append(duration)
                else:
                    failed += 1
        values.sort()
        result = summarise(bucketed(values))
        result["failed"] = failed
        result["exact_p99"] = values[int(0.99 * (len(values) - 1))] if values else math.nan
        result["exact_max"] = values[-1] if values else math.nan
        out[window.name] = result
    return out


def pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f} %"


def msec(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{1000 * value:.2f} ms"


def report(rate: float, services: int, interval: float, phases: list[Window], theirs: dict[str, Any]) -> str:
    lines = [
        f"### {rate:g} probes/s each ({services:,} services at {interval:g} s;"
        f" blackbox /probe at {rate:g}/s)",
        "",
        "| phase | measure | ours | blackbox_exporter |",
        "|---|---|---|---|",
    ]
    for window in phases:
        assert window.ours_before is not None and window.ours_after is not None
        before, after = window.ours_before, window.ours_after
        deltas = sorted((b, after.buckets.get(b, 0.0) - before.buckets.get(b, 0.0)) for b in after.buckets)
        ours = summarise(deltas)
        bb = theirs[window.name]
        seconds = window.end - window.start
        span = window.ours_span[1] - window.ours_span[0]
        rows = [
            ("probes seen (per second)", f"{ours['seen']:,.0f} ({ours['seen'] / span:.0f}/s)",
             f"{bb['seen']:,.0f} ({bb['seen'] / seconds:.0f}/s)"),
            ("failed probes", f"{after.failures - before.failures:,.0f}", f"{bb['failed']:,}"),
            ("share <= 2 ms", pct(ours["within_2ms"]), pct(bb["within_2ms"])),
            ("share <= 5 ms", pct(ours["within_5ms"]), pct(bb["within_5ms"])),
            ("share <= 25 ms", pct(ours["within_25ms"]), pct(bb["within_25ms"])),
            ("p50", msec(ours["p50"]), msec(bb["p50"])),
            ("p99", msec(ours["p99"]), f"{msec(bb['p99'])} (exact {msec(bb['exact_p99'])})"),
            ("max", f"<= {msec(ours['max_bucket'])}", f"{msec(bb['exact_max'])}"),
        ]  # fmt: skip
        cpu = window.cpu
        rows.append(
            (
                "CPU, cores",
                f"{cpu.get('ours', math.nan) / seconds:.2f}",
                f"{cpu.get('blackbox', math.nan) / seconds:.2f}"
                f" (+ driver {cpu.get('driver', math.nan) / seconds:.2f})",
            )
        )
        others = [f"nginx {cpu.get('nginx', math.nan) / seconds:.2f}"]
        others.append(f"benchmark {cpu.get('benchmark', math.nan) / seconds:.2f}")
        for name in ("flood-ours", "flood-blackbox"):
            if name in cpu:
                others.append(f"{name} {cpu[name] / seconds:.2f}")
        rows.append(("other CPU, cores", ", ".join(others), ""))
        if window.scrapes:
            took = sorted(s for s, _ in window.scrapes)
            size = window.scrapes[-1][1]
            rows.append(
                (
                    "ours' /metrics GETs",
                    f"{len(took)}, median {took[len(took) // 2]:.2f} s, {size / 1e6:.1f} MB on the wire",
                    "",
                )
            )
        for index, (name, a, b) in enumerate(rows):
            lines.append(f"| {window.name if index == 0 else ''} | {name} | {a} | {b} |")
    notes = [note for window in phases for note in (f"{window.name}: {n}" for n in window.notes)]
    return "\n".join(lines + [""] + [f"- {note}" for note in notes])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rates", default="500,1000", help="probes a second, comma-separated (default 500,1000)"
    )
    parser.add_argument("--interval", type=float, default=10, help="interval of our services, seconds")
    parser.add_argument("--workers", type=int, default=None, help="our --workers (default: the exporter's)")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"subset of {','.join(PHASES)}")
    parser.add_argument("--phase-seconds", type=float, default=20, help="length of each phase (default 20)")
    parser.add_argument("--scrape-every", type=float, default=5, help="seconds between /metrics GETs")
    parser.add_argument("--reload-every", type=float, default=60, help="seconds between reloads")
    parser.add_argument("--flood-rate", type=float, default=10, help="wrong-password requests/s per exporter")
    parser.add_argument("--bcrypt-cost", type=int, default=10, help="bcrypt cost of the web config's user")
    args = parser.parse_args(argv)
    args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["driver"]:
        return driver_main(argv[1:])
    args = parse_args(argv)
    for tool in ("nginx", "prometheus-blackbox-exporter"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"{tool} is not installed (Debian packages nginx-light, prometheus-blackbox-exporter)")
            return 2
    results: dict[str, Any] = {"argv": argv, "environment": run.environment(), "rates": {}}
    results["load_average_before"] = os.getloadavg()
    texts = []
    for rate in args.rates:
        with tempfile.TemporaryDirectory(prefix="outage-accuracy-") as tmp:
            bench = Run(args, Path(tmp), rate)
            try:
                measured = bench.measure()
            finally:
                bench.stop_all()
            theirs = driver_records_by_phase(measured["driver_file"], measured["phases"])
            phases = measured["phases"]
            text = report(rate, bench.services, args.interval, phases, theirs)
            data = json.loads(measured["driver_file"].read_text())
            text += (
                f"\n- driver: {measured['driver_cpu_total']:.1f} s CPU in all, "
                f"{data['error']} errors, {data['skipped']} not sent (256 in flight), "
                f"its 5 ms ticks p99 {data['tick_late_p99_ms']:.1f} ms late"
            )
            texts.append(text)
            print("\n" + text + "\n", flush=True)
            results["rates"][str(rate)] = {
                "blackbox": theirs,
                "text": text,
                "ours": {
                    w.name: {"before": vars(w.ours_before), "after": vars(w.ours_after), "cpu": w.cpu}
                    for w in phases
                },
            }
    results["load_average_after"] = os.getloadavg()
    env = results["environment"]
    print(
        f"{env['cpus']} CPUs, Python {env['python']} with {env['event_loop']}, {env['blackbox']}, "
        f"{env['nginx']}; load average {results['load_average_before'][0]:.1f} before, "
        f"{results['load_average_after'][0]:.1f} after\n"
    )
    print("\n\n".join(texts))
    run.RESULTS.mkdir(exist_ok=True)
    path = run.RESULTS / f"accuracy-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
