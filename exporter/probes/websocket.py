"""The websocket probe: handshake and frames on wsproto, then a dialogue of expected and sent messages.

This is the kind's entry: its settings, phases and metric families. The probe is in
exporter.probes.websocket_probe, imported with the first websocket probe a process runs, so wsproto
stays out of processes that never run one.
"""

from __future__ import annotations

from exporter.modules import WebSocketProbe
from exporter.probes import net
from exporter.probes.base import ProberKind
from exporter.result import MetricFamily

PHASES = ("resolve", "connect", "tls", "upgrade", "messages")


# The families this kind writes beyond every probe's own (for help text and docs).
METRICS = (
    MetricFamily(
        "probe_websocket_duration_seconds",
        "Duration of each phase of the WebSocket probe.",
        ("phase",),
    ),
    MetricFamily(
        "probe_websocket_status_code",
        "Status code of the answer to the upgrade request (101 when upgraded).",
    ),
    MetricFamily("probe_websocket_ssl", "1 if the WebSocket went over TLS."),
    *net.ADDRESS_METRICS,
    *net.TLS_METRICS,
    net.REGEX_METRIC,
)


KIND = ProberKind(
    "websocket",
    WebSocketProbe,
    "exporter.probes.websocket_probe:probe_websocket",
    metrics=METRICS,
    phases=PHASES,
)
