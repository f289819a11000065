"""Tests for /metrics negotiation: gzip and OpenMetrics, read by real HTTP clients."""

from __future__ import annotations

import gzip
import zlib

import aiohttp
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from pytest_aiohttp import AiohttpServer

from exporter import exposition
from exporter.config import parse_config
from exporter.exposition import negotiate
from exporter.runner import run_probe
from exporter.web import EXPORTER, make_app
from tests.conftest import TargetState
from tests.metrics_util import Series, parse, value

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def config_text(base: str, services: int) -> str:
    lines = [
        "global: {interval: 1h, timeout: 2s, location: loc}",
        "modules:",
        "  http_2xx: {prober: http}",
        "services:",
    ]
    lines += [
        f"  - {{name: svc-{i}, group: g{i % 3}, target: '{base}/ok', module: http_2xx}}"
        for i in range(services)
    ]
    # One failing service, so a counter and the failure reasons hold something other than 0.
    lines.append(f"  - {{name: broken, group: g0, target: '{base}/status/500', module: http_2xx}}")
    return "\n".join(lines) + "\n"


@pytest.fixture
async def exporter_url(http_target: tuple[str, TargetState], aiohttp_server: AiohttpServer) -> str:
    """An exporter app on a real socket whose services each hold a result of a real probe."""
    base, _ = http_target
    config = parse_config(config_text(base, 30))
    app = make_app(config, schedule=False)
    exporter = app[EXPORTER]
    for service in exporter.services:
        for _ in range(2 if service.name == "broken" else 1):
            result = await run_probe(service.target, service.module, service.timeout)
            exporter.store.record(service.name, result)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}"


async def get(url: str, headers: dict[str, str]) -> tuple[aiohttp.ClientResponse, bytes]:
    # auto_decompress off: the test sees the bytes as sent and inflates them itself; and the
    # client's own Accept-Encoding is left out, so only what the test asks for is sent.
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(url + "/metrics", headers=headers, skip_auto_headers=["Accept-Encoding"]) as response,
    ):
        return response, await response.read()


def openmetrics_series(text: str) -> Series:
    out: Series = {}
    for family in parse_openmetrics(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


async def test_gzip_when_accepted_carries_the_same_samples(exporter_url: str) -> None:
    """Accept-Encoding: gzip gives a gzip body that inflates to the very samples of a plain scrape."""
    plain_response, plain = await get(exporter_url, {"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain_response.headers
    zipped_response, zipped = await get(exporter_url, {"Accept-Encoding": "gzip, deflate"})
    assert zipped_response.headers["Content-Encoding"] == "gzip"
    assert zipped_response.headers["Content-Type"] == exposition.TEXT_FORMAT
    assert zipped[:2] == b"\x1f\x8b"
    assert len(zipped) < len(plain) / 4
    plain_series = parse(plain.decode())
    zipped_series = parse(gzip.decompress(zipped).decode())
    # Only the self metrics may move between the two scrapes.
    probe = {key: v for key, v in plain_series.items() if key[0].startswith("probe_")}
    assert probe == {key: v for key, v in zipped_series.items() if key[0].startswith("probe_")}
    assert value(zipped_series, "probe_runs_total", service="broken") == 2
    assert value(zipped_series, "probe_failures_total", service="broken", reason="http_status") == 2
    assert value(zipped_series, "probe_success", service="svc-7") == 1


async def test_gzip_body_is_one_member_ending_cleanly(exporter_url: str) -> None:
    """The gzip body is exactly one complete member: nothing after its end, nothing truncated."""
    _, zipped = await get(exporter_url, {"Accept-Encoding": "gzip"})
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    text = inflater.decompress(zipped) + inflater.flush()
    assert inflater.eof
    assert inflater.unused_data == b""
    assert text.endswith(b"\n")


async def test_openmetrics_for_prometheus_accept_header(exporter_url: str) -> None:
    """Prometheus' Accept header gets OpenMetrics that its parser accepts, values as in the text format."""
    response, body = await get(exporter_url, {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"})
    assert response.headers["Content-Type"] == exposition.OPENMETRICS_FORMAT
    text = gzip.decompress(body).decode()
    assert text.endswith("# EOF\n")
    assert text.count("# EOF") == 1
    assert "# TYPE probe_runs counter\n" in text
    series = openmetrics_series(text)
    _, plain = await get(exporter_url, {})
    plain_series = parse(plain.decode())
    for key, expected in plain_series.items():
        if key[0].startswith("probe_"):
            assert series[key] == expected, key
    assert value(series, "probe_failures_total", service="broken", reason="http_status") == 2
    assert value(series, "probe_latency_seconds_count", service="svc-3") == 1
    assert value(series, "outage_exporter_config_last_reload_successful") == 1


async def test_plain_text_without_accept_headers(exporter_url: str) -> None:
    """A scraper that asks for nothing gets the text format, uncompressed, with counters named _total."""
    response, body = await get(exporter_url, {})
    assert response.headers["Content-Type"] == exposition.TEXT_FORMAT
    assert "Content-Encoding" not in response.headers
    text = body.decode()
    assert "# TYPE probe_runs_total counter\n" in text
    assert "# EOF" not in text
    assert value(parse(text), "probe_runs_total", service="svc-0") == 1


@pytest.mark.parametrize(
    ("accept", "accept_encoding", "openmetrics", "gzipped"),
    [
        (PROMETHEUS_ACCEPT, "gzip", True, True),
        ("text/plain;version=0.0.4", "gzip;q=0", False, False),
        ("application/openmetrics-text;q=0.2, text/plain;q=0.9", "br, GZIP;q=0.5", False, True),
        ("application/openmetrics-text;q=0", "identity", False, False),
        ("*/*", "deflate", False, False),
        ("", "", False, False),
        ("application/openmetrics-text", "gzip;q=bogus", True, False),
    ],
)
def test_negotiate(accept: str, accept_encoding: str, openmetrics: bool, gzipped: bool) -> None:
    """The format and encoding follow the weights of the scraper's Accept headers."""
    chosen = negotiate(accept, accept_encoding)
    assert (chosen.openmetrics, chosen.gzip) == (openmetrics, gzipped)
