"""Tests of the flow probe: journeys of HTTP steps against a real local web app."""

from __future__ import annotations

import asyncio
import ssl
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from cryptography import x509
from pytest_aiohttp import AiohttpServer

from exporter.allowlist import Allowlist
from exporter.collector import render_result
from exporter.config import dump_config, parse_config
from exporter.modules import Module, json_path_parts
from exporter.probes import PROBERS, flow, http
from exporter.result import FailureReason, ProbeResult
from exporter.types import HostPattern
from tests.conftest import ProbeRunner
from tests.metrics_util import parse, value

PASSWORD = "correct-horse-battery"
TOKEN = "tok-9f8e7d"
SESSION = "s3ss10n-cookie"
CSRF = "c5rf-value"
UPLOAD = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@dataclass
class Seen:
    """What the test app received, so tests can check what the probe sent."""

    paths: list[str] = field(default_factory=list)
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    uploads: list[bytes] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


def make_app(seen: Seen) -> web.Application:
    async def record(request: web.Request) -> None:
        seen.paths.append(request.path)
        seen.headers[request.path] = dict(request.headers)

    async def login_page(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(
            text=f'<form><input type="hidden" name="csrf" value="{CSRF}"></form>', content_type="text/html"
        )

    async def login(request: web.Request) -> web.Response:
        await record(request)
        data = await request.json()
        if data.get("password") != PASSWORD or data.get("csrf") != CSRF:
            return web.json_response({"error": "bad credentials"}, status=401)
        response = web.json_response({"token": TOKEN, "user": {"id": 42, "name": "probe"}})
        response.set_cookie("session", SESSION, path="/api")
        response.headers["X-Request-Id"] = "req-77"
        return response

    def authorised(request: web.Request) -> bool:
        return (
            request.cookies.get("session") == SESSION
            and request.headers.get("Authorization") == f"Bearer {TOKEN}"
        )

    async def feed(request: web.Request) -> web.Response:
        await record(request)
        if not authorised(request):
            return web.json_response({"error": "log in first"}, status=403)
        return web.json_response(
            {
                "status": "ok",
                "healthy": True,
                "data": {"items": [{"id": 7, "title": "hello"}, {"id": 8, "title": "world"}], "count": 2},
                "weird.key": {"a b": "spaced"},
                "ratio": 0.25,
                "nothing": None,
            }
        )

    async def upload(request: web.Request) -> web.Response:
        await record(request)
        if not authorised(request) or request.headers.get("X-CSRF") != CSRF:
            return web.Response(status=403, text="no")
        seen.uploads.append(await request.read())
        return web.json_response(
            {"stored": True, "user": request.match_info["user"]},
            status=201,
            headers={"Location": "/api/files/f1"},
        )

    async def status(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=int(request.match_info["code"]), text="status")

    async def text(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(text="not json at all")

    async def hold(request: web.Request) -> web.Response:
        await record(request)
        await seen.release.wait()
        return web.Response(text="late")

    async def redirect(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound("/api/feed")

    app = web.Application()
    app.router.add_get("/login", login_page)
    app.router.add_post("/api/login", login)
    app.router.add_get("/api/feed", feed)
    app.router.add_post("/api/users/{user}/upload", upload)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/text", text)
    app.router.add_get("/hold", hold)
    app.router.add_get("/api/redirect", redirect)
    return app


@dataclass
class Site:
    url: str
    seen: Seen
    port: int


@pytest.fixture
async def site(aiohttp_server: AiohttpServer) -> AsyncIterator[Site]:
    """The journey test app on 127.0.0.1."""
    seen = Seen()
    server = await aiohttp_server(make_app(seen))
    yield Site(f"http://127.0.0.1:{server.port}", seen, server.port or 0)
    seen.release.set()  # held requests end before the server closes


def journey(text: str) -> Module:
    """The module ``journey`` of a config whose modules section is ``text``."""
    config = parse_config("modules:\n  journey:\n" + textwrap.indent(textwrap.dedent(text), "    "))
    return config.modules["journey"]


def steps_of(result: ProbeResult, name: str) -> dict[str, float]:
    return {dict(s.labels)["step"]: s.value for s in result.samples if s.name == name}


def step_phase(result: ProbeResult, step: str, phase: str) -> float:
    (found,) = [
        s.value
        for s in result.samples
        if s.name == "probe_flow_step_http_duration_seconds"
        and dict(s.labels) == {"step": step, "phase": phase}
    ]
    return found


@pytest.fixture
def login_journey(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Module:
    """Log in (with a CSRF token from the form), read the feed, upload a file."""
    monkeypatch.setenv("OUTAGE_EXPORTER_TEST_FLOW_PASSWORD", PASSWORD)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(UPLOAD)
    return journey(
        f"""
        prober: flow
        flow:
          headers: {{X-Probe: journey}}
          steps:
            - name: form
              url: /login
              extract:
                csrf: {{regexp: 'name="csrf" value="([^"]+)"'}}
            - name: login
              method: POST
              url: /api/login
              headers: {{Content-Type: application/json}}
              body: >-
                {{"user": "probe", "password": "${{OUTAGE_EXPORTER_TEST_FLOW_PASSWORD}}",
                "csrf": "{{{{csrf}}}}"}}
              expect_json:
                - {{path: $.user.id, equals: 42}}
              extract:
                token: {{json: $.token}}
                user_id: {{json: $.user.id}}
                request_id: {{header: X-Request-Id}}
                session: {{cookie: session}}
            - name: feed
              url: /api/feed
              headers: {{Authorization: "Bearer {{{{ token }}}}"}}
              expect_json:
                - {{path: $.status, equals: ok}}
                - {{path: '$.data.items[0].id', equals: 7, gt: 6, le: 7}}
                - {{path: '$.data.items[-1].title', matches: '^wor'}}
                - {{path: $.data.count, ge: 2, lt: 3}}
                - {{path: $.healthy, equals: "true"}}
                - {{path: $.nothing, equals: "null"}}
                - {{path: $.ratio, equals: "0.25"}}
                - {{path: '$["weird.key"]["a b"]', equals: spaced}}
                - {{path: '$.data.items[2]', exists: false}}
                - {{path: $.data, exists: true}}
            - name: upload
              method: POST
              url: /api/users/{{{{user_id}}}}/upload
              headers:
                Authorization: "Bearer {{{{token}}}}"
                X-CSRF: "{{{{csrf}}}}"
                Content-Type: application/octet-stream
              body_file: {upload}
              valid_status_codes: [201]
              fail_if_header_not_matches:
                - {{header: Location, regexp: '^/api/files/'}}
        """
    )


async def test_journey_passes_and_reports_every_step(
    run_probe: ProbeRunner, site: Site, login_journey: Module
) -> None:
    """Every step passes in order, sharing cookies and variables, and each is reported."""
    result = await run_probe(site.url, login_journey)
    assert result.success, result.message
    names = ["form", "login", "feed", "upload"]
    assert steps_of(result, "probe_flow_step_success") == dict.fromkeys(names, 1.0)
    assert steps_of(result, "probe_flow_step_ran") == dict.fromkeys(names, 1.0)
    assert steps_of(result, "probe_flow_failed_step") == dict.fromkeys(names, 0.0)
    assert steps_of(result, "probe_flow_step_status_code") == {
        "form": 200,
        "login": 200,
        "feed": 200,
        "upload": 201,
    }
    assert all(seconds > 0 for seconds in steps_of(result, "probe_flow_step_duration_seconds").values())
    # What the server received: the cookie, the extracted token, the CSRF value, the file.
    assert site.seen.paths == ["/login", "/api/login", "/api/feed", "/api/users/42/upload"]
    feed_headers = site.seen.headers["/api/feed"]
    assert feed_headers["Authorization"] == f"Bearer {TOKEN}"
    assert feed_headers["Cookie"] == f"session={SESSION}"
    assert feed_headers["X-Probe"] == "journey"
    assert site.seen.headers["/login"].get("Cookie") is None
    assert site.seen.uploads == [UPLOAD]
    # Whole-probe values: the last step's HTTP values, every step's phases added up.
    assert result.value("probe_http_status_code") == 201
    assert result.value("probe_http_ssl") == 0
    for phase in flow.PHASES:
        total = sum(step_phase(result, name, phase) for name in names)
        assert result.phases[phase] == pytest.approx(total)
    assert all(step_phase(result, name, "connect") > 0 for name in names)
    assert sum(result.phases.values()) <= result.duration


async def test_failing_step_stops_the_journey(run_probe: ProbeRunner, site: Site) -> None:
    """A step that fails ends the journey; the steps after it are reported as not run."""
    module = journey(
        """
        prober: flow
        flow:
          steps:
            - {name: first, url: /text}
            - {name: broken, url: /status/503}
            - {name: never, url: /text}
        """
    )
    result = await run_probe(site.url, module)
    assert not result.success
    assert result.reason == FailureReason.HTTP_STATUS
    assert result.message == "step broken: status code 503 is not 2xx"
    assert steps_of(result, "probe_flow_step_ran") == {"first": 1, "broken": 1, "never": 0}
    assert steps_of(result, "probe_flow_step_success") == {"first": 1, "broken": 0, "never": 0}
    assert steps_of(result, "probe_flow_failed_step") == {"first": 0, "broken": 1, "never": 0}
    assert steps_of(result, "probe_flow_step_status_code") == {"first": 200, "broken": 503, "never": 0}
    assert steps_of(result, "probe_flow_step_duration_seconds")["never"] == 0
    assert all(step_phase(result, "never", phase) == 0 for phase in flow.PHASES)
    assert result.value("probe_http_status_code") == 503
    assert site.seen.paths == ["/text", "/status/503"]


@pytest.mark.parametrize(
    ("condition", "reason", "message"),
    [
        ("{path: $.data.count, gt: 5}", FailureReason.BODY, "step feed: $.data.count is 2, expected > 5"),
        ("{path: $.ratio, le: 0.1}", FailureReason.BODY, "step feed: $.ratio is 0.25, expected <= 0.1"),
        (
            "{path: $.status, equals: down}",
            FailureReason.BODY,
            "step feed: $.status is a string of 2 characters, expected 'down'",
        ),
        (
            "{path: '$.data.items[5].id', exists: true}",
            FailureReason.BODY,
            "step feed: $.data.items[5].id is missing",
        ),
        ("{path: $.data.missing, equals: x}", FailureReason.BODY, "step feed: $.data.missing is missing"),
        (
            "{path: $.status, exists: false}",
            FailureReason.BODY,
            "step feed: $.status exists, expected it not to",
        ),
        (
            "{path: $.data.items, lt: 3}",
            FailureReason.BODY,
            "step feed: $.data.items is a list of 2 items, expected a number < 3",
        ),
        (
            "{path: $.data, matches: x}",
            FailureReason.BODY,
            "step feed: $.data is an object, expected a value matching 'x'",
        ),
        (
            "{path: $.healthy, equals: 'false'}",
            FailureReason.BODY,
            "step feed: $.healthy is true, expected 'false'",
        ),
    ],
)
async def test_failing_json_condition(
    run_probe: ProbeRunner, site: Site, condition: str, reason: FailureReason, message: str
) -> None:
    """A JSON condition that does not hold fails its step with a message naming the path."""
    module = journey(
        f"""
        prober: flow
        flow:
          headers: {{Authorization: "Bearer {TOKEN}"}}
          steps:
            - name: login
              method: POST
              url: /api/login
              body: '{{"password": "{PASSWORD}", "csrf": "{CSRF}"}}'
            - name: feed
              url: /api/feed
              expect_json: [{condition}]
        """
    )
    result = await run_probe(site.url, module)
    assert not result.success
    assert (result.reason, result.message) == (reason, message)
    assert result.value("probe_failed_due_to_regex") == 0


async def test_matches_failure_counts_as_regex(run_probe: ProbeRunner, site: Site) -> None:
    """A failed matches condition sets probe_failed_due_to_regex, as a body regexp does."""
    module = journey(
        """
        prober: flow
        flow:
          steps:
            - name: login
              method: POST
              url: /api/login
              body: "{}"
              valid_status_codes: [401]
              expect_json: [{path: $.error, matches: '^locked'}]
        """
    )
    result = await run_probe(site.url, module)
    assert (result.reason, result.message) == (
        FailureReason.BODY,
        "step login: $.error does not match '^locked'",
    )
    assert result.value("probe_failed_due_to_regex") == 1


async def test_body_that_is_not_json(run_probe: ProbeRunner, site: Site) -> None:
    """A step with JSON conditions fails (body) when the response is not JSON."""
    module = journey(
        """
        prober: flow
        flow:
          steps: [{name: page, url: /text, expect_json: [{path: $.a, exists: true}]}]
        """
    )
    result = await run_probe(site.url, module)
    assert (result.reason, result.message) == (
        FailureReason.BODY,
        "step page: response body is not JSON: Expecting value",
    )


@pytest.mark.parametrize(
    ("extract", "reason", "message"),
    [
        ("{header: X-Missing}", FailureReason.HEADER, "step login: extract v: header X-Missing is missing"),
        ("{cookie: nope}", FailureReason.HEADER, "step login: extract v: no cookie 'nope' was set"),
        ("{json: $.user.email}", FailureReason.BODY, "step login: extract v: $.user.email is missing"),
        (
            "{regexp: 'id=(\\d+)'}",
            FailureReason.BODY,
            r"step login: extract v: regexp 'id=(\\d+)' did not match",
        ),
    ],
)
async def test_missing_extract_fails_the_step(
    run_probe: ProbeRunner, site: Site, extract: str, reason: FailureReason, message: str
) -> None:
    """An extract whose source is absent fails its step, naming the variable, not a value."""
    module = journey(
        f"""
        prober: flow
        flow:
          steps:
            - name: login
              method: POST
              url: /api/login
              body: '{{"password": "{PASSWORD}", "csrf": "{CSRF}"}}'
              extract: {{v: {extract}}}
        """
    )
    result = await run_probe(site.url, module)
    assert not result.success
    assert (result.reason, result.message) == (reason, message)


async def test_secrets_stay_out_of_messages_metrics_and_config(
    run_probe: ProbeRunner, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A password from the environment is sent but never shown in the result, metrics or /config."""
    monkeypatch.setenv("OUTAGE_EXPORTER_TEST_FLOW_PASSWORD", "wrong-" + PASSWORD)
    text = textwrap.dedent(
        f"""
        services:
          - name: app-journey
            target: {site.url}
            prober: flow
            flow:
              steps:
                - name: login
                  method: POST
                  url: /api/login
                  headers: {{X-Api-Key: "${{OUTAGE_EXPORTER_TEST_FLOW_PASSWORD}}"}}
                  body: '{{"password": "${{OUTAGE_EXPORTER_TEST_FLOW_PASSWORD}}"}}'
        """
    )
    config = parse_config(text)
    (service,) = config.services
    result = await run_probe(service.target, service.module)
    assert (result.reason, result.message) == (
        FailureReason.HTTP_STATUS,
        "step login: status code 401 is not 2xx",
    )
    assert site.seen.headers["/api/login"]["X-Api-Key"] == "wrong-" + PASSWORD
    metrics = render_result(result, "flow").decode()
    dumped = dump_config(config)
    for shown in (result.message, metrics, dumped):
        assert PASSWORD not in shown
    assert "body: <secret>" in dumped


async def test_timeout_shows_the_step_it_stopped(run_probe: ProbeRunner, site: Site) -> None:
    """When the service's timeout ends the journey, the step in progress is the failed one."""
    module = journey(
        """
        prober: flow
        flow:
          steps:
            - {name: first, url: /text}
            - {name: stuck, url: /hold}
            - {name: never, url: /text}
        """
    )
    result = await run_probe(site.url, module, timeout=0.5)
    assert result.reason == FailureReason.TIMEOUT
    assert steps_of(result, "probe_flow_step_ran") == {"first": 1, "stuck": 1, "never": 0}
    assert steps_of(result, "probe_flow_failed_step") == {"first": 0, "stuck": 1, "never": 0}
    assert steps_of(result, "probe_flow_step_success") == {"first": 1, "stuck": 0, "never": 0}
    assert steps_of(result, "probe_flow_step_status_code")["stuck"] == 0
    assert step_phase(result, "stuck", "connect") > 0
    assert result.phases["connect"] == pytest.approx(
        step_phase(result, "first", "connect") + step_phase(result, "stuck", "connect")
    )


async def test_absolute_step_urls_and_redirects(
    run_probe: ProbeRunner, site: Site, aiohttp_server: AiohttpServer
) -> None:
    """A step may name another host; redirects are followed unless the step says not to."""
    other_seen = Seen()
    other = await aiohttp_server(make_app(other_seen))
    module = journey(
        f"""
        prober: flow
        flow:
          steps:
            - {{name: elsewhere, url: "http://127.0.0.1:{other.port}/text"}}
            - {{name: held, url: /api/redirect, follow_redirects: false, valid_status_codes: [302]}}
            - {{name: followed, url: /api/redirect, valid_status_codes: [403]}}
        """
    )
    result = await run_probe(site.url + "/ignored/path", module)
    assert result.success, result.message
    assert other_seen.paths == ["/text"]
    assert site.seen.paths == ["/api/redirect", "/api/redirect", "/api/feed"]
    assert steps_of(result, "probe_flow_step_status_code") == {"elsewhere": 200, "held": 302, "followed": 403}
    assert result.value("probe_http_redirects") == 1


async def test_every_step_host_must_pass_the_allowlist(run_probe: ProbeRunner, site: Site) -> None:
    """An on-demand journey may not reach a host outside probe_allowlist in any step."""
    module = journey(
        """
        prober: flow
        flow:
          steps:
            - {name: local, url: /text}
            - {name: away, url: "http://[::1]:9/text"}
        """
    )
    guard = Allowlist((HostPattern.from_yaml("127.0.0.0/8"),))
    result = await run_probe(site.url, module, guard=guard)
    assert (result.reason, result.message) == (
        FailureReason.OTHER,
        "step away: target host ::1 is outside probe_allowlist",
    )
    assert steps_of(result, "probe_flow_step_success") == {"local": 1, "away": 0}


async def test_tls_steps_report_certificates(
    run_probe: ProbeRunner, server_cert: trustme.LeafCert, ca_file: Path, aiohttp_server: AiohttpServer
) -> None:
    """Over TLS each step's phases include tls and the whole probe reports the certificate."""
    seen = Seen()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    server = await aiohttp_server(make_app(seen), ssl=context)
    try:
        module = journey(
            f"""
            prober: flow
            flow:
              tls_config: {{ca_file: {ca_file}}}
              steps: [{{name: one, url: /text}}, {{name: two, url: /text}}]
            """
        )
        result = await run_probe(f"https://127.0.0.1:{server.port}", module)
    finally:
        seen.release.set()
    assert result.success, result.message
    assert result.value("probe_http_ssl") == 1
    assert step_phase(result, "one", "tls") > 0 and step_phase(result, "two", "tls") > 0
    expiry = server_cert.cert_chain_pems[0]
    not_after = x509.load_pem_x509_certificate(expiry.bytes()).not_valid_after_utc.timestamp()
    assert result.value("probe_ssl_earliest_cert_expiry") == not_after


async def test_metrics_carry_step_labels(run_probe: ProbeRunner, site: Site, login_journey: Module) -> None:
    """The exposition has per-step series beside blackbox's whole-probe ones."""
    result = await run_probe(site.url, login_journey)
    series = parse(render_result(result, "flow").decode())
    assert value(series, "probe_success") == 1
    assert value(series, "probe_flow_step_success", step="upload") == 1
    assert value(series, "probe_flow_step_status_code", step="upload") == 201
    assert value(series, "probe_flow_failed_step", step="login") == 0
    assert value(series, "probe_flow_step_http_duration_seconds", step="feed", phase="connect") > 0
    assert value(series, "probe_http_duration_seconds", phase="connect") == pytest.approx(
        result.phases["connect"]
    )
    assert value(series, "probe_http_status_code") == 201
    step_series = [labels for (name, labels) in series if name == "probe_flow_step_http_duration_seconds"]
    assert len(step_series) == 4 * len(flow.PHASES)


async def test_journey_without_steps_fails(run_probe: ProbeRunner, site: Site) -> None:
    """A module built without steps (the loader refuses one) fails rather than passing vacuously."""
    result = await run_probe(site.url, Module(prober="flow"))
    assert (result.reason, result.message) == (FailureReason.OTHER, "the journey has no steps")
    assert site.seen.paths == []


def test_kind_is_registered() -> None:
    """flow is a probe kind whose phases fill probe_http_duration_seconds."""
    assert PROBERS["flow"] is flow.KIND
    assert flow.KIND.phase_metric == "probe_http_duration_seconds"
    assert flow.KIND.phases == http.PHASES


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("$", ()),
        ("$.data.items[0].id", ("data", "items", 0, "id")),
        ("$[0]", (0,)),
        ("$.items[-1]", ("items", -1)),
        ("$['a.b'][\"c d\"]", ("a.b", "c d")),
        ("$.@type", ("@type",)),
    ],
)
def test_json_path_syntax(path: str, parts: tuple[Any, ...]) -> None:
    """The documented JSON path syntax splits into keys and indexes."""
    assert json_path_parts(path) == parts


@pytest.mark.parametrize("path", ["data.items", "$.", "$.items[x]", "$..deep", "$[0", "$ .a"])
def test_json_path_syntax_errors(path: str) -> None:
    """Anything else is refused."""
    with pytest.raises(ValueError, match="invalid JSON path"):
        json_path_parts(path)
