"""The grpc probe: the standard grpc.health.v1.Health/Check call, with blackbox's metric names.

This is the kind's entry: its settings, phases and metric families. The probe is in
exporter.probes.grpc_probe, imported with the first grpc probe a process runs, so h2
stays out of processes that never run one.
"""

from __future__ import annotations

from exporter.modules import GRPCProbe
from exporter.probes import net
from exporter.probes.base import ProberKind
from exporter.result import MetricFamily

PHASES = ("resolve", "connect", "tls", "check")
SERVING_STATUSES = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")


# The families this kind writes beyond every probe's own (for help text and docs).
METRICS = (
    MetricFamily(
        "probe_grpc_duration_seconds",
        "Duration of each phase of the gRPC health check.",
        ("phase",),
    ),
    MetricFamily(
        "probe_grpc_healthcheck_response",
        "The health check's serving status: 1 for the current state.",
        ("serving_status",),
    ),
    MetricFamily("probe_grpc_status_code", "gRPC status code of the health check call."),
    MetricFamily("probe_grpc_ssl", "1 if the health check went over TLS."),
    *net.ADDRESS_METRICS,
    *net.TLS_METRICS,
)


KIND = ProberKind("grpc", GRPCProbe, "exporter.probes.grpc_probe:probe_grpc", metrics=METRICS, phases=PHASES)
