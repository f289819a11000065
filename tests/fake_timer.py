"""A fake for the scheduler's Timer seam: its time moves only when a test moves it."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

# Loop turns without any sleep started or ended on the clock after which the tasks woken by a
# step are taken to be waiting again (on the clock, a semaphore or a cancelled future).
QUIET_TURNS = 5
# A bound on the loop turns one settling may take: a task that never waits again is a bug.
MAX_TURNS = 1000


class FakeTimer:
    """A ``scheduler.Timer`` whose ``sleep`` returns when the test advances time past its end.

    ``advance`` and ``run_until`` step from one sleeper's end to the next, in order, and let the
    tasks woken at each step run until they wait again before taking the next step, so the
    scheduler sees every slot it asked for, at exactly its time, without any real waiting.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._order = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        # Counts every sleep started or ended, so settling can see when the tasks are quiet.
        self._activity = 0

    def now(self) -> float:
        return self._now

    async def sleep(self, delay: float) -> None:
        self._activity += 1
        if delay <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + delay, next(self._order), future))
        try:
            await future
        finally:
            self._activity += 1

    @property
    def sleeping(self) -> int:
        """How many sleeps are waiting for time to move."""
        return sum(1 for _, _, future in self._sleepers if not future.done())

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking each sleeper at its own end on the way."""
        end = self._now + seconds
        await self._settle()  # tasks started just now ask for their slots first
        while (next_end := self._next_end()) is not None and next_end <= end:
            await self._step()
        self._now = end
        await self._settle()

    async def run_until(self, predicate: Callable[[], bool], what: str, max_steps: int = 10_000) -> None:
        """Step from sleeper to sleeper until ``predicate`` holds; fail after ``max_steps`` steps."""
        await self._settle()
        for _ in range(max_steps):
            if predicate():
                return
            if self._next_end() is None:
                raise AssertionError(f"nothing sleeps on the clock, and still not {what}")
            await self._step()
        if not predicate():
            raise AssertionError(f"{max_steps} steps of the clock, and still not {what}")

    def _next_end(self) -> float | None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)  # cancelled meanwhile
        return self._sleepers[0][0] if self._sleepers else None

    async def _step(self) -> None:
        """Jump to the earliest end and wake every sleeper due then."""
        end = self._next_end()
        assert end is not None
        self._now = max(self._now, end)
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
        await self._settle()

    async def _settle(self) -> None:
        """Let the woken tasks run until none has touched the clock for QUIET_TURNS loop turns."""
        quiet = 0
        for _ in range(MAX_TURNS):
            seen = self._activity
            await asyncio.sleep(0)
            quiet = quiet + 1 if self._activity == seen else 0
            if quiet >= QUIET_TURNS:
                return
        raise AssertionError(f"tasks kept touching the clock for {MAX_TURNS} loop turns without waiting")
