"""Tests for the scheduler: spreading, the concurrency cap, no overlap, and reload behaviour."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from exporter.config import Service, parse_config
from exporter.modules import Module
from exporter.result import Clock, ProbeResult, Trace
from exporter.scheduler import Scheduler, _next_slot, phase_offset
from exporter.store import ResultStore
from tests.fake_timer import FakeTimer


def services(count: int, interval: str = "200ms", timeout: str = "100ms") -> tuple[Service, ...]:
    lines = [f"global: {{interval: {interval}, timeout: {timeout}}}", "services:"]
    lines += [f"  - {{name: s{i}, target: 'http://127.0.0.1:1/', prober: http}}" for i in range(count)]
    return parse_config("\n".join(lines)).services


class FakeRunner:
    """Stands in for probing at the scheduler's runner seam; records concurrency.

    Each probe holds for ``hold`` seconds of the fake ``timer``'s time.
    """

    def __init__(self, timer: FakeTimer, hold: float = 0.0) -> None:
        self.timer = timer
        self.hold = hold
        self.active: Counter[str] = Counter()
        self.peak = 0
        self.peak_per_target = 0
        self.calls: Counter[str] = Counter()

    async def __call__(self, target: str, module: Module, timeout: float, *, clock: Clock) -> ProbeResult:
        self.active[target] += 1
        self.calls[target] += 1
        self.peak = max(self.peak, sum(self.active.values()))
        self.peak_per_target = max(self.peak_per_target, self.active[target])
        try:
            await self.timer.sleep(self.hold)
        finally:
            self.active[target] -= 1
        return Trace(clock).succeed()


def test_phase_offsets_spread_evenly_over_the_interval() -> None:
    """Start offsets of many services cover the interval without clumping."""
    offsets = [phase_offset(f"service-{i}", 10.0) for i in range(10_000)]
    assert all(0 <= o < 10.0 for o in offsets)
    per_second = Counter(int(o) for o in offsets)
    assert set(per_second) == set(range(10))
    assert min(per_second.values()) > 850 and max(per_second.values()) < 1150
    assert phase_offset("service-1", 10.0) == offsets[1]


def test_next_slot_is_aligned_to_offset() -> None:
    """Slots sit at offset + k * interval; a time on a slot is that slot."""
    assert _next_slot(100.0, 2.5, 10.0) == 102.5
    assert _next_slot(102.5, 2.5, 10.0) == 102.5
    assert _next_slot(102.6, 2.5, 10.0) == 112.5


async def test_concurrency_cap_is_never_exceeded() -> None:
    """With a cap of 2, no more than 2 probes run at once, and the cap is reached."""
    timer = FakeTimer()
    runner = FakeRunner(timer, hold=0.05)
    store = ResultStore()
    targets = services(8)
    scheduler = Scheduler(store, max_concurrency=2, runner=runner, timer=timer)
    scheduler.apply([s for s in targets], 2)
    try:
        await timer.run_until(lambda: sum(runner.calls.values()) >= 16, what="16 probes")
    finally:
        await scheduler.stop()
    assert runner.peak == 2
    assert scheduler.schedule_lag.count >= 16


async def test_runs_of_one_service_never_overlap() -> None:
    """A probe that uses its whole timeout is never overlapped by the next run of its service."""
    timer = FakeTimer()
    runner = FakeRunner(timer, hold=0.09)
    store = ResultStore()
    scheduler = Scheduler(store, max_concurrency=100, runner=runner, timer=timer)
    one = services(1, interval="100ms", timeout="90ms")
    scheduler.apply(one, 100)
    try:
        await timer.run_until(
            lambda: store.get("s0") is not None and store.get("s0").runs >= 5, what="5 runs"
        )
    finally:
        await scheduler.stop()
    assert runner.peak_per_target == 1


async def test_apply_keeps_unchanged_services_and_restarts_changed_ones() -> None:
    """Reapplying keeps the task of an unchanged service and replaces a changed one's."""
    timer = FakeTimer()
    runner = FakeRunner(timer)
    store = ResultStore()
    scheduler = Scheduler(store, max_concurrency=10, runner=runner, timer=timer)
    first = services(2)
    scheduler.apply(first, 10)
    try:
        await timer.run_until(lambda: all(store.get(s.name).runs >= 1 for s in first), what="first runs")
        tasks = dict(scheduler._tasks)
        changed = parse_config(
            "global: {interval: 300ms, timeout: 100ms}\nservices:\n"
            "  - {name: s0, target: 'http://127.0.0.1:1/', prober: http, interval: 200ms}\n"
            "  - {name: s1, target: 'http://127.0.0.1:2/', prober: http, interval: 200ms}\n"
        ).services
        runs_s0 = store.get("s0").runs
        scheduler.apply(changed, 10)
        assert scheduler._tasks["s0"][1] is tasks["s0"][1]
        assert scheduler._tasks["s1"][1] is not tasks["s1"][1]
        await asyncio.sleep(0)
        assert tasks["s1"][1].cancelled() or tasks["s1"][1].done()
        assert store.get("s0").runs >= runs_s0
        scheduler.apply(changed[:1], 10)
        assert store.get("s1") is None
        assert list(scheduler._tasks) == ["s0"]
    finally:
        await scheduler.stop()
    assert all(task.done() for _, task in tasks.values())


class SwallowingRunner:
    """A probe that loses its first cancellation, as Python 3.11's wait_for can at the wrong moment."""

    def __init__(self) -> None:
        self.swallowed = 0
        self.started = 0

    async def __call__(self, target: str, module: Module, timeout: float, *, clock: Clock) -> ProbeResult:
        self.started += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.swallowed += 1
        return Trace(clock).succeed()


async def test_stop_finishes_when_a_probe_swallows_its_cancellation() -> None:
    """Every task ends even if each probe ignores the first cancel; stop() cancels again."""
    timer = FakeTimer()
    store = ResultStore()
    runner = SwallowingRunner()
    scheduler = Scheduler(store, max_concurrency=100, runner=runner, timer=timer)
    scheduler.apply(services(20, interval="10ms", timeout="5ms"), 100)
    await timer.run_until(lambda: runner.started == 20, what="every probe running")
    tasks = [task for _, task in scheduler._tasks.values()]
    await scheduler.stop()
    assert runner.swallowed == 20
    assert all(task.done() for task in tasks)
    state = store.get("s0")
    assert state is not None and state.runs == 0  # the run that outlived its cancel is not recorded


async def test_stop_gives_up_on_tasks_that_never_end(caplog: pytest.LogCaptureFixture) -> None:
    """A task that refuses every cancellation is left after the grace period, with a warning."""
    refusing = True

    async def stubborn(target: str, module: Module, timeout: float, *, clock: Clock) -> ProbeResult:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if not refusing:
                    raise

    timer = FakeTimer()
    scheduler = Scheduler(ResultStore(), max_concurrency=10, runner=stubborn, timer=timer)
    scheduler.apply(services(2, interval="10ms", timeout="5ms"), 10)
    await timer.run_until(lambda: scheduler.probes_in_flight == 2, what="both probes running")
    tasks = [task for _, task in scheduler._tasks.values()]
    await scheduler.stop(grace=0.2)
    assert "2 probe tasks did not stop within 0.2s; leaving them" in caplog.text
    assert not any(task.done() for task in tasks)
    refusing = False  # now let them go, so the test leaves nothing behind
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert all(task.cancelled() for task in tasks)


async def test_an_ended_run_lets_the_next_close_slot_start_at_once() -> None:
    """start_next_early releases the one waiting service with the nearest slot inside the window."""
    scheduler = Scheduler(ResultStore(), 10)
    loop = asyncio.get_running_loop()
    now = loop.time()
    first = scheduler._slot(now + 30)
    second = scheduler._slot(now + 31)
    later = scheduler._slot(now + 300)
    await asyncio.sleep(0)
    try:
        assert scheduler.start_next_early(window=60)
        await asyncio.wait_for(first, 5)
        assert not second.done() and not later.done()
        assert scheduler.start_next_early(window=60)
        await asyncio.wait_for(second, 5)
        # Slots beyond the window keep their time.
        assert not scheduler.start_next_early(window=60)
        await asyncio.sleep(0)
        assert not later.done()
    finally:
        later.cancel()
        await asyncio.gather(later, return_exceptions=True)


async def test_the_default_window_keeps_far_slots_and_skips_cancelled_waits() -> None:
    """A slot seconds away is kept with the default window; a cancelled wait is passed over."""
    scheduler = Scheduler(ResultStore(), 10)
    now = asyncio.get_running_loop().time()
    gone = scheduler._slot(now + 30)
    kept = scheduler._slot(now + 31)
    await asyncio.sleep(0)
    try:
        assert not scheduler.start_next_early()
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        assert scheduler.start_next_early(window=60)
        await asyncio.wait_for(kept, 5)
        assert not scheduler.start_next_early(window=600)
    finally:
        kept.cancel()
        await asyncio.gather(kept, return_exceptions=True)


async def test_a_fake_timer_keeps_every_slot_exactly() -> None:
    """With a test's timer nothing starts early: start_next_early has nothing to release."""
    timer = FakeTimer()
    runner = FakeRunner(timer)
    scheduler = Scheduler(ResultStore(), 10, runner=runner, timer=timer)
    start = timer.now()
    scheduler.apply(services(3), 10)
    try:
        await timer.advance(1.0)
        assert not scheduler.start_next_early(window=600)
        # Every run at its slot and none sooner: exactly the slots in the second that passed.
        expected = sum(
            sum(1 for k in range(7) if _next_slot(start, phase_offset(n, 0.2), 0.2) + k * 0.2 <= start + 1.0)
            for n in ("s0", "s1", "s2")
        )
        assert sum(runner.calls.values()) == expected
    finally:
        await scheduler.stop()
