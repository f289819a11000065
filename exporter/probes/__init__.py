"""The probe kinds, registered once: everything else about a kind is derived from its entry.

Adding a kind is one module (its probe, its settings dataclass and its ``KIND``), one entry in
KINDS, one test file (tests/test_<name>.py) and its section of the README; a test checks that
every entry has all four.
"""

from __future__ import annotations

from collections.abc import Mapping
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


def probers(deps: ProbeDeps) -> dict[str, Prober]:
    """The probe function of every kind that can run with ``deps``."""
    table = {kind.name: kind.make(deps) for kind in KINDS}
    return {name: probe for name, probe in table.items() if probe is not None}


__all__ = ["KINDS", "PROBERS", "ProbeDeps", "ProbeRequest", "Prober", "ProberKind", "probers"]
