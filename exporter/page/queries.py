"""Every PromQL query the status page sends, named, in one table: change the rules, change this file."""

from __future__ import annotations

from dataclasses import dataclass

# The page reads the bundled recording rules (prometheus/rules/outage-exporter.rules.yml) where
# they exist and raw exporter series where they do not (windows longer than the rules keep).
# ``{job}`` is replaced by status_page.prometheus_job; each answer must carry the labels named
# in ``by`` and one value per label set.


@dataclass(frozen=True)
class Query:
    expr: str
    by: tuple[str, ...]
    meaning: str


def _raw_uptime(window: str) -> str:
    return (
        f'1 - (sum by (service) (increase(probe_failures_total{{job="{{job}}"}}[{window}]))'
        f' / (sum by (service) (increase(probe_runs_total{{job="{{job}}"}}[{window}])) > 0))'
    )


QUERIES: dict[str, Query] = {
    # Uptime: the share of probes that succeeded, over every location probing the service.
    "uptime_24h": Query(
        "1 - service:probe_failures_per_runs:ratio_rate1d", ("service",), "uptime over 24 hours"
    ),
    "uptime_7d": Query(_raw_uptime("7d"), ("service",), "uptime over 7 days"),
    "uptime_30d": Query(_raw_uptime("30d"), ("service",), "uptime over 30 days"),
    "uptime_90d": Query(_raw_uptime("90d"), ("service",), "uptime over 90 days"),
    # Whether each location reaches each service now (1 up, 0 down); status pages left out.
    "location_up": Query(
        "max by (service, location) (service_location:probe_success:max)",
        ("service", "location"),
        "each location's view of each service",
    ),
    # Share of a location's services that fail there: near 1 while other locations are fine
    # points at the prober's side.
    "location_failing": Query(
        "location:probe_failing_services:ratio", ("location",), "share of services failing per location"
    ),
    # When Prometheus' data about the exporters begins (to a minute): a 30-day window over two
    # hours of data is two hours of uptime, and the page says so.
    "data_since": Query(
        'min(min_over_time(timestamp(up{job="{job}"})[90d:1m]))', (), "start of the data Prometheus holds"
    ),
    "latency_p90": Query(
        "max by (service, location) ("
        'service_location:probe_latency_seconds:histogram_quantile5m{quantile="0.9"})',
        ("service", "location"),
        "90th percentile latency over 5 minutes, per location",
    ),
}

# The windows of the uptime queries, in the order the page shows them, with their length.
PROMETHEUS_WINDOWS: tuple[tuple[str, str, float], ...] = (
    ("24h", "uptime_24h", 86400.0),
    ("7d", "uptime_7d", 7 * 86400.0),
    ("30d", "uptime_30d", 30 * 86400.0),
    ("90d", "uptime_90d", 90 * 86400.0),
)


def promql(name: str, job: str) -> str:
    """The text of query ``name`` for the exporters scraped under ``job``."""
    return QUERIES[name].expr.replace("{job}", job)
