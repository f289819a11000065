"""Tests of the CEL body checks (blackbox 0.27's fail_if_body_json_*_cel) on a real local server."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from exporter import cel, offloop
from exporter.config import dump_config, parse_config
from exporter.errors import ConfigError
from exporter.modules import HTTPProbe, Module
from exporter.result import FailureReason
from tests.conftest import ProbeRunner

BIG_ITEMS = 3_000  # about 84 KiB of JSON, over offloop.INLINE_BYTES


def check(matches: str | None = None, not_matches: str | None = None) -> Module:
    return Module(
        prober="http",
        sections={
            "http": HTTPProbe(
                fail_if_body_json_matches_cel=cel.CELProgram.from_yaml(matches) if matches else None,
                fail_if_body_json_not_matches_cel=cel.CELProgram.from_yaml(not_matches)
                if not_matches
                else None,
            )
        },
    )


@pytest.fixture
async def json_target(aiohttp_server: AiohttpServer) -> AsyncIterator[str]:
    """Serves /status (a small health document), /big, /text, /empty and /null."""

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"status": "up", "count": 2, "checks": [{"ok": True}, {"ok": True}]})

    async def big(request: web.Request) -> web.Response:
        return web.json_response({"items": [{"id": i, "state": "ok"} for i in range(BIG_ITEMS)]})

    async def text(request: web.Request) -> web.Response:
        return web.Response(text="<html>not json</html>")

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def null(request: web.Request) -> web.Response:
        return web.Response(text="null", content_type="application/json")

    app = web.Application()
    for path, handler in (
        ("/status", status),
        ("/big", big),
        ("/text", text),
        ("/empty", empty),
        ("/null", null),
    ):
        app.router.add_get(path, handler)
    server = await aiohttp_server(app)
    yield f"http://127.0.0.1:{server.port}"


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return str(caught.value)


def test_syntax_error_is_a_config_error_with_path_and_line() -> None:
    """An expression that does not parse is refused at load, naming the option, its line and column."""
    message = config_error(
        "modules:\n  m:\n    prober: http\n    http:\n      fail_if_body_json_matches_cel: 'body.x >'\n"
    )
    assert message == (
        "modules.m.http.fail_if_body_json_matches_cel (line 5): cannot compile CEL expression "
        "'body.x >': syntax error at line 1, column 8"
    )


def test_undeclared_names_are_refused_but_macro_variables_are_not() -> None:
    """As cel-go's checker: only ``body`` and comprehension variables may be referred to."""
    message = config_error(
        "modules:\n  m:\n    prober: http\n    http:\n"
        "      fail_if_body_json_not_matches_cel: 'body.a.all(x, x > limit) && status == 1'\n"
    )
    assert "(line 5)" in message
    assert "undeclared reference to 'limit', 'status' (the only variable is 'body')" in message
    parse_config(
        "modules:\n  m:\n    prober: http\n    http:\n"
        "      fail_if_body_json_not_matches_cel:\n"
        "        'body.checks.all(c, c.ok) && body.checks.exists(c, has(c.ok))'\n"
    )


def test_expression_survives_pickling_and_shows_in_config() -> None:
    """Configs cross process boundaries as text, and /config shows the expression as written."""
    program = cel.CELProgram.from_yaml('body.status == "up"')
    again = pickle.loads(pickle.dumps(program))
    assert again == program and again.verdict(cel.decode_body(b'{"status": "up"}')) is True
    config = parse_config(
        "modules:\n  m:\n    prober: http\n    http:\n      fail_if_body_json_matches_cel: 'body.down'\n"
    )
    assert "fail_if_body_json_matches_cel: body.down" in dump_config(config)


def test_numbers_are_doubles_that_equal_integers() -> None:
    """JSON numbers are doubles as in Go; == still compares them with integer literals."""
    document = cel.decode_body(b'{"count": 2, "ratio": 0.5, "name": "x"}')
    assert cel.CELProgram.from_yaml("body.count == 2").verdict(document) is True
    assert cel.CELProgram.from_yaml("body.count != 3").verdict(document) is True
    assert cel.CELProgram.from_yaml("body.count == 2.0").verdict(document) is True
    assert cel.CELProgram.from_yaml("body.ratio < 1").verdict(document) is True
    assert cel.CELProgram.from_yaml('body.name == 1 || body.name == "x"').verdict(document) is True
    assert cel.CELProgram.from_yaml("type(body.count) == double").verdict(document) is True


async def test_fail_if_matches_fails_the_probe(run_probe: ProbeRunner, json_target: str) -> None:
    """A true fail_if_body_json_matches_cel fails with reason body and probe_failed_due_to_cel 1."""
    result = await run_probe(json_target + "/status", check(matches='body.status == "up"'))
    assert not result.success
    assert result.reason is FailureReason.BODY
    assert result.message == "body matched fail_if_body_json_matches_cel 'body.status == \"up\"'"
    assert result.value("probe_failed_due_to_cel") == 1
    assert result.value("probe_failed_due_to_regex") == 0


async def test_passing_checks_export_zero(run_probe: ProbeRunner, json_target: str) -> None:
    """Both checks passing: success, with probe_failed_due_to_cel exported as 0."""
    module = check(matches='body.status == "down"', not_matches="body.checks.all(c, c.ok) && body.count == 2")
    result = await run_probe(json_target + "/status", module)
    assert result.success, result.message
    assert result.value("probe_failed_due_to_cel") == 0


async def test_fail_if_not_matches_fails_the_probe(run_probe: ProbeRunner, json_target: str) -> None:
    """A false fail_if_body_json_not_matches_cel fails the probe."""
    result = await run_probe(json_target + "/status", check(not_matches="body.count > 5"))
    assert not result.success
    assert result.message == "body did not match fail_if_body_json_not_matches_cel 'body.count > 5'"
    assert result.value("probe_failed_due_to_cel") == 1


@pytest.mark.parametrize(
    ("path", "expression", "message"),
    [
        ("/text", "body.ok", "body is not JSON: Expecting value: line 1 column 1 (char 0)"),
        ("/empty", "body.ok", "body is not JSON: Expecting value: line 1 column 1 (char 0)"),
        ("/status", "body.count", "'body.count' gave a double, not a boolean"),
        ("/status", 'body.status + "!"', "'body.status + \"!\"' gave a string, not a boolean"),
        ("/null", "body == null || body.x", None),
        ("/status", "body.missing", "evaluating 'body.missing' failed: no such member in mapping: 'missing'"),
        (
            "/status",
            "body.count / 0.0 > 1 && 1 / 0 == 1",
            "evaluating 'body.count / 0.0 > 1 && 1 / 0 == 1' failed",
        ),
    ],
)
async def test_no_verdict_fails_the_probe_with_a_clear_message(
    run_probe: ProbeRunner, json_target: str, path: str, expression: str, message: str | None
) -> None:
    """A body that is not JSON, an evaluation error or a non-boolean result fails the probe."""
    result = await run_probe(json_target + path, check(not_matches=expression))
    if message is None:
        assert result.success, result.message
        return
    assert not result.success
    assert result.reason is FailureReason.BODY
    assert result.message.startswith(message), result.message
    assert result.value("probe_failed_due_to_cel") == 1


async def test_big_body_is_checked_off_the_loop(run_probe: ProbeRunner, json_target: str) -> None:
    """A body over the inline size is decoded and evaluated in the answers pool, with the same verdict."""
    expression = f"body.items.size() == {BIG_ITEMS} && body.items.all(i, i.state == 'ok')"
    result = await run_probe(json_target + "/big", check(not_matches=expression), timeout=20.0)
    assert result.success, result.message
    assert result.value("probe_http_uncompressed_body_length", 0) > 64 * 1024  # type: ignore[operator]
    result = await run_probe(json_target + "/big", check(matches="body.items.exists(i, i.id == 2999)"), 20.0)
    assert result.message == "body matched fail_if_body_json_matches_cel 'body.items.exists(i, i.id == 2999)'"


async def test_gauge_is_exported_when_the_probe_fails_earlier(
    run_probe: ProbeRunner, json_target: str
) -> None:
    """As in blackbox: a module with a CEL check exports probe_failed_due_to_cel 0 on any other failure."""
    result = await run_probe(json_target + "/missing", check(matches="body.x"))
    assert result.reason is FailureReason.HTTP_STATUS
    assert result.value("probe_failed_due_to_cel") == 0
    plain = await run_probe(json_target + "/status", Module(prober="http", sections={"http": HTTPProbe()}))
    assert plain.value("probe_failed_due_to_cel") is None


def test_decode_reads_invalid_utf8_as_go_does() -> None:
    """An invalid UTF-8 byte in a string reads as U+FFFD, as Go's encoding/json reads it."""
    document: Any = cel.decode_body(b'{"name": "a\xffb"}')
    assert str(document["name"]) == "a\ufffdb"
    with pytest.raises(cel.CELProblem, match="invalid JSON value NaN"):
        cel.decode_body(json.dumps({"x": float("nan")}).encode())


NESTED = "body.items.all(a, body.items.all(b, a.id != b.id || a.state == b.state))"


def test_stop_ends_an_evaluation_early() -> None:
    """An expression of millions of steps ends soon after its stop flag is set, with a message."""
    document = cel.decode_body(
        json.dumps({"items": [{"id": i, "state": "ok"} for i in range(3000)]}).encode()
    )
    program = cel.CELProgram.from_yaml(NESTED)
    stop = threading.Event()
    outcome: list[BaseException | bool] = []

    def run() -> None:
        try:
            outcome.append(program.verdict(document, stop))
        except cel.CELProblem as problem:
            outcome.append(problem)

    thread = threading.Thread(target=run)
    thread.start()
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert isinstance(outcome[0], cel.CELProblem)
    assert str(outcome[0]) == f"evaluating {NESTED[:60]!r}... was stopped: the probe ended"


async def test_timed_out_probe_stops_its_evaluation(run_probe: ProbeRunner, json_target: str) -> None:
    """A probe whose CEL check outlives its timeout fails with timeout and frees the answers pool."""
    result = await run_probe(json_target + "/big", check(not_matches=NESTED), timeout=1.0)
    assert result.reason is FailureReason.TIMEOUT
    # Both pool threads must come free: a stopped evaluation ends within a few steps.
    assert await asyncio.wait_for(asyncio.gather(*(offloop.in_thread(int, "1") for _ in range(2))), 30) == [
        1,
        1,
    ]


_LOADED_AFTER = """
import pickle, sys
from exporter.config import parse_config
import exporter.workers
config = parse_config(sys.stdin.read())
pickle.loads(pickle.dumps(config.services))
print("celpy" in sys.modules, "lark" in sys.modules)
"""


@pytest.mark.parametrize(
    ("module", "loaded"),
    [
        ("prober: http", "False False"),
        ("prober: http\n    http:\n      fail_if_body_json_matches_cel: 'body.up == false'", "True True"),
    ],
)
def test_cel_python_loads_only_with_an_expression(module: str, loaded: str) -> None:
    """A process whose config has no CEL check never imports cel-python; one with a check does."""
    services = "services:\n  - name: a\n    target: http://127.0.0.1:9/\n    module: m\n"
    config = f"modules:\n  m:\n    {module}\n{services}"
    done = subprocess.run(
        [sys.executable, "-c", _LOADED_AFTER],
        input=config,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == loaded
