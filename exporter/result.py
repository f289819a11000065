"""What a probe found: the frozen ProbeResult, its FailureReason, and the Trace that builds it."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Protocol

Labels = tuple[tuple[str, str], ...]


class FailureReason(StrEnum):
    """Why a probe failed; the ``reason`` label of ``probe_failures_total``."""

    DNS = "dns"
    CONNECT = "connect"
    TLS = "tls"
    TIMEOUT = "timeout"
    HTTP_STATUS = "http_status"
    BODY = "body"
    HEADER = "header"
    PROTOCOL = "protocol"
    OTHER = "other"


class Clock(Protocol):
    """The seam for time: tests may substitute a fake."""

    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class SystemClock:
    """Real time: a monotonic clock for durations, the wall clock for timestamps."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


SYSTEM_CLOCK: Clock = SystemClock()


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """A metric a probe kind writes: its name, help text, labels and Prometheus type."""

    name: str
    help: str
    labels: tuple[str, ...] = ()
    type: str = "gauge"


@dataclass(frozen=True, slots=True)
class Sample:
    """One per-kind gauge value such as ``probe_http_status_code`` or ``probe_tls_version_info``."""

    name: str
    value: float
    labels: Labels = ()


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe run."""

    success: bool
    duration: float
    started_at: float
    reason: FailureReason | None = None
    message: str = ""
    phases: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    samples: tuple[Sample, ...] = ()
    # Reasons of attempts that failed before this, the final one, when retries are on.
    failed_attempts: tuple[FailureReason, ...] = ()
    # The longest stall of the exporter's own event loop while this probe ran, 0 if none worth
    # naming: the duration may hold up to that much of the exporter's time, not the target's.
    stalled: float = 0.0

    @property
    def attempts(self) -> int:
        return len(self.failed_attempts) + 1

    def value(self, name: str, default: float | None = None) -> float | None:
        """The value of the unlabelled sample ``name``, if the probe recorded it."""
        for sample in self.samples:
            if sample.name == name and not sample.labels:
                return sample.value
        return default


class Trace:
    """Collects phases and values while a probe runs.

    The runner owns the trace, so what a probe recorded before a timeout
    cancelled it still reaches the result.
    """

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.started_at = clock.wall()
        self._start = clock.monotonic()
        self.phases: dict[str, float] = {}
        self._samples: dict[tuple[str, Labels], float] = {}

    def elapsed(self) -> float:
        """Seconds since the probe started."""
        return self.clock.monotonic() - self._start

    def phase(self, name: str) -> _Phase:
        """Time a phase; repeated phases (as over redirects) add up."""
        return _Phase(self, name)

    def add_phase(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + max(seconds, 0.0)

    def set_defaults(self, phases: Iterable[str], samples: Mapping[tuple[str, Labels], float]) -> None:
        """Every phase in ``phases`` (kept if already timed) and every sample set as given.

        One call for what a probe writes at its start, as ``add_phase(name, 0.0)`` and ``set``
        one by one would.
        """
        for name in phases:
            self.phases.setdefault(name, 0.0)
        self._samples.update(samples)

    def set(self, name: str, value: float, labels: Labels = ()) -> None:
        """Record a per-kind gauge value; setting it again replaces it."""
        self._samples[(name, labels)] = float(value)

    def get(self, name: str, labels: Labels = ()) -> float | None:
        return self._samples.get((name, labels))

    def _result(self, success: bool, reason: FailureReason | None, message: str) -> ProbeResult:
        return ProbeResult(
            success=success,
            duration=self.elapsed(),
            started_at=self.started_at,
            reason=reason,
            message=message,
            phases=MappingProxyType(dict(self.phases)),
            samples=tuple(Sample(n, v, lb) for (n, lb), v in self._samples.items()),
        )

    def succeed(self, message: str = "") -> ProbeResult:
        return self._result(True, None, message)

    def fail(self, reason: FailureReason, message: str) -> ProbeResult:
        return self._result(False, reason, message)


class _Phase:
    """``Trace.phase``'s timer: a plain context manager, a few per probe, cheaper than a generator's."""

    __slots__ = ("_name", "_start", "_trace")

    def __init__(self, trace: Trace, name: str) -> None:
        self._trace = trace
        self._name = name
        self._start = 0.0

    def __enter__(self) -> None:
        self._start = self._trace.clock.monotonic()

    def __exit__(self, *exc_info: object) -> None:
        trace = self._trace
        trace.add_phase(self._name, trace.clock.monotonic() - self._start)
