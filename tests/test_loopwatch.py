"""Tests for the loop watch: lag samples, stalls remembered, and probes marked or run again."""

from __future__ import annotations

import asyncio
import time

from exporter.config import Service, parse_config
from exporter.loopwatch import STALL_THRESHOLD, LoopWatch
from exporter.modules import Module
from exporter.result import Clock, FailureReason, ProbeResult, Trace
from exporter.scheduler import Scheduler
from exporter.store import ResultStore
from tests.conftest import wait_for
from tests.fake_timer import FakeTimer


def service(timeout: str = "1s") -> Service:
    text = f"""
global: {{interval: 2s, timeout: {timeout}}}
services:
  - {{name: target, target: 'http://127.0.0.1:1/', prober: http, objectives: {{latency: 1s}}}}
"""
    return parse_config(text).services[0]


def test_lost_time_adds_up_the_late_wake_ups_of_a_span() -> None:
    """A run is charged the late wake-ups since it started, not those before; jitter is not kept."""
    watch = LoopWatch()
    watch.observe(10.0, 0.001)  # ordinary jitter: counted in the histogram only
    watch.observe(11.0, 0.3)  # the loop was stuck from 10.7 to 11.0
    assert watch.lost_since(10.5, 11.2) == 0.3
    watch.observe(12.0, STALL_THRESHOLD / 2)
    assert watch.lost_since(10.5, 12.1) == 0.3 + STALL_THRESHOLD / 2
    assert watch.lost_since(11.1, 12.1) == STALL_THRESHOLD / 2
    # Counting stalls only, the jitter-sized wake-up drops out.
    assert watch.lost_since(10.5, 12.1, at_least=STALL_THRESHOLD) == 0.3
    assert watch.lag.count == 3
    assert watch.lag.counts[-1] == 0  # nothing over 10 s


def test_old_stalls_are_forgotten() -> None:
    """Late wake-ups older than the watch's memory are dropped; the histogram keeps counting."""
    watch = LoopWatch()
    watch.observe(0.0, 0.5)
    watch.observe(10_000.0, 0.0)
    assert watch.lost_since(-1.0, 10_000.0) == 0.0
    assert watch.lag.count == 2


async def test_watch_sees_a_blocked_loop() -> None:
    """Blocking the loop for 300 ms shows up as one late sample of about that much."""
    watch = LoopWatch()
    task = asyncio.create_task(watch.run())
    try:
        await wait_for(lambda: watch.lag.count >= 2, what="two samples")
        start = asyncio.get_running_loop().time()
        samples = watch.lag.count
        time.sleep(0.3)  # noqa: ASYNC251 - the stall under test: nothing else may run meanwhile
        await wait_for(lambda: watch.lag.count > samples, what="the sample after the stall")
        # The 0.3 s block was seen as a stall (at least the block less the tick it began in).
        assert watch.lost_since(start, asyncio.get_running_loop().time()) >= STALL_THRESHOLD
        cumulative = dict(watch.lag.cumulative())
        assert cumulative[float("inf")] - cumulative[0.1] >= 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class StallingRunner:
    """A probe that blocks the event loop (as a regex in a backtracking engine would) for ``stall`` s."""

    def __init__(self, stall: float, results: list[FailureReason | None]) -> None:
        self.stall = stall
        self.results = results
        self.calls = 0

    async def __call__(self, target: str, module: Module, timeout: float, *, clock: Clock) -> ProbeResult:
        self.calls += 1
        trace = Trace(clock)
        reason = self.results[min(self.calls - 1, len(self.results) - 1)]
        await asyncio.sleep(0)
        if self.calls == 1:
            time.sleep(self.stall)  # noqa: ASYNC251 - the stall under test
        await asyncio.sleep(0.01)
        return trace.succeed() if reason is None else trace.fail(reason, "stalled")


async def run_with_watch(runner: StallingRunner, svc: Service) -> ResultStore:
    store = ResultStore()
    watch = LoopWatch()
    watch_task = asyncio.create_task(watch.run())
    # The slot comes from a fake timer (no waiting for it); the stall and the watch are real.
    timer = FakeTimer()
    scheduler = Scheduler(store, 10, runner=runner, watch=watch, timer=timer)
    try:
        await wait_for(lambda: watch.lag.count >= 1, what="the watch to start")
        scheduler.apply([svc], 10)
        await timer.advance(svc.interval)
        await wait_for(lambda: (state := store.get("target")) is not None and state.runs >= 1, 10, "a run")
    finally:
        await scheduler.stop()
        watch_task.cancel()
        await asyncio.gather(watch_task, return_exceptions=True)
    return store


async def test_a_probe_during_a_stall_is_marked_and_kept_out_of_latency() -> None:
    """A successful run that overlapped a stall is counted as stalled, not observed as latency."""
    runner = StallingRunner(0.3, [None])
    store = await run_with_watch(runner, service())
    state = store.get("target")
    assert state is not None and state.last is not None
    assert state.last.success and state.last.stalled >= STALL_THRESHOLD
    assert state.stalled_runs == 1
    assert state.latency.count == 0
    assert runner.calls == 1


async def test_a_timeout_during_a_stall_is_run_again() -> None:
    """A run that timed out while the loop stalled for a tenth of its timeout is run again at once."""
    runner = StallingRunner(0.3, [FailureReason.TIMEOUT, None])
    store = await run_with_watch(runner, service("1s"))
    state = store.get("target")
    assert state is not None and state.last is not None
    assert runner.calls == 2
    assert state.runs == 1 and state.last.success
    assert state.failures[FailureReason.TIMEOUT] == 0


async def test_other_failures_during_a_stall_are_kept() -> None:
    """A failure that is not a timeout (a refused connect) is the target's, stall or not."""
    runner = StallingRunner(0.3, [FailureReason.CONNECT])
    store = await run_with_watch(runner, service())
    state = store.get("target")
    assert state is not None
    assert runner.calls == 1 and state.failures[FailureReason.CONNECT] == 1
