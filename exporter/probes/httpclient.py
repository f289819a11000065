"""The HTTP/1.1 client the HTTP-speaking probes share: redirects, cookies, decoding, checks.

The http, flow and statuspage probes fetch with it; websocket and grpc take its URL parsing
and user agent. Every request opens a fresh connection and sends ``Connection: close``, as
blackbox does; the semantics are listed in the http probe's module.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import functools
import ssl
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from types import MappingProxyType
from urllib.parse import quote, urljoin, urlsplit

import brotli  # type: ignore[import-untyped]

from exporter import __version__, cel, offloop
from exporter.allowlist import parse_ip
from exporter.modules import HTTPProbe, OAuth2
from exporter.probes import http1, net, oauth2
from exporter.probes import proxy as proxies
from exporter.probes.cookies import CookieJar
from exporter.probes.net import ProbeFailure
from exporter.result import FailureReason, Labels, MetricFamily, Trace
from exporter.types import read_secret_file

PHASES = ("resolve", "connect", "tls", "processing", "transfer")

# What the http client writes; http, flow and statuspage declare them.
HTTP_METRICS = (
    MetricFamily(
        "probe_http_duration_seconds",
        "Duration of each HTTP phase, summed over redirects.",
        ("phase",),
    ),
    MetricFamily("probe_http_status_code", "Status code of the final HTTP response."),
    MetricFamily("probe_http_version", "HTTP version of the final response."),
    MetricFamily("probe_http_redirects", "Number of redirects followed."),
    MetricFamily("probe_http_ssl", "1 if the final response came over TLS."),
    MetricFamily("probe_http_content_length", "Content length of the response body, -1 when unknown."),
    MetricFamily("probe_http_uncompressed_body_length", "Length of the response body after decompression."),
    MetricFamily(
        "probe_http_last_modified_timestamp_seconds",
        "Last-Modified header of the response, as a unix time.",
    ),
)
USER_AGENT = f"outage-exporter/{__version__}"
# A response head bigger than this is hostile or broken; blackbox (Go) allows about 1 MiB.
MAX_HEAD_BYTES = 64 * 1024
READ_SIZE = 64 * 1024
# Go's client (and so blackbox) gives up after this many 1xx responses to one request.
MAX_INFORMATIONAL = 5
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# Go drops these on a redirect to another domain; we do the same for the ones we add too.
SENSITIVE_HEADERS = frozenset({"authorization", "www-authenticate", "cookie", "cookie2"})
# We frame the request body ourselves, so a configured value could only corrupt it.
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})
# blackbox always exports these, 0 until the probe learns better.
DEFAULT_GAUGES = (
    "probe_http_status_code",
    "probe_http_version",
    "probe_http_redirects",
    "probe_http_ssl",
    "probe_http_content_length",
    "probe_http_uncompressed_body_length",
    "probe_failed_due_to_regex",
)
FIRST_HOP_GAUGES = ("probe_dns_lookup_time_seconds", "probe_ip_protocol", "probe_ip_addr_hash")


_DEFAULT_SAMPLES: Mapping[tuple[str, Labels], float] = MappingProxyType(
    {(name, ()): 0.0 for name in DEFAULT_GAUGES}
)


def record_defaults(trace: Trace) -> None:
    """Start a trace as blackbox starts an HTTP probe: every phase and gauge at 0."""
    trace.set_defaults(PHASES, _DEFAULT_SAMPLES)


@dataclass(frozen=True, slots=True)
class URL:
    """A parsed http(s) URL, split the way the request needs it."""

    scheme: str
    host: str
    port: int
    # host[:port] as written in the URL, without user info: the Host header.
    authority: str
    path: str
    # What goes on the request line: path and query, percent-encoded.
    target: str
    username: str
    password: str

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    def __str__(self) -> str:
        # For messages: no user info and no query, either may carry credentials.
        return f"{self.scheme}://{self.authority}{self.path}"


def with_scheme(target: str) -> str:
    if target.lower().startswith(("http://", "https://")):
        return target
    return "http://" + target


_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


# A scheduled service parses the same target every run; URL objects are immutable.
@functools.lru_cache(maxsize=4096)
def parse_url(text: str) -> URL:
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as err:
        raise ProbeFailure(FailureReason.OTHER, f"invalid URL: {err}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ProbeFailure(FailureReason.OTHER, f"unsupported URL scheme {scheme!r}")
    host = parts.hostname or ""
    if not host:
        raise ProbeFailure(FailureReason.OTHER, "URL has no host")
    authority = parts.netloc.rpartition("@")[2]
    try:
        authority.encode("ascii")
    except UnicodeError:
        try:
            idna = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ProbeFailure(FailureReason.DNS, f"invalid host name {host!r}") from None
        authority = idna if parts.port is None else f"{idna}:{parts.port}"
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    target = path + ("?" + quote(parts.query, safe=_PATH_SAFE + "?") if parts.query else "")
    return URL(
        scheme=scheme,
        host=host,
        port=port or (443 if scheme == "https" else 80),
        authority=authority,
        path=path,
        target=target,
        username=parts.username or "",
        password=parts.password or "",
    )


def _unreachable(proxy: proxies.Proxy, failure: ProbeFailure) -> ProbeFailure:
    return ProbeFailure(FailureReason.CONNECT, f"cannot reach proxy {proxy}: {failure.message}")


def _host_text(host: str) -> str:
    """A host as it goes before ``:port``: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _same_site(host: str, first: str) -> bool:
    """Go's rule for keeping credentials on a redirect: the same host or a subdomain of it."""
    return host == first or host.endswith("." + first)


@dataclass(frozen=True, slots=True)
class Response:
    """What one round trip returned; the body only for the response the probe judges."""

    url: URL
    status: int
    version: str
    headers: tuple[tuple[str, str], ...]
    body: Body | None = None

    def values(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key == name]

    def location(self) -> str | None:
        if self.status not in REDIRECT_CODES:
            return None
        values = self.values("location")
        return values[0] if values and values[0].strip() else None


@dataclass(frozen=True, slots=True)
class Body:
    """A response body as far as it was read; ``error`` says why reading stopped early."""

    data: bytes | None
    error: ProbeFailure | None


class HTTPClient:
    """One request as an HTTP probe makes it: the redirect loop, one fresh connection per hop.

    ``fetch`` returns the final response and ``judge`` applies blackbox's checks to it; the other
    probe kinds that speak HTTP (flow, statuspage) use the two separately. A shared ``jar`` carries
    cookies from one request to the next; ``keep_body`` keeps the final body for the caller even
    when no regular expression needs it.
    """

    def __init__(
        self,
        settings: HTTPProbe,
        trace: Trace,
        guard: net.TargetGuard | None = None,
        jar: CookieJar | None = None,
        keep_body: bool = False,
    ) -> None:
        self.trace = trace
        self.settings = settings
        self.guard = guard
        self.keep_body = keep_body
        self.limit = self.settings.effective_body_size_limit
        self.jar = jar if jar is not None else CookieJar()
        self._ssl_context: ssl.SSLContext | None = None
        self._first_hop: dict[str, float] | None = None

    async def fetch(self, target: str) -> Response:
        """Send the request to ``target``, following redirects as configured; the final response."""
        settings = self.settings
        first = url = parse_url(with_scheme(target))
        method = settings.method
        body = self._request_body()
        authorization = await self._authorization(first)
        host_header = self._configured_host()
        redirects = 0
        while True:
            response = await self._exchange(
                url, method, body, host_header or url.authority, authorization, first
            )
            location = response.location()
            if location is None:
                break
            redirects += 1
            self.trace.set("probe_http_redirects", redirects)
            if not settings.redirects_allowed:
                break
            if redirects > settings.max_redirects:
                raise ProbeFailure(
                    FailureReason.OTHER,
                    f"stopped at redirect {redirects} from {url}: more than max_redirects "
                    f"({settings.max_redirects})",
                )
            url = self._follow(url, location)
            # Go's client turns these into a GET without a body; 307 and 308 keep both.
            if response.status in (301, 302, 303) and method not in ("GET", "HEAD"):
                method, body = "GET", b""
            # Like Go, a configured Host only survives a redirect that stays on the same URL host.
            if urlsplit(location.strip()).netloc:
                host_header = None
        return response

    def _follow(self, url: URL, location: str) -> URL:
        # Rebuild the base without user info: it must never leak into the next URL.
        base = f"{url.scheme}://{url.authority}{url.target}"
        try:
            return parse_url(urljoin(base, location.strip()))
        except ProbeFailure as failure:
            raise ProbeFailure(FailureReason.OTHER, f"bad redirect from {url}: {failure.message}") from None

    def _configured_host(self) -> str | None:
        for name, value in self.settings.headers.items():
            if name.lower() == "host":
                return value.reveal()
        return None

    def _request_body(self) -> bytes:
        if self.settings.body_file:
            try:
                with open(self.settings.body_file, "rb") as file:
                    return file.read()
            except OSError as err:
                raise ProbeFailure(
                    FailureReason.OTHER, f"cannot read body_file: {err.strerror or err}"
                ) from None
        return self.settings.body.encode("utf-8")

    async def _authorization(self, first: URL) -> str | None:
        """The Authorization value the settings (or the URL's user info) ask for."""
        settings = self.settings
        if settings.oauth2 is not None:
            return await oauth2.authorization(settings.oauth2, self._post_token)
        if settings.basic_auth is not None:
            auth = settings.basic_auth
            password = auth.password.reveal() if auth.password is not None else ""
            if auth.password_file:
                password = _secret_file(auth.password_file, "basic_auth.password_file")
            username = auth.username
            if auth.username_file:
                username = _secret_file(auth.username_file, "basic_auth.username_file")
            return _basic(username, password)
        if settings.bearer_token is not None:
            return f"Bearer {settings.bearer_token.reveal()}"
        if settings.bearer_token_file:
            return f"Bearer {_secret_file(settings.bearer_token_file, 'bearer_token_file')}"
        if settings.authorization is not None:
            authz = settings.authorization
            credentials = authz.credentials.reveal() if authz.credentials is not None else ""
            if authz.credentials_file:
                credentials = _secret_file(authz.credentials_file, "authorization.credentials_file")
            return f"{authz.type or 'Bearer'} {credentials}"
        if first.username or first.password:
            return _basic(first.username, first.password)
        return None

    def _headers(
        self,
        url: URL,
        method: str,
        host_header: str,
        authorization: str | None,
        first: URL,
        body: bytes,
    ) -> list[tuple[bytes, bytes]]:
        settings = self.settings
        headers: dict[str, tuple[str, str]] = {"user-agent": ("User-Agent", USER_AGENT)}
        if settings.compression:
            headers["accept-encoding"] = ("Accept-Encoding", settings.compression)
        if authorization is not None:
            headers["authorization"] = ("Authorization", authorization)
        # Configured headers win over ours, as in blackbox (an explicit Authorization included).
        for name, value in settings.headers.items():
            key = name.lower()
            if key != "host" and key not in FRAMING_HEADERS:
                headers[key] = (name, value.reveal())
        # http_headers (prometheus/common) are added after, each value its own line, as Go adds them.
        added = [(name, value) for name, value in self._http_headers() if name.lower() != "host"]
        if not _same_site(url.host, first.host):
            for key in SENSITIVE_HEADERS:
                headers.pop(key, None)
            added = [(name, value) for name, value in added if name.lower() not in SENSITIVE_HEADERS]
        cookies = self.jar.header(url)
        if cookies:
            configured = headers.get("cookie", ("Cookie", ""))[1]
            headers["cookie"] = ("Cookie", f"{configured}; {cookies}" if configured else cookies)
        headers.setdefault("connection", ("Connection", "close"))
        if body or method.upper() in ("POST", "PUT", "PATCH"):
            headers["content-length"] = ("Content-Length", str(len(body)))
        # Go sends header values as UTF-8 bytes; so do we.
        return [
            (name.encode("ascii"), value.encode("utf-8"))
            for name, value in [("Host", host_header), *headers.values(), *added]
        ]

    def _http_headers(self) -> list[tuple[str, str]]:
        lines: list[tuple[str, str]] = []
        for name, header in self.settings.http_headers.items():
            lines.extend((name, value) for value in header.values)
            lines.extend((name, secret.reveal()) for secret in header.secrets)
            for path in header.files:
                lines.append((name, _secret_file(path, f"http_headers {name} file {path}").strip()))
        return lines

    async def _post_token(
        self, config: OAuth2, form: Mapping[str, str], basic: tuple[str, str] | None
    ) -> oauth2.TokenAnswer:
        """One token request with this client's machinery, on a trace of its own.

        Its time is not in the probe's phases, but it runs within the probe's timeout.
        """
        settings = oauth2.request_settings(config, form, basic, self.settings)
        # Taken as written, as Go does: no scheme is added to a token_url, unlike a target.
        parse_url(config.token_url)
        client = HTTPClient(settings, Trace(self.trace.clock), keep_body=True)
        response = await client.fetch(config.token_url)
        body = response.body
        if body is not None and body.error is not None:
            raise body.error
        content_type = next(iter(response.values("content-type")), "")
        data = (body.data if body is not None else None) or b""
        return oauth2.TokenAnswer(response.status, content_type, data)

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = net.shared_ssl_context(self.settings.tls_config, ("http/1.1",))
        return self._ssl_context

    def _check_host(self, url: URL, first: URL) -> None:
        guard = self.guard
        if guard is not None and not guard.allows_host(url.host):
            what = "target host" if url is first else "redirect to"
            raise ProbeFailure(FailureReason.OTHER, f"{what} {url.host} is outside probe_allowlist")

    def _check_proxied(self, url: URL) -> None:
        """An on-demand probe through a proxy: the proxy resolves the name again, by its own DNS.

        So only an address, or a name a probe_allowlist glob trusts wherever it resolves, may go
        through it; a name allowed for its addresses could point elsewhere by then.
        """
        assert self.guard is not None
        if parse_ip(url.host) is None and not self.guard.allows_address(url.host, ""):
            raise ProbeFailure(
                FailureReason.OTHER,
                f"{url.host} is allowed by probe_allowlist for its addresses only, and the proxy would"
                " resolve it again: list it with a host glob to probe it through the proxy",
            )

    async def _exchange(
        self,
        url: URL,
        method: str,
        body: bytes,
        host_header: str,
        authorization: str | None,
        first: URL,
    ) -> Response:
        """One request on a fresh connection, with every phase timed."""
        self._check_host(url, first)
        conn = http1.ResponseReader(MAX_HEAD_BYTES, head_request=method == "HEAD")
        headers = self._headers(url, method, host_header, authorization, first, body)
        try:
            payload = http1.request(method, url.target, headers, body)
        except http1.LocalProtocolError:
            # Not the offending value itself: it may be a credential.
            raise ProbeFailure(
                FailureReason.OTHER,
                "cannot build the request: the method, Host or a header is not valid HTTP",
            ) from None
        settings = self.settings
        choice = proxies.choose(settings, url.scheme) if settings.proxied else None
        try:
            address: str | None = None
            addresses: list[net.Address] = []
            if choice is None or not settings.skip_resolve_phase_with_proxy:
                addresses = await self._resolve(url.host, self.trace)
                address = addresses[0].ip
            elif self.guard is not None:
                # The proxy resolves the name, but probe_allowlist must still see where it points.
                await self._resolve(url.host, Trace(self.trace.clock))
            if choice is not None and choice.bypassed(url.host, url.port, address):
                choice = None
            if choice is not None and self.guard is not None:
                self._check_proxied(url)
            if choice is None:
                if not addresses:
                    addresses = await self._resolve(url.host, self.trace)
                reader, writer = await net.connect(addresses, url.port, self.trace)
            else:
                reader, writer = await self._through_proxy(choice.proxy, url, address)
        finally:
            self._keep_first_hop_values()
        try:
            if choice is not None and not url.tls and not choice.proxy.socks:
                payload = self._proxy_request(choice.proxy, url, host_header, method, headers, body)
            if url.tls:
                configured = settings.tls_config.server_name
                same_host = url.authority == first.authority
                server_name = configured if configured and same_host else url.host
                await net.start_tls(writer, self._tls_context(), server_name, self.trace)
            keep_body = (
                self.keep_body
                or bool(settings.fail_if_body_matches_regexp or settings.fail_if_body_not_matches_regexp)
                or has_cel(settings)
            )
            exchange = _Exchange(conn, reader, writer, self.trace, self.limit, keep_body)
            response = await exchange.round_trip(url, payload, self._wants_body)
        finally:
            # Nothing more is needed from this connection, and a polite close could wait on a
            # peer that never answers; TLS close_notify is not worth that.
            writer.transport.abort()
        self.jar.store(url, response.headers)
        return response

    async def _resolve(self, host: str, trace: Trace) -> list[net.Address]:
        settings = self.settings
        return await net.resolve(
            host, settings.preferred_ip_protocol, settings.ip_protocol_fallback, trace, self.guard
        )

    async def _through_proxy(
        self, proxy: proxies.Proxy, url: URL, address: str | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to ``proxy``, tunnelled to the target with CONNECT for an https URL, or
        with SOCKS5 for any URL.

        Looking up the proxy's name is part of ``resolve``; reaching the proxy (TCP, TLS to an
        https proxy) and its answer to CONNECT or to the SOCKS handshake are ``connect``. The
        proxy's own values (address, certificate) are never recorded: they would pass for the
        target's. Any failure on the way is ``connect``.
        """
        trace = self.trace
        scratch = Trace(trace.clock)
        settings = self.settings
        start = trace.elapsed()
        try:
            found = await net.resolve(
                proxy.host, settings.preferred_ip_protocol, True, scratch, None, phase=None
            )
        except ProbeFailure as failure:
            raise _unreachable(proxy, failure) from None
        finally:
            trace.add_phase("resolve", trace.elapsed() - start)
        with trace.phase("connect"):
            try:
                reader, writer = await net.connect(found, proxy.port, scratch, phase=None)
            except ProbeFailure as failure:
                raise _unreachable(proxy, failure) from None
            try:
                if proxy.tls:
                    with net.map_exceptions(
                        {
                            ssl.SSLError: (
                                FailureReason.CONNECT,
                                lambda err: f"TLS with proxy {proxy} failed: {net.tls_detail(err)}",
                            ),
                            OSError: (
                                FailureReason.CONNECT,
                                lambda err: f"TLS with proxy {proxy} failed: {net.why(err)}",
                            ),
                        }
                    ):
                        await writer.start_tls(self._tls_context(), server_hostname=proxy.host)
                if proxy.socks:
                    # As CONNECT: the resolved address when there is one, else the name.
                    await proxies.socks_connect(reader, writer, proxy, address or url.host, url.port)
                elif url.tls:
                    # CONNECT names host:port always, the resolved address when there is one.
                    authority = f"{_host_text(address or url.host)}:{url.port}"
                    await proxies.tunnel(reader, writer, proxy, authority, self._connect_headers(proxy))
            except BaseException:
                writer.transport.abort()
                raise
        return reader, writer

    def _connect_headers(self, proxy: proxies.Proxy) -> list[tuple[bytes, bytes]]:
        headers = [(b"User-Agent", USER_AGENT.encode("ascii"))]
        credentials = proxy.authorization
        for name, values in self.settings.proxy_connect_header.items():
            if credentials is not None and name.lower() == "proxy-authorization":
                continue  # Go lets the proxy URL's user info win
            headers += [(name.encode("ascii"), value.reveal().encode("utf-8")) for value in values]
        if credentials is not None:
            headers.append((b"Proxy-Authorization", credentials.encode("ascii")))
        return headers

    def _proxy_request(
        self,
        proxy: proxies.Proxy,
        url: URL,
        host_header: str,
        method: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> bytes:
        """A plain http request as a proxy takes it: the absolute URI, no CONNECT.

        As Go writes it, the URI's authority is the Host header's value (the name, or a
        configured Host), whatever address was resolved here.
        """
        credentials = proxy.authorization
        if credentials is not None:
            headers = [(k, v) for k, v in headers if k.lower() != b"proxy-authorization"]
            headers.append((b"Proxy-Authorization", credentials.encode("ascii")))
        # The origin-form request was built (and checked) already; only the target changes.
        try:
            return http1.request(method, f"http://{host_header}{url.target}", headers, body)
        except http1.LocalProtocolError:
            raise ProbeFailure(
                FailureReason.OTHER, "cannot build the request: the Host is not valid in a URI"
            ) from None

    def _wants_body(self, status: int, headers: Sequence[tuple[str, str]]) -> bool:
        # A redirect's body is never read: a followed one is left for the next hop, and one not
        # followed ends the probe as in blackbox, whose client has closed that body (length 0).
        has_location = any(k == "location" and v.strip() for k, v in headers)
        return not (status in REDIRECT_CODES and has_location)

    def _keep_first_hop_values(self) -> None:
        """blackbox reports the first lookup; later hops' lookups must not replace it."""
        if self._first_hop is None:
            self._first_hop = {}
            for name in FIRST_HOP_GAUGES:
                value = self.trace.get(name)
                if value is not None:
                    self._first_hop[name] = value
        else:
            for name, value in self._first_hop.items():
                self.trace.set(name, value)

    async def judge(self, response: Response) -> None:
        """Apply blackbox's checks to the final response, in blackbox's order."""
        settings = self.settings
        trace = self.trace
        valid = settings.valid_status_codes
        if valid:
            if not any(response.status in codes for codes in valid):
                wanted = ", ".join(str(codes) for codes in valid)
                raise ProbeFailure(
                    FailureReason.HTTP_STATUS,
                    f"status code {response.status} is not in valid_status_codes ({wanted})",
                )
        elif not 200 <= response.status <= 299:
            raise ProbeFailure(FailureReason.HTTP_STATUS, f"status code {response.status} is not 2xx")
        problem = _header_problem(response, settings)
        if problem is not None:
            trace.set("probe_failed_due_to_regex", 1)
            raise ProbeFailure(FailureReason.HEADER, problem)
        body = response.body
        if body is not None and body.error is not None:
            raise body.error
        if body is not None and body.data is not None:
            problem = await _body_problem(body.data, settings)
            if problem is not None:
                trace.set("probe_failed_due_to_regex", 1)
                raise ProbeFailure(FailureReason.BODY, problem)
            problem = await cel.check_body(
                body.data, settings.fail_if_body_json_matches_cel, settings.fail_if_body_json_not_matches_cel
            )
            if problem is not None:
                trace.set("probe_failed_due_to_cel", 1)
                raise ProbeFailure(FailureReason.BODY, problem)
        version = f"HTTP/{response.version}"
        if settings.valid_http_versions and version not in settings.valid_http_versions:
            wanted = ", ".join(settings.valid_http_versions)
            raise ProbeFailure(FailureReason.PROTOCOL, f"{version} is not in valid_http_versions ({wanted})")
        if settings.fail_if_ssl and response.url.tls:
            raise ProbeFailure(FailureReason.TLS, "final response came over TLS (fail_if_ssl)")
        if settings.fail_if_not_ssl and not response.url.tls:
            raise ProbeFailure(FailureReason.TLS, "final response did not come over TLS (fail_if_not_ssl)")


WantsBody = Callable[[int, Sequence[tuple[str, str]]], bool]


class _Exchange:
    """Sends one request and reads its response, timing processing and transfer."""

    def __init__(
        self,
        conn: http1.ResponseReader,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        trace: Trace,
        limit: int,
        keep_body: bool,
    ) -> None:
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self.trace = trace
        self.limit = limit
        self.keep_body = keep_body

    async def round_trip(self, url: URL, payload: bytes, wants_body: WantsBody) -> Response:
        trace = self.trace
        # blackbox's processing runs from having a connection to the first response byte.
        with trace.phase("processing"):
            await self._send(payload)
            data = await self._read(READ_SIZE, "before the response")
        if not data:
            raise ProbeFailure(
                FailureReason.PROTOCOL, f"{url.authority} closed the connection without a response"
            )
        with trace.phase("transfer"):
            self.conn.receive_data(data)
            head = await self._head()
            version = head.http_version.decode("ascii", "replace")
            headers = tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in head.headers)
            _record_head(trace, url, head.status_code, version, headers, self.conn.head_request)
            body = None
            if wants_body(head.status_code, headers):
                body = await self._body(headers)
                _record_last_modified(trace, headers)
        return Response(url, head.status_code, version, headers, body)

    async def _send(self, payload: bytes) -> None:
        try:
            self.writer.write(payload)
            # A small request leaves the buffer at once; draining then would only cost a turn.
            if self.writer.transport.get_write_buffer_size():
                await self.writer.drain()
        except ssl.SSLError as err:
            raise ProbeFailure(FailureReason.TLS, f"TLS error sending the request: {err}") from None
        except OSError:
            # The peer may have answered before it stopped reading; the read will tell.
            pass

    async def _read(self, size: int, when: str) -> bytes:
        return await net.read(self.reader, size, when)

    async def _next_event(self, size: int, when: str) -> http1.Event:
        while True:
            try:
                event = self.conn.next_event()
            except http1.RemoteProtocolError as err:
                raise ProbeFailure(FailureReason.PROTOCOL, f"bad response {when}: {err}") from None
            if event is http1.NEED_DATA:
                self.conn.receive_data(await self._read(size, when))
                continue
            if not isinstance(event, http1.Marker):
                return event
            # PAUSED: the response is complete and more bytes follow it, which we ignore.
            return http1.EndOfMessage()

    async def _head(self) -> http1.Response:
        interim = 0
        while True:
            event = await self._next_event(READ_SIZE, "in the response head")
            if isinstance(event, http1.Response):
                return event
            if not isinstance(event, http1.InformationalResponse):
                raise ProbeFailure(
                    FailureReason.PROTOCOL, f"unexpected {type(event).__name__} before the response"
                )
            interim += 1
            if interim > MAX_INFORMATIONAL:
                # Without a cap a server sending 1xx forever would hold the probe to its timeout.
                raise ProbeFailure(
                    FailureReason.PROTOCOL,
                    f"more than {MAX_INFORMATIONAL} informational (1xx) responses before the response",
                )

    async def _body(self, headers: Sequence[tuple[str, str]]) -> Body:
        """Read the body, never more than the limit, decompressing gzip and deflate."""
        limit = self.limit
        encodings = [v.strip().lower() for k, v in headers if k == "content-encoding"]
        encoding = encodings[0] if len(encodings) == 1 else ""
        decoder = _decoder(encoding)
        kept = bytearray()
        raw = decoded = 0
        try:
            while True:
                # Ask the socket for no more than one byte past the limit.
                size = min(READ_SIZE, max(limit - raw + 1, 1))
                event = await self._next_event(size, "in the response body")
                if not isinstance(event, http1.Data):
                    break
                raw += len(event.data)
                if raw > limit:
                    if decoder is None:
                        # blackbox has counted the body up to its limit when it gives up.
                        self.trace.set("probe_http_uncompressed_body_length", limit)
                    raise ProbeFailure(
                        FailureReason.BODY, f"body is larger than body_size_limit ({limit} bytes)"
                    )
                chunk = bytes(event.data)
                if decoder is None:
                    decoded = self._add(kept, decoded, chunk)
                    continue
                for piece in decoder.feed(chunk, limit - decoded):
                    decoded = self._add(kept, decoded, piece)
                    # A bomb inflates 64 KiB into megabytes: let other probes run between pieces.
                    await asyncio.sleep(0)
            if decoder is not None:
                decoder.finish()
        except ProbeFailure as failure:
            return Body(None, failure)
        return Body(bytes(kept) if self.keep_body else None, None)

    def _add(self, kept: bytearray, decoded: int, chunk: bytes) -> int:
        decoded += len(chunk)
        self.trace.set("probe_http_uncompressed_body_length", min(decoded, self.limit))
        if decoded > self.limit:
            raise ProbeFailure(
                FailureReason.BODY,
                f"decompressed body is larger than body_size_limit ({self.limit} bytes)",
            )
        if self.keep_body:
            kept += chunk
        return decoded


_DECODABLE = frozenset({"gzip", "x-gzip", "deflate"})


def _decoder(encoding: str) -> _Decoder | _BrotliDecoder | None:
    if encoding == "br":
        return _BrotliDecoder()
    return _Decoder(encoding) if encoding in _DECODABLE else None


class _BrotliDecoder:
    """Decompresses a brotli body in bounded pieces, as ``_Decoder`` does gzip."""

    encoding = "br"

    def __init__(self) -> None:
        self._brotli = brotli.Decompressor()
        self._fed = False

    def feed(self, data: bytes, room: int) -> Iterator[bytes]:
        self._fed = self._fed or bool(data)
        while True:
            try:
                out = self._brotli.process(data, output_buffer_limit=min(max(room, 0) + 1, _Decoder.PIECE))
            except brotli.error as err:
                raise ProbeFailure(FailureReason.BODY, f"cannot decompress br body: {err}") from None
            data = b""
            room -= len(out)
            yield out
            # Output may still be pending after the input is taken: drain it until none comes.
            if room < 0 or not out or self._brotli.is_finished():
                return

    def finish(self) -> None:
        if self._fed and not self._brotli.is_finished():  # an empty body (HEAD, 304) is fine
            raise ProbeFailure(FailureReason.BODY, "br body is truncated")


class _Decoder:
    """Inflates a gzip or deflate body in bounded pieces, never more than the room it is given.

    A gzip body may hold several members one after another (RFC 1952); each is read, as Go's
    reader does, and bytes after the last member that do not start another are an error.
    """

    # The most one call inflates before the event loop gets a turn.
    PIECE = 256 * 1024

    def __init__(self, encoding: str) -> None:
        self.encoding = "deflate" if encoding == "deflate" else "gzip"
        self._inflater: zlib._Decompress | None = None
        self._pending = b""
        self._ended = False  # deflate: its single stream is over, the rest is ignored as Go does
        self._members = 0  # gzip members read to their end

    def _start(self, data: bytes) -> zlib._Decompress:
        if self.encoding == "gzip":
            wbits = 16 + zlib.MAX_WBITS
        elif len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0:
            # "deflate" should be zlib-wrapped (RFC 9110), but many servers send it raw.
            wbits = zlib.MAX_WBITS
        else:
            wbits = -zlib.MAX_WBITS
        self._inflater = zlib.decompressobj(wbits)
        return self._inflater

    def feed(self, data: bytes, room: int) -> Iterator[bytes]:
        """Inflate ``data``, yielding pieces; stops once one byte past ``room`` has come out."""
        inflater = self._inflater
        if inflater is None:
            self._pending += data
            if self.encoding == "deflate" and len(self._pending) < 2:
                return
            data, self._pending = self._pending, b""
            inflater = self._start(data)
        while data and not self._ended:
            if inflater.eof:
                if self.encoding == "deflate":
                    self._ended = True
                    return
                # Another gzip member follows the one that just ended.
                inflater = self._start(data)
            try:
                out = inflater.decompress(data, min(max(room, 0) + 1, self.PIECE))
            except zlib.error as err:
                after = " after the end of the gzip stream" if self._members else ""
                raise ProbeFailure(
                    FailureReason.BODY, f"cannot decompress {self.encoding} body{after}: {err}"
                ) from None
            data = inflater.unconsumed_tail or inflater.unused_data
            if inflater.eof and self.encoding == "gzip":
                self._members += 1
            if out or inflater.eof:
                # An empty piece at a member's end still gives the loop a turn: a body of
                # thousands of empty members would otherwise be read in one go.
                room -= len(out)
                yield out
            if room < 0:
                return

    def finish(self) -> None:
        if self._inflater is None and not self._pending:
            return  # an empty body (HEAD, 204, 304) has nothing to inflate
        if self._inflater is None:
            for _ in self.feed(b"", 0):
                pass
            if self._inflater is None:
                raise ProbeFailure(FailureReason.BODY, f"{self.encoding} body is truncated")
        if not self._inflater.eof:
            raise ProbeFailure(FailureReason.BODY, f"{self.encoding} body is truncated")


def _record_head(
    trace: Trace, url: URL, status: int, version: str, headers: Sequence[tuple[str, str]], head: bool
) -> None:
    trace.set("probe_http_status_code", status)
    try:
        trace.set("probe_http_version", float(version))
    except ValueError:
        trace.set("probe_http_version", 0)
    trace.set("probe_http_ssl", 1 if url.tls else 0)
    trace.set("probe_http_content_length", _content_length(status, headers, head))


def _content_length(status: int, headers: Sequence[tuple[str, str]], head: bool) -> int:
    """Go's resp.ContentLength, which blackbox exports: -1 when the length is not known up front.

    A HEAD answer's is its header's; 1xx, 204 and 304 answers have no body (0); a chunked body's
    length is unknown even beside a Content-Length header (-1).
    """
    declared = -1
    for name, value in headers:
        if name == "content-length" and value.strip().isdigit():
            declared = int(value)
    if head:
        return declared
    if status < 200 or status in (204, 304):
        return 0
    chunked = any(
        name == "transfer-encoding" and value.strip().lower().endswith("chunked") for name, value in headers
    )
    return -1 if chunked else declared


def _record_last_modified(trace: Trace, headers: Sequence[tuple[str, str]]) -> None:
    for name, value in headers:
        if name != "last-modified":
            continue
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        trace.set("probe_http_last_modified_timestamp_seconds", when.timestamp())
        return


def _header_problem(response: Response, settings: HTTPProbe) -> str | None:
    for match in settings.fail_if_header_matches:
        values = response.values(match.header)
        if not values and not match.allow_missing:
            return f"header {match.header} is missing"
        if any(match.regexp.search(value) for value in values):
            return f"header {match.header} matched fail_if_header_matches {match.regexp.source!r}"
    for match in settings.fail_if_header_not_matches:
        values = response.values(match.header)
        if not values:
            if match.allow_missing:
                continue
            return f"header {match.header} is missing"
        if not any(match.regexp.search(value) for value in values):
            return f"header {match.header} did not match fail_if_header_not_matches {match.regexp.source!r}"
    return None


async def _body_problem(data: bytes, settings: HTTPProbe) -> str | None:
    # Go matches the bytes that arrived; so does RE2, without decoding a 10 MiB body first.
    if not (settings.fail_if_body_matches_regexp or settings.fail_if_body_not_matches_regexp):
        return None
    subject = await offloop.off_loop_if_big(len(data), offloop.go_subject, data)
    for regex in settings.fail_if_body_matches_regexp:
        if await regex.search_subject(subject):
            return f"body matched fail_if_body_matches_regexp {regex.source!r}"
    for regex in settings.fail_if_body_not_matches_regexp:
        if not await regex.search_subject(subject):
            return f"body did not match fail_if_body_not_matches_regexp {regex.source!r}"
    return None


def has_cel(settings: HTTPProbe) -> bool:
    checks = (settings.fail_if_body_json_matches_cel, settings.fail_if_body_json_not_matches_cel)
    return any(check is not None for check in checks)


def _basic(username: str, password: str) -> str:
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def _secret_file(path: str, option: str) -> str:
    try:
        return read_secret_file(path)
    except (OSError, UnicodeError) as err:
        detail = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise ProbeFailure(FailureReason.OTHER, f"cannot read {option}: {detail}") from None
