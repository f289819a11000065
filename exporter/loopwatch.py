"""Watches the exporter's own event loop for stalls, so time it lost is never taken for latency."""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import deque

from exporter.store import Histogram

log = logging.getLogger(__name__)

# How often the watch wakes: cheap (one timer), and fine enough to see a stall of 100 ms.
TICK = 0.1
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A probe that ran while the loop was late by this much has our time in its duration.
STALL_THRESHOLD = 0.05
# Stalls are remembered this long (longer than any probe timeout is allowed to be).
MEMORY = 600.0
MAX_REMEMBERED = 4096
# A stall this long is worth a warning in the log, once per stall.
WARN_ABOVE = 1.0


class LoopWatch:
    """Samples how late a timer fires on the running loop.

    Every ``TICK`` the watch asks to wake up; how much later than asked it does is the loop's
    lag: time the loop spent on something else (a long computation, a garbage collection, a
    machine with no core to spare). Each sample goes into a histogram, and stalls of at least
    ``STALL_THRESHOLD`` are kept for ``MEMORY`` seconds so the scheduler can ask, when a probe
    ends, whether the probe's run overlapped one.
    """

    def __init__(self) -> None:
        self.lag = Histogram(LAG_BUCKETS)
        # (loop time the stall ended, its length), in order of ending.
        self._stalls: deque[tuple[float, float]] = deque(maxlen=MAX_REMEMBERED)
        self._expected: float | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._expected = loop.time() + TICK
            await asyncio.sleep(TICK)
            now = loop.time()
            self.observe(now, max(now - self._expected, 0.0))

    def observe(self, now: float, lag: float) -> None:
        """Record one sample: the loop woke ``lag`` seconds late at ``now``."""
        self.lag.observe(lag)
        if lag >= STALL_THRESHOLD:
            self._stalls.append((now, lag))
            if lag >= WARN_ABOVE:
                log.warning("the event loop stalled for %.2fs: probes running meanwhile are marked", lag)
        while self._stalls and self._stalls[0][0] < now - MEMORY:
            self._stalls.popleft()

    def worst_since(self, start: float, now: float) -> float:
        """The longest stall that overlapped ``[start, now]`` (loop time), 0 if none.

        A stall may still be under way when asked (the probe's answer was handled before the
        watch's own wake-up), so the watch's overdue time counts too.
        """
        worst = 0.0
        # A stall that ended at ``end`` began at ``end - length``; it overlaps if it ended after start.
        index = bisect.bisect_left(self._stalls, (start, 0.0))
        for _end, length in list(self._stalls)[index:]:
            worst = max(worst, length)
        if self._expected is not None and now - self._expected >= STALL_THRESHOLD:
            worst = max(worst, now - self._expected)
        return worst if worst >= STALL_THRESHOLD else 0.0
