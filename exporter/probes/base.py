"""The shared probe signature: a ProbeRequest in, a ProbeResult out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from exporter.heartbeats import HeartbeatBoard
from exporter.modules import Module
from exporter.probes.net import TargetGuard
from exporter.result import FailureReason, ProbeResult, Trace


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    """Everything a probe needs: what to probe, how, and where to record what it sees."""

    target: str
    module: Module
    trace: Trace
    # The runner enforces this; probes only pass it on to peers that take a deadline.
    timeout: float
    # Set for on-demand probes: every host and address reached must pass it (redirects too).
    guard: TargetGuard | None = None
    # Where push services' heartbeats are kept; only the push kind reads it.
    heartbeats: HeartbeatBoard | None = None


# A probe returns its result, or raises ProbeFailure to fail with a reason: the runner, the one
# error boundary, makes the failed result of it (and of any other exception).
Prober = Callable[[ProbeRequest], Awaitable[ProbeResult]]


ALL_REASONS = frozenset(FailureReason)
# What resolving, connecting, TLS and a byte protocol can end in, with the runner's two.
NETWORK_REASONS = frozenset(
    {
        FailureReason.DNS,
        FailureReason.CONNECT,
        FailureReason.TLS,
        FailureReason.TIMEOUT,
        FailureReason.PROTOCOL,
        FailureReason.OTHER,
    }
)


def every_reason(module: Module) -> frozenset[FailureReason]:
    return ALL_REASONS


def no_quiet_gauges(module: Module) -> frozenset[str]:
    return frozenset()


@dataclass(frozen=True, slots=True)
class ProberKind:
    """A probe function and the phase metric it fills.

    ``reasons`` says which failure reasons a module's settings can lead to: the other reasons'
    counters would stay 0 forever, so /metrics does not write them until one is counted (the
    runner adds timeout and other to every kind). ``quiet_gauges`` names the gauges that cannot
    leave 0 under a module's settings, also left out of /metrics; /probe writes everything, as
    blackbox does.
    """

    probe: Prober
    phase_metric: str | None = None
    phases: tuple[str, ...] = ()
    reasons: Callable[[Module], frozenset[FailureReason]] = every_reason
    quiet_gauges: Callable[[Module], frozenset[str]] = no_quiet_gauges
