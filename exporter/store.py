"""Keeps the latest result, counters and latency histogram of every configured service."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from exporter.config import Service
from exporter.history import History
from exporter.reloadplan import ReloadPlan, plan_reload
from exporter.result import FailureReason, ProbeResult


@dataclass(slots=True)
class Histogram:
    """Cumulative-on-export bucket counts for fixed upper bounds (``+Inf`` implied)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        # bisect_left puts a value equal to a bound in that bound's bucket (le is inclusive).
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> Iterator[tuple[float, int]]:
        """(upper bound, cumulative count) pairs, ending with +Inf."""
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            yield bound, running


def _zero_reasons() -> dict[FailureReason, int]:
    return dict.fromkeys(FailureReason, 0)


@dataclass(slots=True)
class ServiceState:
    """What the exporter knows about one service."""

    service: Service
    last: ProbeResult | None = None
    runs: int = 0
    failures: dict[FailureReason, int] = field(default_factory=_zero_reasons)
    last_success: float | None = None
    attempts: int = 0
    attempt_failures: dict[FailureReason, int] = field(
        default_factory=lambda: dict.fromkeys(FailureReason, 0)
    )
    # Runs that overlapped a stall of the exporter's own loop; their durations stay out of
    # ``latency``, which is meant to hold the target's time only.
    stalled_runs: int = 0
    latency: Histogram = field(init=False)
    # Kept by the status page (exporter.page), which sets the store's on_record.
    history: History | None = None

    def __post_init__(self) -> None:
        self.latency = Histogram(self.service.latency_buckets)


class ResultStore:
    """Results by service name; a service removed from the config disappears with its state."""

    def __init__(self) -> None:
        self._states: dict[str, ServiceState] = {}
        # Called after each recorded result (the status page keeps its history this way).
        self.on_record: Callable[[ServiceState, ProbeResult], None] | None = None

    def sync(self, services: Iterable[Service]) -> None:
        """Match the store to a new service set, keeping the state of services that stay."""
        self.apply(plan_reload(self.services(), services))

    def services(self) -> list[Service]:
        return [state.service for state in self._states.values()]

    def apply(self, plan: ReloadPlan) -> None:
        """Take the plan's service set: kept and changed services keep their state (see reloadplan)."""
        states: dict[str, ServiceState] = {}
        for service in plan.services:
            state = self._states.get(service.name)
            if state is None:
                state = ServiceState(service)
            elif state.service is not service:  # changed: kept ones are the same object
                if state.latency.bounds != service.latency_buckets:
                    state.latency = Histogram(service.latency_buckets)
                before = (state.service.group, state.service.target, state.service.module.prober)
                if before != (service.group, service.target, service.module.prober):
                    # Another target or kind: the old result describes something else now.
                    state.last = None
                    state.history = None
                state.service = service
            states[service.name] = state
        self._states = states

    def record(self, name: str, result: ProbeResult) -> None:
        """Store a finished probe of a configured service; results of removed services are dropped."""
        state = self._states.get(name)
        if state is None:
            return
        state.last = result
        state.runs += 1
        state.attempts += result.attempts
        for reason in result.failed_attempts:
            state.attempt_failures[reason] += 1
        if not result.success:
            state.attempt_failures[result.reason or FailureReason.OTHER] += 1
        if result.stalled:
            state.stalled_runs += 1
        if result.success:
            state.last_success = result.started_at + result.duration
            if not result.stalled:
                state.latency.observe(result.duration)
        else:
            state.failures[result.reason or FailureReason.OTHER] += 1
        if self.on_record is not None:
            self.on_record(state, result)

    def get(self, name: str) -> ServiceState | None:
        return self._states.get(name)

    def __iter__(self) -> Iterator[ServiceState]:
        return iter(list(self._states.values()))

    def __len__(self) -> int:
        return len(self._states)
