"""The bounded per-service history: slots by time, the worst result per slot, uptime, p95, failures."""

from __future__ import annotations

import pytest

from exporter.history import DEGRADED, FAILED, FAILURES, OK, RECENT, History
from exporter.result import FailureReason


def test_slots_keep_the_worst_result_and_forget_old_rounds() -> None:
    """Each slot counts its probes and shows its worst; a slot a ring later starts afresh."""
    history = History(slots=10, width=60.0)
    history.add(600.0, 0.1, OK)
    history.add(610.0, 0.3, DEGRADED)
    history.add(620.0, 2.0, FAILED, FailureReason.TIMEOUT, "no answer")
    history.add(700.0, 0.1, OK)
    bar = history.bar(719.0)
    assert len(bar) == 10
    assert bar[:8] == [None] * 8
    first, second = bar[8], bar[9]
    assert first is not None and second is not None
    assert (first.start, first.runs, first.failed, first.degraded, first.worst) == (600.0, 3, 1, 1, FAILED)
    assert first.reason is FailureReason.TIMEOUT and first.peak == 2.0
    assert (second.runs, second.worst) == (1, OK)
    # Ten slots later the same ring index holds a new slot; the old counts are gone.
    history.add(1200.0, 0.1, OK)
    again = history.bar(1200.0)[-1]
    assert again is not None and (again.start, again.runs, again.failed) == (1200.0, 1, 0)


def test_memory_stays_bounded_however_many_probes() -> None:
    """Recent probes and failures are rings of fixed size."""
    history = History(slots=10, width=60.0)
    for i in range(1000):
        history.add(float(i), 0.01, FAILED, FailureReason.CONNECT, "refused")
    assert len(history.recent()) == RECENT
    assert len(history.failures) == FAILURES
    assert history.recent()[-1][0] == 999.0
    # Equal messages are held once.
    assert len({id(f.message) for f in history.failures}) == 1


def test_uptime_only_for_windows_the_history_covers() -> None:
    """Uptime over a window needs history at least that old and slots spanning it."""
    history = History(slots=90, width=60.0)
    for minute in range(80):
        code = FAILED if minute % 4 == 0 else OK
        history.add(minute * 60.0, 0.05, code, FailureReason.CONNECT if code == FAILED else None)
    now = 79 * 60.0 + 30
    assert history.uptime(now, 3600.0) == 0.75
    assert history.uptimes(now, (3600.0, 6 * 3600.0)) == [0.75, None]
    assert history.uptime(30 * 60.0, 3600.0) is None  # not an hour old yet at that time
    assert history.uptime_since_start(now) == 0.75


def test_p95_and_since() -> None:
    """p95 is over recent successful probes; since is when the current outcome began."""
    history = History(slots=10, width=60.0)
    for i in range(20):
        history.add(float(i), (i + 1) / 100, OK)
    history.add(30.0, 9.0, FAILED, FailureReason.TIMEOUT)
    history.add(31.0, 9.0, FAILED, FailureReason.TIMEOUT)
    # Durations are kept as 32-bit floats: a few bytes each, microseconds exact.
    assert history.p95() == pytest.approx(0.19, abs=1e-6)
    assert history.since == 30.0 and history.last_code == FAILED
