"""Tests of forward proxies in the HTTP client, through a real local proxy that records requests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import trustme
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from pytest_aiohttp import AiohttpServer

from exporter.allowlist import Allowlist
from exporter.config import dump_config, parse_config
from exporter.errors import ConfigError
from exporter.modules import FlowProbe, FlowStep, HTTPProbe, Module, StatuspageProbe, TLSConfig
from exporter.probes import http, proxy
from exporter.result import FailureReason, ProbeResult
from exporter.types import HostPattern, ProxyURL, Secret
from tests.stack import Process, free_port

ProbeRunner = Callable[..., Awaitable[ProbeResult]]
PROXY_ENV = (
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
    "REQUEST_METHOD",
)
# A name only the test proxy knows: it routes it to the local target; nothing resolves it here.
NAME = "app.test"


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class RecordingProxy:
    """A small forward proxy: CONNECT tunnels and absolute-URI requests, recorded as they come."""

    port: int = 0
    scheme: str = "http"
    seen: list[Seen] = field(default_factory=list)
    # Answer CONNECT with this status instead of opening the tunnel.
    refuse: int | None = None
    # Host names the proxy resolves itself, to the local target's port.
    routes: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def upstream(self, host: str) -> str:
        host = self.routes.get(host, host)
        # Never anywhere but loopback.
        assert host in ("127.0.0.1", "localhost"), host
        return host


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Listeners:
    """Local stream servers for one test; closing them also ends the connections they serve."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.tasks: set[asyncio.Task[Any]] = set()

    async def serve(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> int:
        """Serve ``handler`` on a loopback port, returned."""

        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.tasks.add(task)
            try:
                await handler(reader, writer)
            finally:
                self.tasks.discard(task)

        server = await asyncio.start_server(run, "127.0.0.1", 0, ssl=ssl_context)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for server in self.servers:
            await server.wait_closed()


@pytest.fixture
async def start_proxy() -> AsyncIterator[Callable[..., Awaitable[RecordingProxy]]]:
    """Starts recording proxies on 127.0.0.1 (plain or TLS) and stops them afterwards."""
    listeners = Listeners()

    async def start(ssl_context: ssl.SSLContext | None = None) -> RecordingProxy:
        state = RecordingProxy(scheme="https" if ssl_context else "http")

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            upstream: asyncio.StreamWriter | None = None
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, version = lines[0].split(" ")
                headers = [tuple(line.split(": ", 1)) for line in lines[1:] if line]
                state.seen.append(Seen(method, target, headers))  # type: ignore[arg-type]
                if method == "CONNECT":
                    if state.refuse is not None:
                        writer.write(
                            f"HTTP/1.1 {state.refuse} Forbidden\r\nContent-Length: 0\r\n\r\n".encode()
                        )
                        await writer.drain()
                        return
                    host, _, port = target.rpartition(":")
                    up_reader, upstream = await asyncio.open_connection(state.upstream(host), int(port))
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                else:
                    parts = urlsplit(target)
                    assert parts.hostname is not None
                    up_reader, upstream = await asyncio.open_connection(
                        state.upstream(parts.hostname), parts.port or 80
                    )
                    origin = parts.path + (f"?{parts.query}" if parts.query else "")
                    rest = head.split(b"\r\n", 1)[1]
                    upstream.write(f"{method} {origin} {version}\r\n".encode() + rest)
                await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer))
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                pass
            finally:
                if upstream is not None:
                    upstream.close()
                writer.close()

        state.port = await listeners.serve(handle, ssl_context)
        return state

    yield start
    await listeners.close()


async def ok(request: web.Request) -> web.Response:
    return web.Response(text=f"ok {request.host}")


@pytest.fixture
def serve(aiohttp_server: AiohttpServer) -> Callable[..., Awaitable[TestServer]]:
    async def start(ssl_context: ssl.SSLContext | None = None) -> TestServer:
        app = web.Application()
        app.router.add_get("/ok", ok)
        app.router.add_get("/api/v2/summary.json", summary)
        return await aiohttp_server(app, ssl=ssl_context)

    return start


async def summary(request: web.Request) -> web.Response:
    return web.json_response(
        {"status": {"indicator": "none", "description": "ok"}, "components": [], "incidents": []}
    )


@pytest.fixture(scope="module")
def named_cert(ca: trustme.CA) -> trustme.LeafCert:
    """A certificate for the name only the proxy resolves, and for 127.0.0.1."""
    return ca.issue_cert(NAME, "127.0.0.1", "localhost")


def context_for(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy variable of the machine running the tests may change what they see."""
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)


def module(**settings: Any) -> Module:
    settings.setdefault("preferred_ip_protocol", "ip4")
    if isinstance(settings.get("proxy_url"), str):
        settings["proxy_url"] = ProxyURL.from_yaml(settings["proxy_url"])
    return Module(prober="http", sections={"http": HTTPProbe(**settings)})


def label_of(result: ProbeResult, name: str, label: str) -> str | None:
    for sample in result.samples:
        if sample.name == name:
            return dict(sample.labels).get(label)
    return None


def fingerprint(cert: trustme.LeafCert) -> str:
    leaf = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    return leaf.fingerprint(hashes.SHA256()).hex()


# --- through the proxy --------------------------------------------------------------------------


async def test_http_target_goes_through_the_proxy_with_the_absolute_uri(
    run_probe: ProbeRunner, start_proxy: Any, serve: Any
) -> None:
    """A plain http target is asked of the proxy with the absolute URI; no CONNECT."""
    relay = await start_proxy()
    target = await serve()
    result = await run_probe(f"http://127.0.0.1:{target.port}/ok", module(proxy_url=relay.url))
    assert result.success, result.message
    named = await run_probe(f"http://localhost:{target.port}/ok", module(proxy_url=relay.url))
    assert named.success, named.message
    # As Go writes it: the URI names the Host (the name as written), not the address resolved.
    assert [(s.method, s.target) for s in relay.seen] == [
        ("GET", f"http://127.0.0.1:{target.port}/ok"),
        ("GET", f"http://localhost:{target.port}/ok"),
    ]
    assert relay.seen[1].header("Host") == [f"localhost:{target.port}"]
    assert relay.seen[0].header("Proxy-Authorization") == []
    assert set(result.phases) == set(http.PHASES)
    assert result.value("probe_http_status_code") == 200
    assert result.value("probe_ip_protocol") == 4


async def test_https_target_is_tunnelled_with_connect(
    run_probe: ProbeRunner, start_proxy: Any, serve: Any, named_cert: trustme.LeafCert, ca_file: Path
) -> None:
    """An https target is reached through CONNECT to its resolved address; TLS is the target's."""
    relay = await start_proxy()
    target = await serve(context_for(named_cert))
    settings = module(proxy_url=relay.url, tls_config=TLSConfig(ca_file=str(ca_file)))
    result = await run_probe(f"https://localhost:{target.port}/ok", settings)
    assert result.success, result.message
    assert [(s.method, s.target) for s in relay.seen] == [("CONNECT", f"127.0.0.1:{target.port}")]
    assert relay.seen[0].header("Host") == [f"127.0.0.1:{target.port}"]
    assert result.value("probe_http_ssl") == 1
    assert label_of(result, "probe_ssl_last_chain_info", "fingerprint_sha256") == fingerprint(named_cert)
    assert result.phases["tls"] > 0
    assert sum(result.phases.values()) <= result.duration


async def test_https_proxy_carries_tls_inside_tls(
    run_probe: ProbeRunner,
    start_proxy: Any,
    serve: Any,
    named_cert: trustme.LeafCert,
    server_cert: trustme.LeafCert,
    ca_file: Path,
) -> None:
    """An https:// proxy is spoken to over TLS; the TLS values are still the target's, not the proxy's."""
    relay = await start_proxy(context_for(server_cert))
    target = await serve(context_for(named_cert))
    settings = module(proxy_url=relay.url, tls_config=TLSConfig(ca_file=str(ca_file)))
    result = await run_probe(f"https://127.0.0.1:{target.port}/ok", settings)
    assert result.success, result.message
    assert [s.method for s in relay.seen] == ["CONNECT"]
    assert label_of(result, "probe_ssl_last_chain_info", "fingerprint_sha256") == fingerprint(named_cert)
    plain = await run_probe(f"http://127.0.0.1:{target.port}/ok", settings)
    assert [s.method for s in relay.seen] == ["CONNECT", "GET"]
    # The target speaks TLS, so a plain request fails there, after the proxy passed it on.
    assert not plain.success and plain.reason is not FailureReason.CONNECT


async def test_skip_resolve_phase_with_proxy_leaves_the_name_to_the_proxy(
    run_probe: ProbeRunner, start_proxy: Any, serve: Any, named_cert: trustme.LeafCert, ca_file: Path
) -> None:
    """With skip_resolve_phase_with_proxy the target's name is not looked up: the proxy gets it."""
    relay = await start_proxy()
    plain = await serve()
    secure = await serve(context_for(named_cert))
    relay.routes[NAME] = "127.0.0.1"
    settings = module(
        proxy_url=relay.url, skip_resolve_phase_with_proxy=True, tls_config=TLSConfig(ca_file=str(ca_file))
    )
    first = await run_probe(f"http://{NAME}:{plain.port}/ok", settings)
    second = await run_probe(f"https://{NAME}:{secure.port}/ok", settings)
    assert first.success, first.message
    assert second.success, second.message
    assert [(s.method, s.target) for s in relay.seen] == [
        ("GET", f"http://{NAME}:{plain.port}/ok"),
        ("CONNECT", f"{NAME}:{secure.port}"),
    ]
    assert relay.seen[0].header("Host") == [f"{NAME}:{plain.port}"]
    for result in (first, second):
        # As in blackbox: without a lookup there is no address to report.
        assert result.value("probe_dns_lookup_time_seconds") is None
        assert result.value("probe_ip_addr_hash") is None


async def test_connect_refused_by_the_proxy_is_connect(
    run_probe: ProbeRunner, start_proxy: Any, serve: Any, ca_file: Path
) -> None:
    """A proxy answering CONNECT with a non-2xx status fails the probe with reason connect."""
    relay = await start_proxy()
    relay.refuse = 403
    target = await serve()
    settings = module(proxy_url=relay.url, tls_config=TLSConfig(ca_file=str(ca_file)))
    result = await run_probe(f"https://127.0.0.1:{target.port}/ok", settings)
    assert result.reason is FailureReason.CONNECT
    assert result.message == f"proxy {relay.url} refused CONNECT to 127.0.0.1:{target.port}: 403 Forbidden"
    assert result.phases["tls"] == 0


async def test_proxy_hanging_up_on_connect_is_connect(run_probe: ProbeRunner, ca_file: Path) -> None:
    """A proxy that closes the connection instead of answering CONNECT fails with reason connect."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        settings = module(proxy_url=f"http://127.0.0.1:{port}", tls_config=TLSConfig(ca_file=str(ca_file)))
        result = await run_probe("https://127.0.0.1:9/ok", settings)
    finally:
        server.close()
        await server.wait_closed()
    assert (result.reason, result.message) == (
        FailureReason.CONNECT,
        f"proxy http://127.0.0.1:{port} closed the connection without answering CONNECT",
    )


async def test_unreachable_proxy_is_connect(run_probe: ProbeRunner, serve: Any) -> None:
    """A proxy that does not accept connections fails the probe with reason connect."""
    target = await serve()
    closed = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    result = await run_probe(
        f"http://127.0.0.1:{target.port}/ok", module(proxy_url=f"http://user:hunter2@127.0.0.1:{port}")
    )
    assert result.reason is FailureReason.CONNECT
    assert result.message.startswith(f"cannot reach proxy http://127.0.0.1:{port}: cannot connect to")
    assert "hunter2" not in result.message and "user" not in result.message


async def test_proxy_credentials_and_connect_headers_reach_the_proxy(
    run_probe: ProbeRunner, start_proxy: Any, serve: Any, ca_file: Path
) -> None:
    """User info becomes Proxy-Authorization; proxy_connect_header goes with CONNECT only."""
    relay = await start_proxy()
    target = await serve()
    settings = module(
        proxy_url=f"http://probe:pa%20ss@127.0.0.1:{relay.port}",
        proxy_connect_header={"X-Proxy-Token": (Secret("abc"), Secret("def"))},
        tls_config=TLSConfig(ca_file=str(ca_file), insecure_skip_verify=True),
    )
    await run_probe(f"https://127.0.0.1:{target.port}/ok", settings)
    await run_probe(f"http://127.0.0.1:{target.port}/ok", settings)
    connect, get = relay.seen
    expected = "Basic " + base64.b64encode(b"probe:pa ss").decode()
    assert connect.method == "CONNECT"
    assert connect.header("Proxy-Authorization") == [expected]
    assert connect.header("X-Proxy-Token") == ["abc", "def"]
    assert get.method == "GET"
    assert get.header("Proxy-Authorization") == [expected]
    assert get.header("X-Proxy-Token") == []


async def test_example_proxy_authorization_header_goes_with_connect(
    run_probe: ProbeRunner, start_proxy: Any, serve: Any, ca_file: Path
) -> None:
    """blackbox's example: a Proxy-Authorization in proxy_connect_header is sent with CONNECT."""
    relay = await start_proxy()
    target = await serve()
    settings = module(
        proxy_url=relay.url,
        proxy_connect_header={"Proxy-Authorization": (Secret("Bearer token"),)},
        tls_config=TLSConfig(ca_file=str(ca_file)),
    )
    await run_probe(f"https://127.0.0.1:{target.port}/ok", settings)
    assert relay.seen[0].header("Proxy-Authorization") == ["Bearer token"]


async def test_no_proxy_reaches_listed_hosts_directly(
    run_probe: ProbeRunner, start_proxy: Any, serve: Any
) -> None:
    """A host in no_proxy is reached directly; with no_proxy set loopback is always direct, as in Go."""
    relay = await start_proxy()
    target = await serve()
    url = f"http://127.0.0.1:{target.port}/ok"
    listed = await run_probe(url, module(proxy_url=relay.url, no_proxy="10.0.0.0/8, 127.0.0.1"))
    unlisted = await run_probe(url, module(proxy_url=relay.url, no_proxy="other.example"))
    skipped = await run_probe(
        url, module(proxy_url=relay.url, no_proxy="other.example", skip_resolve_phase_with_proxy=True)
    )
    assert listed.success and unlisted.success and skipped.success
    assert relay.seen == []
    # Reached directly, a target is resolved here and its address reported, skipping or not.
    assert listed.value("probe_ip_protocol") == skipped.value("probe_ip_protocol") == 4
    relay.routes[NAME] = "127.0.0.1"
    named = module(proxy_url=relay.url, no_proxy="other.test,.example", skip_resolve_phase_with_proxy=True)
    result = await run_probe(f"http://{NAME}:{target.port}/ok", named)
    assert result.success, result.message
    assert [s.target for s in relay.seen] == [f"http://{NAME}:{target.port}/ok"]


async def test_proxy_from_environment(
    run_probe: ProbeRunner,
    start_proxy: Any,
    serve: Any,
    monkeypatch: pytest.MonkeyPatch,
    named_cert: trustme.LeafCert,
    ca_file: Path,
) -> None:
    """HTTP_PROXY (a bare host:port is http) and HTTPS_PROXY are used by scheme; loopback is direct."""
    relay = await start_proxy()
    relay.routes[NAME] = "127.0.0.1"
    plain = await serve()
    secure = await serve(context_for(named_cert))
    monkeypatch.setenv("HTTP_PROXY", f"127.0.0.1:{relay.port}")
    monkeypatch.setenv("https_proxy", relay.url)
    monkeypatch.setenv("NO_PROXY", "other.test")
    settings = module(
        proxy_from_environment=True,
        skip_resolve_phase_with_proxy=True,
        tls_config=TLSConfig(ca_file=str(ca_file)),
    )
    first = await run_probe(f"http://{NAME}:{plain.port}/ok", settings)
    second = await run_probe(f"https://{NAME}:{secure.port}/ok", settings)
    direct = await run_probe(f"http://127.0.0.1:{plain.port}/ok", settings)
    assert first.success and second.success and direct.success, (first.message, second.message)
    assert [(s.method, s.target) for s in relay.seen] == [
        ("GET", f"http://{NAME}:{plain.port}/ok"),
        ("CONNECT", f"{NAME}:{secure.port}"),
    ]


async def test_flow_steps_and_statuspage_use_the_proxy(
    run_probe: ProbeRunner, start_proxy: Any, serve: Any
) -> None:
    """The flow and statuspage kinds send their requests through the proxy too."""
    relay = await start_proxy()
    target = await serve()
    base = f"http://127.0.0.1:{target.port}"
    proxy_url = ProxyURL.from_yaml(relay.url)
    flow = Module(
        prober="flow",
        sections={
            "flow": FlowProbe(
                steps=(FlowStep(name="home", url="/ok", proxy_url=proxy_url),), preferred_ip_protocol="ip4"
            )
        },
    )
    page = Module(
        prober="statuspage",
        sections={"statuspage": StatuspageProbe(proxy_url=proxy_url, preferred_ip_protocol="ip4")},
    )
    assert (await run_probe(base, flow)).success
    assert (await run_probe(base, page)).success
    assert [s.target for s in relay.seen] == [f"{base}/ok", f"{base}/api/v2/summary.json"]


def test_no_proxy_rules_follow_go() -> None:
    """Domains match themselves and subdomains (a leading dot: subdomains only), with ports, IPs, CIDRs."""
    choice = proxy.Choice(
        proxy.Proxy("http", "127.0.0.1", 3128),
        proxy.no_proxy_rules(
            "example.com, .sub.test, *.wild.test, api.test:8443, 10.0.0.0/8, [2001:db8::1]:80"
        ),
    )
    direct = [
        ("example.com", 80, None),
        ("www.example.com", 443, None),
        ("a.sub.test", 80, None),
        ("x.wild.test", 80, None),
        ("api.test", 8443, None),
        ("host.internal", 80, "10.1.2.3"),
        ("2001:db8::1", 80, None),
        ("localhost", 80, None),
        ("name.test", 80, "127.0.0.1"),
    ]
    proxied = [
        ("notexample.com", 80, None),
        ("sub.test", 80, None),
        ("api.test", 443, None),
        ("host.internal", 80, "192.0.2.1"),
        ("2001:db8::1", 443, None),
    ]
    assert [c for c in direct if not choice.bypassed(*c)] == []
    assert [c for c in proxied if choice.bypassed(*c)] == []
    everything = proxy.Choice(proxy.Proxy("http", "p", 1), proxy.no_proxy_rules("*"))
    assert everything.bypassed("any.where", 80, None)
    always = proxy.Choice(proxy.Proxy("http", "p", 1), None)
    assert not always.bypassed("localhost", 80, "127.0.0.1")


# --- configuration ------------------------------------------------------------------------------


def errors_of(http_section: str) -> list[str]:
    text = "modules:\n  m:\n    prober: http\n    http:\n" + "".join(
        f"      {line}\n" for line in http_section.strip().splitlines()
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return [str(issue) for issue in info.value.issues]


REFUSED = {
    "environment-and-url": (
        "proxy_from_environment: true\nproxy_url: http://127.0.0.1:3128",
        ["modules.m.http.proxy_url (line 6): cannot be set together with proxy_from_environment: choose one"],
    ),
    "no-proxy-without-url": (
        "no_proxy: example.com",
        ["modules.m.http.no_proxy (line 5): needs proxy_url: it lists the hosts reached without that proxy"],
    ),
    "no-proxy-with-environment": (
        "proxy_from_environment: true\nno_proxy: example.com",
        [
            "modules.m.http.no_proxy (line 6): cannot be set together with proxy_from_environment, "
            "which takes NO_PROXY from the environment"
        ],
    ),
    "connect-header-without-proxy": (
        "proxy_connect_header:\n  X-Token: [abc]",
        [
            "modules.m.http.proxy_connect_header (line 6): is sent only to a proxy: set proxy_url or "
            "proxy_from_environment too"
        ],
    ),
    "connect-header-not-a-list": (
        "proxy_url: http://127.0.0.1:3128\nproxy_connect_header:\n  X-Token: abc",
        ["modules.m.http.proxy_connect_header.X-Token (line 7): must be a list, got a string"],
    ),
    "socks4": (
        "proxy_url: socks4://user:pw@127.0.0.1:1080",
        [
            "modules.m.http.proxy_url (line 5): must be an http://, https://, socks5:// or socks5h:// proxy "
            "URL (of SOCKS, socks5 and socks5h only), got 'socks4://user:xxxxx@127.0.0.1:1080'"
        ],
    ),
    "no-host": (
        "proxy_url: 'http://:3128'",
        ["modules.m.http.proxy_url (line 5): must name the proxy's host, got 'http://:3128'"],
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_proxy_config_refusals(case: str) -> None:
    """Each of prometheus/common's proxy rules is refused at the option it concerns, with its line."""
    section, expected = REFUSED[case]
    assert errors_of(section) == expected


def test_blackbox_example_proxy_modules_load_and_redact() -> None:
    """blackbox's example.yml proxy modules load; /config hides the proxy password and the headers."""
    config = parse_config(
        """
modules:
  http_with_proxy:
    prober: http
    http:
      proxy_url: "http://user:hunter2@127.0.0.1:3128"
      skip_resolve_phase_with_proxy: true
  http_with_proxy_and_headers:
    prober: http
    http:
      proxy_url: "http://127.0.0.1:3128"
      proxy_connect_header:
        Proxy-Authorization:
          - Bearer token
  empty_proxy_url:
    prober: http
    http:
      proxy_url: ""
"""
    )
    first = config.modules["http_with_proxy"].section(HTTPProbe)
    assert first.skip_resolve_phase_with_proxy and first.proxied
    assert first.proxy_url is not None and first.proxy_url.reveal() == "http://user:hunter2@127.0.0.1:3128"
    assert not config.modules["empty_proxy_url"].section(HTTPProbe).proxied
    dumped = dump_config(config)
    assert "hunter2" not in dumped and "Bearer token" not in dumped
    assert "proxy_url: http://user:xxxxx@127.0.0.1:3128" in dumped
    assert "hunter2" not in repr(config.modules)


async def test_on_demand_probe_through_a_proxy_needs_a_trusted_name(
    run_probe: ProbeRunner, start_proxy: Any, serve: Any
) -> None:
    """With probe_allowlist, the proxy re-resolves names: only an address or a glob-listed name go."""
    relay = await start_proxy()
    target = await serve()
    by_network = Allowlist((HostPattern.from_yaml("127.0.0.0/8"),))
    by_glob = Allowlist((HostPattern.from_yaml("127.0.0.0/8"), HostPattern.from_yaml("localhost")))
    via = module(proxy_url=relay.url)
    refused = await run_probe(f"http://localhost:{target.port}/ok", via, guard=by_network)
    assert refused.reason is FailureReason.OTHER
    assert "the proxy would resolve it again" in refused.message
    assert relay.seen == []
    assert (await run_probe(f"http://127.0.0.1:{target.port}/ok", via, guard=by_network)).success
    assert (await run_probe(f"http://localhost:{target.port}/ok", via, guard=by_glob)).success
    assert len(relay.seen) == 2


# --- SOCKS5 -------------------------------------------------------------------------------------


@dataclass
class SocksRequest:
    """One SOCKS5 request as the server saw it."""

    methods: list[int]
    credentials: tuple[str, str] | None
    address_type: int
    host: str
    port: int


@dataclass
class SocksProxy:
    """A small SOCKS5 server (RFC 1928, RFC 1929): records requests, may ask for a password or refuse."""

    port: int = 0
    seen: list[SocksRequest] = field(default_factory=list)
    # When set, username/password authentication with these credentials is asked for when
    # offered, and is the only method accepted unless ``optional_auth``.
    users: dict[str, str] | None = None
    optional_auth: bool = False
    # Answer the connect request with this reply code instead of connecting.
    refuse: int | None = None
    routes: dict[str, str] = field(default_factory=dict)

    def url(self, scheme: str = "socks5", userinfo: str = "") -> str:
        return f"{scheme}://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}"


@pytest.fixture
async def start_socks() -> AsyncIterator[Callable[[], Awaitable[SocksProxy]]]:
    """Starts SOCKS5 servers on 127.0.0.1 and stops them afterwards."""
    listeners = Listeners()

    async def start() -> SocksProxy:
        state = SocksProxy()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            upstream: asyncio.StreamWriter | None = None
            try:
                version, count = await reader.readexactly(2)
                assert version == 5
                methods = list(await reader.readexactly(count))
                credentials = None
                if state.users is not None and (2 in methods or not state.optional_auth):
                    if 2 not in methods:
                        writer.write(b"\x05\xff")
                        return
                    writer.write(b"\x05\x02")
                    _, size = await reader.readexactly(2)
                    username = (await reader.readexactly(size)).decode()
                    (size,) = await reader.readexactly(1)
                    password = (await reader.readexactly(size)).decode()
                    credentials = (username, password)
                    good = state.users.get(username) == password
                    writer.write(b"\x01" + (b"\x00" if good else b"\x01"))
                    if not good:
                        state.seen.append(SocksRequest(methods, credentials, 0, "", 0))
                        return
                else:
                    writer.write(b"\x05\x00")
                _, command, _, kind = await reader.readexactly(4)
                assert command == 1
                if kind == 1:
                    host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
                elif kind == 4:
                    host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
                else:
                    (size,) = await reader.readexactly(1)
                    host = (await reader.readexactly(size)).decode()
                port = int.from_bytes(await reader.readexactly(2), "big")
                state.seen.append(SocksRequest(methods, credentials, kind, host, port))
                if state.refuse is not None:
                    writer.write(bytes([5, state.refuse, 0, 1, 0, 0, 0, 0, 0, 0]))
                    return
                host = state.routes.get(host, host)
                assert host in ("127.0.0.1", "localhost"), host  # never anywhere but loopback
                up_reader, upstream = await asyncio.open_connection(host, port)
                writer.write(bytes([5, 0, 0, 1, 127, 0, 0, 1]) + (1080).to_bytes(2, "big"))
                await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer))
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                pass
            finally:
                if upstream is not None:
                    upstream.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.drain()
                writer.close()

        state.port = await listeners.serve(handle)
        return state

    yield start
    await listeners.close()


async def test_socks5_carries_http_and_https_targets(
    run_probe: ProbeRunner, start_socks: Any, serve: Any, named_cert: trustme.LeafCert, ca_file: Path
) -> None:
    """socks5:// tunnels both schemes to the resolved address; the request inside is origin-form."""
    relay = await start_socks()
    plain = await serve()
    secure = await serve(context_for(named_cert))
    settings = module(proxy_url=relay.url(), tls_config=TLSConfig(ca_file=str(ca_file)))
    first = await run_probe(f"http://localhost:{plain.port}/ok", settings)
    second = await run_probe(f"https://localhost:{secure.port}/ok", settings)
    assert first.success, first.message
    assert second.success, second.message
    assert [(r.methods, r.credentials, r.address_type, r.host, r.port) for r in relay.seen] == [
        ([0], None, 1, "127.0.0.1", plain.port),
        ([0], None, 1, "127.0.0.1", secure.port),
    ]
    # The target saw an ordinary request: the Host is the name, the path origin-form.
    assert first.value("probe_http_content_length") == len(f"ok localhost:{plain.port}")
    assert label_of(second, "probe_ssl_last_chain_info", "fingerprint_sha256") == fingerprint(named_cert)
    assert set(first.phases) == set(http.PHASES)
    assert first.phases["connect"] > 0 and second.phases["tls"] > 0
    assert sum(second.phases.values()) <= second.duration


async def test_socks5h_with_skip_resolve_sends_the_name(
    run_probe: ProbeRunner, start_socks: Any, serve: Any, named_cert: trustme.LeafCert, ca_file: Path
) -> None:
    """With skip_resolve_phase_with_proxy the SOCKS proxy gets the name (type 3) and resolves it."""
    relay = await start_socks()
    relay.routes[NAME] = "127.0.0.1"
    secure = await serve(context_for(named_cert))
    for scheme in ("socks5", "socks5h"):
        settings = module(
            proxy_url=relay.url(scheme),
            skip_resolve_phase_with_proxy=True,
            tls_config=TLSConfig(ca_file=str(ca_file)),
        )
        result = await run_probe(f"https://{NAME}:{secure.port}/ok", settings)
        assert result.success, result.message
        assert result.value("probe_dns_lookup_time_seconds") is None
    assert [(r.address_type, r.host, r.port) for r in relay.seen] == [(3, NAME, secure.port)] * 2


async def test_socks5_username_and_password(run_probe: ProbeRunner, start_socks: Any, serve: Any) -> None:
    """User info is offered as RFC 1929 credentials; wrong ones fail with reason connect, unshown."""
    relay = await start_socks()
    relay.users = {"probe": "pa ss"}
    target = await serve()
    good = await run_probe(
        f"http://127.0.0.1:{target.port}/ok", module(proxy_url=relay.url(userinfo="probe:pa%20ss"))
    )
    assert good.success, good.message
    bad = await run_probe(
        f"http://127.0.0.1:{target.port}/ok", module(proxy_url=relay.url(userinfo="probe:hunter2"))
    )
    none = await run_probe(f"http://127.0.0.1:{target.port}/ok", module(proxy_url=relay.url()))
    assert [(r.methods, r.credentials) for r in relay.seen] == [
        ([0, 2], ("probe", "pa ss")),
        ([0, 2], ("probe", "hunter2")),
    ]
    assert (bad.reason, bad.message) == (
        FailureReason.CONNECT,
        f"SOCKS proxy socks5://127.0.0.1:{relay.port} refused the username and password",
    )
    assert (none.reason, none.message) == (
        FailureReason.CONNECT,
        f"SOCKS proxy socks5://127.0.0.1:{relay.port} accepts none of the authentication methods offered",
    )


async def test_socks5_refusal_names_the_reply_code(
    run_probe: ProbeRunner, start_socks: Any, serve: Any, ca_file: Path
) -> None:
    """A SOCKS reply other than success fails with reason connect and the code's meaning."""
    relay = await start_socks()
    relay.refuse = 2
    target = await serve()
    settings = module(
        proxy_url=relay.url(userinfo="probe:hunter2"), tls_config=TLSConfig(ca_file=str(ca_file))
    )
    result = await run_probe(f"https://127.0.0.1:{target.port}/ok", settings)
    assert result.reason is FailureReason.CONNECT
    assert result.message == (
        f"SOCKS proxy socks5://127.0.0.1:{relay.port} refused the connection to 127.0.0.1:{target.port}: "
        "reply 2 (connection not allowed by ruleset)"
    )
    assert "hunter2" not in result.message
    assert result.phases["tls"] == 0
    assert len(relay.seen) == 1


async def test_socks_proxy_from_the_environment(
    run_probe: ProbeRunner, start_socks: Any, serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY naming socks5:// is used as Go uses it; socks4:// is refused with a message."""
    relay = await start_socks()
    target = await serve()
    settings = module(proxy_from_environment=True)
    monkeypatch.setenv("HTTP_PROXY", relay.url())
    # Go never proxies loopback from the environment: a name the proxy alone resolves is needed.
    relay.routes[NAME] = "127.0.0.1"
    skip = module(proxy_from_environment=True, skip_resolve_phase_with_proxy=True)
    result = await run_probe(f"http://{NAME}:{target.port}/ok", skip)
    assert result.success, result.message
    assert [(r.host, r.port) for r in relay.seen] == [(NAME, target.port)]
    monkeypatch.setenv("HTTP_PROXY", f"socks4://127.0.0.1:{relay.port}")
    refused = await run_probe(f"http://{NAME}:{target.port}/ok", settings)
    assert (refused.reason, refused.message) == (
        FailureReason.OTHER,
        "HTTP_PROXY names a socks4 proxy: only socks5 and socks5h are supported",
    )


def test_socks_proxy_urls_load_and_redact() -> None:
    """socks5:// and socks5h:// load with their credentials; /config hides the password."""
    config = parse_config(
        """
modules:
  a:
    prober: http
    http:
      proxy_url: "socks5://user:hunter2@127.0.0.1:1080"
  b:
    prober: http
    http:
      proxy_url: "socks5h://127.0.0.1"
"""
    )
    assert proxy.parse_proxy("socks5h://127.0.0.1", "proxy_url") == proxy.Proxy("socks5h", "127.0.0.1", 1080)
    dumped = dump_config(config)
    assert "hunter2" not in dumped
    assert "proxy_url: socks5://user:xxxxx@127.0.0.1:1080" in dumped


SOCKS_PARITY = {
    # module: the http settings (blackbox's format), the target's scheme and host
    "socks5_resolved": ({"proxy_url": "socks5://probe:pw@127.0.0.1:{port}"}, "http", "localhost"),
    "socks5_skip_resolve": (
        {"proxy_url": "socks5://127.0.0.1:{port}", "skip_resolve_phase_with_proxy": True},
        "http",
        "localhost",
    ),
    "socks5_https": (
        {"proxy_url": "socks5://127.0.0.1:{port}", "tls_config": {"insecure_skip_verify": True}},
        "https",
        "localhost",
    ),
}


async def test_socks_requests_match_blackbox(
    run_probe: ProbeRunner,
    start_socks: Any,
    serve: Any,
    named_cert: trustme.LeafCert,
    blackbox_binary: str,
    tmp_path: Path,
) -> None:
    """What the SOCKS proxy is asked (methods, credentials, address or name, port) is what blackbox asks."""
    relay = await start_socks()
    relay.users, relay.optional_auth = {"probe": "pw"}, True
    targets = {"http": await serve(), "https": await serve(context_for(named_cert))}
    modules = {
        name: {
            "prober": "http",
            "http": {
                "preferred_ip_protocol": "ip4",
                **{k: v.format(port=relay.port) if isinstance(v, str) else v for k, v in settings.items()},
            },
        }
        for name, (settings, _, _) in SOCKS_PARITY.items()
    }
    config = tmp_path / "blackbox.yml"
    config.write_text(yaml.safe_dump({"modules": modules}), encoding="utf-8")
    port = free_port()
    theirs = Process(
        "blackbox",
        [blackbox_binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"],
        f"http://127.0.0.1:{port}",
        tmp_path,
    )
    try:
        await asyncio.to_thread(theirs.wait_ready, "/-/healthy")
        async with aiohttp.ClientSession() as session:
            for name, (_, scheme, host) in SOCKS_PARITY.items():
                target = f"{scheme}://{host}:{targets[scheme].port}/ok"
                async with session.get(
                    f"{theirs.url}/probe", params={"target": target, "module": name}
                ) as answer:
                    assert "\nprobe_success 1" in await answer.text(), name
    finally:
        theirs.stop()
    theirs_seen = [(r.methods, r.credentials, r.address_type, r.host, r.port) for r in relay.seen]
    relay.seen.clear()
    loaded = parse_config(yaml.safe_dump({"modules": modules}))
    for name, (_, scheme, host) in SOCKS_PARITY.items():
        result = await run_probe(f"{scheme}://{host}:{targets[scheme].port}/ok", loaded.modules[name])
        assert result.success, (name, result.message)
    ours_seen = [(r.methods, r.credentials, r.address_type, r.host, r.port) for r in relay.seen]
    assert ours_seen == theirs_seen
    assert ours_seen == [
        ([0, 2], ("probe", "pw"), 1, "127.0.0.1", targets["http"].port),
        ([0], None, 3, "localhost", targets["http"].port),
        ([0], None, 1, "127.0.0.1", targets["https"].port),
    ]
