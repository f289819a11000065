"""The probe kinds, registered once: everything else about a kind is derived from its entry.

Adding a kind is one module (its probe, its settings dataclass and its ``KIND``), one entry in
KINDS, one test file (tests/test_<name>.py) and its section of the README; a test checks that
every entry has all four.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType

from exporter.probes import dns, flow, grpc, http, icmp, push, statuspage, tcp, unix, websocket
from exporter.probes.base import ProbeDeps, Prober, ProbeRequest, ProberKind

KINDS: tuple[ProberKind, ...] = (
    http.KIND,
    tcp.KIND,
    dns.KIND,
    icmp.KIND,
    grpc.KIND,
    push.KIND,
    flow.KIND,
    statuspage.KIND,
    websocket.KIND,
    unix.KIND,
)
PROBERS: Mapping[str, ProberKind] = MappingProxyType({kind.name: kind for kind in KINDS})


class ProbeTable(Mapping[str, Prober]):
    """The probe function of every kind that can run with ``deps``, each made at its first lookup.

    Made lazily so that a kind whose probe lives in a module of its own (ProberKind.probe as
    ``"module:function"``) loads that module, and the libraries it needs, only in a process
    that runs the kind: an HTTP-only probe worker never imports dnspython, h2 or wsproto.
    """

    def __init__(self, deps: ProbeDeps) -> None:
        self._deps = deps
        self._made: dict[str, Prober] = {}

    def __getitem__(self, name: str) -> Prober:
        probe = self._made.get(name)
        if probe is None:
            probe = PROBERS[name].make(self._deps)
            if probe is None:
                raise KeyError(name)
            self._made[name] = probe
        return probe

    def get(self, name: str, default: Prober | None = None) -> Prober | None:  # type: ignore[override]
        # The runner looks a probe up on every run: once made, one dict lookup.
        probe = self._made.get(name)
        if probe is not None:
            return probe
        try:
            return self[name]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[str]:
        return (name for name in PROBERS if name in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def probers(deps: ProbeDeps) -> ProbeTable:
    """The probe function of every kind that can run with ``deps``."""
    return ProbeTable(deps)


__all__ = ["KINDS", "PROBERS", "ProbeDeps", "ProbeRequest", "ProbeTable", "Prober", "ProberKind", "probers"]
