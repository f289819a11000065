"""The probe kinds: each module exposes one async function with the Prober signature.

Adding a kind is one module, one entry in PROBERS, one test file.
"""

from __future__ import annotations

from exporter.probes import dns, flow, grpc, http, icmp, push, statuspage, tcp, websocket
from exporter.probes.base import Prober, ProbeRequest, ProberKind

PROBERS: dict[str, ProberKind] = {
    "http": http.KIND,
    "tcp": tcp.KIND,
    "dns": dns.KIND,
    "icmp": icmp.KIND,
    "push": push.KIND,
    "grpc": grpc.KIND,
    "flow": flow.KIND,
    "statuspage": statuspage.KIND,
    "websocket": websocket.KIND,
}

__all__ = ["PROBERS", "ProbeRequest", "Prober", "ProberKind"]
