"""The shared probe signature: a ProbeRequest in, a ProbeResult out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from exporter.heartbeats import HeartbeatBoard
from exporter.modules import Module
from exporter.probes.net import TargetGuard
from exporter.result import ProbeResult, Trace


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


Prober = Callable[[ProbeRequest], Awaitable[ProbeResult]]


@dataclass(frozen=True, slots=True)
class ProberKind:
    """A probe function and the phase metric it fills."""

    probe: Prober
    phase_metric: str | None = None
    phases: tuple[str, ...] = ()
