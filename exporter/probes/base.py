"""What a probe kind is: its ProberKind entry, and the ProbeRequest its probe function takes."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from exporter.heartbeats import HeartbeatBoard
from exporter.modules import Module
from exporter.probes.net import TargetGuard
from exporter.result import FailureReason, MetricFamily, ProbeResult, Trace


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


# A probe returns its result, or raises ProbeFailure to fail with a reason: the runner, the one
# error boundary, makes the failed result of it (and of any other exception).
Prober = Callable[[ProbeRequest], Awaitable[ProbeResult]]


@dataclass(frozen=True, slots=True)
class ProbeDeps:
    """What the running exporter lends its kinds; each kind's factory takes only what it needs."""

    heartbeats: HeartbeatBoard | None = None


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


def no_requirements(settings: Any) -> Iterator[tuple[str, str]]:
    return iter(())


@dataclass(frozen=True, slots=True)
class ProberKind:
    """Everything about one probe kind; the registry in ``exporter.probes`` lists them.

    ``name`` is the ``prober:`` value and the YAML key of the kind's settings, whose dataclass is
    ``settings``: module and inline service sections, the known-kind list and the metric help
    text are all derived from these entries. The probe is ``probe``, or made by ``factory`` from
    the running exporter's ProbeDeps when it needs some of them (a kind with neither cannot run).
    A kind whose probe needs libraries of its own names it as ``"module:function"``: the module
    is imported when the kind is first made (see exporter.probes.ProbeTable), so a process that
    never runs the kind never loads them (dnspython, h2, wsproto are megabytes each).
    ``required`` lists problems of settings that matter only when the kind is the module's
    prober (a push module needs a token file; an http module with a push section does not).
    ``phases`` are the phases its phase family (``phase_metric``) always shows. ``metrics`` are the
    families the kind writes beyond the ones every probe has (for the help
    text, the documentation and the registry test).

    ``reasons`` says which failure reasons a module's settings can lead to: the other reasons'
    counters would stay 0 forever, so /metrics does not write them until one is counted (the
    runner adds timeout and other to every kind). ``quiet_gauges`` names the gauges that cannot
    leave 0 under a module's settings, also left out of /metrics; /probe writes everything, as
    blackbox does.
    """

    name: str
    settings: type
    probe: Prober | str | None = None
    factory: Callable[[ProbeDeps], Prober] | None = None
    metrics: tuple[MetricFamily, ...] = ()
    required: Callable[[Any], Iterator[tuple[str, str]]] = no_requirements
    phases: tuple[str, ...] = ()
    # False for kinds that reach nothing (push): the service's name stands in for its target.
    needs_target: bool = True
    reasons: Callable[[Module], frozenset[FailureReason]] = every_reason
    quiet_gauges: Callable[[Module], frozenset[str]] = no_quiet_gauges

    @property
    def phase_metric(self) -> str | None:
        """The family labelled only by ``phase``, that ``phases`` fill (None for kinds without)."""
        if not self.phases:
            return None
        return next((f.name for f in self.metrics if f.labels == ("phase",)), None)

    def make(self, deps: ProbeDeps) -> Prober | None:
        if self.factory is not None:
            return self.factory(deps)
        if isinstance(self.probe, str):
            module, _, name = self.probe.partition(":")
            probe: Prober = getattr(importlib.import_module(module), name)
            return probe
        return self.probe

    @property
    def probe_module(self) -> str | None:
        """The module a ``"module:function"`` probe lives in, None for a probe given directly."""
        return self.probe.partition(":")[0] if isinstance(self.probe, str) else None
