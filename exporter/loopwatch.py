"""Watches the exporter's own event loop for stalls, so time it lost is never taken for latency."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
from collections import deque

from exporter.store import Histogram

log = logging.getLogger(__name__)

# How often the watch wakes: cheap (one timer), and fine enough to see a stall of 100 ms.
TICK = 0.1
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A probe that ran while the loop lost this much time has our time in its duration.
STALL_THRESHOLD = 0.05
# Late wake-ups from this size on are remembered (smaller ones are the ordinary jitter).
REMEMBER_ABOVE = 0.005
# Late wake-ups are remembered this long (longer than any probe timeout is allowed to be).
MEMORY = 600.0
MAX_REMEMBERED = 8192
# A stall this long is worth a warning in the log, once per stall.
WARN_ABOVE = 1.0


class LoopWatch:
    """Samples how late a timer fires on the running loop.

    Every ``TICK`` the watch asks to wake up; how much later than asked it does is the loop's
    lag: time the loop spent on something else (a long computation, a garbage collection, a
    machine with no core to spare). Each sample goes into a histogram, and late ones are kept
    for ``MEMORY`` seconds so the scheduler can ask, when a probe ends, how much time the loop
    lost while it ran.
    """

    def __init__(self) -> None:
        self.lag = Histogram(LAG_BUCKETS)
        # (loop time of a late wake-up, how late), in order.
        self._late: deque[tuple[float, float]] = deque(maxlen=MAX_REMEMBERED)
        self._expected: float | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._expected = loop.time() + TICK
                await asyncio.sleep(TICK)
                now = loop.time()
                self.observe(now, max(now - self._expected, 0.0))
        finally:
            self._expected = None  # a stopped watch is not overdue

    def observe(self, now: float, lag: float) -> None:
        """Record one sample: the loop woke ``lag`` seconds late at ``now``."""
        self.lag.observe(lag)
        if lag >= REMEMBER_ABOVE:
            self._late.append((now, lag))
            if lag >= WARN_ABOVE:
                log.warning("the event loop stalled for %.2fs: probes running meanwhile are marked", lag)
        while self._late and self._late[0][0] < now - MEMORY:
            self._late.popleft()

    def lost_since(self, start: float, now: float, at_least: float = 0.0) -> float:
        """Seconds the loop lost to other work during ``[start, now]`` (loop time), as far as seen.

        The sum of the late wake-ups that ended in the span, plus the watch's own overdue time
        when a stall is still under way (the probe's answer was handled before the watch woke).
        Each wake-up's lateness is time the loop was busy just before it, so a stall that began
        shortly before ``start`` counts whole: the estimate errs towards marking. With
        ``at_least``, only wake-ups at least that late count (stalls, not jitter).
        """
        return self.losses(start, now, at_least)[1]

    def losses(self, start: float, now: float, at_least: float) -> tuple[float, float]:
        """``lost_since(start, now)`` and ``lost_since(start, now, at_least)`` in one look."""
        late = self._late
        lost = stalls = 0.0
        # Most runs saw no late wake-up at all: no search then.
        if late and late[-1][0] >= start:
            index = bisect.bisect_right(late, (start, float("inf")))
            for _, lag in itertools.islice(late, index, None):
                lost += lag
                if lag >= at_least:
                    stalls += lag
        expected = self._expected
        if expected is not None:
            overdue = now - expected
            if overdue > 0.0:
                lost += overdue
            if overdue > max(at_least, 0.0):
                stalls += overdue
        return lost, stalls
