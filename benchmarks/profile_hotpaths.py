"""Profiles the two hot paths of outage-exporter in-process with cProfile: one HTTP probe, one scrape.

    python3 benchmarks/profile_hotpaths.py                 # starts its own nginx
    python3 benchmarks/profile_hotpaths.py --target http://127.0.0.1:8080/

probe: CPU time per probe through exporter.runner.run_probe (fresh connection each time), next to
the floor of the same exchange written with bare asyncio streams, then where the probe's time
goes. render: one /metrics body for --services services (every service holding a real result),
its size and time, and where that time goes. Times under cProfile are inflated; read the shares.
gzip: the same body written plain, gzip-compressed on the event loop in slices (what /metrics
does) and in a thread, with the CPU each costs and the longest the event loop waited meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (benchmarks/run.py: nginx and config helpers)
from prometheus_client.exposition import generate_latest  # noqa: E402

from exporter import exposition  # noqa: E402
from exporter.config import parse_config  # noqa: E402
from exporter.runner import run_probe  # noqa: E402
from exporter.web import EXPORTER, make_app  # noqa: E402


def top(profile: cProfile.Profile, key: str, count: int) -> list[str]:
    """The ``count`` biggest functions by ``key`` (tottime or cumtime), as shares of all time seen."""
    stats = pstats.Stats(profile)
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (path, line, name), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        value = tottime if key == "tottime" else cumtime
        where = path
        for anchor in ("exporter/", "site-packages/", "python3.11/"):
            if anchor in path:
                where = path.split(anchor, 1)[1]
                break
        rows.append((value, f"{100 * value / total:5.1f}%  {where}:{line}({name})  calls={calls}"))
    rows.sort(reverse=True)
    return [text for _, text in rows[:count]]


async def _floor_once(host: str, port: int, request: bytes) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    await reader.read()
    writer.close()
    await writer.wait_closed()


async def _cpu_per_call(make: object, count: int, concurrency: int) -> float:
    limit = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with limit:
            await make()  # type: ignore[operator]

    start = time.process_time()
    await asyncio.gather(*(one() for _ in range(count)))
    return 1e6 * (time.process_time() - start) / count


async def profile_probe(target: str, count: int, concurrency: int, lines: int) -> None:
    config = parse_config("modules:\n  http_2xx: {prober: http, http: {preferred_ip_protocol: ip4}}\n")
    module = config.modules["http_2xx"]
    parts = urlsplit(target)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"

    async def ours() -> None:
        result = await run_probe(target, module, 5.0)
        if not result.success:
            raise RuntimeError(f"probe of {target} failed: {result.reason} {result.message}")

    async def floor() -> None:
        await _floor_once(host, port, request.encode())

    samples: dict[str, list[float]] = {"floor": [], "ours": []}
    for _ in range(3):
        for name, make in (("floor", floor), ("ours", ours)):
            await _cpu_per_call(make, 200, concurrency)  # warm-up
            samples[name].append(await _cpu_per_call(make, count, concurrency))
    floor_us, ours_us = (statistics.median(samples[n]) for n in ("floor", "ours"))
    print(f"\n## probe: CPU per probe, {count} probes x3, {concurrency} at a time, median")
    print(f"bare asyncio streams (connect, write, read to EOF, close): {floor_us:.0f} us")
    print(f"exporter.runner.run_probe, http_2xx:                     {ours_us:.0f} us")
    profile = cProfile.Profile()
    profile.enable()
    await _cpu_per_call(ours, count, concurrency)
    profile.disable()
    total = pstats.Stats(profile).total_tt  # type: ignore[attr-defined]
    print(f"\nunder cProfile: {1e6 * total / count:.0f} us per probe; inclusive (cumtime) shares:")
    print("\n".join(top(profile, "cumtime", lines)))
    print("\nself (tottime) shares:")
    print("\n".join(top(profile, "tottime", lines)))


async def profile_render(target: str, services: int, renders: int, lines: int) -> None:
    config = parse_config(run.our_config(target, services, 10))
    exporter = make_app(config, schedule=False)[EXPORTER]
    # Every service gets a real result; probing each would take minutes, one result is enough.
    first = config.services[0]
    result = await run_probe(first.target, first.module, 5.0)
    for service in config.services:
        exporter.store.record(service.name, result)

    async def render() -> bytes:
        # What GET /metrics renders: the probe series, then the self metrics. Every service is
        # given a new result first, so nothing comes from the collector's cache: the worst case.
        for service in config.services:
            exporter.store.record(service.name, result)
        return await exporter.service_collector.render() + generate_latest(exporter.registry)

    seconds = []
    for _ in range(renders):
        start = time.perf_counter()
        body = await render()
        seconds.append(time.perf_counter() - start)
    samples = sum(1 for line in body.splitlines() if not line.startswith(b"#"))
    print(f"\n## render: /metrics for {services:,} services")
    print(
        f"median of {renders}: {1000 * statistics.median(seconds):.0f} ms,"
        f" {len(body):,} bytes, {samples:,} samples"
    )
    profile = cProfile.Profile()
    profile.enable()
    await render()
    profile.disable()
    total = pstats.Stats(profile).total_tt  # type: ignore[attr-defined]
    print(f"\nunder cProfile: {1000 * total:.0f} ms; self (tottime) shares:")
    print("\n".join(top(profile, "tottime", lines)))


async def _loop_gaps(gaps: list[float], stop: asyncio.Event) -> None:
    """How long the event loop goes between turns, measured from a task that only yields."""
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


async def _gzip_in_thread(chunks: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """The alternative to exporter.exposition.gzip_stream: each slice compressed in a thread."""
    compressor = zlib.compressobj(exposition.GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    async for chunk in chunks:
        for start in range(0, len(chunk), size):
            out = await asyncio.to_thread(compressor.compress, chunk[start : start + size])
            if out:
                yield out
    yield compressor.flush()


async def profile_gzip(target: str, services: int, renders: int) -> None:
    config = parse_config(run.our_config(target, services, 10))
    exporter = make_app(config, schedule=False)[EXPORTER]
    first = config.services[0]
    result = await run_probe(first.target, first.module, 5.0)
    for service in config.services:
        exporter.store.record(service.name, result)
    collector = exporter.service_collector
    await collector.render()  # what a steady scrape finds: most services unchanged since the last

    def ways() -> dict[str, AsyncIterator[bytes]]:
        return {
            "text, uncompressed": collector.stream(),
            "gzip on the loop, 64 KiB slices (what /metrics does)": exposition.gzip_stream(
                collector.stream()
            ),
            "gzip in a thread, 64 KiB slices": _gzip_in_thread(collector.stream(), 64 * 1024),
            "gzip in a thread, 1 MiB slices": _gzip_in_thread(collector.stream(), 1024 * 1024),
        }

    print(
        f"\n## gzip: /metrics for {services:,} services, loop turns while it is written, median of {renders}"
    )
    rows: dict[str, list[tuple[float, float, float, float, int]]] = {}
    for _ in range(renders):
        for name, body in ways().items():
            gaps: list[float] = []
            stop = asyncio.Event()
            ticker = asyncio.create_task(_loop_gaps(gaps, stop))
            await asyncio.sleep(0)
            cpu, wall, size = time.process_time(), time.perf_counter(), 0
            async for chunk in body:
                size += len(chunk)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            stop.set()
            await ticker
            gaps.sort()
            rows.setdefault(name, []).append((cpu, wall, gaps[int(0.99 * (len(gaps) - 1))], gaps[-1], size))
    for name, runs in rows.items():
        cpu, wall, p99, top, size = (statistics.median(r[i] for r in runs) for i in range(5))
        print(
            f"{name}: {size / 1e6:.1f} MB, CPU {1000 * cpu:.0f} ms, wall {1000 * wall:.0f} ms,"
            f" loop gap p99 {1000 * p99:.2f} ms, max {1000 * top:.1f} ms"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", help="an HTTP URL to probe (default: a local nginx started here)")
    parser.add_argument("--probes", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--renders", type=int, default=5)
    parser.add_argument("--lines", type=int, default=25, help="functions listed per table")
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio (the exporter uses uvloop)")
    args = parser.parse_args()
    runner = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
    with tempfile.TemporaryDirectory(prefix="outage-profile-") as tmp:
        bench = run.Bench(argparse.Namespace(profile=False), Path(tmp))
        try:
            target = args.target
            if target is None:
                bench.start_nginx()
                target = bench.nginx_url
            print(f"event loop: {runner.__module__}, target {target}")
            runner(profile_probe(target, args.probes, args.concurrency, args.lines))
            runner(profile_render(target, args.services, args.renders, args.lines))
            runner(profile_gzip(target, args.services, args.renders))
        finally:
            bench.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
