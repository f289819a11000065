"""Measures the status page: time to serve / and a badge, how long / holds the event loop, history memory.

    python3 benchmarks/statuspage.py                       # 1,000 and 10,000 services
    python3 benchmarks/statuspage.py --services 1000 --runs 7

Everything runs in-process over real loopback HTTP (aiohttp's test server). Every service holds
a full history (every slot of its bar filled, its recent-probe and failure rings full), so the
page draws as much as it ever does. "cold" renders drop the per-service HTML cache first (as
after a new slot begins); "warm" renders reuse it (as between two refreshes within a slot).
The page is fetched by curl in its own process (compressed, as browsers ask for it), so the event
loop only serves it; the hold is the longest gap a 1 ms ticker task saw meanwhile. Sizes are of
the compressed body.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from exporter.config import parse_config  # noqa: E402
from exporter.history import FAILED, OK, History  # noqa: E402
from exporter.page.routes import BOARD  # noqa: E402
from exporter.result import FailureReason, ProbeResult  # noqa: E402
from exporter.web import EXPORTER, make_app  # noqa: E402

SLOT = 600.0
SLOTS = 90


def config_text(count: int) -> str:
    lines = [
        f"  - {{name: svc-{i:05d}, group: group-{i // 25:04d}, prober: tcp,"
        f" target: '10.0.{i // 250}.{i % 250}:443', objectives: {{latency: 300ms}}}}"
        for i in range(count)
    ]
    return "global: {location: eu-west}\nstatus_page: {slot: 10m, slots: 90}\nservices:\n" + "\n".join(lines)


def fill(app: object, now: float) -> None:
    """One probe per slot for the whole bar; one in ten services failing now and then."""
    store = app[EXPORTER].store  # type: ignore[index]
    start = now - SLOT * (SLOTS - 1)
    for index, state in enumerate(store):
        name = state.service.name
        flaky = index % 10 == 0
        for slot in range(SLOTS):
            at = start + slot * SLOT
            failing = flaky and slot % 7 == 0
            if failing:
                result = ProbeResult(
                    False, 5.0, at, FailureReason.TIMEOUT, "no answer within 5s from 10.0.0.1:443"
                )
            else:
                result = ProbeResult(True, 0.02 + (slot % 5) * 0.01, at)
            store.record(name, result)


def history_bytes(count: int) -> float:
    """Bytes one service's full history takes, measured with tracemalloc over ``count`` services."""
    message = "connect to 10.0.0.1:443: connection refused by the server"
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    histories = []
    for i in range(count):
        history = History(SLOTS, SLOT)
        for slot in range(max(SLOTS, 60)):
            failing = slot % 9 == 0
            code = FAILED if failing else OK
            history.add(slot * SLOT, 0.05, code, FailureReason.CONNECT if failing else None, message + str(i))
        histories.append(history)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / count


async def serve_and_measure(count: int, runs: int) -> dict[str, float]:
    now = time.time()
    app = make_app(parse_config(config_text(count)), schedule=False)
    fill(app, now)
    # As `outage-exporter` does once it has started (exporter/cli.py): long-lived objects frozen,
    # young generations collected less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    board = app[BOARD]
    async with TestClient(TestServer(app)) as client:
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            loop = asyncio.get_running_loop()
            last = loop.time()
            while not stop.is_set():
                await asyncio.sleep(0.001)
                current = loop.time()
                gaps.append(current - last - 0.001)
                last = current

        async def fetch(path: str) -> tuple[float, int]:
            """GET through curl in its own process, as a browser would: the loop serves only."""
            process = await asyncio.create_subprocess_exec(
                "curl",
                "-s",
                "--compressed",
                "-o",
                "/dev/null",
                "-w",
                "%{time_total} %{size_download}",
                str(client.make_url(path)),
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await process.communicate()
            assert process.returncode == 0, path
            total, size = out.split()
            return float(total), int(size)

        async def get(path: str) -> tuple[float, int]:
            started = time.perf_counter()
            response = await client.get(path)
            body = await response.read()
            assert response.status == 200, (path, response.status)
            return time.perf_counter() - started, len(body)

        pauses: list[float] = []
        began: list[float] = [0.0]

        def watch_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                began[0] = time.perf_counter()
            else:
                pauses.append(time.perf_counter() - began[0])

        gc.callbacks.append(watch_gc)
        await get("/")  # warms imports and the per-service HTML cache
        results: dict[str, float] = {"services": count}
        for mode in ("cold", "warm"):
            times, holds = [], []
            pauses.clear()
            size = 0
            for _ in range(runs):
                if mode == "cold":
                    board._cards.clear()
                    board._views.clear()
                gaps.clear()
                stop.clear()
                tick = asyncio.create_task(ticker())
                await asyncio.sleep(0.005)
                elapsed, size = await fetch("/")
                stop.set()
                await tick
                times.append(elapsed)
                holds.append(max(gaps) if gaps else 0.0)
            results[f"page_{mode}_median_ms"] = statistics.median(times) * 1000
            results[f"page_{mode}_max_loop_hold_ms"] = max(holds) * 1000
            results[f"page_{mode}_longest_gc_ms"] = max(pauses, default=0.0) * 1000
            results["page_bytes"] = size
        badge_times = [(await get("/badge/svc-00001/status.svg"))[0] for _ in range(200)]
        results["badge_median_ms"] = statistics.median(badge_times) * 1000
        results["badge_p99_ms"] = sorted(badge_times)[int(len(badge_times) * 0.99) - 1] * 1000
        api_time, _ = await get("/api/v1/status")
        results["api_status_ms"] = api_time * 1000
        gc.callbacks.remove(watch_gc)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--memory-services", type=int, default=10000)
    args = parser.parse_args()
    report = []
    for count in args.services:
        result = asyncio.run(serve_and_measure(count, args.runs))
        report.append(result)
        print(json.dumps({k: round(v, 2) for k, v in result.items()}))
    per_service = history_bytes(args.memory_services)
    print(json.dumps({"history_bytes_per_service": round(per_service), "services": args.memory_services}))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    data = {"pages": report, "history_bytes_per_service": per_service}
    (out / f"statuspage-{stamp}.json").write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
