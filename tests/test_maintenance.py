"""Maintenance windows: one-off spans, cron schedules in a time zone, and which services they cover."""

from __future__ import annotations

import datetime as dt

import pytest

from exporter.maintenance import MaintenanceBoard, MaintenanceWindow, Schedule, Timestamp, TimeZone
from exporter.types import Duration


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def span(start: str, end: str) -> tuple[float, float]:
    return at(start), at(end)


def test_one_off_window_covers_start_but_not_end() -> None:
    """A one-off window is open from start (included) to end (excluded)."""
    window = MaintenanceWindow(
        "upgrade",
        services=("api",),
        start=Timestamp(at("2026-12-01T22:00:00Z")),
        end=Timestamp(at("2026-12-01T23:00:00Z")),
    )
    assert window.open_span(at("2026-12-01T21:59:59Z")) is None
    assert window.open_span(at("2026-12-01T22:00:00Z")) == (
        at("2026-12-01T22:00:00Z"),
        at("2026-12-01T23:00:00Z"),
    )
    assert window.open_span(at("2026-12-01T23:00:00Z")) is None


def test_recurring_window_follows_its_time_zone() -> None:
    """'0 2 * * sun' in Europe/Berlin opens at 01:00 UTC in winter and 00:00 UTC in summer, for 2h."""
    window = MaintenanceWindow(
        "patching",
        groups=("shop",),
        schedule=Schedule.from_yaml("0 2 * * sun"),
        duration=Duration(7200),
        timezone=TimeZone("Europe/Berlin"),
    )
    # 2026-12-06 is a Sunday (CET, UTC+1); 2026-07-05 is a Sunday (CEST, UTC+2).
    assert window.open_span(at("2026-12-06T00:59:00Z")) is None
    assert window.open_span(at("2026-12-06T01:30:00Z")) == (
        at("2026-12-06T01:00:00Z"),
        at("2026-12-06T03:00:00Z"),
    )
    assert window.open_span(at("2026-12-06T03:00:00Z")) is None
    assert window.open_span(at("2026-07-05T00:10:00Z")) == (
        at("2026-07-05T00:00:00Z"),
        at("2026-07-05T02:00:00Z"),
    )
    assert window.open_span(at("2026-12-07T01:30:00Z")) is None  # a Monday


def test_window_open_across_midnight() -> None:
    """A window that starts late in the evening stays open after midnight."""
    window = MaintenanceWindow(
        "backup", all=True, schedule=Schedule.from_yaml("30 23 * * *"), duration=Duration(3600)
    )
    assert window.open_span(at("2026-12-02T00:15:00Z")) == (
        at("2026-12-01T23:30:00Z"),
        at("2026-12-02T00:30:00Z"),
    )


@pytest.mark.parametrize(
    ("text", "minutes", "hours", "weekdays"),
    [
        ("*/15 * * * *", {0, 15, 30, 45}, set(range(24)), set(range(7))),
        ("5,35 8-10 * * mon-fri", {5, 35}, {8, 9, 10}, {1, 2, 3, 4, 5}),
        ("0 0 * * 7", {0}, {0}, {0}),
    ],
)
def test_cron_fields(text: str, minutes: set[int], hours: set[int], weekdays: set[int]) -> None:
    """Steps, lists, ranges, day names and 7 for Sunday read as cron reads them."""
    schedule = Schedule.from_yaml(text)
    assert (set(schedule.minutes), set(schedule.hours), set(schedule.weekdays)) == (minutes, hours, weekdays)


def test_cron_with_both_day_fields_matches_either() -> None:
    """As in cron, '0 3 1 * mon' fires on the 1st and on every Monday."""
    window = MaintenanceWindow(
        "reindex", all=True, schedule=Schedule.from_yaml("0 3 1 * mon"), duration=Duration(600)
    )
    assert window.open_span(at("2026-12-01T03:05:00Z")) is not None  # the 1st, a Tuesday
    assert window.open_span(at("2026-12-07T03:05:00Z")) is not None  # a Monday
    assert window.open_span(at("2026-12-08T03:05:00Z")) is None


def test_board_picks_the_window_covering_a_service() -> None:
    """Services, groups and all select services; the window ending last wins."""
    start, end = Timestamp(at("2026-12-01T00:00:00Z")), Timestamp(at("2026-12-02T00:00:00Z"))
    later = Timestamp(at("2026-12-03T00:00:00Z"))
    board = MaintenanceBoard(
        [
            MaintenanceWindow("db work", services=("db",), start=start, end=end),
            MaintenanceWindow("shop freeze", groups=("shop",), start=start, end=later),
        ]
    )
    now = at("2026-12-01T12:00:00Z")
    found = board.active("db", "shop", now)
    assert found is not None and found.reason == "shop freeze"
    only_db = board.active("db", "other", now)
    assert only_db is not None and only_db.reason == "db work"
    assert board.active("api", "other", now) is None
