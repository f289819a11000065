"""What an attack does to the latency a canary reports: the exporter's own time mistaken for the target's.

For each attack (tests/attack_servers.py's expensive answers, /probe requests for them, a
wrong-password flood) the exporter probes a canary on loopback every second beside it. The
canary's target answers in well under a millisecond, so every millisecond of the canary's
reported duration beyond that is the exporter's own. The script records each canary probe's
``probe_duration_seconds`` (scraping often, one reading per probe run) and how long
``/-/healthy`` took, and prints per attack: canary runs, p50, p99 and max of the reported
duration, and the slowest /-/healthy. ``--source DIR`` runs another checkout's exporter, so the
same command measures before and after a change.

    python3 benchmarks/stalls.py --duration 20 [--source /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import bcrypt
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.metrics_util import parse, value  # noqa: E402
from tests.stack import Process, free_port, server_child  # noqa: E402
from tests.test_stalls import attack_config, get  # noqa: E402

ATTACKS = ("none", "scheduled", "probe-endpoint", "password-flood")
GOOD = ("prometheus", "right")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def run_attack(
    attack: str, ports: dict[str, int], source: Path, duration: float, workdir: Path
) -> dict[str, Any]:
    config = attack_config(ports)
    if attack != "scheduled":
        config["services"] = config["services"][:1]
    config_path = workdir / f"{attack}.yml"
    config_path.write_text(yaml.safe_dump(config))
    flags: list[str] = []
    auth: tuple[str, str] | None = None
    if attack == "password-flood":
        web = workdir / "web.yml"
        hashed = bcrypt.hashpw(GOOD[1].encode(), bcrypt.gensalt(rounds=10)).decode()
        web.write_text(yaml.safe_dump({"basic_auth_users": {GOOD[0]: hashed}}))
        flags = ["--web.config.file", str(web)]
        auth = GOOD
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(source)}
    argv = [sys.executable, "-m", "exporter", "--config.file", str(config_path)]
    proc = Process(
        f"exporter-{attack}",
        [*argv, "--web.listen-address", f"127.0.0.1:{port}", *flags],
        base,
        workdir,
        env,
        source,
    )
    stop = threading.Event()
    durations: dict[float, float] = {}
    health: list[float] = []
    unanswered = 0
    threads: list[threading.Thread] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if get(f"{base}/-/healthy", auth, timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        time.sleep(3)  # let the first runs of every service happen

        def watch_health() -> None:
            nonlocal unanswered
            while not stop.wait(0.1):
                start = time.monotonic()
                try:
                    get(f"{base}/-/healthy", auth, timeout=10)
                    health.append(time.monotonic() - start)
                except OSError:
                    unanswered += 1

        def flood(client: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                with contextlib.suppress(OSError):
                    get(f"{base}/-/healthy", ("prometheus", f"wrong-{client}-{n}"), timeout=10)

        def hammer(module: str) -> None:
            web = f"http://127.0.0.1:{ports['http']}"
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    get(f"{base}/probe?target={web}/{module}&module={module}", timeout=10)

        threads.append(threading.Thread(target=watch_health, daemon=True))
        if attack == "password-flood":
            threads += [threading.Thread(target=flood, args=(n,), daemon=True) for n in range(16)]
        if attack == "probe-endpoint":
            threads += [
                threading.Thread(target=hammer, args=(m,), daemon=True)
                for m in ("letters", "nested", "spaces", "bomb")
            ]
        for thread in threads:
            thread.start()
        end = time.monotonic() + duration
        while time.monotonic() < end:
            try:
                status, text = get(f"{base}/metrics", auth, timeout=10)
            except OSError:
                continue
            if status == 200:
                series = parse(text)
                try:
                    finished = value(series, "probe_last_run_timestamp_seconds", service="canary")
                    durations[finished] = value(series, "probe_duration_seconds", service="canary")
                except AssertionError:
                    pass
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
        proc.stop()
    canary = list(durations.values())
    return {
        "attack": attack,
        "canary_runs": len(canary),
        "p50_ms": percentile(canary, 0.5) * 1000,
        "p99_ms": percentile(canary, 0.99) * 1000,
        "max_ms": max(canary, default=float("nan")) * 1000,
        "healthy_max_ms": max(health, default=float("nan")) * 1000,
        "healthy_unanswered": unanswered,
        "healthy_median_ms": statistics.median(health) * 1000 if health else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds each attack runs")
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout whose exporter is measured")
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--body-mib", type=int, default=8, help="size of the big bodies")
    args = parser.parse_args()
    rows = []
    with (
        server_child("tests.attack_servers", 3600, str(args.body_mib)) as ports,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for attack in args.attacks.split(","):
            rows.append(run_attack(attack, ports, args.source.resolve(), args.duration, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()[0]
    print(f"\nsource: {args.source.resolve()}, {args.duration:g} s per attack, load average {load:.1f}")
    print("| attack | canary runs | canary p50 / p99 / max (ms) | /-/healthy median / max (ms), unanswered |")
    print("|---|---|---|---|")
    for r in rows:
        canary = f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} / {r['max_ms']:.1f}"
        health = f"{r['healthy_median_ms']:.1f} / {r['healthy_max_ms']:.1f}, {r['healthy_unanswered']}"
        print(f"| {r['attack']} | {r['canary_runs']} | {canary} | {health} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
