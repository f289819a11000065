"""Tests of per-target probe logs: /logs?target=&module= and ?service=, their bounds and redaction."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from exporter import probelogs
from exporter.collector import render_result
from exporter.config import parse_config
from exporter.probelogs import Entry, ProbeLogBook
from exporter.result import FailureReason, ProbeResult, Trace
from exporter.web import EXPORTER, make_app
from tests.conftest import TargetState, wait_for

Client = TestClient[object, object]
ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient) -> ClientFactory:
    async def make(text: str, schedule: bool = False) -> Client:
        return await aiohttp_client(make_app(parse_config(text), schedule=schedule))

    return make


def config(base: str) -> str:
    return f"""
global: {{interval: 2s, timeout: 1s}}
probe_allowlist: [127.0.0.0/8]
modules:
  http_2xx: {{prober: http, timeout: 1s}}
  http_post: {{prober: http, timeout: 1s, http: {{method: POST, valid_status_codes: [405]}}}}
services:
  - name: site
    group: g
    target: {base}/ok
    module: http_2xx
"""


async def get_text(client: Client, path: str, params: dict[str, str], status: int = 200) -> str:
    response = await client.get(path, params=params)
    text = await response.text()
    assert response.status == status, text
    return text


async def test_logs_of_the_latest_probe_of_a_target(
    make_client: ClientFactory, http_target: tuple[str, TargetState]
) -> None:
    """After a /probe, /logs?target=&module= tells its start, phases, verdict and metrics."""
    base, _ = http_target
    client = await make_client(config(base))
    await get_text(client, "/probe", {"target": base + "/ok", "module": "http_2xx"})
    text = await get_text(client, "/logs", {"target": base + "/ok", "module": "http_2xx"})
    assert text.startswith("Logs for the probe:\n")
    assert (
        'msg="Beginning probe" probe=http module=http_2xx target=' + base + "/ok timeout_seconds=1.0" in text
    )
    assert 'msg="Phase done" phase=connect duration_seconds=' in text
    assert 'level=info msg="Probe succeeded" duration_seconds=' in text
    metrics = text.split("Metrics that would have been returned:\n", 1)[1]
    assert "probe_success 1" in metrics and "probe_http_status_code 200" in metrics


async def test_failed_probe_logs_reason_and_message(
    make_client: ClientFactory, http_target: tuple[str, TargetState]
) -> None:
    """A failure's account ends in an error line with its reason and message."""
    base, _ = http_target
    client = await make_client(config(base))
    await get_text(client, "/probe", {"target": base + "/status/503", "module": "http_2xx"})
    text = await get_text(client, "/logs", {"target": base + "/status/503", "module": "http_2xx"})
    assert 'level=error msg="Probe failed" reason=http_status err="status code 503 is not 2xx"' in text
    assert "probe_success 0" in text


async def test_ring_keeps_the_last_probes_newest_first(
    make_client: ClientFactory, http_target: tuple[str, TargetState]
) -> None:
    """Five probes of one pair keep three accounts, the latest first; other modules apart."""
    base, state = http_target
    client = await make_client(config(base))
    target = base + "/flip"
    for status in (200, 500, 200, 500, 200):
        state.status = status
        await get_text(client, "/probe", {"target": target, "module": "http_2xx"})
    state.status = 405
    await get_text(client, "/probe", {"target": target, "module": "http_post"})
    text = await get_text(client, "/logs", {"target": target, "module": "http_2xx"})
    headings = [line for line in text.splitlines() if line.startswith("=== ")]
    assert len(headings) == probelogs.ENTRIES == 3
    assert headings[0].startswith("=== latest probe, at ") and headings[0].endswith(", succeeded ===")
    assert headings[1].endswith(", failed ===") and headings[2].endswith(", succeeded ===")
    assert "module=http_post" not in text
    # Without module=, the latest probe of the target under any module comes first.
    anyone = await get_text(client, "/logs", {"target": target})
    assert anyone.split("\n", 2)[1].startswith("Logs for the probe:")
    assert "module=http_post" in anyone.split("\n\n\n=== ", 1)[0]


async def test_secrets_in_the_target_are_masked(
    make_client: ClientFactory, http_target: tuple[str, TargetState]
) -> None:
    """A URL password and a token parameter never reach the logs."""
    base, _ = http_target
    client = await make_client(config(base))
    secret_target = base.replace("http://", "http://user:pa55word@") + "/ok?token=t0ken-value&x=1"
    await get_text(client, "/probe", {"target": secret_target, "module": "http_2xx"})
    text = await get_text(client, "/logs", {"target": secret_target, "module": "http_2xx"})
    assert "pa55word" not in text and "t0ken-value" not in text
    # The one rule of every log line (exporter.types.redact_target): password hidden, no query.
    assert "user:xxxxx@" in text and "token=" not in text


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({}, 400, "target (with an optional module) or service must be given"),
        ({"module": "http_2xx"}, 400, "module only works together with target"),
        ({"id": "3"}, 400, "probe ids are not kept here"),
        ({"target": "x", "service": "site"}, 400, "target and service cannot be given together"),
        ({"target": "http://127.0.0.1:1/never"}, 404, "no probe of this target is kept"),
        ({"service": "nope"}, 404, "unknown service 'nope'"),
        ({"service": "site"}, 404, "service 'site' has not been probed yet"),
    ],
)
async def test_bad_requests_say_what_is_wrong(
    make_client: ClientFactory,
    http_target: tuple[str, TargetState],
    params: dict[str, str],
    status: int,
    message: str,
) -> None:
    """Missing or conflicting parameters get 400, unknown ones 404, each with a message."""
    base, _ = http_target
    client = await make_client(config(base))
    assert (await get_text(client, "/logs", params, status)).startswith(message)


async def test_service_logs_come_from_scheduled_and_on_demand_probes(
    make_client: ClientFactory, http_target: tuple[str, TargetState]
) -> None:
    """/logs?service= shows the latest scheduled probe, and /probe?service= probes too."""
    base, _ = http_target
    client = await make_client(config(base), schedule=True)
    store = client.app[EXPORTER].store  # type: ignore[index]
    await wait_for(lambda: store.get("site").last is not None, what="a scheduled probe of site")
    text = await get_text(client, "/logs", {"service": "site"})
    assert "module=http_2xx" in text and "Probe succeeded" in text
    await get_text(client, "/probe", {"service": "site"})
    text = await get_text(client, "/logs", {"service": "site"})
    assert text.count("Logs for the probe:") >= 2


def test_book_bounds_pairs_and_bytes() -> None:
    """The book drops the least recently probed pairs past its pair and byte caps."""
    book = ProbeLogBook(entries=2, max_pairs=3, max_total_bytes=10_000)
    for n in range(5):
        book.add(probelogs.target_key(f"t{n}", "m"), Entry(float(n), True, "x" * 100))
    assert len(book) == 3
    assert book.latest(probelogs.target_key("t0", "m")) == []
    assert [e.wall for e in book.latest(probelogs.target_key("t4", "m"))] == [4.0]
    for n in range(40):
        book.add(probelogs.target_key("big", str(n)), Entry(float(n), True, "y" * 3000))
    assert book.bytes <= 10_000
    assert len(book.latest(probelogs.target_key("big", "39"))) == 1
    kept = [
        probelogs.target_key("big", str(n))
        for n in range(40)
        if book.latest(probelogs.target_key("big", str(n)))
    ]
    assert book.bytes == sum(e.size for k in kept for e in book.latest(k)) + sum(
        probelogs._key_size(k) for k in kept
    )
    # A target as long as a query string allows is counted too, so keys cannot grow the book.
    long_book = ProbeLogBook(max_total_bytes=50_000)
    for n in range(100):
        long_book.add(probelogs.target_key(f"{n}" + "t" * 4000, "m"), Entry(float(n), True, "x"))
    assert long_book.bytes <= 50_000 and len(long_book) < 100


def test_one_account_is_cut_to_its_cap() -> None:
    """An account over MAX_ENTRY_BYTES is cut, with a note saying so."""
    text = probelogs._cut("z" * (probelogs.MAX_ENTRY_BYTES * 3))
    assert len(text.encode()) <= probelogs.MAX_ENTRY_BYTES
    assert text.endswith(f"{probelogs.MAX_ENTRY_BYTES} are kept]\n")


def test_capture_takes_records_of_this_context_only() -> None:
    """Records the exporter logs inside capture() join the account; those outside do not."""
    logger = logging.getLogger("exporter.test_probelogs")
    logger.setLevel(logging.INFO)
    logger.warning("before")
    with probelogs.capture() as lines:
        logger.warning("inside %s", "the probe")
    logger.warning("after")
    assert len(lines) == 1 and 'msg="inside the probe"' in lines[0] and "level=warn" in lines[0]


def test_records_captured_elsewhere_join_this_probe_within_the_cap() -> None:
    """Lines a worker captured join the current capture, up to MAX_CAPTURED; outside one, nothing."""
    probelogs.add_captured(["level=info msg=stray"])  # no probe being captured: dropped
    with probelogs.capture() as lines:
        logging.getLogger("exporter.test_probelogs").warning("here")
        probelogs.add_captured([f"level=info msg=worker-{n}" for n in range(probelogs.MAX_CAPTURED + 5)])
    assert len(lines) == probelogs.MAX_CAPTURED
    assert "msg=here" in lines[0]
    assert lines[1:3] == ["level=info msg=worker-0", "level=info msg=worker-1"]
    assert "stray" not in "".join(lines)


def draft_of(result: ProbeResult, captured: tuple[str, ...] = ()) -> probelogs.Draft:
    body = render_result(result, "http")
    return probelogs.Draft(
        result, "http://u:pw@127.0.0.1:1/x?token=t", "http_2xx", "http", 2.0, captured, body
    )


def test_a_draft_writes_the_account_written_at_once() -> None:
    """An entry kept as a draft shows, when asked, exactly the account written at probe time."""
    trace = Trace()
    trace.set("probe_http_status_code", 503)
    result = trace.fail(FailureReason.HTTP_STATUS, "status code 503 is not 2xx")
    draft = draft_of(result, ('ts=x level=warn msg="from the probe"',))
    written = probelogs.account(
        result,
        target=draft.target,
        module="http_2xx",
        prober="http",
        timeout=2.0,
        captured=list(draft.captured),
        metrics=draft.metrics.decode(),
    )
    entry = Entry(result.started_at, result.success, draft)
    assert entry.text == written == entry.text
    assert "pw" not in entry.text and "token=t" not in entry.text
    assert 'msg="from the probe"' in entry.text and "probe_http_status_code 503" in entry.text
    # Counted at what it keeps alive, which is of the order of the text it writes.
    assert len(written) / 2 < entry.size < 2 * len(written) + 1024


def test_an_oversized_draft_is_written_and_cut_at_once() -> None:
    """A draft keeping more than MAX_ENTRY_BYTES is not kept whole: it is written and cut."""
    lines = tuple(f'ts=x level=warn msg="{"z" * 1000}"' for _ in range(probelogs.MAX_CAPTURED))
    entry = Entry(1.0, False, draft_of(Trace().fail(FailureReason.CONNECT, "refused"), lines))
    assert entry.size <= probelogs.MAX_ENTRY_BYTES + probelogs._OVERHEAD
    assert entry.text.endswith(f"{probelogs.MAX_ENTRY_BYTES} are kept]\n")
