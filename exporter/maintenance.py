"""Maintenance windows: one-off or recurring spans during which services are probed but not paged for."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from exporter.types import Duration

# Semantics:
# - A window covers ``services`` (by name), ``groups`` (by name), or every service with
#   ``all: true``; at least one of the three is required.
# - One-off windows have ``start`` and ``end``: times with a UTC offset (``2026-12-01T22:00:00Z``),
#   covering start <= now < end.
# - Recurring windows have ``schedule``, a five-field cron expression (minute hour day-of-month
#   month day-of-week, with ``*``, lists, ranges, ``/step`` and day and month names), and a
#   ``duration``: each time the schedule fires, a window of that length opens. The schedule is
#   read in ``timezone`` (an IANA name, UTC by default), so "0 2 * * sun" follows daylight saving.
#   As in cron, when both day fields are restricted, a day matching either one matches.
# - Probes keep running inside a window; only the probe_maintenance gauge and the status page
#   change, and the bundled alerts leave services with probe_maintenance 1 alone.


class Timestamp(float):
    """A moment in time as a unix time, written in ISO 8601 with a UTC offset."""

    @classmethod
    def from_yaml(cls, value: Any) -> Timestamp:
        moment = value
        if isinstance(value, str):
            try:
                moment = dt.datetime.fromisoformat(value.strip())
            except ValueError:
                raise ValueError(f"must be a time such as 2026-12-01T22:00:00Z, got {value[:40]!r}") from None
        elif isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            raise ValueError(f"must be a time with a UTC offset such as {value}T00:00:00Z, got a date")
        if not isinstance(moment, dt.datetime):
            raise ValueError(f"must be a time such as 2026-12-01T22:00:00Z, got {value!r}")
        if moment.tzinfo is None:
            raise ValueError(
                f"must say its UTC offset (Z or +02:00), got {moment.isoformat(sep=' ')} without one"
            )
        return cls(moment.timestamp())

    def __str__(self) -> str:
        return dt.datetime.fromtimestamp(float(self), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_DAY_NAMES = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_MONTH_NAMES = {
    name: index + 1
    for index, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
    )
}
# (name, lowest, highest, names) of the five cron fields, in order.
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTH_NAMES),
    ("day of week", 0, 7, _DAY_NAMES),
)


@dataclass(frozen=True)
class Schedule:
    """A cron expression, parsed into the set of values each field allows."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool

    @classmethod
    def from_yaml(cls, value: Any) -> Schedule:
        if not isinstance(value, str):
            raise ValueError(f"must be a cron expression such as '0 2 * * sun', got {value!r}")
        parts = value.split()
        if len(parts) != 5:
            raise ValueError(
                "must be a cron expression of five fields (minute hour day-of-month month day-of-week),"
                f" got {len(parts)} in {value!r}"
            )
        sets = [_cron_field(part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)]
        weekdays = frozenset(0 if d == 7 else d for d in sets[4])  # cron allows 7 for Sunday too
        return cls(value, sets[0], sets[1], sets[2], sets[3], weekdays, parts[2] == "*", parts[4] == "*")

    def __str__(self) -> str:
        return self.text

    def _day_matches(self, day: dt.date) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week

    def starts_between(self, after: dt.datetime, until: dt.datetime) -> Iterator[dt.datetime]:
        """Times the schedule fires in (after, until], local to the zone of both, newest first."""
        day = until.date()
        zone = until.tzinfo
        while day >= after.date():
            if self._day_matches(day):
                for hour in sorted(self.hours, reverse=True):
                    for minute in sorted(self.minutes, reverse=True):
                        moment = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
                        if after < moment <= until:
                            yield moment
            day -= dt.timedelta(days=1)


def _cron_field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        body, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"{name} field {text!r}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if body == "*":
            first, last = low, high
        else:
            first_text, dash, last_text = body.partition("-")
            first = _cron_value(first_text, name, low, high, names, text)
            last = _cron_value(last_text, name, low, high, names, text) if dash else first
            if step_text and not dash:
                last = high
            if last < first:
                raise ValueError(f"{name} field {text!r}: range {body!r} runs backwards")
        values.update(range(first, last + 1, step))
    return frozenset(values)


def _cron_value(text: str, name: str, low: int, high: int, names: dict[str, int], whole: str) -> int:
    word = text.lower()
    if word in names:
        return names[word]
    if not text.isdigit():
        raise ValueError(f"{name} field {whole!r}: {text!r} is not a number or a name")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{name} field {whole!r}: {value} is outside {low}-{high}")
    return value


class TimeZone(str):
    """An IANA time zone name such as Europe/Berlin."""

    @classmethod
    def from_yaml(cls, value: Any) -> TimeZone:
        if not isinstance(value, str):
            raise ValueError(f"must be a time zone name such as Europe/Berlin, got {value!r}")
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (use an IANA name such as Europe/Berlin)"
            ) from None
        return cls(value)


# A recurring window longer than this would need scanning months of schedule; a one-off
# window is the better tool for that.
MAX_RECURRING = 7 * 86400.0


@dataclass(frozen=True)
class MaintenanceWindow:
    reason: str
    services: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    all: bool = False
    start: Timestamp | None = None
    end: Timestamp | None = None
    schedule: Schedule | None = None
    duration: Duration | None = None
    timezone: TimeZone = TimeZone("UTC")

    def check(self) -> Iterator[tuple[str, str]]:
        if not self.reason.strip():
            yield "reason", "must not be empty: it is shown on the status page"
        if not (self.services or self.groups or self.all):
            yield "services", "a window needs services, groups or all: true"
        elif self.all and (self.services or self.groups):
            yield "all", "all: true covers every service; drop services and groups"
        one_off = self.start is not None or self.end is not None
        recurring = self.schedule is not None or self.duration is not None
        if one_off and recurring:
            yield "schedule", "set either start and end, or schedule and duration, not both"
        elif one_off:
            if self.start is None or self.end is None:
                yield ("end" if self.end is None else "start"), "start and end must be set together"
            elif self.end <= self.start:
                yield "end", f"must be after start {self.start}, got {self.end}"
            if self.timezone != "UTC":
                yield "timezone", "applies to schedule only; start and end carry their own offset"
        elif recurring:
            if self.schedule is None:
                yield "schedule", "is required with duration"
            elif self.duration is None:
                yield "duration", "is required with schedule: how long each window lasts"
            elif not 0 < self.duration <= MAX_RECURRING:
                yield "duration", f"must be between 1s and 7d, got {self.duration}"
        else:
            yield "start", "a window needs start and end, or schedule and duration"

    def covers(self, name: str, group: str) -> bool:
        return self.all or name in self.services or group in self.groups

    def open_span(self, now: float) -> tuple[float, float] | None:
        """(start, end) of the span of this window that contains ``now``, if any."""
        if self.start is not None and self.end is not None:
            return (float(self.start), float(self.end)) if self.start <= now < self.end else None
        if self.schedule is None or self.duration is None:
            return None
        zone = zoneinfo.ZoneInfo(self.timezone)
        until = dt.datetime.fromtimestamp(now, zone)
        after = until - dt.timedelta(seconds=float(self.duration))
        for fired in self.schedule.starts_between(after - dt.timedelta(seconds=1), until):
            begin = fired.timestamp()
            if begin <= now < begin + float(self.duration):
                return begin, begin + float(self.duration)
        return None


@dataclass(frozen=True)
class ActiveWindow:
    """A window open now: its reason and when this span of it ends."""

    reason: str
    start: float
    end: float


class MaintenanceBoard:
    """Which windows are open, worked out at most once a second however many services ask."""

    def __init__(self, windows: Iterable[MaintenanceWindow] = ()) -> None:
        self.windows = tuple(windows)
        self._at = -1
        self._open: list[tuple[MaintenanceWindow, ActiveWindow]] = []

    def open_windows(self, now: float) -> list[tuple[MaintenanceWindow, ActiveWindow]]:
        second = int(now)
        if second != self._at:
            self._at = second
            self._open = []
            for window in self.windows:
                span = window.open_span(now)
                if span is not None:
                    self._open.append((window, ActiveWindow(window.reason, *span)))
        return self._open

    def active(self, name: str, group: str, now: float) -> ActiveWindow | None:
        """The open window covering this service, the one ending last when several do."""
        found: ActiveWindow | None = None
        for window, active in self.open_windows(now):
            if window.covers(name, group) and (found is None or active.end > found.end):
                found = active
        return found
