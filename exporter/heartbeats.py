"""Heartbeats pushed by services that are not probed: cron jobs, batch pipelines, devices behind NAT."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.result import SYSTEM_CLOCK, Clock


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One push: when it arrived and what it said."""

    received_at: float
    success: bool
    duration: float | None = None
    message: str = ""


class HeartbeatBoard:
    """The latest push of each push service, by service name."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        # Silence is measured from start when nothing was pushed yet, so a restart does not
        # turn every push service red before its jobs had a chance to report.
        self.started_at = clock.wall()
        self._latest: dict[str, Heartbeat] = {}
        self.rejected: dict[str, int] = {"missing_token": 0, "bad_token": 0, "unknown_service": 0}

    def record(self, name: str, success: bool, duration: float | None, message: str) -> Heartbeat:
        beat = Heartbeat(self.clock.wall(), success, duration, message)
        self._latest[name] = beat
        return beat

    def latest(self, name: str) -> Heartbeat | None:
        return self._latest.get(name)

    def forget_except(self, names: set[str]) -> None:
        """Drop heartbeats of services no longer configured."""
        for name in set(self._latest) - names:
            del self._latest[name]
