"""Probes every service on its own interval, spread over the interval, under a global concurrency cap."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import heapq
import itertools
import logging
import math
from collections.abc import Awaitable, Iterable
from typing import Protocol

from exporter.config import Service
from exporter.loopwatch import STALL_THRESHOLD, LoopWatch
from exporter.modules import Module
from exporter.reloadplan import ReloadPlan, plan_reload
from exporter.result import SYSTEM_CLOCK, Clock, FailureReason, ProbeResult
from exporter.runner import run_probe
from exporter.store import Histogram

log = logging.getLogger(__name__)


class ResultSink(Protocol):
    """Where finished runs go: the result store, or a worker's line to the front process."""

    def apply(self, plan: ReloadPlan) -> None: ...

    def record(self, name: str, result: ProbeResult) -> None: ...


class Runner(Protocol):
    """The seam between scheduling and probing; tests may pass their own."""

    def __call__(
        self, target: str, module: Module, timeout: float, *, clock: Clock
    ) -> Awaitable[ProbeResult]: ...


class Timer(Protocol):
    """The seam for the scheduler's own time: when slots fall and how it waits for one.

    Slots are placed on ``now()`` and waited for with ``sleep()``; the default is the event
    loop's time. Tests pass a fake whose time they advance, so a schedule of many intervals
    runs without waiting for real time. The runner's ``Clock`` (durations, timestamps) and the
    loop watch (stalls of the real loop) are separate and unaffected.
    """

    def now(self) -> float: ...

    def sleep(self, delay: float) -> Awaitable[None]: ...


class LoopTimer:
    """The running event loop's time, and asyncio's sleep."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def sleep(self, delay: float) -> Awaitable[None]:
        return asyncio.sleep(delay)


LOOP_TIMER: Timer = LoopTimer()


# How long stop() waits for probe tasks to wind up after cancelling them.
STOP_GRACE = 10.0
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A probe that timed out while our loop was stalled for this share of its timeout is run again
# at once: the timeout may be ours, and a false "down" pages someone.
RERUN_STALLED_SHARE = 0.1
# The share of a run's duration a stall must reach to mark the run as holding our time.
STALLED_SHARE = 0.1
# When a run ends the loop is awake anyway: the service whose slot is next, if it is this close,
# starts then instead of waking the loop again at its slot. A wake-up costs a process more CPU
# than a run's own Python (a context switch, caches gone cold); starting a run a few
# milliseconds early costs nothing. One service per ended run, so runs are never bunched.
EARLY_START = 0.02


def phase_offset(name: str, interval: float) -> float:
    """Where in its interval a service runs: stable per name, so reloads keep the rhythm."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") / 2**64) * interval


class Scheduler:
    """One task per service; each run waits for its slot, then for a place under the cap."""

    def __init__(
        self,
        store: ResultSink,
        max_concurrency: int,
        clock: Clock = SYSTEM_CLOCK,
        runner: Runner = run_probe,
        watch: LoopWatch | None = None,
        timer: Timer = LOOP_TIMER,
    ) -> None:
        self.store = store
        self.timer = timer
        self.watch = watch
        self.reruns_after_stall = 0
        self.clock = clock
        self.runner = runner
        self.schedule_lag = Histogram(LAG_BUCKETS)
        self.probes_in_flight = 0
        self._limit = asyncio.Semaphore(max_concurrency)
        self._max_concurrency = max_concurrency
        self._tasks: dict[str, tuple[Service, asyncio.Task[None]]] = {}
        # Tasks of removed or changed services, cancelled but maybe still closing a connection;
        # stop() waits for them too, so nothing of ours outlives it.
        self._retiring: set[asyncio.Task[None]] = set()
        # Services waiting for their slot on the loop's own time, by slot: the ones EARLY_START
        # may start sooner. A fake timer's slots are kept exactly.
        self._early = isinstance(timer, LoopTimer)
        self._waiting: list[tuple[float, int, asyncio.Future[None], asyncio.TimerHandle]] = []
        self._order = itertools.count()

    @property
    def services(self) -> list[Service]:
        return [service for service, _ in self._tasks.values()]

    def apply(self, services: Iterable[Service], max_concurrency: int) -> None:
        """Swap in a new service set: unchanged services keep their task and their rhythm."""
        self.apply_plan(plan_reload(self.services, services), max_concurrency)

    def apply_plan(self, plan: ReloadPlan, max_concurrency: int) -> None:
        """Take the plan's service set (the store too): kept services keep their task and rhythm."""
        if max_concurrency != self._max_concurrency:
            # Runs already waiting keep the old semaphore; new runs take the new one.
            self._limit = asyncio.Semaphore(max_concurrency)
            self._max_concurrency = max_concurrency
        wanted = {service.name: service for service in plan.services}
        self.store.apply(plan)
        for name in list(self._tasks):
            old, task = self._tasks[name]
            # Kept services are the very same objects (exporter.reloadplan's invariant).
            if wanted.get(name) is not old:
                task.cancel()
                del self._tasks[name]
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
        for name, service in wanted.items():
            if name not in self._tasks:
                task = asyncio.create_task(self._run_forever(service), name=f"probe {name}")
                self._tasks[name] = (service, task)

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Cancel every service task and wait, at most ``grace`` seconds, for them to finish.

        A task that swallowed its cancellation (a library catching CancelledError at the wrong
        moment) is cancelled again, so one such task cannot hold up the exporter's exit.
        """
        loop = asyncio.get_running_loop()
        pending = {task for _, task in self._tasks.values()} | self._retiring
        self._tasks.clear()
        self._waiting.clear()
        deadline = loop.time() + grace
        while pending:
            for task in pending:
                task.cancel()
            left = deadline - loop.time()
            if left <= 0:
                log.warning("%d probe tasks did not stop within %gs; leaving them", len(pending), grace)
                return
            _, pending = await asyncio.wait(pending, timeout=min(left, 0.5))

    async def _run_forever(self, service: Service) -> None:
        timer = self.timer
        task = asyncio.current_task()
        offset = phase_offset(service.name, service.interval)
        due = _next_slot(timer.now(), offset, service.interval)
        while True:
            if self._early:
                await self._slot(due)
            else:
                await timer.sleep(max(due - timer.now(), 0.0))
            result = await self._run_once(service, due)
            if task is not None and task.cancelling():
                # The probe lost our cancellation on its way out; end as if it had arrived, and
                # keep its result out of the store: the service may have changed meanwhile.
                raise asyncio.CancelledError
            self.store.record(service.name, result)
            # Not held through the sleep: in a probe worker the front keeps the result, and
            # 5,000 services' last results would stay alive here (about 1.2 KB each) for nothing.
            del result
            if self._early:
                self.start_next_early()
            # A run that overshot its slots (waiting for the cap) skips them rather than bunching up.
            due = _next_slot(max(timer.now(), due + service.interval * 0.5), offset, service.interval)

    def _slot(self, due: float) -> asyncio.Future[None]:
        """A future done at the loop time ``due``, or sooner when start_next_early lets it go.

        A plain future rather than a coroutine: each sleeping service holds one frame less
        (about 0.5 KB, 2.4 MB per 5,000 services). A cancelled wait leaves its timer to fire
        into a done future.
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        handle = loop.call_at(due, _release, waiter)
        heapq.heappush(self._waiting, (due, next(self._order), waiter, handle))
        return waiter

    def start_next_early(self, window: float = EARLY_START) -> bool:
        """Let the service with the next slot start now if that slot is within ``window``.

        Whether one was let go. Entries of services already started or cancelled are dropped
        on the way.
        """
        waiting = self._waiting
        limit = self.timer.now() + window
        while waiting:
            due, _, waiter, handle = waiting[0]
            if waiter.done():
                heapq.heappop(waiting)
                continue
            if due > limit:
                return False
            heapq.heappop(waiting)
            handle.cancel()
            waiter.set_result(None)
            return True
        return False

    async def _run_once(self, service: Service, due: float) -> ProbeResult:
        async with self._limit:
            self.schedule_lag.observe(max(self.timer.now() - due, 0.0))
            self.probes_in_flight += 1
            try:
                result, stalls = await self._timed_run(service)
                # Only real stalls count here: the ordinary lateness of a busy loop adds up over
                # a long timeout, and a target that is down would be probed twice every time.
                stalled_timeout = (
                    result.reason is FailureReason.TIMEOUT and stalls >= service.timeout * RERUN_STALLED_SHARE
                )
                if stalled_timeout and not _cancelling():
                    self.reruns_after_stall += 1
                    log.warning(
                        "probe of %s timed out while the event loop stalled for %.2fs; running it again",
                        service.name,
                        result.stalled,
                    )
                    # The second run replaces the first entirely: the first one's timeout was
                    # ours, so it is counted in reruns_after_stall, not in the service's attempts
                    # (which would also make the service look degraded).
                    result, _ = await self._timed_run(service)
                return result
            finally:
                self.probes_in_flight -= 1

    async def _timed_run(self, service: Service) -> tuple[ProbeResult, float]:
        """One run, marked with the loop time it lost (see ProbeResult.stalled).

        Also returns the part of that time lost to stalls of STALL_THRESHOLD or more each.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        result = await self.runner(service.target, service.module, service.timeout, clock=self.clock)
        if self.watch is None:
            return result, 0.0
        lost, stalls = self.watch.losses(start, loop.time(), STALL_THRESHOLD)
        # A stall that is a small part of a long run changes its duration little; only one
        # that is a tenth of the run or more marks it (and keeps it out of the latency).
        if lost >= max(STALL_THRESHOLD, result.duration * STALLED_SHARE):
            result = dataclasses.replace(result, stalled=lost)
        return result, stalls


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _next_slot(now: float, offset: float, interval: float) -> float:
    """The first time at or after ``now`` that is ``offset`` past a multiple of ``interval``."""
    return offset + math.ceil((now - offset) / interval) * interval
