"""The dns prober: one query to a DNS server over UDP, TCP or TLS, checked as blackbox does.

This is the kind's entry: its settings, metric families and reasons. The probe is in
exporter.probes.dns_probe, imported with the first dns probe a process runs, so dnspython
(several megabytes) stays out of processes that never run one.
"""

from __future__ import annotations

from collections.abc import Iterator

from exporter.modules import DNSProbe
from exporter.probes import net
from exporter.probes.base import NETWORK_REASONS, ProberKind
from exporter.result import MetricFamily

# The families this kind writes beyond every probe's own (for help text and docs).
METRICS = (
    MetricFamily("probe_dns_duration_seconds", "Duration of each DNS phase.", ("phase",)),
    MetricFamily("probe_dns_query_succeeded", "1 if the server answered the query."),
    MetricFamily("probe_dns_serial", "Serial of the SOA record answered, when there is one."),
    MetricFamily("probe_dns_answer_rrs", "Records in the answer section."),
    MetricFamily("probe_dns_authority_rrs", "Records in the authority section."),
    MetricFamily("probe_dns_additional_rrs", "Records in the additional section."),
    *net.ADDRESS_METRICS,
)


# blackbox exports probe_dns_duration_seconds{phase="resolve"|"connect"|"request"}.
def _required(settings: DNSProbe) -> Iterator[tuple[str, str]]:
    if not settings.query_name:
        yield "", "query_name is required for the dns prober"


KIND = ProberKind(
    "dns",
    DNSProbe,
    "exporter.probes.dns_probe:probe_dns",
    required=_required,
    metrics=METRICS,
    phases=("resolve", "connect", "request"),
    reasons=lambda module: NETWORK_REASONS,
)
