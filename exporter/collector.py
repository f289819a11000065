"""Turns the result store into metrics at scrape time; nothing is kept between scrapes."""

from __future__ import annotations

import asyncio
import ctypes
import functools
import platform
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from itertools import repeat
from typing import Protocol

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.config import Service
from exporter.health import degraded_reason
from exporter.maintenance import MaintenanceBoard
from exporter.probes import PROBERS
from exporter.result import FailureReason, ProbeResult, Sample
from exporter.store import Histogram, ResultStore, ServiceState
from exporter.types import redact_url

HELP: dict[str, str] = {
    "probe_success": "1 if the last probe succeeded, 0 if it failed.",
    "probe_duration_seconds": "How long the last probe took, in seconds.",
    "probe_latency_seconds": "Durations of successful probes.",
    "probe_runs": "Probes completed.",
    "probe_failures": "Failed probes by reason.",
    "probe_attempts": "Attempts made, retries included (services with retries only).",
    "probe_loop_stalled": (
        "Probes that ran while the exporter's own event loop stalled (shown once non-zero); "
        "their durations are left out of probe_latency_seconds."
    ),
    "probe_attempt_failures": "Failed attempts by reason, retries included; shows flakiness retries hide.",
    "probe_last_success_timestamp_seconds": "When a probe last succeeded, as a unix time.",
    "probe_last_run_timestamp_seconds": "When a probe last finished, as a unix time.",
    "probe_degraded": "1 if the last probe succeeded but missed its latency objective, needed a retry,"
    " or its vendor's status page reports trouble.",
    "probe_maintenance": "1 while a maintenance window covers the service.",
    "probe_service_info": "Settings of each service; join on service for its target and labels.",
    "probe_interval_seconds": "How often the service is probed; ProbeStale scales with it.",
    "probe_objective_availability_ratio": "Availability objective of the service.",
    "probe_objective_latency_seconds": "Latency objective of the service.",
    "probe_timeout_seconds": "The timeout the probe ran with, in seconds (/probe only).",
}
# Each kind's own families, from the registry.
HELP.update({family.name: family.help for kind in PROBERS.values() for family in kind.metrics})


def metric_help(name: str) -> str:
    return HELP.get(name, f"Value reported by the probe: {name}.")


def label_text(labels: Mapping[str, str]) -> str:
    """A label set in exposition syntax, without braces: ``a="1",b="x\\"y"``."""
    return ",".join(f'{name}="{escape(value)}"' for name, value in labels.items())


def escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def format_value(value: float) -> str:
    text = repr(float(value))
    return _SPECIAL.get(text, text)


_SPECIAL = {"inf": "+Inf", "-inf": "-Inf", "nan": "NaN"}


def _join(labels: str, extra: str) -> str:
    return f"{labels},{extra}" if labels else extra


class Exposition:
    """Prometheus' text format, written line by line with label sets rendered once per service.

    prometheus_client's generic writer validates and escapes every label of every sample; at
    10,000 services that is most of a scrape's cost, so probe series are written here instead.
    """

    def __init__(self) -> None:
        # Per family: the blocks (LABELS standing for the label set), and each one's label set.
        self._families: dict[str, tuple[list[str], list[str]]] = {}
        self._kinds: dict[str, str] = {}

    def family(self, family: str, kind: str) -> tuple[list[str], list[str]]:
        """The blocks of a family and their label sets, in the order families were first used."""
        lines = self._families.get(family)
        if lines is None:
            lines = self._families[family] = ([], [])
            self._kinds[family] = kind
        return lines

    def render(self) -> bytes:
        return b"".join(self.chunks())

    def chunks(self, size: int = 1000, openmetrics: bool = False) -> Iterator[bytes]:
        """The exposition in pieces of at most ``size`` blocks, a family's header before its first.

        At 10,000 services one family (the latency buckets) is megabytes; joining and encoding it
        in one go would hold the event loop for tens of milliseconds. With ``openmetrics`` the
        headers name a counter family without its ``_total``; the samples are the same.
        """
        for family, (blocks, label_sets) in self._families.items():
            head = _header(family, self._kinds[family], openmetrics) + "\n"
            for start in range(0, len(blocks), size):
                end = start + size
                sets = label_sets[start:end]
                if sets.count(LABELS) == len(sets):  # all written out in full (by identity, fast)
                    lines: Iterable[str] = blocks[start:end]
                else:
                    lines = map(str.replace, blocks[start:end], repeat(LABELS), sets)
                yield (head + "\n".join(lines) + "\n").encode()
                head = ""

    def extend(self, packed: Packed) -> None:
        """Add one service's (or one result's) blocks, as ``pack`` keeps them."""
        names, texts, labels = packed
        for name, text in zip(names, texts, strict=True):
            blocks, label_sets = self.family(name, _FAMILY_KINDS[name])
            blocks.append(text)
            label_sets.append(labels)


# The kind of every family packed so far; a family name always has the same kind.
_FAMILY_KINDS: dict[str, str] = {}
# Stands for a service's label set in the lines the collector keeps between scrapes: the set
# (service, group, location) is about half of a service's text, 45 times over at 40 series, so
# it is kept once per service and written in as the exposition is sent. NUL, because nothing a
# probe or a config writes holds one in practice; a service where one shows up anyway is kept
# written out in full (see ServiceCollector._pack_service).
LABELS = "\x00"
# One service's rendered blocks: the family names in first-use order, each family's text, and
# the label set that LABELS stands for in them (LABELS itself when the texts are written out in
# full). The names tuple is shared by every service with the same families.
Packed = tuple[tuple[str, ...], tuple[str, ...], str]
# The distinct family lists packed so far: a handful (one per kind and settings), held once.
_LAYOUTS: dict[tuple[str, ...], tuple[str, ...]] = {}
MAX_LAYOUTS = 10_000


def pack(blocks: list[tuple[str, str, str]], labels: str = LABELS) -> Packed:
    """One service's blocks as (family names, texts, label set), a family's blocks joined, in first-use order.

    This is what the collector keeps for every service from one scrape to the next, so it is
    kept small: tuples (a dict of twenty families costs about 650 bytes more), the names shared
    among services. Tuples of strings are not tracked by the garbage collector once it has
    seen them, so 10,000 of them add nothing to its full collections. (Texts are kept as str:
    encoding twenty small blocks one by one costs more CPU than encoding each joined chunk.)
    """
    texts: dict[str, str] = {}
    for name, kind, text in blocks:
        _FAMILY_KINDS.setdefault(name, kind)
        before = texts.get(name)
        texts[name] = text if before is None else before + "\n" + text
    names = tuple(texts)
    shared = _LAYOUTS.get(names)
    if shared is None:
        if len(_LAYOUTS) >= MAX_LAYOUTS:
            _LAYOUTS.clear()
        shared = _LAYOUTS[names] = names
    return shared, tuple(texts.values()), labels


@functools.cache
def _header(family: str, kind: str, openmetrics: bool = False) -> str:
    shown = family + "_total" if kind == "counter" and not openmetrics else family
    return f"# HELP {shown} {metric_help(family)}\n# TYPE {shown} {kind}"


@functools.cache
def _le_labels(bounds: tuple[float, ...]) -> tuple[str, ...]:
    return (*(f'le="{format_value(b)}"' for b in bounds), 'le="+Inf"')


def result_blocks(
    result: ProbeResult, prober: str, labels: str, quiet: frozenset[str] = frozenset()
) -> list[tuple[str, str, str]]:
    """The values of one probe result, as blackbox_exporter names them, as exposition blocks.

    Samples named in ``quiet`` are left out while they are 0 (see ProberKind.quiet_gauges).
    """
    sep = "," if labels else ""
    # blackbox's /probe output has no label set at all on these: "probe_success 1".
    braced = f"{{{labels}}}" if labels else ""
    success = "1.0" if result.success else "0.0"
    blocks = [
        ("probe_success", "gauge", f"probe_success{braced} {success}"),
        ("probe_duration_seconds", "gauge", f"probe_duration_seconds{braced} {result.duration!r}"),
    ]
    kind = PROBERS.get(prober)
    if kind is not None and kind.phase_metric:
        metric = kind.phase_metric
        phases = result.phases
        lines = "\n".join(
            f'{metric}{{{labels}{sep}phase="{escape(phase)}"}} {float(phases.get(phase, 0.0))!r}'
            for phase in dict.fromkeys((*kind.phases, *phases))
        )
        blocks.append((metric, "gauge", lines))
    for sample in result.samples:
        if sample.name in quiet and sample.value == 0:
            continue
        sample_labels = f"{labels}{sep}{label_text(dict(sample.labels))}" if sample.labels else labels
        series = f"{sample.name}{{{sample_labels}}}" if sample_labels else sample.name
        line = f"{series} {format_value(sample.value)}"
        blocks.append((sample.name, "gauge", line))
    return blocks


def render_result(result: ProbeResult, prober: str, extra: tuple[Sample, ...] = ()) -> bytes:
    """One result in blackbox's /probe output: no service labels; ``extra`` samples after its own.

    The same text as ``result_blocks`` packed into an ``Exposition``, written in one pass: this
    runs for every /probe request, where that general path cost twice as much.
    """
    families: dict[str, list[str]] = {
        "probe_success": ["probe_success 1.0" if result.success else "probe_success 0.0"],
        "probe_duration_seconds": [f"probe_duration_seconds {result.duration!r}"],
    }
    kind = PROBERS.get(prober)
    if kind is not None and kind.phase_metric:
        metric = kind.phase_metric
        phases = result.phases
        families[metric] = [
            f'{metric}{{phase="{escape(phase)}"}} {float(phases.get(phase, 0.0))!r}'
            for phase in dict.fromkeys((*kind.phases, *phases))
        ]
    for sample in (*result.samples, *extra) if extra else result.samples:
        name = sample.name
        if sample.labels:
            line = f"{name}{{{label_text(dict(sample.labels))}}} {format_value(sample.value)}"
        else:
            line = f"{name} {format_value(sample.value)}"
        lines = families.get(name)
        if lines is None:
            families[name] = [line]
        else:
            lines.append(line)
    parts = []
    for name, lines in families.items():
        parts.append(_header(name, _FAMILY_KINDS.setdefault(name, "gauge")))
        parts.extend(lines)
    parts.append("")
    return "\n".join(parts).encode()


_REASON_LABELS = tuple((reason, f'reason="{reason.value}"') for reason in FailureReason)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None  # not glibc (musl, macOS): nothing to call
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    made: Callable[[int], int] = trim
    return made


def give_back_memory() -> None:
    """Hand the heap pages a scrape freed back to the system.

    A scrape at 10,000 services builds and drops tens of megabytes of lines and chunks; glibc's
    allocator keeps the freed pages inside its heap, so the process's RSS stays about 10 MB
    higher than what it uses. malloc_trim(0) returns them (about a millisecond at that size).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class ServiceCollector:
    """Reads the store at scrape time and writes every probe metric of every service.

    Each service's lines are kept until its next result, so a scrape only formats services
    that were probed since the last one (and several Prometheus servers scraping the same
    exporter cost little more than one). Only where that can pay: a service probed more often
    than scrapes come (10 s probes, one scrape every 15 s) has a new result at every scrape, so
    its lines (about 2 KB) are not kept. "How often scrapes come" is the shortest of the last
    SCRAPE_GAPS gaps between scrapes, so two Prometheus servers scraping in turn count as one
    scrape every few seconds.
    """

    # How many of the latest gaps between scrapes decide which services' lines are worth keeping.
    SCRAPE_GAPS = 3

    # Services rendered between two yields to the event loop, so a large scrape never holds
    # up probing for long.
    CHUNK = 100

    def __init__(self, store: ResultStore, location: str) -> None:
        self.store = store
        self.location = location
        self._cache: dict[str, tuple[int, Service, str, bool, Packed]] = {}
        # Maintenance changes with the clock, not with results: it is part of the cache key.
        self.maintenance = MaintenanceBoard()
        self.wall: Callable[[], float] = time.time
        self._scraped_at: float | None = None
        self._gaps: deque[float] = deque(maxlen=self.SCRAPE_GAPS)

    def forget(self, names: Iterable[str]) -> None:
        """Drop the rendered lines of changed and removed services (see exporter.reloadplan)."""
        for name in names:
            self._cache.pop(name, None)

    async def render(self) -> bytes:
        return b"".join([chunk async for chunk in self.stream()])

    async def stream(self, openmetrics: bool = False) -> AsyncIterator[bytes]:
        """The probe series, family by family, yielding to the event loop as it goes."""
        out = Exposition()
        cache: dict[str, tuple[int, Service, str, bool, Packed]] = {}
        now = self.wall()
        keep_above = self._scrape_gap(now)
        for index, state in enumerate(self.store):
            if index % self.CHUNK == self.CHUNK - 1:
                await asyncio.sleep(0)
            name = state.service.name
            cached = self._cache.get(name)
            inside = self.in_maintenance(state.service, now)
            keep = state.service.interval > keep_above
            if (
                cached is not None
                and cached[0] == state.runs
                and cached[1] is state.service
                and cached[2] == self.location
                and cached[3] == inside
            ):
                blocks = cached[4]
            else:
                # Only lines that are kept are worth packing small (see _pack_service).
                if keep:
                    blocks = self._pack_service(state, inside)
                else:
                    blocks = pack(self._service_blocks(state, inside))
            if keep:
                cache[name] = (state.runs, state.service, self.location, inside, blocks)
            out.extend(blocks)
        self._cache = cache
        for chunk in out.chunks(openmetrics=openmetrics):
            yield chunk
            await asyncio.sleep(0)
        del out
        give_back_memory()

    def _scrape_gap(self, now: float) -> float:
        """The shortest recent gap between scrapes, counting this one; 0 until there are two."""
        if self._scraped_at is not None and now >= self._scraped_at:
            self._gaps.append(now - self._scraped_at)
        self._scraped_at = now
        return min(self._gaps, default=0.0)

    def in_maintenance(self, service: Service, now: float) -> bool:
        board = self.maintenance
        return bool(board.open_windows(now)) and board.active(service.name, service.group, now) is not None

    def _pack_service(self, state: ServiceState, inside: bool) -> Packed:
        """A service's blocks as the cache keeps them: LABELS in place of its label set.

        Every line but probe_service_info's holds the label set once; a NUL anywhere else (a
        label value from the config or from a probe that holds one) would be taken for it, so
        such a service is kept written out in full.
        """
        service = state.service
        labels = label_text({"service": service.name, "group": service.group, "location": self.location})
        packed = pack(self._service_blocks(state, inside, LABELS), labels)
        whole = "\n".join(packed[1])
        if whole.count(LABELS) == whole.count("\n"):  # one per line, but probe_service_info's
            return packed
        return pack(self._service_blocks(state, inside))

    def _service_blocks(
        self, state: ServiceState, inside: bool | None = None, labels: str | None = None
    ) -> list[tuple[str, str, str]]:
        """The service's blocks, its label set written as ``labels`` when given (see _pack_service)."""
        # Written out line by line: this runs for every service that was probed since the last
        # scrape, so it avoids the general-purpose helpers' per-sample overhead.
        service = state.service
        base = {"service": service.name, "group": service.group, "location": self.location}
        if labels is None:
            labels = label_text(base)
        blocks: list[tuple[str, str, str]] = []
        gauge = blocks.append

        def single(family: str, value: float) -> None:
            gauge((family, "gauge", f"{family}{{{labels}}} {value!r}"))

        info = {
            **service.labels,
            **base,
            "target": redact_url(service.target),
            "prober": service.module.prober,
            "module": service.module_name,
        }
        gauge(("probe_service_info", "gauge", f"probe_service_info{{{label_text(info)}}} 1.0"))
        single("probe_interval_seconds", service.interval)
        objectives = service.objectives
        if objectives.availability is not None:
            single("probe_objective_availability_ratio", float(objectives.availability))
        if objectives.latency is not None:
            single("probe_objective_latency_seconds", float(objectives.latency))
        kind = PROBERS.get(service.module.prober)
        reasons = kind.reasons(service.module) if kind is not None else frozenset(FailureReason)
        last = state.last
        if last is not None:
            quiet = kind.quiet_gauges(service.module) if kind is not None else frozenset()
            blocks.extend(result_blocks(last, service.module.prober, labels, quiet))
            single("probe_last_run_timestamp_seconds", last.started_at + last.duration)
        if state.last_success is not None:
            single("probe_last_success_timestamp_seconds", state.last_success)
        single("probe_degraded", 0.0 if degraded_reason(service, last) is None else 1.0)
        if inside is None:
            inside = self.in_maintenance(service, self.wall())
        single("probe_maintenance", 1.0 if inside else 0.0)
        gauge(("probe_runs", "counter", f"probe_runs_total{{{labels}}} {state.runs}"))
        counts = state.failures
        gauge(
            (
                "probe_failures",
                "counter",
                "\n".join(
                    f"probe_failures_total{{{labels},{reason_label}}} {counts[reason]}"
                    for reason, reason_label in _REASON_LABELS
                    if reason in reasons or counts[reason]
                ),
            )
        )
        hist = state.latency
        running = 0
        lines = []
        for le, count in zip(_le_labels(hist.bounds), hist.counts, strict=True):
            running += count
            lines.append(f"probe_latency_seconds_bucket{{{labels},{le}}} {running}")
        lines.append(f"probe_latency_seconds_sum{{{labels}}} {hist.total!r}")
        lines.append(f"probe_latency_seconds_count{{{labels}}} {hist.count}")
        gauge(("probe_latency_seconds", "histogram", "\n".join(lines)))
        if state.stalled_runs:
            gauge(
                (
                    "probe_loop_stalled",
                    "counter",
                    f"probe_loop_stalled_total{{{labels}}} {state.stalled_runs}",
                )
            )
        if service.module.retries:
            gauge(("probe_attempts", "counter", f"probe_attempts_total{{{labels}}} {state.attempts}"))
            attempts = state.attempt_failures
            gauge(
                (
                    "probe_attempt_failures",
                    "counter",
                    "\n".join(
                        f"probe_attempt_failures_total{{{labels},{reason_label}}} {attempts[reason]}"
                        for reason, reason_label in _REASON_LABELS
                        if reason in reasons or attempts[reason]
                    ),
                )
            )
        return blocks


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

    @property
    def loop_lag(self) -> Histogram: ...

    @property
    def reruns_after_stall(self) -> int: ...

    @property
    def invalid_service_files(self) -> int: ...

    @property
    def push_rejected(self) -> dict[str, int]: ...

    @property
    def worker_restarts(self) -> int: ...

    @property
    def worker_services(self) -> dict[str, int]: ...

    @property
    def services(self) -> list[Service]: ...


class SelfCollector(Collector):
    """The exporter's own health: build, reload status, probes in flight, schedule lag."""

    def __init__(self, status: SelfStatus) -> None:
        self.status = status

    def collect(self) -> Iterable[Metric]:
        families = _Families()
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
        families.add("outage_exporter_services", "gauge", {}, len(self.status.services))
        families.add("outage_exporter_service_files_invalid", "gauge", {}, self.status.invalid_service_files)
        for reason, count in self.status.push_rejected.items():
            families.add("outage_exporter_push_rejected", "counter", {"reason": reason}, count, "_total")
        families.add_histogram("outage_exporter_schedule_lag_seconds", self.status.schedule_lag)
        families.add_histogram("outage_exporter_event_loop_lag_seconds", self.status.loop_lag)
        families.add(
            "outage_exporter_probes_rerun_after_stall",
            "counter",
            {},
            self.status.reruns_after_stall,
            "_total",
        )
        families.add("outage_exporter_worker_restarts", "counter", {}, self.status.worker_restarts, "_total")
        for worker, count in self.status.worker_services.items():
            families.add("outage_exporter_worker_services", "gauge", {"worker": worker}, count)
        return families


class _Families:
    """prometheus_client metric families in order of first use."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def add(self, name: str, kind: str, labels: Mapping[str, str], value: float, suffix: str = "") -> None:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = Metric(name, metric_help(name), kind)
        family.add_sample(name + suffix, dict(labels), value)

    def add_histogram(self, name: str, histogram: Histogram) -> None:
        for bound, count in histogram.cumulative():
            self.add(name, "histogram", {"le": format_value(bound)}, count, "_bucket")
        self.add(name, "histogram", {}, histogram.total, "_sum")
        self.add(name, "histogram", {}, histogram.count, "_count")

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())


HELP.update(
    {
        "outage_exporter_build_info": "Version of the exporter, always 1.",
        "outage_exporter_config_last_reload_successful": "1 if the last config reload succeeded.",
        "outage_exporter_config_last_reload_success_timestamp_seconds": "When the config was last loaded.",
        "outage_exporter_probes_in_flight": "Probes running now.",
        "outage_exporter_schedule_lag_seconds": "How late scheduled probes started.",
        "outage_exporter_event_loop_lag_seconds": (
            "How late a 100 ms timer fired on the exporter's event loop: time the loop lost to other work."
        ),
        "outage_exporter_probes_rerun_after_stall": (
            "Probes that timed out while the event loop stalled and were run again at once."
        ),
        "outage_exporter_push_rejected": "Pushes refused: unknown service, missing or wrong token.",
        "outage_exporter_services": "Services this exporter probes (its shard's share).",
        "outage_exporter_service_files_invalid": "Discovered service files that failed to load.",
        "outage_exporter_worker_restarts": "Probe worker processes that exited and were started again.",
        "outage_exporter_worker_services": (
            "Services each probing process runs, with --workers above 1; push services run in the front."
        ),
    }
)
