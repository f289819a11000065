"""Heartbeats pushed by services that are not probed: cron jobs, batch pipelines, devices behind NAT."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from exporter.result import SYSTEM_CLOCK, Clock
from exporter.types import read_secret_file

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One push: when it arrived and what it said."""

    received_at: float
    success: bool
    duration: float | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a push was not recorded, as an HTTP status and a message for the pusher."""

    status: int
    message: str


class HeartbeatBoard:
    """The latest push of each push service, by service name, and who may push."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        # Silence is measured from start when nothing was pushed yet, so a restart does not
        # turn every push service red before its jobs had a chance to report.
        self.started_at = clock.wall()
        self._latest: dict[str, Heartbeat] = {}
        self._token_files: dict[str, str] = {}
        self.rejected: dict[str, int] = {"missing_token": 0, "bad_token": 0, "unknown_service": 0}

    def record(self, name: str, success: bool, duration: float | None, message: str) -> Heartbeat:
        beat = Heartbeat(self.clock.wall(), success, duration, message)
        self._latest[name] = beat
        return beat

    def latest(self, name: str) -> Heartbeat | None:
        return self._latest.get(name)

    def expect(self, token_files: Mapping[str, str]) -> None:
        """The push services now configured, with their token files; others' heartbeats go."""
        self._token_files = dict(token_files)
        for name in set(self._latest) - set(token_files):
            del self._latest[name]

    def authorize(self, name: str, token: str) -> Refusal | None:
        """None when ``token`` is the one kept for push service ``name``; counts refusals."""
        token_file = self._token_files.get(name)
        if token_file is None:
            self.rejected["unknown_service"] += 1
            return Refusal(404, f"no push service named {name[:100]!r}")
        if not token:
            self.rejected["missing_token"] += 1
            return Refusal(401, "a token is required: Authorization: Bearer <token> or token=<token>")
        try:
            expected = read_secret_file(token_file)
        except OSError:
            log.error("push service %s: cannot read its token_file", name)
            return Refusal(503, "the exporter cannot read this service's token file")
        if not hmac.compare_digest(token.encode(), expected.encode()):
            self.rejected["bad_token"] += 1
            return Refusal(401, "wrong token")
        return None
