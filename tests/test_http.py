"""Tests of the HTTP probe against real local servers: plain, TLS, redirects and broken peers."""

from __future__ import annotations

import asyncio
import base64
import datetime
import gzip
import socket
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import brotli  # type: ignore[import-untyped]
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from pytest_aiohttp import AiohttpServer

from exporter import __version__
from exporter.config import dump_config, parse_config
from exporter.errors import ConfigError
from exporter.modules import Authorization, BasicAuth, HeaderMatch, HTTPProbe, Module, TLSConfig
from exporter.probes import http, httpclient
from exporter.probes.base import ProbeRequest
from exporter.result import FailureReason, ProbeResult, Trace
from exporter.types import ByteSize, Regex, Secret, StatusRange

ProbeRunner = Callable[..., Awaitable[ProbeResult]]
Serve = Callable[..., Awaitable[TestServer]]
RawServe = Callable[[Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]], Awaitable[str]]

LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"
LAST_MODIFIED_UNIX = 1445412480
GZIP_PLAIN = b"compressible " * 1000


def module(**settings: Any) -> Module:
    return Module(prober="http", sections={"http": HTTPProbe(**settings)})


def regex(pattern: str) -> Regex:
    return Regex.from_yaml(pattern)


def label_of(result: ProbeResult, name: str, label: str) -> str | None:
    for sample in result.samples:
        if sample.name == name:
            return dict(sample.labels).get(label)
    return None


def assert_phases_fit(result: ProbeResult) -> None:
    assert set(result.phases) == set(http.PHASES)
    assert sum(result.phases.values()) <= result.duration


# --- the test web application ---------------------------------------------------------------


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(0.2)
    return web.Response(text="slow")


async def status(request: web.Request) -> web.Response:
    return web.Response(status=int(request.match_info["code"]), text="status")


async def redirect(request: web.Request) -> web.Response:
    left = int(request.match_info["n"])
    raise web.HTTPFound(f"/redirect/{left - 1}" if left > 0 else "/ok")


async def loop(request: web.Request) -> web.Response:
    raise web.HTTPFound("/loop")


async def relative(request: web.Request) -> web.Response:
    # A path relative to /nested/relative, so the client must resolve it against the URL.
    raise web.HTTPFound("../ok")


async def goto(request: web.Request) -> web.Response:
    raise web.HTTPFound(request.query["url"])


async def large(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * int(request.match_info["size"]))


async def gzipped(request: web.Request) -> web.Response:
    return web.Response(body=gzip.compress(GZIP_PLAIN), headers={"Content-Encoding": "gzip"})


async def deflated(request: web.Request) -> web.Response:
    # Raw deflate, as many servers send it despite the RFC asking for zlib framing.
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    body = packer.compress(GZIP_PLAIN) + packer.flush()
    return web.Response(body=body, headers={"Content-Encoding": "deflate"})


async def bomb(request: web.Request) -> web.Response:
    return web.Response(body=gzip.compress(bytes(8 * 1024 * 1024)), headers={"Content-Encoding": "gzip"})


async def brotlied(request: web.Request) -> web.Response:
    body = brotli.compress(GZIP_PLAIN)
    cut = request.query.get("cut")
    return web.Response(body=body[: len(body) // 2] if cut else body, headers={"Content-Encoding": "br"})


async def brotli_bomb(request: web.Request) -> web.Response:
    return web.Response(body=brotli.compress(bytes(8 * 1024 * 1024)), headers={"Content-Encoding": "br"})


async def bad_gzip(request: web.Request) -> web.Response:
    return web.Response(body=b"not gzip at all", headers={"Content-Encoding": "gzip"})


async def with_headers(request: web.Request) -> web.Response:
    return web.Response(text="headers", headers={"X-Service": "outage", "Last-Modified": LAST_MODIFIED})


async def chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for _ in range(3):
        await response.write(b"chunk")
    await response.write_eof()
    return response


async def echo(request: web.Request) -> web.Response:
    body = await request.text()
    return web.Response(text=f"{request.method} {body}")


async def echo_headers(request: web.Request) -> web.Response:
    lines = [f"{name.lower()}={value}" for name, value in request.headers.items()]
    return web.Response(text="\n".join(lines))


async def post_redirect(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    return web.Response(status=code, headers={"Location": "/echo"})


async def basic_protected(request: web.Request) -> web.Response:
    if request.headers.get("Authorization") != "Basic cHJvYmU6aHVudGVyMg==":  # probe:hunter2
        return web.Response(status=401, text="who are you")
    return web.Response(text="welcome")


async def token_protected(request: web.Request) -> web.Response:
    if request.headers.get("Authorization") != "Token t0ken-value":
        return web.Response(status=403, text="forbidden")
    return web.Response(text="welcome")


async def cookie_set(request: web.Request) -> web.Response:
    response = web.HTTPFound("/cookie/check")
    response.set_cookie("session", "abc123", path="/cookie")
    raise response


async def cookie_check(request: web.Request) -> web.Response:
    if request.cookies.get("session") != "abc123":
        raise web.HTTPFound("/cookie/set")
    return web.Response(text="logged in")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/slow", slow)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/redirect/{n}", redirect)
    app.router.add_get("/loop", loop)
    app.router.add_get("/nested/relative", relative)
    app.router.add_get("/goto", goto)
    app.router.add_get("/large/{size}", large)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/deflate", deflated)
    app.router.add_get("/bomb", bomb)
    app.router.add_get("/bad-gzip", bad_gzip)
    app.router.add_get("/br", brotlied)
    app.router.add_get("/br-bomb", brotli_bomb)
    app.router.add_get("/headers", with_headers)
    app.router.add_get("/chunked", chunked)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/echo-headers", echo_headers)
    app.router.add_post("/post-redirect/{code}", post_redirect)
    app.router.add_get("/basic", basic_protected)
    app.router.add_get("/token", token_protected)
    app.router.add_get("/cookie/set", cookie_set)
    app.router.add_get("/cookie/check", cookie_check)
    return app


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def serve(aiohttp_server: AiohttpServer) -> Serve:
    """Starts test web apps on 127.0.0.1, optionally over TLS; pytest-aiohttp stops them."""

    async def start(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> TestServer:
        return await aiohttp_server(app, ssl=ssl_context)

    return start


@pytest.fixture
async def site(serve: Serve) -> TestServer:
    """The plain-HTTP test app."""
    return await serve(make_app())


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


@pytest.fixture
async def tls_site(serve: Serve, server_cert: trustme.LeafCert) -> TestServer:
    """The test app over TLS with a certificate from the test CA."""
    return await serve(make_app(), server_context(server_cert))


@pytest.fixture
def tls(ca_file: Path) -> TLSConfig:
    """A tls_config that trusts the test CA."""
    return TLSConfig(ca_file=str(ca_file))


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServe]:
    """Starts bare TCP listeners that misbehave as each test's handler says."""
    servers: list[asyncio.Server] = []
    handlers: set[asyncio.Task[Any]] = set()

    async def start(
        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ) -> str:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                await handler(reader, writer)
            except OSError:
                pass  # the probe hung up first, which is its right
            finally:
                writer.close()

        server = await asyncio.start_server(run, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()
    if handlers:
        # Handlers end when the probe hangs up; the bound only guards against a broken test.
        _, pending = await asyncio.wait(handlers, timeout=5)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def read_head(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


# --- plain HTTP -----------------------------------------------------------------------------


async def test_ok_records_blackbox_values(run_probe: ProbeRunner, site: TestServer) -> None:
    """A 200 succeeds and records status, version, lengths and the IP protocol."""
    result = await run_probe(str(site.make_url("/ok")), module())
    assert result.success, result.message
    assert result.value("probe_http_status_code") == 200
    assert result.value("probe_http_version") == 1.1
    assert result.value("probe_http_content_length") == 2
    assert result.value("probe_http_uncompressed_body_length") == 2
    assert result.value("probe_http_redirects") == 0
    assert result.value("probe_http_ssl") == 0
    assert result.value("probe_failed_due_to_regex") == 0
    assert result.value("probe_ip_protocol") == 4
    assert result.value("probe_ip_addr_hash") is not None
    assert result.phases["connect"] > 0
    assert result.phases["tls"] == 0
    assert_phases_fit(result)


async def test_target_without_scheme_gets_http(run_probe: ProbeRunner, site: TestServer) -> None:
    """A bare host:port/path target is probed over plain HTTP, as blackbox does."""
    result = await run_probe(f"127.0.0.1:{site.port}/ok", module())
    assert result.success, result.message
    assert result.value("probe_http_status_code") == 200


async def test_slow_response_counts_as_processing(run_probe: ProbeRunner, site: TestServer) -> None:
    """The server's 0.2 s think time lands in the processing phase."""
    result = await run_probe(str(site.make_url("/slow")), module())
    assert result.success, result.message
    assert result.phases["processing"] >= 0.2
    assert_phases_fit(result)


async def test_direct_call_without_runner(site: TestServer) -> None:
    """probe_http can be awaited directly and returns a result of its own."""
    request = ProbeRequest(str(site.make_url("/ok")), module(), Trace(), timeout=5.0)
    async with asyncio.timeout(5):
        result = await http.probe_http(request)
    assert result.success, result.message
    assert http.KIND.phases == ("resolve", "connect", "tls", "processing", "transfer")
    assert http.KIND.phase_metric == "probe_http_duration_seconds"


@pytest.mark.parametrize("code", [404, 500, 302])
async def test_non_2xx_fails_with_http_status(run_probe: ProbeRunner, site: TestServer, code: int) -> None:
    """Without valid_status_codes only 2xx passes."""
    result = await run_probe(str(site.make_url(f"/status/{code}")), module())
    assert not result.success
    assert result.reason == FailureReason.HTTP_STATUS
    assert result.value("probe_http_status_code") == code
    assert str(code) in result.message


async def test_valid_status_codes_accept_listed(run_probe: ProbeRunner, site: TestServer) -> None:
    """A status inside valid_status_codes passes, one outside fails."""
    settings = module(valid_status_codes=(StatusRange(400, 404), StatusRange(500, 500)))
    passed = await run_probe(str(site.make_url("/status/404")), settings)
    failed = await run_probe(str(site.make_url("/status/200")), settings)
    assert passed.success, passed.message
    assert not failed.success
    assert failed.reason == FailureReason.HTTP_STATUS
    assert "400-404, 500" in failed.message


async def test_head_request_has_no_body(run_probe: ProbeRunner, site: TestServer) -> None:
    """HEAD gets the headers' Content-Length but reads no body."""
    result = await run_probe(str(site.make_url("/ok")), module(method="HEAD"))
    assert result.success, result.message
    assert result.value("probe_http_content_length") == 2
    assert result.value("probe_http_uncompressed_body_length") == 0


async def test_chunked_body_has_unknown_content_length(run_probe: ProbeRunner, site: TestServer) -> None:
    """A chunked response reports content length -1 and the real body length."""
    result = await run_probe(str(site.make_url("/chunked")), module())
    assert result.success, result.message
    assert result.value("probe_http_content_length") == -1
    assert result.value("probe_http_uncompressed_body_length") == 15


async def test_last_modified_is_exported(run_probe: ProbeRunner, site: TestServer) -> None:
    """The Last-Modified header becomes a unix timestamp."""
    result = await run_probe(str(site.make_url("/headers")), module())
    assert result.success, result.message
    assert result.value("probe_http_last_modified_timestamp_seconds") == LAST_MODIFIED_UNIX


async def test_missing_last_modified_is_not_exported(run_probe: ProbeRunner, site: TestServer) -> None:
    """Without Last-Modified there is no timestamp sample."""
    result = await run_probe(str(site.make_url("/ok")), module())
    assert result.value("probe_http_last_modified_timestamp_seconds") is None


async def test_request_headers_defaults_and_overrides(run_probe: ProbeRunner, site: TestServer) -> None:
    """Host comes from the URL unless configured; User-Agent is ours unless configured."""
    url = str(site.make_url("/echo-headers"))
    plain = await run_probe(url, module(fail_if_body_not_matches_regexp=(regex("x"),)))
    assert plain.success, plain.message
    default_checks = (
        regex(f"(?m)^host=127\\.0\\.0\\.1:{site.port}$"),
        regex(f"(?m)^user-agent=outage-exporter/{__version__}$"),
        regex("(?m)^connection=close$"),
    )
    assert (await run_probe(url, module(fail_if_body_not_matches_regexp=default_checks))).success
    configured = module(
        headers={"Host": Secret("status.example"), "User-Agent": Secret("custom/1")},
        fail_if_body_not_matches_regexp=(
            regex("(?m)^host=status\\.example$"),
            regex("(?m)^user-agent=custom/1$"),
        ),
    )
    result = await run_probe(url, configured)
    assert result.success, result.message


# --- bodies ---------------------------------------------------------------------------------


async def test_post_body_is_sent(run_probe: ProbeRunner, site: TestServer) -> None:
    """method and body reach the server."""
    settings = module(method="POST", body="ping", fail_if_body_not_matches_regexp=(regex("^POST ping$"),))
    result = await run_probe(str(site.make_url("/echo")), settings)
    assert result.success, result.message


async def test_body_file_is_sent(run_probe: ProbeRunner, site: TestServer, tmp_path: Path) -> None:
    """body_file is read at probe time and sent."""
    body = tmp_path / "body.json"
    body.write_text('{"probe": true}')
    settings = module(
        method="PUT",
        body_file=str(body),
        fail_if_body_not_matches_regexp=(regex('^PUT \\{"probe": true\\}$'),),
    )
    result = await run_probe(str(site.make_url("/echo")), settings)
    assert result.success, result.message


async def test_missing_body_file_fails_with_other(
    run_probe: ProbeRunner, site: TestServer, tmp_path: Path
) -> None:
    """An unreadable body_file fails before any request, with reason other."""
    result = await run_probe(
        str(site.make_url("/echo")), module(method="POST", body_file=str(tmp_path / "nope"))
    )
    assert result.reason == FailureReason.OTHER
    assert "body_file" in result.message


async def test_body_regexes(run_probe: ProbeRunner, site: TestServer) -> None:
    """fail_if_body_(not_)matches_regexp fail with reason body and set probe_failed_due_to_regex."""
    url = str(site.make_url("/ok"))
    matched = await run_probe(url, module(fail_if_body_matches_regexp=(regex("^ok$"),)))
    missing = await run_probe(url, module(fail_if_body_not_matches_regexp=(regex("healthy"),)))
    passed = await run_probe(url, module(fail_if_body_not_matches_regexp=(regex("[[:alpha:]]+"),)))
    for result in (matched, missing):
        assert result.reason == FailureReason.BODY
        assert result.value("probe_failed_due_to_regex") == 1
    assert "'^ok$'" in matched.message
    assert "'healthy'" in missing.message
    assert passed.success, passed.message
    assert passed.value("probe_failed_due_to_regex") == 0


async def test_body_over_limit_fails_with_body(run_probe: ProbeRunner, site: TestServer) -> None:
    """A body bigger than body_size_limit fails with reason body, without reading it all."""
    result = await run_probe(str(site.make_url("/large/200000")), module(body_size_limit=ByteSize(1024)))
    assert result.reason == FailureReason.BODY
    assert "1024" in result.message
    length = result.value("probe_http_uncompressed_body_length")
    assert length is not None and length <= 1024
    assert result.value("probe_http_content_length") == 200000


async def test_body_at_limit_passes(run_probe: ProbeRunner, site: TestServer) -> None:
    """A body exactly as big as body_size_limit is fine."""
    result = await run_probe(str(site.make_url("/large/1024")), module(body_size_limit=ByteSize(1024)))
    assert result.success, result.message
    assert result.value("probe_http_uncompressed_body_length") == 1024


async def test_gzip_body_is_decompressed(run_probe: ProbeRunner, site: TestServer) -> None:
    """compression: gzip asks for gzip and reports the decompressed length."""
    settings = module(compression="gzip", fail_if_body_not_matches_regexp=(regex("^(compressible )+$"),))
    result = await run_probe(str(site.make_url("/gzip")), settings)
    assert result.success, result.message
    assert result.value("probe_http_content_length") == len(gzip.compress(GZIP_PLAIN))
    assert result.value("probe_http_uncompressed_body_length") == len(GZIP_PLAIN)


async def test_accept_encoding_follows_compression(run_probe: ProbeRunner, site: TestServer) -> None:
    """The compression option becomes the Accept-Encoding header."""
    settings = module(
        compression="deflate",
        fail_if_body_not_matches_regexp=(regex("(?m)^accept-encoding=deflate$"),),
    )
    result = await run_probe(str(site.make_url("/echo-headers")), settings)
    assert result.success, result.message


async def test_raw_deflate_body_is_decompressed(run_probe: ProbeRunner, site: TestServer) -> None:
    """A raw (unframed) deflate body is inflated too."""
    result = await run_probe(str(site.make_url("/deflate")), module(compression="deflate"))
    assert result.success, result.message
    assert result.value("probe_http_uncompressed_body_length") == len(GZIP_PLAIN)


async def test_gzip_bomb_is_stopped_at_limit(run_probe: ProbeRunner, site: TestServer) -> None:
    """The decompressed size is bounded by body_size_limit as well."""
    limit = 1024 * 1024
    result = await run_probe(
        str(site.make_url("/bomb")), module(compression="gzip", body_size_limit=ByteSize(limit))
    )
    assert result.reason == FailureReason.BODY
    assert "decompressed" in result.message
    length = result.value("probe_http_uncompressed_body_length")
    assert length is not None and length <= limit


async def test_brotli_body_is_decompressed(run_probe: ProbeRunner, site: TestServer) -> None:
    """compression: br asks for br; the body is decompressed, a cut one fails, a bomb stops at the limit."""
    settings = module(compression="br", fail_if_body_not_matches_regexp=(regex("^(compressible )+$"),))
    result = await run_probe(str(site.make_url("/br")), settings)
    assert result.success, result.message
    assert result.value("probe_http_uncompressed_body_length") == len(GZIP_PLAIN)
    cut = await run_probe(str(site.make_url("/br?cut=1")), module(compression="br"))
    assert cut.reason == FailureReason.BODY and "br" in cut.message
    limit = 1024 * 1024
    bomb = await run_probe(
        str(site.make_url("/br-bomb")), module(compression="br", body_size_limit=ByteSize(limit))
    )
    assert bomb.reason == FailureReason.BODY and "decompressed" in bomb.message
    length = bomb.value("probe_http_uncompressed_body_length")
    assert length is not None and length <= limit


async def test_corrupt_gzip_fails_with_body(run_probe: ProbeRunner, site: TestServer) -> None:
    """A body that claims gzip but is not fails with reason body."""
    result = await run_probe(str(site.make_url("/bad-gzip")), module(compression="gzip"))
    assert result.reason == FailureReason.BODY
    assert "gzip" in result.message


# --- headers --------------------------------------------------------------------------------


async def test_header_matches(run_probe: ProbeRunner, site: TestServer) -> None:
    """fail_if_header_matches fails with reason header when a value matches."""
    settings = module(fail_if_header_matches=(HeaderMatch("x-service", regex("^out")),))
    result = await run_probe(str(site.make_url("/headers")), settings)
    assert result.reason == FailureReason.HEADER
    assert result.value("probe_failed_due_to_regex") == 1
    assert "x-service" in result.message


async def test_header_not_matches(run_probe: ProbeRunner, site: TestServer) -> None:
    """fail_if_header_not_matches passes on a match and fails otherwise."""
    url = str(site.make_url("/headers"))
    passed = await run_probe(
        url, module(fail_if_header_not_matches=(HeaderMatch("X-Service", regex("outage")),))
    )
    failed = await run_probe(
        url, module(fail_if_header_not_matches=(HeaderMatch("X-Service", regex("^in")),))
    )
    assert passed.success, passed.message
    assert failed.reason == FailureReason.HEADER


async def test_missing_header_and_allow_missing(run_probe: ProbeRunner, site: TestServer) -> None:
    """A missing header fails unless allow_missing is set."""
    url = str(site.make_url("/ok"))
    strict = HeaderMatch("X-Absent", regex("."))
    lenient = HeaderMatch("X-Absent", regex("."), allow_missing=True)
    for option in ("fail_if_header_matches", "fail_if_header_not_matches"):
        failed = await run_probe(url, module(**{option: (strict,)}))
        passed = await run_probe(url, module(**{option: (lenient,)}))
        assert failed.reason == FailureReason.HEADER
        assert "missing" in failed.message
        assert passed.success, passed.message


async def test_valid_http_versions(run_probe: ProbeRunner, site: TestServer) -> None:
    """A response version outside valid_http_versions fails with reason protocol."""
    url = str(site.make_url("/ok"))
    failed = await run_probe(url, module(valid_http_versions=("HTTP/1.0",)))
    passed = await run_probe(url, module(valid_http_versions=("HTTP/1.1", "HTTP/2.0")))
    assert failed.reason == FailureReason.PROTOCOL
    assert "HTTP/1.1" in failed.message
    assert passed.success, passed.message


async def test_fail_if_not_ssl_on_plain_http(run_probe: ProbeRunner, site: TestServer) -> None:
    """fail_if_not_ssl fails a plain-HTTP response with reason tls."""
    result = await run_probe(str(site.make_url("/ok")), module(fail_if_not_ssl=True))
    assert result.reason == FailureReason.TLS
    assert result.value("probe_http_status_code") == 200


# --- authentication -------------------------------------------------------------------------


async def test_basic_auth(run_probe: ProbeRunner, site: TestServer, tmp_path: Path) -> None:
    """basic_auth with a password or a password_file is sent; a wrong one is not leaked."""
    url = str(site.make_url("/basic"))
    password_file = tmp_path / "password"
    password_file.write_text("hunter2\n")
    inline = module(basic_auth=BasicAuth("probe", password=Secret("hunter2")))
    from_file = module(basic_auth=BasicAuth("probe", password_file=str(password_file)))
    wrong = module(basic_auth=BasicAuth("probe", password=Secret("wrong-secret")))
    assert (await run_probe(url, inline)).success
    assert (await run_probe(url, from_file)).success
    failed = await run_probe(url, wrong)
    assert failed.reason == FailureReason.HTTP_STATUS
    assert failed.value("probe_http_status_code") == 401
    assert "wrong-secret" not in failed.message


async def test_user_info_in_url_is_basic_auth(run_probe: ProbeRunner, site: TestServer) -> None:
    """user:password@ in the target is sent as basic auth, as Go's client does."""
    result = await run_probe(f"http://probe:hunter2@127.0.0.1:{site.port}/basic", module())
    assert result.success, result.message


async def test_bearer_token_and_authorization(
    run_probe: ProbeRunner, site: TestServer, tmp_path: Path
) -> None:
    """bearer_token_file and authorization credentials reach the server."""
    token_file = tmp_path / "token"
    token_file.write_text("t0ken-value\n")
    custom = module(authorization=Authorization("Token", credentials_file=str(token_file)))
    result = await run_probe(str(site.make_url("/token")), custom)
    assert result.success, result.message
    bearer = module(
        bearer_token_file=str(token_file),
        fail_if_body_not_matches_regexp=(regex("(?m)^authorization=Bearer t0ken-value$"),),
    )
    result = await run_probe(str(site.make_url("/echo-headers")), bearer)
    assert result.success, result.message


async def test_missing_secret_file_fails_with_other(
    run_probe: ProbeRunner, site: TestServer, tmp_path: Path
) -> None:
    """An unreadable credentials file fails with reason other, naming the option."""
    result = await run_probe(str(site.make_url("/ok")), module(bearer_token_file=str(tmp_path / "absent")))
    assert result.reason == FailureReason.OTHER
    assert "bearer_token_file" in result.message


async def test_invalid_header_value_is_not_quoted(run_probe: ProbeRunner, site: TestServer) -> None:
    """A header value HTTP cannot carry fails with reason other, without echoing the value."""
    settings = module(headers={"X-Api-Key": Secret("sec\r\nret-value")})
    result = await run_probe(str(site.make_url("/ok")), settings)
    assert result.reason == FailureReason.OTHER
    assert "ret-value" not in result.message


# --- redirects ------------------------------------------------------------------------------


async def test_redirects_are_followed_and_counted(run_probe: ProbeRunner, site: TestServer) -> None:
    """A chain of redirects is followed; the count and summed phases are recorded."""
    result = await run_probe(str(site.make_url("/redirect/3")), module())
    assert result.success, result.message
    assert result.value("probe_http_redirects") == 4
    assert result.value("probe_http_status_code") == 200
    assert_phases_fit(result)


async def test_relative_redirect(run_probe: ProbeRunner, site: TestServer) -> None:
    """A relative Location is resolved against the current URL."""
    result = await run_probe(str(site.make_url("/nested/relative")), module())
    assert result.success, result.message
    assert result.value("probe_http_redirects") == 1


async def test_redirect_loop_fails_with_other(run_probe: ProbeRunner, site: TestServer) -> None:
    """A redirect loop stops after max_redirects with reason other."""
    result = await run_probe(str(site.make_url("/loop")), module())
    assert result.reason == FailureReason.OTHER
    assert "max_redirects (10)" in result.message
    assert result.value("probe_http_redirects") == 11
    assert result.value("probe_http_status_code") == 302


async def test_max_redirects_is_a_cap(run_probe: ProbeRunner, site: TestServer) -> None:
    """max_redirects allows that many redirects and no more."""
    url = str(site.make_url("/redirect/1"))
    assert (await run_probe(url, module(max_redirects=2))).success
    result = await run_probe(url, module(max_redirects=1))
    assert result.reason == FailureReason.OTHER
    assert result.value("probe_http_redirects") == 2


async def test_no_follow_redirects_judges_the_redirect(run_probe: ProbeRunner, site: TestServer) -> None:
    """With follow_redirects off the 302 itself is judged and counts as one redirect."""
    url = str(site.make_url("/redirect/2"))
    failed = await run_probe(url, module(follow_redirects=False))
    passed = await run_probe(url, module(follow_redirects=False, valid_status_codes=(StatusRange(302, 302),)))
    assert failed.reason == FailureReason.HTTP_STATUS
    assert passed.success, passed.message
    assert passed.value("probe_http_status_code") == 302
    assert passed.value("probe_http_redirects") == 1


@pytest.mark.parametrize(("code", "expected"), [(303, "^GET $"), (307, "^POST ping$")])
async def test_redirect_method_rules(
    run_probe: ProbeRunner, site: TestServer, code: int, expected: str
) -> None:
    """303 turns a POST into a GET without body; 307 keeps both."""
    settings = module(method="POST", body="ping", fail_if_body_not_matches_regexp=(regex(expected),))
    result = await run_probe(str(site.make_url(f"/post-redirect/{code}")), settings)
    assert result.success, result.message


async def test_cookies_survive_redirects(run_probe: ProbeRunner, site: TestServer) -> None:
    """A cookie set by a redirect is sent to the page it redirects to."""
    result = await run_probe(str(site.make_url("/cookie/set")), module())
    assert result.success, result.message
    assert result.value("probe_http_redirects") == 1


async def test_credentials_stay_on_their_host(run_probe: ProbeRunner, site: TestServer) -> None:
    """Authorization is not sent to a redirect target on another host."""
    elsewhere = f"http://localhost:{site.port}/echo-headers"
    settings = module(
        bearer_token=Secret("private-token"),
        preferred_ip_protocol="ip4",
        fail_if_body_matches_regexp=(regex("private-token"),),
        fail_if_body_not_matches_regexp=(regex(f"(?m)^host=localhost:{site.port}$"),),
    )
    result = await run_probe(str(site.make_url("/goto").with_query(url=elsewhere)), settings)
    assert result.success, result.message
    assert result.value("probe_http_redirects") == 1


class OnlyLoopbackIP:
    """A guard that allows the host 127.0.0.1 and nothing by name."""

    def allows_host(self, host: str) -> bool:
        return host == "127.0.0.1"

    def allows_address(self, host: str, address: str) -> bool:
        return address == "127.0.0.1"


async def test_guard_refuses_redirect_to_other_host(run_probe: ProbeRunner, site: TestServer) -> None:
    """With a guard, a redirect to a host it refuses is not followed."""
    elsewhere = f"http://localhost:{site.port}/ok"
    url = str(site.make_url("/goto").with_query(url=elsewhere))
    allowed = await run_probe(str(site.make_url("/redirect/1")), module(), guard=OnlyLoopbackIP())
    refused = await run_probe(url, module(), guard=OnlyLoopbackIP())
    assert allowed.success, allowed.message
    assert refused.reason == FailureReason.OTHER
    assert "redirect to localhost is outside probe_allowlist" in refused.message


class RefuseAddresses(OnlyLoopbackIP):
    """A guard that passes every host name but no address."""

    def allows_host(self, host: str) -> bool:
        return True

    def allows_address(self, host: str, address: str) -> bool:
        return False


async def test_guard_checks_resolved_addresses(run_probe: ProbeRunner, site: TestServer) -> None:
    """The guard also sees the addresses a host resolves to."""
    result = await run_probe(str(site.make_url("/ok")), module(), guard=RefuseAddresses())
    assert result.reason == FailureReason.OTHER
    assert "probe_allowlist" in result.message


# --- TLS ------------------------------------------------------------------------------------


async def test_https_records_tls_values(run_probe: ProbeRunner, tls_site: TestServer, tls: TLSConfig) -> None:
    """An HTTPS probe times the handshake and records version and certificate values."""
    result = await run_probe(str(tls_site.make_url("/ok")), module(tls_config=tls))
    assert result.success, result.message
    assert result.value("probe_http_ssl") == 1
    assert result.phases["tls"] > 0
    assert label_of(result, "probe_tls_version_info", "version") == "TLS 1.3"
    assert result.value("probe_ssl_earliest_cert_expiry") is not None
    assert_phases_fit(result)


async def test_tls_max_version(run_probe: ProbeRunner, tls_site: TestServer, tls: TLSConfig) -> None:
    """max_version TLS12 negotiates TLS 1.2."""
    config = TLSConfig(ca_file=tls.ca_file, max_version="TLS12")
    result = await run_probe(str(tls_site.make_url("/ok")), module(tls_config=config))
    assert result.success, result.message
    assert label_of(result, "probe_tls_version_info", "version") == "TLS 1.2"


async def test_fail_if_ssl(run_probe: ProbeRunner, tls_site: TestServer, tls: TLSConfig) -> None:
    """fail_if_ssl fails a TLS response with reason tls."""
    result = await run_probe(str(tls_site.make_url("/ok")), module(tls_config=tls, fail_if_ssl=True))
    assert result.reason == FailureReason.TLS
    assert result.value("probe_http_ssl") == 1


async def test_soon_expiring_certificate_expiry_is_exact(
    run_probe: ProbeRunner,
    serve: Serve,
    cert_factory: Callable[..., trustme.LeafCert],
    tls: TLSConfig,
) -> None:
    """probe_ssl_earliest_cert_expiry equals the leaf certificate's notAfter."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    cert = cert_factory(now - datetime.timedelta(days=1), now + datetime.timedelta(days=3))
    server = await serve(make_app(), server_context(cert))
    result = await run_probe(str(server.make_url("/ok")), module(tls_config=tls))
    leaf = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    assert result.success, result.message
    assert result.value("probe_ssl_earliest_cert_expiry") == leaf.not_valid_after_utc.timestamp()
    assert result.value("probe_ssl_earliest_cert_expiry") == (now + datetime.timedelta(days=3)).timestamp()


async def test_expired_certificate(
    run_probe: ProbeRunner,
    serve: Serve,
    cert_factory: Callable[..., trustme.LeafCert],
    ca_file: Path,
) -> None:
    """An expired certificate fails with reason tls unless verification is skipped."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    expired_at = now - datetime.timedelta(days=2)
    cert = cert_factory(now - datetime.timedelta(days=30), expired_at)
    server = await serve(make_app(), server_context(cert))
    url = str(server.make_url("/ok"))
    failed = await run_probe(url, module(tls_config=TLSConfig(ca_file=str(ca_file))))
    assert failed.reason == FailureReason.TLS
    assert "expired" in failed.message
    skipped = await run_probe(
        url, module(tls_config=TLSConfig(ca_file=str(ca_file), insecure_skip_verify=True))
    )
    assert skipped.success, skipped.message
    assert skipped.value("probe_ssl_earliest_cert_expiry") == expired_at.timestamp()


async def test_unknown_ca_fails_with_tls(run_probe: ProbeRunner, serve: Serve, tls: TLSConfig) -> None:
    """A certificate from a CA we do not trust fails with reason tls."""
    stranger = trustme.CA().issue_cert("127.0.0.1", "localhost")
    server = await serve(make_app(), server_context(stranger))
    url = str(server.make_url("/ok"))
    result = await run_probe(url, module(tls_config=tls))
    assert result.reason == FailureReason.TLS
    assert result.value("probe_http_status_code") == 0
    skipped = await run_probe(url, module(tls_config=TLSConfig(insecure_skip_verify=True)))
    assert skipped.success, skipped.message


async def test_server_name_must_match(run_probe: ProbeRunner, tls_site: TestServer, ca_file: Path) -> None:
    """tls_config.server_name is what the certificate is checked against."""
    good = TLSConfig(ca_file=str(ca_file), server_name="localhost")
    bad = TLSConfig(ca_file=str(ca_file), server_name="other.example")
    url = str(tls_site.make_url("/ok"))
    assert (await run_probe(url, module(tls_config=good))).success
    failed = await run_probe(url, module(tls_config=bad))
    assert failed.reason == FailureReason.TLS


@pytest.fixture
def client_cert_files(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    """A client certificate from the test CA, as cert and key files."""
    cert = ca.issue_cert("probe@outage-exporter.test")
    cert_file, key_file = tmp_path / "client.pem", tmp_path / "client.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return str(cert_file), str(key_file)


def client_cert_context(server_cert: trustme.LeafCert, ca: trustme.CA) -> ssl.SSLContext:
    context = server_context(server_cert)
    context.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(context)
    return context


@pytest.mark.parametrize("max_version", ["TLS12", "TLS13"])
async def test_client_certificate_accepted(
    run_probe: ProbeRunner,
    serve: Serve,
    server_cert: trustme.LeafCert,
    ca: trustme.CA,
    ca_file: Path,
    client_cert_files: tuple[str, str],
    max_version: Any,
) -> None:
    """cert_file and key_file are presented to a server that requires a client certificate."""
    server = await serve(make_app(), client_cert_context(server_cert, ca))
    cert_file, key_file = client_cert_files
    config = TLSConfig(ca_file=str(ca_file), cert_file=cert_file, key_file=key_file, max_version=max_version)
    result = await run_probe(str(server.make_url("/ok")), module(tls_config=config))
    assert result.success, result.message


async def test_missing_client_certificate_tls12(
    run_probe: ProbeRunner,
    serve: Serve,
    server_cert: trustme.LeafCert,
    ca: trustme.CA,
    ca_file: Path,
) -> None:
    """Under TLS 1.2 a refused client fails the handshake: reason tls."""
    server = await serve(make_app(), client_cert_context(server_cert, ca))
    config = TLSConfig(ca_file=str(ca_file), max_version="TLS12")
    result = await run_probe(str(server.make_url("/ok")), module(tls_config=config))
    assert result.reason == FailureReason.TLS


async def test_missing_client_certificate_tls13(
    run_probe: ProbeRunner,
    raw_server: RawServe,
    server_cert: trustme.LeafCert,
    ca: trustme.CA,
    ca_file: Path,
) -> None:
    """Under TLS 1.3 the refusal alert arrives after our handshake ended: still reason tls."""
    context = client_cert_context(server_cert, ca)

    # asyncio's own TLS server drops the connection without sending the alert, so this one
    # drives the handshake through memory buffers and does send it, as OpenSSL servers do.
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_side=True)
        while True:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                writer.write(outgoing.read())
                await writer.drain()
                await reader.read()  # let the probe read the alert before we hang up
                return
            writer.write(outgoing.read())
            await writer.drain()
            data = await reader.read(65536)
            if not data:
                return
            incoming.write(data)

    url = (await raw_server(refuse)).replace("http://", "https://")
    result = await run_probe(url, module(tls_config=TLSConfig(ca_file=str(ca_file))))
    assert result.reason == FailureReason.TLS
    assert "certificate required" in result.message


async def test_redirect_from_http_to_https(
    run_probe: ProbeRunner, site: TestServer, tls_site: TestServer, tls: TLSConfig
) -> None:
    """A redirect from plain HTTP to HTTPS ends over TLS; phases add up over both hops."""
    url = str(site.make_url("/goto").with_query(url=str(tls_site.make_url("/ok"))))
    result = await run_probe(url, module(tls_config=tls, fail_if_not_ssl=True))
    assert result.success, result.message
    assert result.value("probe_http_redirects") == 1
    assert result.value("probe_http_ssl") == 1
    assert result.phases["tls"] > 0
    assert_phases_fit(result)


# --- network failures and broken servers ----------------------------------------------------


async def test_unresolvable_host_fails_with_dns(run_probe: ProbeRunner) -> None:
    """A host name that cannot be resolved fails with reason dns."""
    result = await run_probe("http://bad..name/", module())
    assert result.reason == FailureReason.DNS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_refused_connection_fails_with_connect(run_probe: ProbeRunner) -> None:
    """A port nobody listens on fails with reason connect."""
    result = await run_probe(f"http://127.0.0.1:{free_port()}/", module())
    assert result.reason == FailureReason.CONNECT
    assert result.value("probe_http_status_code") == 0


async def test_ip6_preference_falls_back_to_ip4(run_probe: ProbeRunner, site: TestServer) -> None:
    """With ip6 preferred and fallback on, an IPv4-only server is still reached."""
    result = await run_probe(f"http://localhost:{site.port}/ok", module(preferred_ip_protocol="ip6"))
    assert result.success, result.message
    assert result.value("probe_ip_protocol") == 4


async def test_server_that_closes_early(run_probe: ProbeRunner, raw_server: RawServe) -> None:
    """A server that hangs up without answering fails with reason protocol."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)

    result = await run_probe(await raw_server(hang_up), module())
    assert result.reason == FailureReason.PROTOCOL
    assert "without a response" in result.message


async def test_server_that_sends_garbage(run_probe: ProbeRunner, raw_server: RawServe) -> None:
    """A response that is not HTTP fails with reason protocol."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()

    result = await run_probe(await raw_server(garbage), module())
    assert result.reason == FailureReason.PROTOCOL
    assert result.value("probe_http_status_code") == 0


async def test_truncated_body(run_probe: ProbeRunner, raw_server: RawServe) -> None:
    """A body shorter than its Content-Length fails with reason protocol."""

    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()

    result = await run_probe(await raw_server(short), module())
    assert result.reason == FailureReason.PROTOCOL
    assert result.value("probe_http_status_code") == 200
    assert result.value("probe_http_uncompressed_body_length") == len(b"only this")


async def test_oversized_head(run_probe: ProbeRunner, raw_server: RawServe) -> None:
    """Response headers beyond the head size bound fail with reason protocol."""

    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (httpclient.MAX_HEAD_BYTES + 10) + b"\r\n")
        await writer.drain()
        await reader.read()  # hold the connection open until the probe gives up

    result = await run_probe(await raw_server(huge), module())
    assert result.reason == FailureReason.PROTOCOL
    assert "too long" in result.message


async def test_http_10_response(run_probe: ProbeRunner, raw_server: RawServe) -> None:
    """An HTTP/1.0 response is read to the end of the connection and reported as 1.0."""

    async def old(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nhello from 1996")
        await writer.drain()

    url = await raw_server(old)
    result = await run_probe(url, module(valid_http_versions=("HTTP/1.0",)))
    assert result.success, result.message
    assert result.value("probe_http_version") == 1.0
    assert result.value("probe_http_content_length") == -1
    assert result.value("probe_http_uncompressed_body_length") == len(b"hello from 1996")


async def test_silent_server_times_out(run_probe: ProbeRunner, raw_server: RawServe) -> None:
    """A server that never answers is cut off by the runner with reason timeout."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the probe hangs up

    result = await run_probe(await raw_server(silent), module(), timeout=0.5)
    assert result.reason == FailureReason.TIMEOUT
    assert result.duration >= 0.5
    assert result.phases["processing"] > 0
    assert_phases_fit(result)


async def test_cancellation_propagates(raw_server: RawServe) -> None:
    """Cancelling a probe raises CancelledError instead of returning a result."""
    connected = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        await reader.read()

    request = ProbeRequest(await raw_server(silent), module(), Trace(), timeout=5.0)
    task = asyncio.create_task(http.probe_http(request))
    async with asyncio.timeout(5):
        await connected.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert request.trace.phases["connect"] > 0


@pytest.mark.parametrize(
    ("status", "headers", "head", "length"),
    [
        (200, [("content-length", "12")], False, 12),
        (200, [], False, -1),
        (200, [("content-length", "100"), ("transfer-encoding", "chunked")], False, -1),
        (204, [], False, 0),
        (304, [("content-length", "10")], False, 0),
        (200, [("content-length", "1234")], True, 1234),
        (200, [], True, -1),
    ],
)
def test_content_length_is_gos(status: int, headers: list[tuple[str, str]], head: bool, length: int) -> None:
    """probe_http_content_length is Go's resp.ContentLength, which blackbox exports."""
    assert httpclient._content_length(status, headers, head) == length


async def test_http_headers_values_secrets_and_files(
    run_probe: ProbeRunner, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    """prometheus/common's http_headers (blackbox 0.28): every value sent, files read each probe."""
    seen: list[list[str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers.getall("X-Api-Key", []))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", record)
    server = await aiohttp_server(app)
    key_file = tmp_path / "api-key.txt"
    key_file.write_text("  from-file\n")
    config = parse_config(
        "modules:\n  m:\n    prober: http\n    http:\n      headers: {X-Api-Key: plain}\n"
        "      http_headers:\n        X-Api-Key:\n          values: [v1, v2]\n"
        f"          secrets: [s3cr3t]\n          files: [{key_file}]\n"
    )
    target = f"http://127.0.0.1:{server.port}/"
    result = await run_probe(target, config.modules["m"])
    assert result.success, result.message
    assert seen == [["plain", "v1", "v2", "s3cr3t", "from-file"]]
    key_file.write_text("rotated")
    assert (await run_probe(target, config.modules["m"])).success
    assert seen[1][-1] == "rotated"  # read again at each probe, as Go does
    key_file.unlink()
    missing = await run_probe(target, config.modules["m"])
    assert missing.reason is FailureReason.OTHER
    assert missing.message == f"cannot read http_headers X-Api-Key file {key_file}: No such file or directory"
    assert "s3cr3t" not in dump_config(config)


def test_http_headers_refuse_what_prometheus_common_reserves() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(
            "modules:\n  m:\n    prober: http\n    http:\n      http_headers:\n"
            "        authorization: {values: [x]}\n        x-ok: {values: [y]}\n"
            "        user-agent: {values: [z]}\n"
        )
    assert [str(issue) for issue in err.value.issues] == [
        "modules.m.http.http_headers.authorization (line 6): setting header 'Authorization' is not allowed",
        "modules.m.http.http_headers.user-agent (line 8): setting header 'User-Agent' is not allowed",
    ]


async def test_inline_ca_cert_and_key(
    run_probe: ProbeRunner, serve: Serve, server_cert: trustme.LeafCert, ca: trustme.CA
) -> None:
    """prometheus/common's inline ca, cert and key (blackbox 0.28) work as the files do."""
    server = await serve(make_app(), client_cert_context(server_cert, ca))
    client = ca.issue_cert("probe@outage-exporter.test")
    inline = TLSConfig(
        ca=ca.cert_pem.bytes().decode(),
        cert=client.cert_chain_pems[0].bytes().decode(),
        key=Secret(client.private_key_pem.bytes().decode()),
    )
    url = str(server.make_url("/ok"))
    result = await run_probe(url, module(tls_config=inline))
    assert result.success, result.message
    # Under TLS 1.2 a refused client fails the handshake itself (1.3 says so after it).
    no_client = await run_probe(
        url, module(tls_config=TLSConfig(ca=ca.cert_pem.bytes().decode(), max_version="TLS12"))
    )
    assert no_client.reason is FailureReason.TLS
    broken = TLSConfig(ca=ca.cert_pem.bytes().decode(), cert="not a pem", key=Secret("hunter2-key"))
    failed = await run_probe(url, module(tls_config=broken))
    assert (failed.reason, failed.message) == (
        FailureReason.TLS,
        "cannot load client certificate: not a usable certificate and key",
    )


async def test_basic_auth_username_file(run_probe: ProbeRunner, serve: Serve, tmp_path: Path) -> None:
    """username_file (prometheus/common) is read at each probe, as password_file is."""
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", record)
    server = await serve(app)
    user_file = tmp_path / "user"
    user_file.write_text("probe-user\n")
    settings = module(basic_auth=BasicAuth(username_file=str(user_file), password=Secret("pw")))
    assert (await run_probe(str(server.make_url("/")), settings)).success
    assert seen == ["Basic " + base64.b64encode(b"probe-user:pw").decode()]


def test_tls_and_auth_options_of_prometheus_common_are_checked() -> None:
    """The inline/file pairs are one or the other; secret references are refused, saying why."""
    with pytest.raises(ConfigError) as err:
        parse_config(
            "modules:\n  m:\n    prober: http\n    http:\n"
            "      tls_config: {ca: x, ca_file: /y, cert: c, key_ref: k}\n"
            "      basic_auth: {username: u, username_file: /u, password_ref: p}\n"
        )
    assert [str(issue) for issue in err.value.issues] == [
        "modules.m.http.tls_config.ca (line 5): at most one of ca and ca_file may be set",
        "modules.m.http.tls_config.key_ref (line 5): secret references need a secret manager, which"
        " blackbox_exporter and this exporter do not have: use key or key_file",
        "modules.m.http.basic_auth.password_ref (line 6): secret references need a secret manager, which"
        " blackbox_exporter and this exporter do not have: use password or password_file",
        "modules.m.http.basic_auth.username (line 6): at most one of username and username_file may be set",
    ]
    with pytest.raises(ConfigError) as alone:
        parse_config("modules:\n  m:\n    prober: http\n    http:\n      tls_config: {cert_file: /c}\n")
    assert [issue.message for issue in alone.value.issues] == ["a client certificate needs key or key_file"]
