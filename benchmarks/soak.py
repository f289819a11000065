"""Soak test: thousands of services against local targets for a long time, with a reload every minute.

Run from the repository root:

    python3 benchmarks/soak.py                          # 10,000 services for 30 minutes
    python3 benchmarks/soak.py --services 500 --duration 3m

The exporter runs as its own process (``python -m exporter``), probing targets served by a second
process on 127.0.0.1: two thirds healthy (HTTP 200 and TCP connect), one third failing in four
ways (a refused port, HTTP 500, a response slower than the timeout, TLS spoken to a plain-HTTP
port). Every ``--reload-every`` the config is rewritten with a few services removed and a few
added, and ``POST /-/reload`` applies it. Every ``--scrape-every`` ``/metrics`` is scraped as
Prometheus would and the services in it are compared with the config; every ``--sample-every``
the exporter's RSS and open file descriptors are sampled.

It reports the slope of RSS and fd count (least squares, per hour, over the samples after the
warm-up), lost or stale series (a configured service missing from a scrape, or a removed one
still there), failed reloads, and schedule lag p50/p99 from
``outage_exporter_schedule_lag_seconds`` over the window after the warm-up. Results go to
benchmarks/results/soak-*.json and .md (git-ignored). Everything runs on loopback, every wait is
bounded, and the run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
LAG = "outage_exporter_schedule_lag_seconds"
# How the failing third fails; the healthy two thirds are http_ok and tcp_ok.
KINDS = ("http_ok", "http_ok", "http_ok", "http_ok", "tcp_ok", "tcp_ok", "tcp_ok", "tcp_ok")
KINDS += ("refused", "http_500", "slow", "bad_tls")
REQUEST_TIMEOUT = 120.0


def parse_duration(text: str) -> float:
    """``30m``, ``90s``, ``1h`` or plain seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


# --- the targets (a child process) -------------------------------------------------------------


async def serve_targets(lifetime: float, slow: float) -> None:
    """HTTP targets on 127.0.0.1: /ok, /error (500), /slow (answers after ``slow`` seconds)."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def error(request: web.Request) -> web.Response:
        return web.Response(status=500, text="error")

    async def slow_answer(request: web.Request) -> web.Response:
        await asyncio.sleep(slow)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/error", error)
    app.router.add_get("/slow", slow_answer)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = runner.addresses[0][1]
    print(json.dumps({"port": port}), flush=True)
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: done.done() or done.set_result(None))
    try:
        await asyncio.wait_for(done, lifetime)
    except TimeoutError:
        pass
    finally:
        await runner.cleanup()


# --- the driver --------------------------------------------------------------------------------


@dataclass
class Targets:
    http_port: int
    refused_port: int

    def service(self, name: str, kind: str) -> str:
        base = f"http://127.0.0.1:{self.http_port}"
        if kind == "http_ok":
            spec = f'prober: http, target: "{base}/ok"'
        elif kind == "tcp_ok":
            spec = f'prober: tcp, target: "127.0.0.1:{self.http_port}"'
        elif kind == "refused":
            spec = f'prober: http, target: "http://127.0.0.1:{self.refused_port}/"'
        elif kind == "http_500":
            spec = f'prober: http, target: "{base}/error"'
        elif kind == "slow":
            spec = f'prober: http, target: "{base}/slow"'
        else:  # bad_tls: TLS spoken to a port that answers plain HTTP
            spec = f'prober: http, target: "https://127.0.0.1:{self.http_port}/ok"'
        module = "tcp" if kind == "tcp_ok" else "http"
        return f"  - {{name: {name}, group: {kind}, {spec}, {module}: {{preferred_ip_protocol: ip4}}}}"


@dataclass
class Soak:
    args: argparse.Namespace
    targets: Targets
    config_path: Path
    names: dict[str, str] = field(default_factory=dict)  # name -> kind
    rounds: int = 0

    def write_config(self) -> None:
        lines = [self.targets.service(name, kind) for name, kind in self.names.items()]
        self.config_path.write_text(
            f"global: {{interval: {round(self.args.interval * 1000)}ms,"
            f" timeout: {round(self.args.timeout * 1000)}ms, location: soak}}\n"
            "services:\n" + "\n".join(lines) + "\n"
        )

    def churn(self, rng: random.Random) -> None:
        """Remove ``--churn`` services and add as many new ones."""
        self.rounds += 1
        removed = rng.sample(sorted(self.names), min(self.args.churn, len(self.names)))
        for name in removed:
            del self.names[name]
        for i in range(self.args.churn):
            self.names[f"svc-r{self.rounds}-{i}"] = rng.choice(KINDS)
        self.write_config()


SERVICE_RE = re.compile(rb'^probe_service_info\{[^}]*?\bservice="([^"]*)"', re.MULTILINE)
RUNS_RE = re.compile(rb'^probe_runs_total\{service="([^"]*)"[^}]*\} (\S+)$', re.MULTILINE)
FAILURES_RE = re.compile(rb'^probe_failures_total\{[^}]*reason="([a-z_]+)"\} (\S+)$', re.MULTILINE)
LAG_RE = re.compile(rb"^" + LAG.encode() + rb'_bucket\{le="([^"]+)"\} (\S+)$', re.MULTILINE)
GAUGE_RE = re.compile(rb"^(outage_exporter_probes_in_flight|outage_exporter_services) (\S+)$", re.MULTILINE)


@dataclass
class Scrape:
    at: float
    seconds: float
    size: int
    services: set[str]
    runs: float
    failures: dict[str, float]
    lag: list[tuple[float, float]]
    gauges: dict[str, float]


def read_scrape(body: bytes, at: float, seconds: float) -> Scrape:
    failures: dict[str, float] = {}
    for reason, count in FAILURES_RE.findall(body):
        failures[reason.decode()] = failures.get(reason.decode(), 0.0) + float(count)
    return Scrape(
        at=at,
        seconds=seconds,
        size=len(body),
        services={m.decode() for m in SERVICE_RE.findall(body)},
        runs=sum(float(v) for _, v in RUNS_RE.findall(body)),
        failures=failures,
        lag=[(float(le), float(c)) for le, c in LAG_RE.findall(body)],
        gauges={k.decode(): float(v) for k, v in GAUGE_RE.findall(body)},
    )


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over cumulative (le, count) pairs ending with +Inf."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return float("nan")
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / max(
                count - lower_count, 1e-12
            )
        lower_bound, lower_count = bound, count
    return buckets[-1][0]


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return float("nan")
    cov = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return cov / var * 3600


def rss_bytes(pid: int) -> int:
    """Resident memory of the exporter and its probe worker processes."""
    total = 0
    for each in (pid, *children(pid)):
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def fd_count(pid: int) -> int:
    """Open descriptors of the exporter and its probe worker processes."""
    return sum(len(os.listdir(f"/proc/{each}/fd")) for each in (pid, *children(pid)))


def children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start_process(argv: list[str], log: Path, stdin: bool = False) -> asyncio.subprocess.Process:
    with open(log, "w") as out:  # noqa: ASYNC230 - a moment at start-up, before any measuring
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if stdin else out,
            stderr=out,
            cwd=ROOT,
        )


async def stop_process(proc: asyncio.subprocess.Process) -> int | None:
    if proc.returncode is None:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    return proc.returncode


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    lifetime = args.duration + 600
    targets_proc = await start_process(
        [
            sys.executable,
            str(HERE),
            "--serve-targets",
            "--slow",
            str(args.timeout * 3),
            "--duration",
            str(lifetime),
        ],
        tmp / "targets.log",
        stdin=True,
    )
    assert targets_proc.stdout is not None
    info = json.loads(await asyncio.wait_for(targets_proc.stdout.readline(), 60))
    soak = Soak(args, Targets(info["port"], refused.getsockname()[1]), tmp / "config.yml")
    for i in range(args.services):
        soak.names[f"svc-{i}"] = KINDS[i % len(KINDS)]
    soak.write_config()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    exporter = await start_process(
        [
            sys.executable,
            "-m",
            "exporter",
            "--config.file",
            str(soak.config_path),
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--config.auto-reload-interval",
            "0s",
        ],
        tmp / "exporter.log",
    )
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:],
        "services": args.services,
        "interval_seconds": args.interval,
        "timeout_seconds": args.timeout,
        "duration_seconds": args.duration,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    samples: list[dict[str, float]] = []
    scrapes: list[Scrape] = []
    problems: list[str] = []
    reloads = {"ok": 0, "failed": 0}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            ready_by = time.monotonic() + 300
            while True:
                try:
                    async with session.get(f"{base}/-/ready") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if exporter.returncode is not None or time.monotonic() > ready_by:
                    raise RuntimeError("the exporter did not become ready: see " + str(tmp / "exporter.log"))
                await asyncio.sleep(0.2)
            start = time.monotonic()
            end = start + args.duration
            next_reload = start + args.reload_every
            next_scrape = start
            next_sample = start
            while time.monotonic() < end:
                if exporter.returncode is not None:
                    problems.append(f"the exporter exited with {exporter.returncode}")
                    break
                now = time.monotonic()
                if now >= next_sample:
                    sample = {"t": now - start, "rss": rss_bytes(exporter.pid), "fds": fd_count(exporter.pid)}
                    samples.append(sample)
                    next_sample += args.sample_every
                    print(
                        f"[{sample['t'] / 60:5.1f} min] rss {sample['rss'] / 2**20:.1f} MiB,"
                        f" fds {sample['fds']}, reloads {reloads['ok']} ok / {reloads['failed']} failed,"
                        f" problems {len(problems)}",
                        flush=True,
                    )
                if now >= next_reload:
                    soak.churn(rng)
                    async with session.post(f"{base}/-/reload") as response:
                        text = await response.text()
                    if response.status == 200:
                        reloads["ok"] += 1
                    else:
                        reloads["failed"] += 1
                        problems.append(f"reload {soak.rounds} failed: {response.status} {text[:200]}")
                    next_reload += args.reload_every
                if now >= next_scrape:
                    began = time.monotonic()
                    async with session.get(f"{base}/metrics") as response:
                        body = await response.read()
                    scrape = read_scrape(body, began - start, time.monotonic() - began)
                    expected = set(soak.names)
                    missing = expected - scrape.services
                    extra = scrape.services - expected
                    if missing or extra:
                        problems.append(
                            f"scrape at {scrape.at:.0f}s: {len(missing)} missing"
                            f" (e.g. {sorted(missing)[:3]}), {len(extra)} not configured"
                            f" (e.g. {sorted(extra)[:3]})"
                        )
                    scrapes.append(scrape)
                    next_scrape += args.scrape_every
                await asyncio.sleep(
                    max(0.0, min(next_sample, next_reload, next_scrape, end) - time.monotonic())
                )
    finally:
        report["exporter_exit_code"] = await stop_process(exporter)
        await stop_process(targets_proc)
        refused.close()
    log_text = (tmp / "exporter.log").read_text(errors="replace")
    report["exporter_log_tracebacks"] = log_text.count("Traceback")
    report["exporter_log_stopped"] = "outage-exporter stopped" in log_text
    report["work_dir"] = str(tmp)
    report["samples"] = samples
    report["reloads"] = reloads
    report["scrapes"] = len(scrapes)
    report["problems"] = problems
    warm = [s for s in samples if s["t"] >= args.warmup]
    report["rss_bytes_first_last"] = [samples[0]["rss"], samples[-1]["rss"]] if samples else []
    report["rss_bytes_max"] = max((s["rss"] for s in samples), default=0)
    report["rss_slope_bytes_per_hour"] = slope_per_hour([(s["t"], s["rss"]) for s in warm])
    report["fds_first_last"] = [samples[0]["fds"], samples[-1]["fds"]] if samples else []
    report["fds_slope_per_hour"] = slope_per_hour([(s["t"], s["fds"]) for s in warm])
    after = [s for s in scrapes if s.at >= args.warmup]
    if len(after) >= 2:
        first, last = after[0], after[-1]
        delta = [(le, c - c0) for (le, c), (_, c0) in zip(last.lag, first.lag, strict=True)]
        window = last.at - first.at
        report["window_seconds"] = window
        report["lag_p50_seconds"] = histogram_quantile(0.5, delta)
        report["lag_p99_seconds"] = histogram_quantile(0.99, delta)
        report["lag_scheduled_runs"] = delta[-1][1] if delta else 0
        total = delta[-1][1] if delta else 0
        # The share of runs that started within each bucket bound: how the tail is spread.
        report["lag_share_within"] = {str(le): (c / total if total else 0.0) for le, c in delta}
        report["probes_per_second"] = (last.runs - first.runs) / window if window > 0 else float("nan")
        failed = {r: last.failures.get(r, 0) - first.failures.get(r, 0) for r in last.failures}
        report["failures_by_reason"] = {r: n for r, n in failed.items() if n > 0}
    report["lag_p99_seconds_whole_run"] = histogram_quantile(0.99, scrapes[-1].lag) if scrapes else None
    report["scrape_seconds_max"] = max((s.seconds for s in scrapes), default=0)
    report["scrape_seconds_median"] = sorted(s.seconds for s in scrapes)[len(scrapes) // 2] if scrapes else 0
    report["metrics_bytes_last"] = scrapes[-1].size if scrapes else 0
    report["lost_series_scrapes"] = sum(1 for p in problems if p.startswith("scrape"))
    return report


def markdown(report: dict[str, Any]) -> str:
    def mib(value: float) -> str:
        return f"{value / 2**20:.1f} MiB"

    rows = [
        (
            "services, interval, timeout",
            f"{report['services']}, {report['interval_seconds']}s, {report['timeout_seconds']}s",
        ),
        ("duration", f"{report['duration_seconds'] / 60:.0f} min, {report['scrapes']} scrapes"),
        ("reloads", f"{report['reloads']['ok']} ok, {report['reloads']['failed']} failed"),
        ("scrapes with a lost or stale series", str(report["lost_series_scrapes"])),
        ("probes per second", f"{report.get('probes_per_second', float('nan')):.0f}"),
        ("failures by reason (after warm-up)", json.dumps(report.get("failures_by_reason", {}))),
        (
            "RSS first, last, max",
            " / ".join(mib(v) for v in [*report["rss_bytes_first_last"], report["rss_bytes_max"]]),
        ),
        ("RSS slope after warm-up", f"{report['rss_slope_bytes_per_hour'] / 2**20:+.2f} MiB/hour"),
        ("fds first, last", " / ".join(str(v) for v in report["fds_first_last"])),
        ("fd slope after warm-up", f"{report['fds_slope_per_hour']:+.2f} per hour"),
        (
            "schedule lag p50 / p99 (after warm-up)",
            f"{report.get('lag_p50_seconds', float('nan')) * 1000:.1f} ms / "
            f"{report.get('lag_p99_seconds', float('nan')) * 1000:.1f} ms",
        ),
        (
            "runs started within 25 / 50 / 100 / 250 ms of their slot",
            " / ".join(
                f"{report.get('lag_share_within', {}).get(bound, float('nan')) * 100:.2f} %"
                for bound in ("0.025", "0.05", "0.1", "0.25")
            ),
        ),
        (
            "/metrics scrape median / max",
            f"{report['scrape_seconds_median']:.2f} s / {report['scrape_seconds_max']:.2f} s,"
            f" {mib(report['metrics_bytes_last'])}",
        ),
        (
            "exit on SIGTERM",
            f"code {report['exporter_exit_code']}, tracebacks in log: {report['exporter_log_tracebacks']}",
        ),
    ]
    return "| measure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--duration", type=parse_duration, default=parse_duration("30m"))
    parser.add_argument("--interval", type=parse_duration, default=30.0, help="probe interval (default 30s)")
    parser.add_argument("--timeout", type=parse_duration, default=5.0, help="probe timeout (default 5s)")
    parser.add_argument("--reload-every", type=parse_duration, default=60.0)
    parser.add_argument("--scrape-every", type=parse_duration, default=30.0)
    parser.add_argument("--sample-every", type=parse_duration, default=60.0)
    parser.add_argument("--warmup", type=parse_duration, default=300.0, help="left out of slopes and lag")
    parser.add_argument("--churn", type=int, default=5, help="services removed and added per reload")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--serve-targets", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--slow", type=float, default=15.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_targets:
        asyncio.run(serve_targets(args.duration, args.slow))
        return 0
    args.warmup = min(args.warmup, args.duration / 4)
    report = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"soak-{stamp}.json").write_text(json.dumps(report, indent=1, default=str))
    table = markdown(report)
    (RESULTS / f"soak-{stamp}.md").write_text(table)
    print(table)
    for problem in report["problems"][:20]:
        print("problem:", problem)
    return 1 if report["problems"] or report["reloads"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
