"""A bounded in-memory history of each service: time slots for the history bars, recent probes, failures."""

from __future__ import annotations

import math
from array import array
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

from exporter.result import FailureReason

# Outcome codes of one probe, in order of badness: a slot shows its worst.
OK, DEGRADED, FAILED = 0, 1, 2
REASONS = tuple(FailureReason)
# Recent probes kept raw (for latency now, p95 and the latency chart), and failures kept with
# their message (for "recent failures").
RECENT = 60
FAILURES = 10
MAX_MESSAGE = 200


# One slot of a bar as the page draws it: (slot number, runs, failed, degraded, worst, peak, maintenance).
Cell = tuple[int, int, int, int, int, float, bool]


@dataclass(frozen=True, slots=True)
class Slot:
    """One slot of a history bar: probes in [start, start + width)."""

    start: float
    runs: int
    failed: int
    degraded: int
    worst: int  # OK, DEGRADED or FAILED
    reason: FailureReason | None  # of the last failure in the slot
    peak: float  # longest probe, seconds
    maintenance: bool


class Failure(NamedTuple):
    """One failed probe. A tuple of plain values: the garbage collector stops tracking it, so
    10,000 services' failures add nothing to its full collections."""

    at: float
    duration: float
    reason: str  # a FailureReason's value
    message: str


NO_FAILURES: tuple[Failure, ...] = ()


class History:
    """What one service did recently, in fixed memory whatever the probe rate.

    The bars' slots are a ring indexed by slot number (time // width): a slot is reset when a
    probe lands in it again one ring later, and a slot whose number is not the one expected
    has no data. Values are kept in typed arrays, a few bytes each, so 10,000 services cost
    a few tens of megabytes at most (measured in benchmarks/statuspage.py).
    """

    __slots__ = (
        "_codes",
        "_count",
        "_degraded",
        "_durations",
        "_failed",
        "_maint",
        "_next",
        "_number",
        "_peak",
        "_reason",
        "_runs",
        "_times",
        "_worst",
        "failures",
        "first",
        "last_code",
        "since",
        "slots",
        "width",
    )

    def __init__(self, slots: int, width: float) -> None:
        self.slots = slots
        self.width = width
        # Slot numbers fit 32 bits for slots of 10 s or more until the year 2650.
        self._number = array("i", [-1]) * slots
        self._runs = array("H", [0]) * slots
        self._failed = array("H", [0]) * slots
        self._degraded = array("H", [0]) * slots
        self._worst = bytearray(slots)
        self._reason = bytearray(slots)  # index into REASONS plus 1; 0 for none
        self._maint = bytearray(slots)
        self._peak = array("f", [0.0]) * slots
        self._times = array("d", [0.0]) * RECENT
        self._durations = array("f", [0.0]) * RECENT
        self._codes = bytearray(RECENT)
        self._next = 0
        self._count = 0
        # Most services never fail: the ring (about 760 bytes) is made at the first failure.
        self.failures: deque[Failure] | tuple[Failure, ...] = NO_FAILURES
        self.first: float | None = None
        self.last_code = -1
        # When the current outcome (ok, degraded, failed) began.
        self.since = 0.0

    def add(
        self,
        at: float,
        duration: float,
        code: int,
        reason: FailureReason | None = None,
        message: str = "",
        maintenance: bool = False,
    ) -> None:
        """Record one probe that finished at ``at`` (unix time)."""
        if self.first is None:
            self.first = at
        if code != self.last_code:
            self.last_code = code
            self.since = at
        number = int(at // self.width)
        index = number % self.slots
        if self._number[index] != number:
            self._number[index] = number
            self._runs[index] = self._failed[index] = self._degraded[index] = 0
            self._worst[index] = self._reason[index] = self._maint[index] = 0
            self._peak[index] = 0.0
        self._runs[index] = min(self._runs[index] + 1, 65535)
        if code == FAILED:
            self._failed[index] = min(self._failed[index] + 1, 65535)
            self._reason[index] = REASONS.index(reason or FailureReason.OTHER) + 1
        elif code == DEGRADED:
            self._degraded[index] = min(self._degraded[index] + 1, 65535)
        self._worst[index] = max(self._worst[index], code)
        self._maint[index] |= maintenance
        self._peak[index] = max(self._peak[index], duration)
        self._times[self._next] = at
        self._durations[self._next] = duration
        self._codes[self._next] = code
        self._next = (self._next + 1) % RECENT
        self._count = min(self._count + 1, RECENT)
        if code == FAILED:
            failures = self.failures
            if not isinstance(failures, deque):
                failures = self.failures = deque(maxlen=FAILURES)
            text = message[:MAX_MESSAGE]
            if failures and failures[-1].message == text:
                text = failures[-1].message  # a repeated error is held once
            failures.append(Failure(at, duration, (reason or FailureReason.OTHER).value, text))

    def bar(self, now: float, count: int | None = None) -> list[Slot | None]:
        """The last ``count`` slots up to and including the current one, oldest first."""
        count = min(count or self.slots, self.slots)
        current = int(now // self.width)
        out: list[Slot | None] = []
        for number in range(current - count + 1, current + 1):
            index = number % self.slots
            if self._number[index] != number or number < 0:
                out.append(None)
                continue
            code = self._reason[index]
            out.append(
                Slot(
                    start=number * self.width,
                    runs=self._runs[index],
                    failed=self._failed[index],
                    degraded=self._degraded[index],
                    worst=self._worst[index],
                    reason=REASONS[code - 1] if code else None,
                    peak=float(self._peak[index]),
                    maintenance=bool(self._maint[index]),
                )
            )
        return out

    def cells(self, now: float, count: int) -> list[Cell | None]:
        """The bar's slots as (slot number, runs, failed, degraded, worst, peak, maintenance).

        Oldest first. The page draws thousands of these; plain tuples spare it building Slots.
        """
        current = int(now // self.width)
        number_of = self._number
        out: list[Cell | None] = []
        append = out.append
        for number in range(current - count + 1, current + 1):
            index = number % self.slots
            if number_of[index] != number:
                append(None)
            else:
                append(
                    (
                        number,
                        self._runs[index],
                        self._failed[index],
                        self._degraded[index],
                        self._worst[index],
                        self._peak[index],
                        bool(self._maint[index]),
                    )
                )
        return out

    def reason_at(self, number: int) -> FailureReason | None:
        """The reason of the last failure in slot ``number``, if it is still held."""
        index = number % self.slots
        code = self._reason[index] if self._number[index] == number else 0
        return REASONS[code - 1] if code else None

    def uptimes(self, now: float, windows: tuple[float, ...]) -> list[float | None]:
        """``uptime`` for several windows in one pass over the slots."""
        if self.first is None or not windows:
            return [None] * len(windows)
        current = int(now // self.width)
        runs = failed = 0
        totals: dict[int, tuple[int, int]] = {}
        longest = min(max(math.ceil(w / self.width) for w in windows), self.slots)
        for back in range(longest):
            number = current - back
            index = number % self.slots
            if self._number[index] == number:
                runs += self._runs[index]
                failed += self._failed[index]
            totals[back + 1] = (runs, failed)
        out: list[float | None] = []
        for window in windows:
            count = math.ceil(window / self.width)
            if now - self.first < window or count > self.slots:
                out.append(None)
                continue
            runs, failed = totals[count]
            out.append(None if runs == 0 else 1 - failed / runs)
        return out

    def uptime(self, now: float, seconds: float) -> float | None:
        """Share of successful probes in the last ``seconds``, if the history covers them all.

        Slots in maintenance count like any other: the page says a window was on.
        """
        if self.first is None or now - self.first < seconds or seconds > self.slots * self.width:
            return None
        count = math.ceil(seconds / self.width)
        runs = failed = 0
        for slot in self.bar(now, count):
            if slot is not None:
                runs += slot.runs
                failed += slot.failed
        return None if runs == 0 else 1 - failed / runs

    def covered(self, now: float) -> float:
        """Seconds of the past this history can speak for."""
        if self.first is None:
            return 0.0
        return min(now - self.first, self.slots * self.width)

    def uptime_since_start(self, now: float) -> float | None:
        runs = failed = 0
        for slot in self.bar(now):
            if slot is not None:
                runs += slot.runs
                failed += slot.failed
        return None if runs == 0 else 1 - failed / runs

    def recent(self) -> list[tuple[float, float, int]]:
        """(finished at, duration, code) of the recent probes, oldest first."""
        start = (self._next - self._count) % RECENT
        return [
            (self._times[i], float(self._durations[i]), self._codes[i])
            for i in ((start + k) % RECENT for k in range(self._count))
        ]

    def p95(self) -> float | None:
        """95th percentile of the recent successful probes' durations (nearest rank)."""
        values = sorted(d for _, d, code in self.recent() if code != FAILED)
        if not values:
            return None
        return values[max(math.ceil(0.95 * len(values)) - 1, 0)]
