"""Probe settings in blackbox_exporter's module format, so a blackbox.yml loads unchanged."""

from __future__ import annotations

import math
import re
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from exporter.cel import CELProgram
from exporter.types import (
    ByteSize,
    Duration,
    GoDuration,
    ProxyURL,
    Regex,
    Secret,
    SecretValues,
    StatusRange,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

IPProtocol = Literal["ip4", "ip6", "ip"]
TLSVersion = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
# The names exporter-toolkit and blackbox use for TLS versions.
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

# Go's cipher suite names, as exporter-toolkit takes them, and OpenSSL's names for them. TLS 1.3
# suites are accepted but, as in Go, do not restrict TLS 1.3 (OpenSSL chooses among its own).
CIPHER_SUITES: Mapping[str, str | None] = MappingProxyType(
    {
        "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
        "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
        "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
        "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
        "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
        "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
        "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": "ECDHE-RSA-DES-CBC3-SHA",
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
        "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_AES_128_GCM_SHA256": None,
        "TLS_AES_256_GCM_SHA384": None,
        "TLS_CHACHA20_POLY1305_SHA256": None,
    }
)
# OpenSSL's names back to Go's, for probe_tls_cipher_info.
GO_CIPHER_NAMES: Mapping[str, str] = MappingProxyType(
    {openssl: go for go, openssl in CIPHER_SUITES.items() if openssl is not None}
)

# Options are named and defaulted as blackbox_exporter names and defaults them.
# A check yields (key, message) pairs; the loader turns them into located errors.
Problems = Iterator[tuple[str, str]]

DEFAULT_BODY_SIZE_LIMIT = 10 * 1024 * 1024


def _empty_map() -> Mapping[str, Any]:
    return MappingProxyType({})


def refs_refused(**refs: str) -> Problems:
    """prometheus/common's ``*_ref`` options name a secret in a secret manager; there is none."""
    for option, value in refs.items():
        if value:
            base = option.removesuffix("_ref")
            yield (
                option,
                (
                    f"secret references need a secret manager, which blackbox_exporter and this exporter"
                    f" do not have: use {base} or {base}_file"
                ),
            )


@dataclass(frozen=True)
class TLSConfig:
    # prometheus/common's: a PEM written inline, or a file (read again when it changes).
    ca: str = ""
    cert: str = ""
    key: Secret | None = None
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    ca_ref: str = ""
    cert_ref: str = ""
    key_ref: str = ""
    server_name: str = ""
    insecure_skip_verify: bool = False
    min_version: TLSVersion | None = None
    max_version: TLSVersion | None = None

    def check(self) -> Problems:
        yield from refs_refused(ca_ref=self.ca_ref, cert_ref=self.cert_ref, key_ref=self.key_ref)
        for inline, file in (("ca", "ca_file"), ("cert", "cert_file"), ("key", "key_file")):
            if getattr(self, inline) and getattr(self, file):
                yield inline, f"at most one of {inline} and {file} may be set"
        has_cert = bool(self.cert or self.cert_file or self.cert_ref)
        has_key = bool(self.key or self.key_file or self.key_ref)
        if has_cert and not has_key:
            yield "cert_file" if self.cert_file else "cert", "a client certificate needs key or key_file"
        elif has_key and not has_cert:
            yield "key_file" if self.key_file else "key", "a client key needs cert or cert_file"
        order = ("TLS10", "TLS11", "TLS12", "TLS13")
        if (
            self.min_version
            and self.max_version
            and order.index(self.min_version) > order.index(self.max_version)
        ):
            yield "min_version", "must not be newer than max_version"


@dataclass(frozen=True)
class BasicAuth:
    username: str = ""
    username_file: str = ""
    password: Secret | None = None
    password_file: str = ""
    username_ref: str = ""
    password_ref: str = ""

    def check(self) -> Problems:
        yield from refs_refused(username_ref=self.username_ref, password_ref=self.password_ref)
        if self.username and self.username_file:
            yield "username", "at most one of username and username_file may be set"
        if self.password is not None and self.password_file:
            yield "password", "at most one of password and password_file may be set"


@dataclass(frozen=True)
class Authorization:
    type: str = "Bearer"
    credentials: Secret | None = None
    credentials_file: str = ""
    credentials_ref: str = ""

    def check(self) -> Problems:
        yield from refs_refused(credentials_ref=self.credentials_ref)
        if self.credentials is not None and self.credentials_file:
            yield "credentials", "at most one of credentials and credentials_file may be set"
        if self.type.lower() == "basic":
            yield "type", "use basic_auth for Basic authorization"


@dataclass(frozen=True)
class HeaderMatch:
    header: str
    regexp: Regex
    allow_missing: bool = False


@dataclass(frozen=True)
class ProxyOptions:
    """Prometheus' HTTP client proxy options, inlined where blackbox inlines them.

    ``proxy_url`` is None when not written and empty when written empty (no proxy either way;
    the difference matters to the ``no_proxy`` rule, as in prometheus/common).
    """

    proxy_url: ProxyURL | None = None
    # Comma-separated hosts, domains, IPs and CIDRs (host:port too) reached without the proxy.
    no_proxy: str = ""
    proxy_from_environment: bool = False
    # Sent to the proxy with CONNECT (https targets); a value is a list, as blackbox reads it.
    proxy_connect_header: Mapping[str, tuple[Secret, ...]] = field(default_factory=_empty_map)

    def proxy_options(self) -> dict[str, Any]:
        """These four options as keywords, for settings built from another section's."""
        return {
            "proxy_url": self.proxy_url,
            "no_proxy": self.no_proxy,
            "proxy_from_environment": self.proxy_from_environment,
            "proxy_connect_header": self.proxy_connect_header,
        }

    @property
    def proxied(self) -> bool:
        """Whether a proxy may be used at all."""
        return bool(self.proxy_url) or self.proxy_from_environment

    def proxy_problems(self) -> Problems:
        """prometheus/common's four proxy rules, each reported at the option it concerns."""
        if self.proxy_connect_header and not self.proxied:
            yield (
                "proxy_connect_header",
                "is sent only to a proxy: set proxy_url or proxy_from_environment too",
            )
        if self.proxy_from_environment and self.proxy_url:
            yield "proxy_url", "cannot be set together with proxy_from_environment: choose one"
        if self.proxy_from_environment and self.no_proxy:
            yield (
                "no_proxy",
                "cannot be set together with proxy_from_environment, which takes NO_PROXY from the "
                "environment",
            )
        elif self.proxy_url is None and self.no_proxy:
            yield "no_proxy", "needs proxy_url: it lists the hosts reached without that proxy"
        for name in self.proxy_connect_header:
            if not _TOKEN_RE.match(name):
                yield f"proxy_connect_header.{name}", f"invalid header name {name!r}"


JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
OAUTH2_GRANT_TYPES = ("", "client_credentials", JWT_BEARER)
JWT_SIGNATURE_ALGORITHMS = ("RS256", "RS384", "RS512")


def rsa_private_key(pem: str) -> RSAPrivateKey:
    """An unencrypted RSA private key in PEM (PKCS #1 or PKCS #8), as Go's jwt package reads one.

    Raises ValueError with a message that never quotes the key.
    """
    # cryptography (about 7 MiB) loads only where a key is read: probe workers get modules
    # already checked, and most never sign anything.
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    try:
        key = serialization.load_pem_private_key(pem.encode("utf-8", "surrogateescape"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, RSAPrivateKey):
        raise ValueError("must be an unencrypted RSA private key in PEM (PKCS #1 or PKCS #8)")
    return key


def _json_problem(value: object) -> str | None:
    """Why ``value`` (YAML read as ``any``) cannot be a JSON claim, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    if isinstance(value, Mapping):
        for item in value.values():
            if (problem := _json_problem(item)) is not None:
                return problem
    if isinstance(value, tuple):
        for item in value:
            if (problem := _json_problem(item)) is not None:
                return problem
    return None


@dataclass(frozen=True)
class OAuth2(ProxyOptions):
    """prometheus/common's OAuth 2.0 client: the client credentials grant (the default) or the
    JWT bearer grant of RFC 7523; the token is sent as a bearer either way.

    As in prometheus/common the options of the grant not chosen are read and left unused.
    """

    client_id: str = ""
    client_secret: Secret | None = None
    client_secret_file: str = ""
    scopes: tuple[str, ...] = ()
    token_url: str = ""
    endpoint_params: Mapping[str, str] = field(default_factory=_empty_map)
    tls_config: TLSConfig = field(default_factory=TLSConfig)
    grant_type: str = ""
    # The JWT bearer grant: the assertion is signed with this RSA key, ``kid`` is its id.
    client_certificate_key: Secret | None = None
    client_certificate_key_file: str = ""
    client_secret_ref: str = ""
    client_certificate_key_ref: str = ""
    client_certificate_key_id: str = ""
    signature_algorithm: str = ""
    # The assertion's issuer (client_id if empty) and audience (token_url if empty).
    iss: str = ""
    audience: str = ""
    # Added to the assertion's claims, replacing the standard ones of the same name.
    claims: Mapping[str, object] = field(default_factory=_empty_map)

    @property
    def jwt_bearer(self) -> bool:
        return self.grant_type == JWT_BEARER

    def check(self) -> Problems:
        yield from refs_refused(
            client_secret_ref=self.client_secret_ref,
            client_certificate_key_ref=self.client_certificate_key_ref,
        )
        if not self.client_id:
            yield "client_id", "is required: the client the token is asked for"
        if not self.token_url:
            # Like blackbox, any other token_url loads; one that is not http(s) fails each probe.
            yield "token_url", "is required: where the token is asked for"
        if self.grant_type not in OAUTH2_GRANT_TYPES:
            yield (
                "grant_type",
                f"must be client_credentials or {JWT_BEARER}, got {self.grant_type!r}",
            )
        elif self.jwt_bearer:
            yield from self._jwt_problems()
        elif self.client_secret and self.client_secret_file:
            yield "client_secret", "at most one of client_secret and client_secret_file may be set"
        yield from self.proxy_problems()

    def _jwt_problems(self) -> Problems:
        key = self.client_certificate_key
        if key and self.client_certificate_key_file:
            yield (
                "client_certificate_key",
                "at most one of client_certificate_key and client_certificate_key_file may be set",
            )
        elif not key and not self.client_certificate_key_file:
            yield (
                "grant_type",
                "the jwt-bearer grant signs with a private key: set client_certificate_key or "
                "client_certificate_key_file",
            )
        elif key:
            try:
                rsa_private_key(key.reveal())
            except ValueError as err:
                yield "client_certificate_key", str(err)
        if self.signature_algorithm and self.signature_algorithm not in JWT_SIGNATURE_ALGORITHMS:
            yield (
                "signature_algorithm",
                f"must be one of RS256, RS384, RS512, got {self.signature_algorithm!r}",
            )
        for name, value in self.claims.items():
            if (problem := _json_problem(value)) is not None:
                yield f"claims.{name}", problem


@dataclass(frozen=True)
class HeaderValues:
    """One header of prometheus/common's ``http_headers``: every value is sent, in this order."""

    values: tuple[str, ...] = ()
    secrets: tuple[Secret, ...] = ()
    # Read at each request, surrounding whitespace trimmed.
    files: tuple[str, ...] = ()


# prometheus/common refuses these in http_headers: the client or the connection sets them.
RESERVED_HEADERS = frozenset(
    name.lower()
    for name in (
        "Authorization",
        "Host",
        "Content-Encoding",
        "Content-Length",
        "Content-Type",
        "User-Agent",
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Www-Authenticate",
        "Accept-Encoding",
        "X-Prometheus-Remote-Write-Version",
        "X-Prometheus-Remote-Read-Version",
        "X-Prometheus-Scrape-Timeout-Seconds",
        "X-Amz-Date",
        "X-Amz-Security-Token",
        "X-Amz-Content-Sha256",
    )
)


def canonical_header(name: str) -> str:
    """Go's http.CanonicalHeaderKey: ``x-api-key`` is ``X-Api-Key``."""
    if not name or any(c in name for c in " \t\r\n:"):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def header_problems(http_headers: Mapping[str, HeaderValues]) -> Problems:
    for name in http_headers:
        if name.lower() in RESERVED_HEADERS:
            yield f"http_headers.{name}", f"setting header {canonical_header(name)!r} is not allowed"


@dataclass(frozen=True)
class RequestOptions(ProxyOptions):
    """One HTTP request and the checks on its answer: what an http module and a flow step share.

    Both embed these under the same YAML keys, so a flow step hands them to the HTTP client as
    they are. The body is not here: a module's is plain text, a step's a secret with variables.
    """

    method: str = "GET"
    headers: Mapping[str, Secret] = field(default_factory=_empty_map)
    # prometheus/common's header options (blackbox 0.28): added to the request after ``headers``.
    http_headers: Mapping[str, HeaderValues] = field(default_factory=_empty_map)
    body_file: str = ""
    # blackbox inlines Prometheus' HTTP client options here.
    basic_auth: BasicAuth | None = None
    bearer_token: Secret | None = None
    bearer_token_file: str = ""
    authorization: Authorization | None = None
    oauth2: OAuth2 | None = None
    follow_redirects: bool = True
    valid_status_codes: tuple[StatusRange, ...] = ()
    fail_if_body_matches_regexp: tuple[Regex, ...] = ()
    fail_if_body_not_matches_regexp: tuple[Regex, ...] = ()
    fail_if_header_matches: tuple[HeaderMatch, ...] = ()
    fail_if_header_not_matches: tuple[HeaderMatch, ...] = ()

    def request_options(self) -> dict[str, Any]:
        """These options by field name, to build another RequestOptions from (a step's module)."""
        return {f.name: getattr(self, f.name) for f in fields(RequestOptions)}


@dataclass(frozen=True)
class HTTPProbe(RequestOptions):
    valid_http_versions: tuple[str, ...] = ()
    preferred_ip_protocol: IPProtocol = "ip6"
    ip_protocol_fallback: bool = True
    fail_if_ssl: bool = False
    fail_if_not_ssl: bool = False
    body: str = ""
    compression: Literal["", "gzip", "br", "deflate", "identity"] = ""
    # blackbox 0.27: CEL expressions on the body decoded as JSON.
    fail_if_body_json_matches_cel: CELProgram | None = None
    fail_if_body_json_not_matches_cel: CELProgram | None = None
    body_size_limit: ByteSize = ByteSize(0)
    skip_resolve_phase_with_proxy: bool = False
    tls_config: TLSConfig = field(default_factory=TLSConfig)
    no_follow_redirects: bool | None = None
    max_redirects: int = 10
    enable_http2: bool = True
    # blackbox 0.28's QUIC client; accepted so its configs load, refused when switched on.
    enable_http3: bool = False

    def check(self) -> Problems:
        yield from header_problems(self.http_headers)
        if self.fail_if_ssl and self.fail_if_not_ssl:
            yield "fail_if_ssl", "fail_if_ssl and fail_if_not_ssl cannot both be true"
        if self.body and self.body_file:
            yield "body", "at most one of body and body_file may be set"
        for name, value in self.headers.items():
            if name.lower() == "accept-encoding" and not accepts_encoding(value.reveal(), self.compression):
                yield (
                    f"headers.{name}",
                    f"Accept-Encoding {value.reveal()!r} does not accept compression {self.compression!r}; "
                    "a server that honours it could never send what the probe expects",
                )
        yield from _auth_problems(
            self.basic_auth, self.bearer_token, self.bearer_token_file, self.authorization, self.oauth2
        )
        yield from self.proxy_problems()
        if not self.method or not self.method.replace("-", "").isalnum():
            yield "method", f"must be an HTTP method such as GET or POST, got {self.method!r}"
        for version in self.valid_http_versions:
            if version not in ("HTTP/1.0", "HTTP/1.1", "HTTP/2", "HTTP/2.0", "HTTP/3", "HTTP/3.0"):
                yield "valid_http_versions", f"unknown HTTP version {version!r}"
        if self.valid_http_versions and not any(v.startswith("HTTP/1.") for v in self.valid_http_versions):
            yield (
                "valid_http_versions",
                "probes speak HTTP/1.1 and HTTP/1.0 only, so this module would always fail; add HTTP/1.1",
            )
        if self.enable_http3:
            yield (
                "enable_http3",
                "HTTP/3 is not supported: probes speak HTTP/1.1 over TCP; remove enable_http3",
            )
        if self.max_redirects < 0:
            yield "max_redirects", f"must not be negative, got {self.max_redirects}"
        if self.body_size_limit < 0:
            yield "body_size_limit", "must not be negative"

    @property
    def redirects_allowed(self) -> bool:
        if self.no_follow_redirects is not None:
            return not self.no_follow_redirects
        return self.follow_redirects

    @property
    def effective_body_size_limit(self) -> int:
        """blackbox reads 0 as unlimited; we never read an unbounded body."""
        return int(self.body_size_limit) or DEFAULT_BODY_SIZE_LIMIT


@dataclass(frozen=True)
class ExpectLabel:
    """A label of probe_expect_info: its value may use the expect's groups (``${1}``, ``$name``)."""

    name: str
    value: str = ""

    def check(self) -> Problems:
        if not LABEL_NAME_RE.match(self.name):
            yield "name", f"invalid label name {self.name!r}: must match [a-zA-Z_][a-zA-Z0-9_]*"


@dataclass(frozen=True)
class QueryResponse:
    expect: Regex | None = None
    # Bytes the server must send next, exactly (blackbox 0.25 and later).
    expect_bytes: str = ""
    # probe_expect_info's labels, filled from the expect's match.
    labels: tuple[ExpectLabel, ...] = ()
    send: str = ""
    starttls: bool = False

    def check(self) -> Problems:
        if self.expect is not None and self.expect.source and self.expect_bytes:
            yield "expect_bytes", "expect and expect_bytes are mutually exclusive"
        if self.labels and not (self.expect is not None and self.expect.source):
            yield "labels", "labels are filled from expect's match: set expect too"


@dataclass(frozen=True)
class TCPProbe:
    preferred_ip_protocol: IPProtocol = "ip6"
    ip_protocol_fallback: bool = True
    source_ip_address: str = ""
    query_response: tuple[QueryResponse, ...] = ()
    tls: bool = False
    tls_config: TLSConfig = field(default_factory=TLSConfig)


@dataclass(frozen=True)
class ICMPProbe:
    preferred_ip_protocol: IPProtocol = "ip6"
    ip_protocol_fallback: bool = True
    source_ip_address: str = ""
    payload_size: int = 0
    dont_fragment: bool = False
    ttl: int = 0

    def check(self) -> Problems:
        if not 0 <= self.ttl <= 255:
            yield "ttl", f"must be between 0 and 255, got {self.ttl}"
        if not 0 <= self.payload_size <= 65_000:
            yield "payload_size", f"must be between 0 and 65000, got {self.payload_size}"


@dataclass(frozen=True)
class DNSRRValidator:
    fail_if_matches_regexp: tuple[Regex, ...] = ()
    fail_if_all_match_regexp: tuple[Regex, ...] = ()
    fail_if_not_matches_regexp: tuple[Regex, ...] = ()
    fail_if_none_matches_regexp: tuple[Regex, ...] = ()


@dataclass(frozen=True)
class DNSProbe:
    query_name: str = ""
    query_type: str = "ANY"
    query_class: str = "IN"
    preferred_ip_protocol: IPProtocol = "ip6"
    ip_protocol_fallback: bool = True
    source_ip_address: str = ""
    transport_protocol: Literal["udp", "tcp"] = "udp"
    dns_over_tls: bool = False
    tls_config: TLSConfig = field(default_factory=TLSConfig)
    recursion_desired: bool = True
    valid_rcodes: tuple[str, ...] = ("NOERROR",)
    validate_answer_rrs: DNSRRValidator = field(default_factory=DNSRRValidator)
    validate_authority_rrs: DNSRRValidator = field(default_factory=DNSRRValidator)
    validate_additional_rrs: DNSRRValidator = field(default_factory=DNSRRValidator)

    def check(self) -> Problems:
        import dns.rcode
        import dns.rdataclass
        import dns.rdatatype

        # blackbox looks names up as written, upper case, with no TYPE65-style numbers.
        try:
            if self.query_type != self.query_type.upper() or self.query_type.startswith("TYPE"):
                raise ValueError
            dns.rdatatype.from_text(self.query_type)
        except Exception:
            yield (
                "query_type",
                f"unknown DNS record type {self.query_type!r} (names as blackbox takes them: A, AAAA, MX...)",
            )
        if self.query_class not in DNS_CLASSES:
            yield "query_class", f"unknown DNS class {self.query_class!r} (one of {', '.join(DNS_CLASSES)})"
        for rcode in self.valid_rcodes:
            try:
                dns.rcode.from_text(rcode)
            except Exception:
                yield "valid_rcodes", f"unknown DNS rcode {rcode!r}"
        if self.dns_over_tls and self.transport_protocol != "tcp":
            yield "dns_over_tls", "needs transport_protocol: tcp"


LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
DNS_CLASSES = ("IN", "CS", "CH", "HS", "NONE", "ANY")


def accepts_encoding(accept_encoding: str, compression: str) -> bool:
    """Whether an Accept-Encoding header lets a server answer with ``compression``.

    blackbox refuses a module whose header leaves its own ``compression`` out: the codings are
    taken in order of quality (q, three decimals), and the first that names the compression or
    is ``*`` decides: accepted unless its quality is 0.
    """
    if not compression or not accept_encoding:
        return True
    codings: list[tuple[float, str]] = []
    for item in accept_encoding.split(","):
        coding, _, params = item.rpartition(";") if ";" in item else (item, "", "")
        quality = 1.0
        if params:
            try:
                quality = round(float(params.strip().removeprefix("q=")), 3)
            except ValueError:
                quality = 0.0
        codings.append((quality, coding.strip()))
    for quality, coding in sorted(codings, key=lambda c: -c[0]):
        if coding in (compression, "*"):
            return quality > 0
    return False


@dataclass(frozen=True)
class GRPCProbe:
    service: str = ""
    tls: bool = False
    tls_config: TLSConfig = field(default_factory=TLSConfig)
    preferred_ip_protocol: IPProtocol = "ip6"
    ip_protocol_fallback: bool = True
    # Not in blackbox: gRPC metadata (request headers) sent with the health check.
    # A key may carry several values (a list), as blackbox 0.28 takes them.
    metadata: Mapping[str, SecretValues] = field(default_factory=_empty_map)

    def check(self) -> Problems:
        for key in self.metadata:
            if not _GRPC_METADATA_KEY_RE.match(key):
                message = f"invalid metadata key {key!r}: use letters, digits, '_', '.' and '-'"
                yield f"metadata.{key}", message
            elif key.lower().startswith("grpc-") or key.lower() in _GRPC_RESERVED_METADATA:
                yield f"metadata.{key}", f"metadata key {key!r} is reserved by gRPC"


_GRPC_METADATA_KEY_RE = re.compile(r"^[a-zA-Z0-9_.-]+$")
# Set by the health check itself, or forbidden in HTTP/2.
_GRPC_RESERVED_METADATA = frozenset(
    {
        "content-type",
        "te",
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    }
)


@dataclass(frozen=True)
class PushProbe:
    """Not in blackbox: a service that reports in with POST /push/{service}."""

    token_file: str = ""
    max_silence: Duration | None = None

    def required(self) -> Problems:
        """Checked only for push modules (check_module), so other kinds need no push section."""
        if not self.token_file:
            yield "token_file", "is required: pushes must carry the token kept in this file"
        if self.max_silence is None or self.max_silence <= 0:
            yield "max_silence", "is required: how long without a push before the service fails"


# --- flow: a user journey of HTTP steps (not in blackbox) ----------------------------------------

STEP_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
VARIABLE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A variable reference in a step's url, headers or body. Not ``${...}``: that is the environment
# reference Secret values expand when the config is loaded.
VARIABLE_REF_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

_JSON_KEY_RE = re.compile(r"\.([^.\[\]\s'\"]+)")
_JSON_INDEX_RE = re.compile(r"\[(-?[0-9]+)\]")
_JSON_QUOTED_RE = re.compile(r"\[(?:\"([^\"]*)\"|'([^']*)')\]")


def json_path_parts(path: str) -> tuple[str | int, ...]:
    """Split a JSON path: ``$``, then any of ``.key``, ``[index]`` (negative counts from the end)
    and ``["key"]`` (for keys with dots, brackets or spaces). ``$.data.items[0].id``.

    Raises ValueError saying where the path stops making sense.
    """
    if not path.startswith("$"):
        raise ValueError(f"invalid JSON path {path!r}: must start with $")
    parts: list[str | int] = []
    pos = 1
    while pos < len(path):
        if match := _JSON_KEY_RE.match(path, pos):
            parts.append(match.group(1))
        elif match := _JSON_INDEX_RE.match(path, pos):
            parts.append(int(match.group(1)))
        elif match := _JSON_QUOTED_RE.match(path, pos):
            parts.append(match.group(1) if match.group(1) is not None else match.group(2))
        else:
            raise ValueError(
                f'invalid JSON path {path!r}: expected .key, [index] or ["key"] at position {pos}'
            )
        pos = match.end()
    return tuple(parts)


def _json_path_problem(path: str) -> str | None:
    try:
        json_path_parts(path)
    except ValueError as err:
        return str(err)
    return None


@dataclass(frozen=True)
class JSONCondition:
    """A check of the value at ``path`` in a JSON response; every operator set must hold."""

    path: str
    exists: bool | None = None
    # Compared with the value's text: a string as it is, a number numerically, true/false/null
    # by their JSON spelling (quote them in YAML: equals: "true").
    equals: str | None = None
    matches: Regex | None = None
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def operators(self) -> list[str]:
        names = ("equals", "matches", "gt", "ge", "lt", "le")
        return [name for name in names if getattr(self, name) is not None]

    def check(self) -> Problems:
        problem = _json_path_problem(self.path)
        if problem:
            yield "path", problem
        if self.exists is None and not self.operators():
            yield "path", "needs a test: exists, equals, matches, gt, ge, lt or le"
        if self.exists is False and self.operators():
            yield "exists", f"exists: false cannot be combined with {', '.join(self.operators())}"


@dataclass(frozen=True)
class Extract:
    """Where a step takes a variable's value from: exactly one of the four sources."""

    json: str = ""
    # The first group of the first match, or the whole match when the regexp has no group.
    regexp: Regex | None = None
    header: str = ""
    cookie: str = ""

    def sources(self) -> list[str]:
        given = (
            ("json", self.json),
            ("regexp", self.regexp),
            ("header", self.header),
            ("cookie", self.cookie),
        )
        return [name for name, value in given if value]

    def check(self) -> Problems:
        sources = self.sources()
        if len(sources) > 1:
            yield sources[1], f"set one of json, regexp, header and cookie, not {' and '.join(sources)}"
        if self.json:
            problem = _json_path_problem(self.json)
            if problem:
                yield "json", problem


def _no_extracts() -> Mapping[str, Extract]:
    return MappingProxyType({})


def _auth_problems(
    basic_auth: object,
    bearer_token: object,
    bearer_token_file: str,
    authorization: object,
    oauth2: object = None,
) -> Problems:
    auths = [
        name
        for name, set_ in (
            ("basic_auth", basic_auth is not None),
            ("bearer_token", bearer_token is not None),
            ("bearer_token_file", bool(bearer_token_file)),
            ("authorization", authorization is not None),
            ("oauth2", oauth2 is not None),
        )
        if set_
    ]
    if len(auths) > 1:
        yield auths[1], f"only one of {', '.join(auths)} may be set"


@dataclass(frozen=True, kw_only=True)
class FlowStep(RequestOptions):
    """One HTTP request of a journey, with the http prober's option names where they apply.

    body_file is sent as it is: variables are not expanded in a file (it may be binary, as an
    upload is).
    """

    name: str
    # Absolute, or relative to the service's target.
    url: str = ""
    body: Secret | None = None
    expect_json: tuple[JSONCondition, ...] = ()
    extract: Mapping[str, Extract] = field(default_factory=_no_extracts)

    def templates(self) -> Iterator[tuple[str, str]]:
        """The texts in which ``{{variable}}`` references are expanded, by option name."""
        yield "url", self.url
        for name, value in self.headers.items():
            yield f"header {name}", value.reveal()
        if self.body is not None:
            yield "body", self.body.reveal()

    def check(self) -> Problems:
        yield from header_problems(self.http_headers)
        if not STEP_NAME_RE.match(self.name):
            yield "name", f"must match [a-zA-Z0-9_-]+, got {self.name!r}"
        if not self.method or not self.method.replace("-", "").isalnum():
            yield "method", f"must be an HTTP method such as GET or POST, got {self.method!r}"
        scheme, separator, _ = self.url.partition("://")
        if separator and scheme.lower() not in ("http", "https") and "{{" not in scheme:
            yield "url", f"must be an http or https URL or a path, got scheme {scheme!r}"
        if self.body is not None and self.body_file:
            yield "body", "at most one of body and body_file may be set"
        yield from _auth_problems(
            self.basic_auth, self.bearer_token, self.bearer_token_file, self.authorization, self.oauth2
        )
        yield from self.proxy_problems()
        for variable, extract in self.extract.items():
            if not VARIABLE_NAME_RE.match(variable):
                message = f"invalid variable name {variable!r}: must match [A-Za-z_][A-Za-z0-9_]*"
                yield f"extract.{variable}", message
            elif not extract.sources():
                yield f"extract.{variable}", "needs one of json, regexp, header and cookie"


@dataclass(frozen=True)
class FlowProbe:
    """Not in blackbox: a user journey, HTTP steps run in order with one cookie jar."""

    steps: tuple[FlowStep, ...] = ()
    # Sent with every step; a step's own headers win.
    headers: Mapping[str, Secret] = field(default_factory=_empty_map)
    preferred_ip_protocol: IPProtocol = "ip6"
    ip_protocol_fallback: bool = True
    tls_config: TLSConfig = field(default_factory=TLSConfig)
    # Per response; 0 means the http prober's default limit.
    body_size_limit: ByteSize = ByteSize(0)
    max_redirects: int = 10

    def check(self) -> Problems:
        first: dict[str, int] = {}
        defined: set[str] = set()
        for index, step in enumerate(self.steps):
            if step.name in first:
                message = f"duplicate step name {step.name!r} (steps[{first[step.name]}] and steps[{index}])"
                yield "steps", message
            first.setdefault(step.name, index)
            for where, text in step.templates():
                for variable in VARIABLE_REF_RE.findall(text):
                    if variable not in defined:
                        message = (
                            f"steps[{index}] ({step.name}) uses {{{{{variable}}}}} in its {where}, "
                            f"but no earlier step extracts {variable!r}"
                        )
                        yield "steps", message
            defined.update(step.extract)
        if self.max_redirects < 0:
            yield "max_redirects", f"must not be negative, got {self.max_redirects}"

    def required(self) -> Problems:
        """Checked only for flow modules (check_module), so other kinds need no flow section."""
        if not self.steps:
            yield "steps", "is required: a journey needs at least one step"


# --- statuspage: a vendor's own status page (not in blackbox) ------------------------------------


@dataclass(frozen=True)
class StatuspageProbe(ProxyOptions):
    """Not in blackbox: reads an Atlassian Statuspage-compatible /api/v2/summary.json."""

    # Only these components, by name; empty means all of them, up to max_components.
    components: tuple[str, ...] = ()
    max_components: int = 50
    headers: Mapping[str, Secret] = field(default_factory=_empty_map)
    preferred_ip_protocol: IPProtocol = "ip6"
    ip_protocol_fallback: bool = True
    tls_config: TLSConfig = field(default_factory=TLSConfig)
    body_size_limit: ByteSize = ByteSize(0)

    def check(self) -> Problems:
        if not 0 <= self.max_components <= 1000:
            yield "max_components", f"must be between 0 and 1000, got {self.max_components}"
        yield from self.proxy_problems()


# --- websocket (not in blackbox) -----------------------------------------------------------------


@dataclass(frozen=True)
class WebSocketMessage:
    """One turn of the dialogue: wait for a message matching ``expect``, then ``send`` one.

    As in the tcp prober's query_response, ``send`` may use ``${1}`` or ``${name}`` from the
    groups of this turn's ``expect`` match.
    """

    expect: Regex | None = None
    send: str = ""

    def check(self) -> Problems:
        if self.expect is None and not self.send:
            yield "expect", "set expect, send or both"


# The handshake sets these itself; a configured value would break it.
_HANDSHAKE_HEADERS = frozenset(
    {
        "host",
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
        "content-length",
        "transfer-encoding",
    }
)
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass(frozen=True)
class WebSocketProbe:
    """Not in blackbox: opens a WebSocket (ws:// or wss://) and holds a message dialogue."""

    headers: Mapping[str, Secret] = field(default_factory=_empty_map)
    subprotocols: tuple[str, ...] = ()
    messages: tuple[WebSocketMessage, ...] = ()
    max_message_size: ByteSize = ByteSize(1024 * 1024)
    preferred_ip_protocol: IPProtocol = "ip6"
    ip_protocol_fallback: bool = True
    tls_config: TLSConfig = field(default_factory=TLSConfig)

    def check(self) -> Problems:
        for name in self.headers:
            if name.lower() in _HANDSHAKE_HEADERS:
                hint = " (use subprotocols)" if name.lower() == "sec-websocket-protocol" else ""
                yield f"headers.{name}", f"header {name} is set by the WebSocket handshake{hint}"
        for protocol in self.subprotocols:
            if not _TOKEN_RE.match(protocol):
                yield "subprotocols", f"invalid subprotocol {protocol!r}: must be an HTTP token"
        if self.max_message_size <= 0:
            yield "max_message_size", "must be greater than 0"


_S = TypeVar("_S")


@dataclass(frozen=True)
class Module:
    """A named set of probe settings; blackbox's module.

    ``sections`` holds the settings written for each kind, by kind name (``http``, ``tcp``...);
    blackbox reads a section for another kind than ``prober`` too, so they are kept and checked.
    Which kinds exist, and their settings types, is the registry's business (exporter.probes).
    """

    prober: str
    # Read as a Go duration (the first type); a service's inline settings bring a Duration.
    timeout: GoDuration | Duration | None = None
    # Not in blackbox: further attempts after a failure, all within the one timeout.
    retries: int = 0
    sections: Mapping[str, object] = field(default_factory=_empty_map)

    def section(self, settings: type[_S]) -> _S:
        """The settings of type ``settings`` written in this module, or that type's defaults."""
        for value in self.sections.values():
            if isinstance(value, settings):
                return value
        default = _DEFAULTS.get(settings)
        if default is None:
            default = _DEFAULTS[settings] = settings()
        return cast(_S, default)


# One default instance per settings type: they are frozen, so sharing them is safe.
_DEFAULTS: dict[type, object] = {}


def check_module(module: Module) -> Problems:
    """Checks of a module's own fields (the loader adds its kind's, from the registry)."""
    if not 0 <= module.retries <= 10:
        yield "retries", f"must be between 0 and 10, got {module.retries}"
