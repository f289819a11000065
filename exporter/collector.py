"""Turns the result store into metric families at scrape time; nothing is kept between scrapes."""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.config import Service
from exporter.probes import PROBERS
from exporter.result import FailureReason, ProbeResult
from exporter.store import Histogram, ResultStore

HELP: dict[str, str] = {
    "probe_success": "1 if the last probe succeeded, 0 if it failed.",
    "probe_duration_seconds": "How long the last probe took, in seconds.",
    "probe_latency_seconds": "Durations of successful probes.",
    "probe_runs": "Probes completed.",
    "probe_failures": "Failed probes by reason.",
    "probe_last_success_timestamp_seconds": "When a probe last succeeded, as a unix time.",
    "probe_last_run_timestamp_seconds": "When a probe last finished, as a unix time.",
    "probe_service_info": "Settings of each service; join on service for its target and labels.",
    "probe_objective_availability_ratio": "Availability objective of the service.",
    "probe_objective_latency_seconds": "Latency objective of the service.",
    "probe_http_duration_seconds": "Duration of each HTTP phase, summed over redirects.",
    "probe_icmp_duration_seconds": "Duration of each ICMP phase.",
    "probe_http_status_code": "Status code of the final HTTP response.",
    "probe_http_version": "HTTP version of the final response.",
    "probe_http_redirects": "Number of redirects followed.",
    "probe_http_ssl": "1 if the final response came over TLS.",
    "probe_http_content_length": "Content length of the response body, -1 when unknown.",
    "probe_http_uncompressed_body_length": "Length of the response body after decompression.",
    "probe_http_last_modified_timestamp_seconds": "Last-Modified header of the response, as a unix time.",
    "probe_failed_due_to_regex": "1 if the probe failed because a regular expression check failed.",
    "probe_ssl_earliest_cert_expiry": "Earliest expiry of the certificates the server sent, as a unix time.",
    "probe_ssl_last_chain_expiry_timestamp_seconds": "Earliest expiry in the last certificate chain.",
    "probe_ssl_last_chain_info": "Leaf certificate of the last chain.",
    "probe_tls_version_info": "TLS version used.",
    "probe_dns_lookup_time_seconds": "How long resolving the target took.",
    "probe_ip_protocol": "IP version used: 4 or 6.",
    "probe_ip_addr_hash": "Hash of the IP address probed, to notice changes.",
}

PROBE_LABELS = ("service", "group", "location")


def metric_help(name: str) -> str:
    return HELP.get(name, f"Value reported by the probe: {name}.")


def _go_float(value: float) -> str:
    """A bucket bound as Prometheus writes it: ``+Inf``, ``0.5``, ``1.0``."""
    if value == float("inf"):
        return "+Inf"
    return repr(float(value))


class Families:
    """Builds metric families in order of first use, each sample with any labels."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def add(self, name: str, kind: str, labels: Mapping[str, str], value: float, suffix: str = "") -> None:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = Metric(name, metric_help(name), kind)
        family.add_sample(name + suffix, dict(labels), value)

    def histogram(self, name: str, labels: Mapping[str, str], hist: Histogram) -> None:
        for bound, count in hist.cumulative():
            self.add(name, "histogram", {**labels, "le": _go_float(bound)}, count, "_bucket")
        self.add(name, "histogram", labels, hist.total, "_sum")
        self.add(name, "histogram", labels, hist.count, "_count")

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())


def add_result(families: Families, result: ProbeResult, prober: str, labels: Mapping[str, str]) -> None:
    """The values of one probe result, as blackbox_exporter names them."""
    families.add("probe_success", "gauge", labels, 1.0 if result.success else 0.0)
    families.add("probe_duration_seconds", "gauge", labels, result.duration)
    kind = PROBERS.get(prober)
    if kind is not None and kind.phase_metric:
        for phase in dict.fromkeys((*kind.phases, *result.phases)):
            phase_labels = {**labels, "phase": phase}
            families.add(kind.phase_metric, "gauge", phase_labels, result.phases.get(phase, 0.0))
    for sample in result.samples:
        families.add(sample.name, "gauge", {**labels, **dict(sample.labels)}, sample.value)


class ServiceCollector(Collector):
    """Reads the store at scrape time and yields every probe metric of every service."""

    def __init__(self, store: ResultStore, location: str) -> None:
        self.store = store
        self.location = location

    def collect(self) -> Iterable[Metric]:
        families = Families()
        for state in self.store:
            service = state.service
            labels = {"service": service.name, "group": service.group, "location": self.location}
            _add_info(families, service, labels)
            if state.last is not None:
                add_result(families, state.last, service.module.prober, labels)
                end = state.last.started_at + state.last.duration
                families.add("probe_last_run_timestamp_seconds", "gauge", labels, end)
            if state.last_success is not None:
                families.add("probe_last_success_timestamp_seconds", "gauge", labels, state.last_success)
            families.add("probe_runs", "counter", labels, state.runs, "_total")
            for reason in FailureReason:
                reason_labels = {**labels, "reason": reason.value}
                families.add("probe_failures", "counter", reason_labels, state.failures[reason], "_total")
            families.histogram("probe_latency_seconds", labels, state.latency)
        return families


def _add_info(families: Families, service: Service, labels: Mapping[str, str]) -> None:
    info = {
        **service.labels,
        **labels,
        "target": service.target,
        "prober": service.module.prober,
        "module": service.module_name,
    }
    families.add("probe_service_info", "gauge", info, 1.0)
    objectives = service.objectives
    if objectives.availability is not None:
        families.add("probe_objective_availability_ratio", "gauge", labels, objectives.availability)
    if objectives.latency is not None:
        families.add("probe_objective_latency_seconds", "gauge", labels, float(objectives.latency))


class SelfStatus(Protocol):
    """What the exporter reports about itself."""

    @property
    def reload_successful(self) -> bool: ...

    @property
    def reload_success_time(self) -> float: ...

    @property
    def probes_in_flight(self) -> int: ...

    @property
    def schedule_lag(self) -> Histogram: ...


class SelfCollector(Collector):
    """The exporter's own health: build, reload status, probes in flight, schedule lag."""

    def __init__(self, status: SelfStatus) -> None:
        self.status = status

    def collect(self) -> Iterable[Metric]:
        families = Families()
        build = {"version": __version__, "pythonversion": platform.python_version()}
        families.add("outage_exporter_build_info", "gauge", build, 1.0)
        families.add(
            "outage_exporter_config_last_reload_successful",
            "gauge",
            {},
            1.0 if self.status.reload_successful else 0.0,
        )
        families.add(
            "outage_exporter_config_last_reload_success_timestamp_seconds",
            "gauge",
            {},
            self.status.reload_success_time,
        )
        families.add("outage_exporter_probes_in_flight", "gauge", {}, self.status.probes_in_flight)
        families.histogram("outage_exporter_schedule_lag_seconds", {}, self.status.schedule_lag)
        return families


HELP.update(
    {
        "outage_exporter_build_info": "Version of the exporter, always 1.",
        "outage_exporter_config_last_reload_successful": "1 if the last config reload succeeded.",
        "outage_exporter_config_last_reload_success_timestamp_seconds": "When the config was last loaded.",
        "outage_exporter_probes_in_flight": "Probes running now.",
        "outage_exporter_schedule_lag_seconds": "How late scheduled probes started.",
    }
)
