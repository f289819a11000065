"""Probe settings in blackbox_exporter's module format, so a blackbox.yml loads unchanged."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from exporter.types import ByteSize, Duration, Regex, Secret, StatusRange

IPProtocol = Literal["ip4", "ip6", "ip"]
TLSVersion = Literal["TLS10", "TLS11", "TLS12", "TLS13"]

# Options are named and defaulted as blackbox_exporter names and defaults them.
# A check yields (key, message) pairs; the loader turns them into located errors.
Problems = Iterator[tuple[str, str]]

DEFAULT_BODY_SIZE_LIMIT = 10 * 1024 * 1024


def _empty_map() -> Mapping[str, Secret]:
    return MappingProxyType({})


@dataclass(frozen=True)
class TLSConfig:
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""
    insecure_skip_verify: bool = False
    min_version: TLSVersion | None = None
    max_version: TLSVersion | None = None

    def check(self) -> Problems:
        if bool(self.cert_file) != bool(self.key_file):
            yield "cert_file", "cert_file and key_file must be set together"
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
    password: Secret | None = None
    password_file: str = ""

    def check(self) -> Problems:
        if self.password is not None and self.password_file:
            yield "password", "at most one of password and password_file may be set"


@dataclass(frozen=True)
class Authorization:
    type: str = "Bearer"
    credentials: Secret | None = None
    credentials_file: str = ""

    def check(self) -> Problems:
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
class HTTPProbe:
    valid_status_codes: tuple[StatusRange, ...] = ()
    valid_http_versions: tuple[str, ...] = ()
    preferred_ip_protocol: IPProtocol = "ip6"
    ip_protocol_fallback: bool = True
    fail_if_ssl: bool = False
    fail_if_not_ssl: bool = False
    method: str = "GET"
    headers: Mapping[str, Secret] = field(default_factory=_empty_map)
    body: str = ""
    body_file: str = ""
    compression: Literal["", "gzip", "deflate", "identity"] = ""
    fail_if_body_matches_regexp: tuple[Regex, ...] = ()
    fail_if_body_not_matches_regexp: tuple[Regex, ...] = ()
    fail_if_header_matches: tuple[HeaderMatch, ...] = ()
    fail_if_header_not_matches: tuple[HeaderMatch, ...] = ()
    body_size_limit: ByteSize = ByteSize(0)
    skip_resolve_phase_with_proxy: bool = False
    # blackbox inlines Prometheus' HTTP client options here.
    basic_auth: BasicAuth | None = None
    bearer_token: Secret | None = None
    bearer_token_file: str = ""
    authorization: Authorization | None = None
    tls_config: TLSConfig = field(default_factory=TLSConfig)
    follow_redirects: bool = True
    no_follow_redirects: bool | None = None
    max_redirects: int = 10
    enable_http2: bool = True

    def check(self) -> Problems:
        if self.fail_if_ssl and self.fail_if_not_ssl:
            yield "fail_if_ssl", "fail_if_ssl and fail_if_not_ssl cannot both be true"
        if self.body and self.body_file:
            yield "body", "at most one of body and body_file may be set"
        auths = [
            name
            for name, set_ in (
                ("basic_auth", self.basic_auth is not None),
                ("bearer_token", self.bearer_token is not None),
                ("bearer_token_file", bool(self.bearer_token_file)),
                ("authorization", self.authorization is not None),
            )
            if set_
        ]
        if len(auths) > 1:
            yield auths[1], f"only one of {', '.join(auths)} may be set"
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
class QueryResponse:
    expect: Regex | None = None
    send: str = ""
    starttls: bool = False


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

        try:
            dns.rdatatype.from_text(self.query_type)
        except Exception:
            yield "query_type", f"unknown DNS record type {self.query_type!r}"
        try:
            dns.rdataclass.from_text(self.query_class)
        except Exception:
            yield "query_class", f"unknown DNS class {self.query_class!r}"
        for rcode in self.valid_rcodes:
            try:
                dns.rcode.from_text(rcode)
            except Exception:
                yield "valid_rcodes", f"unknown DNS rcode {rcode!r}"
        if self.dns_over_tls and self.transport_protocol != "tcp":
            yield "dns_over_tls", "needs transport_protocol: tcp"


@dataclass(frozen=True)
class GRPCProbe:
    service: str = ""
    tls: bool = False
    tls_config: TLSConfig = field(default_factory=TLSConfig)
    preferred_ip_protocol: IPProtocol = "ip6"
    ip_protocol_fallback: bool = True


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


@dataclass(frozen=True)
class Module:
    """A named set of probe settings; blackbox's module."""

    prober: str
    timeout: Duration | None = None
    # Not in blackbox: further attempts after a failure, all within the one timeout.
    retries: int = 0
    http: HTTPProbe = field(default_factory=HTTPProbe)
    tcp: TCPProbe = field(default_factory=TCPProbe)
    icmp: ICMPProbe = field(default_factory=ICMPProbe)
    dns: DNSProbe = field(default_factory=DNSProbe)
    grpc: GRPCProbe = field(default_factory=GRPCProbe)
    push: PushProbe = field(default_factory=PushProbe)


KNOWN_PROBERS = ("http", "tcp", "dns", "icmp", "grpc", "push")


def check_module(module: Module) -> Problems:
    """Checks that span a module's sections (the loader runs them after each module)."""
    if module.prober not in KNOWN_PROBERS:
        yield (
            "prober",
            f"unknown prober {module.prober!r}; expected one of {', '.join(KNOWN_PROBERS)}",
        )
    if not 0 <= module.retries <= 10:
        yield "retries", f"must be between 0 and 10, got {module.retries}"
    if module.prober == "push":
        yield from ((f"push.{key}", message) for key, message in module.push.required())
    if module.prober == "dns" and not module.dns.query_name:
        yield "dns", "query_name is required for the dns prober"
