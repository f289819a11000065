"""Tests for the collector: exposition format, escaping, and per-service reuse between scrapes."""

from __future__ import annotations

import dataclasses
import platform
from types import MappingProxyType

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.collector import (
    LABELS,
    Exposition,
    ServiceCollector,
    _malloc_trim,
    pack,
    render_result,
    result_blocks,
)
from exporter.config import parse_config
from exporter.result import FailureReason, ProbeResult, Sample, Trace
from exporter.store import ResultStore
from tests.metrics_util import labelsets, parse, value

CONFIG = """
services:
  - {name: api, group: 'odd "group"\\\\x', target: 'http://127.0.0.1:1/', prober: http,
     labels: {team: core}, objectives: {latency: 300ms}}
  - {name: db, target: '127.0.0.1:5432', prober: tcp}
"""


def store_with(text: str = CONFIG) -> ResultStore:
    store = ResultStore()
    store.sync(parse_config(text).services)
    return store


async def test_output_parses_and_escapes_labels() -> None:
    """Every family parses with Prometheus' parser, and label values with quotes survive."""
    store = store_with()
    trace = Trace()
    trace.add_phase("connect", 0.25)
    trace.set("probe_tls_version_info", 1, (("version", "TLS 1.3"),))
    store.record("api", trace.succeed())
    text = (await ServiceCollector(store, "eu").render()).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["probe_runs"].type == "counter"
    assert families["probe_latency_seconds"].type == "histogram"
    series = parse(text)
    # YAML's single quotes keep both backslashes.
    labels = {"service": "api", "group": 'odd "group"\\\\x', "location": "eu"}
    assert value(series, "probe_http_duration_seconds", phase="connect", **labels) == 0.25
    assert value(series, "probe_tls_version_info", version="TLS 1.3", **labels) == 1
    assert value(series, "probe_latency_seconds_bucket", le="0.3", **labels) == 1
    assert value(series, "probe_runs_total", service="db") == 0
    assert [lb["service"] for lb in labelsets(series, "probe_service_info")] == ["api", "db"]


async def test_unchanged_services_are_reused_and_changes_show() -> None:
    """A second scrape reuses unchanged services; new results, configs and locations are rendered."""
    store = store_with()
    collector = ServiceCollector(store, "eu")
    first = await collector.render()
    assert await collector.render() == first
    store.record("db", Trace().fail(FailureReason.CONNECT, "refused"))
    series = parse((await collector.render()).decode())
    assert value(series, "probe_failures_total", service="db", reason="connect") == 1
    assert value(series, "probe_success", service="db") == 0
    store.sync(parse_config(CONFIG.replace("team: core", "team: edge")).services)
    collector.location = "us"
    series = parse((await collector.render()).decode())
    info = {lb["service"]: lb for lb in labelsets(series, "probe_service_info")}
    assert info["api"]["team"] == "edge"
    assert {lb["location"] for lb in labelsets(series, "probe_runs_total")} == {"us"}


async def test_empty_store_renders_nothing() -> None:
    """No services means no probe series at all."""
    assert await ServiceCollector(ResultStore(), "eu").render() == b""


def test_probe_output_has_no_labels() -> None:
    """blackbox-style output carries only the probe's own labels."""
    trace = Trace()
    trace.set("probe_http_status_code", 200)
    text = render_result(trace.succeed(), "http").decode()
    assert "probe_success 1.0\n" in text and "{}" not in text
    series = parse(text)
    assert labelsets(series, "probe_http_status_code") == [{}]
    assert {lb["phase"] for lb in labelsets(series, "probe_http_duration_seconds")} == {
        "resolve",
        "connect",
        "tls",
        "processing",
        "transfer",
    }


async def test_large_families_are_sent_in_pieces_that_join_to_the_same_text() -> None:
    """Split into small pieces, the exposition is byte for byte what one piece per family gives."""
    lines = [f"  - {{name: s{i}, target: '127.0.0.1:{i + 1}', prober: tcp}}" for i in range(7)]
    store = store_with("services:\n" + "\n".join(lines))
    for i in range(7):
        store.record(f"s{i}", Trace().succeed() if i % 2 else Trace().fail(FailureReason.CONNECT, "no"))
    collector = ServiceCollector(store, "eu")
    await collector.render()  # fills the per-service cache the exposition is built from
    out = Exposition()
    for state in store:
        out.extend(pack(collector._service_blocks(state)))
    whole = list(out.chunks(size=10**6))
    pieces = list(out.chunks(size=3))
    assert len(pieces) > len(whole)
    assert b"".join(pieces) == b"".join(whole) == await collector.render()
    families = {f.name: f for f in text_string_to_metric_families(b"".join(pieces).decode())}
    assert len(families["probe_runs"].samples) == 7
    assert sum(s.value for s in families["probe_failures"].samples if s.labels["reason"] == "connect") == 4
    assert b"".join(pieces).count(b"# TYPE probe_runs_total counter") == 1


def test_pack_keeps_family_order_and_merges_repeated_families() -> None:
    """Packing keeps families in first-use order, joins a family's lines written apart, shares the names."""
    packed = pack([("a", "gauge", "a 1"), ("b", "counter", "b_total 2"), ("a", "gauge", "a 3")])
    assert packed == (("a", "b"), ("a 1\na 3", "b_total 2"), LABELS)
    other = pack([("a", "gauge", "a 5"), ("b", "counter", "b_total 6")], 'x="1"')
    assert other == (("a", "b"), ("a 5", "b_total 6"), 'x="1"')
    assert other[0] is packed[0]  # one names tuple for every service with these families


LEAN_CONFIG = """
services:
  - {name: plain, target: 'http://127.0.0.1:1/', prober: http}
  - {name: checked, target: 'http://127.0.0.1:1/', prober: http,
     http: {fail_if_header_matches: [{header: Server, regexp: broken}]}}
  - {name: db, target: '127.0.0.1:5432', prober: tcp, retries: 1}
"""


def reasons(series: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, service: str) -> set[str]:
    return {lb["reason"] for lb in labelsets(series, name) if lb["service"] == service}


async def test_counters_and_gauges_that_cannot_move_are_left_out() -> None:
    """Reasons a service cannot fail with and a regex flag without regexes are not written while 0."""
    store = store_with(LEAN_CONFIG)
    for name in ("plain", "checked"):
        trace = Trace()
        trace.set("probe_failed_due_to_regex", 0)
        store.record(name, trace.succeed())
    store.record("db", Trace().succeed())
    series = parse((await ServiceCollector(store, "eu").render()).decode())
    every = {reason.value for reason in FailureReason}
    assert reasons(series, "probe_failures_total", "checked") == every
    assert reasons(series, "probe_failures_total", "plain") == every - {"header"}
    network = {"dns", "connect", "tls", "timeout", "protocol", "other"}
    assert reasons(series, "probe_failures_total", "db") == network
    assert reasons(series, "probe_attempt_failures_total", "db") == network
    assert value(series, "probe_failed_due_to_regex", service="checked") == 0
    assert [lb["service"] for lb in labelsets(series, "probe_failed_due_to_regex")] == ["checked"]
    assert value(series, "probe_failures_total", service="db", reason="timeout") == 0


async def test_a_reason_left_out_still_shows_once_counted() -> None:
    """A reason outside a kind's usual set is written as soon as it has been counted."""
    store = store_with(LEAN_CONFIG)
    store.record("db", Trace().fail(FailureReason.BODY, "odd"))
    store.record("plain", Trace().fail(FailureReason.HEADER, "odd"))
    series = parse((await ServiceCollector(store, "eu").render()).decode())
    assert value(series, "probe_failures_total", service="db", reason="body") == 1
    assert value(series, "probe_failures_total", service="plain", reason="header") == 1


def test_probe_output_keeps_every_blackbox_gauge() -> None:
    """/probe writes probe_failed_due_to_regex even without regexes, as blackbox does."""
    trace = Trace()
    trace.set("probe_failed_due_to_regex", 0)
    series = parse(render_result(trace.succeed(), "http").decode())
    assert value(series, "probe_failed_due_to_regex") == 0


def test_probe_output_is_the_general_exposition_written_in_one_pass() -> None:
    """render_result writes byte for byte what result_blocks packed into an Exposition gives."""
    trace = Trace()
    trace.set("probe_http_status_code", 200)
    trace.set("probe_ssl_earliest_cert_expiry", float("inf"))
    trace.set("probe_failed_due_to_regex", -0.0)
    results = [
        trace.succeed(),
        Trace().fail(FailureReason.CONNECT, "refused"),
        ProbeResult(
            success=True,
            duration=0.25,
            started_at=1.0,
            phases=MappingProxyType({"connect": 0.1, 'odd "phase"\\': 0.2}),
            samples=(
                Sample("probe_tls_version_info", 1.0, (("version", "TLS 1.3"),)),
                Sample("probe_http_version", 1.1),
                Sample("probe_tls_version_info", 0.0, (("version", 'a"b\\c\nd'),)),
                Sample("probe_dns_lookup_time_seconds", float("nan")),
            ),
        ),
    ]
    extra = (Sample("probe_timeout_seconds", 4.5), Sample("probe_http_version", 2.0))
    for result in results:
        for prober in ("http", "tcp", "dns", "push", "no-such-prober"):
            for more in ((), extra):
                out = Exposition()
                whole = dataclasses.replace(result, samples=(*result.samples, *more))
                out.extend(pack(result_blocks(whole, prober, "")))
                assert render_result(result, prober, more) == out.render(), (prober, result)


async def test_a_label_value_holding_a_nul_is_written_as_it_is() -> None:
    """The cache's stand-in for a service's label set (NUL) never replaces a NUL a probe reported."""
    store = store_with(
        "services:\n"
        "  - {name: web, target: 'http://127.0.0.1:1/', prober: http}\n"
        "  - {name: db, target: '127.0.0.1:1', prober: tcp}\n"
    )
    trace = Trace()
    trace.set("probe_ssl_last_chain_info", 1, (("issuer", "CN=odd\x00name"),))
    store.record("web", trace.succeed())
    store.record("db", Trace().succeed())
    collector = ServiceCollector(store, "eu")
    body = await collector.render()
    plain = Exposition()
    for state in store:
        plain.extend(pack(collector._service_blocks(state)))
    assert body == plain.render()
    line = b'probe_ssl_last_chain_info{service="web",group="default",location="eu",issuer="CN=odd\x00name"}'
    assert line in body
    assert body.count(b"\x00") == 1
    assert await collector.render() == body  # from the cache


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_a_scrape_can_hand_freed_heap_pages_back() -> None:
    """On glibc the collector finds malloc_trim, which it calls after each full scrape."""
    trim = _malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)


async def test_lines_are_kept_only_for_services_probed_less_often_than_scraped() -> None:
    """Between scrapes 10 s apart a 1 s service always has a new result: its lines are not kept."""
    store = store_with(
        "services:\n"
        "  - {name: fast, target: '127.0.0.1:1', prober: tcp, interval: 1s, timeout: 500ms}\n"
        "  - {name: slow, target: '127.0.0.1:2', prober: tcp, interval: 60s}\n"
    )
    store.record("fast", Trace().succeed())
    store.record("slow", Trace().succeed())
    collector = ServiceCollector(store, "eu")
    now = [1000.0]
    collector.wall = lambda: now[0]

    async def render_at(at: float) -> bytes:
        now[0] = at
        return await collector.render()

    first = await render_at(1000.0)
    assert set(collector._cache) == {"fast", "slow"}  # no gap seen yet: both kept
    assert await render_at(1010.0) == first
    assert set(collector._cache) == {"slow"}  # 10 s apart: only the 60 s service pays
    store.record("fast", Trace().fail(FailureReason.CONNECT, "refused"))
    third = await render_at(1020.0)
    assert value(parse(third.decode()), "probe_runs_total", service="fast") == 2
    assert set(collector._cache) == {"slow"}
    # A second scraper half a second behind: the shortest recent gap is what counts.
    assert await render_at(1020.5) == third
    assert set(collector._cache) == {"fast", "slow"}
    plain = Exposition()
    for state in store:
        plain.extend(pack(collector._service_blocks(state)))
    assert await render_at(1021.0) == plain.render() == third
