"""Forward proxies for the HTTP client: which proxy a request takes, and the CONNECT tunnel to it.

The choice follows Prometheus' HTTP client, which blackbox uses: ``proxy_url`` alone sends
every request through the proxy; with ``no_proxy``, or with ``proxy_from_environment``
(HTTP_PROXY, HTTPS_PROXY, NO_PROXY, upper or lower case), Go's httpproxy rules apply, and
those never proxy ``localhost`` or a loopback address.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import ipaddress
import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from exporter.modules import ProxyOptions
from exporter.probes import http1
from exporter.probes.net import ProbeFailure
from exporter.result import FailureReason

# The most of a CONNECT answer we read: a proxy's error page is not worth more.
MAX_CONNECT_HEAD = 16 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Proxy:
    """A proxy to reach a target through; ``str()`` never shows its credentials."""

    scheme: str
    host: str
    port: int
    username: str = ""
    password: str = ""
    # Which setting named it, for messages: proxy_url, HTTP_PROXY...
    origin: str = "proxy_url"

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def authorization(self) -> str | None:
        """Proxy-Authorization from the URL's user info, as Go sends it (Basic)."""
        if not self.username and not self.password:
            return None
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
        return f"Basic {token}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_proxy(text: str, origin: str) -> Proxy | None:
    """A proxy URL as Go reads one; a bare ``host:port`` is an http proxy. None if unusable.

    Go ignores an environment value it cannot parse; a SOCKS proxy, which Go would use, is
    refused with a message rather than ignored.
    """
    text = text.strip()
    scheme = text.partition("://")[0].lower() if "://" in text else ""
    if scheme.startswith("socks"):
        raise ProbeFailure(FailureReason.OTHER, f"{origin} names a SOCKS proxy, which is not supported")
    if scheme not in ("http", "https"):
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    return Proxy(
        scheme=scheme,
        host=parts.hostname,
        port=port or _DEFAULT_PORTS[scheme],
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        origin=origin,
    )


@dataclass(frozen=True, slots=True)
class _Rule:
    """One entry of a NO_PROXY list, as Go's httpproxy reads it."""

    kind: str  # "all", "cidr", "ip" or "domain"
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    # For a domain: ".example.com"; ``whole`` when example.com itself matches too.
    domain: str = ""
    whole: bool = False
    port: str = ""

    def matches(self, host: str, port: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        if self.kind == "all":
            return True
        if self.kind == "cidr":
            network = self.network
            return ip is not None and network is not None and ip.version == network.version and ip in network
        if self.kind == "ip":
            return ip is not None and ip == self.ip and self.port in ("", port)
        if host.endswith(self.domain) or (self.whole and host == self.domain[1:]):
            return self.port in ("", port)
        return False


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _split(entry: str) -> tuple[str, str]:
    """host and port of a NO_PROXY entry, as Go's SplitHostPort sees them ("" port if none)."""
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if bracket and rest.startswith(":"):
            return host, rest[1:]
        return entry, ""
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, port
    return entry, ""


@functools.lru_cache(maxsize=256)
def no_proxy_rules(text: str) -> tuple[_Rule, ...]:
    """The rules of a comma-separated NO_PROXY list; malformed entries are skipped, as in Go."""
    rules: list[_Rule] = []
    for raw in text.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return (_Rule("all"),)
        if "/" in entry:
            with contextlib.suppress(ValueError):
                rules.append(_Rule("cidr", network=ipaddress.ip_network(entry, strict=False)))
            continue
        host, port = _split(entry)
        address = _ip(host)
        if address is not None:
            rules.append(_Rule("ip", ip=address, port=port))
            continue
        if not host:
            continue
        if host.startswith("*."):
            host = host[1:]
        whole = not host.startswith(".")
        domain = "." + host if whole else host
        if not domain.isascii():
            with contextlib.suppress(UnicodeError):
                domain = domain.encode("idna").decode("ascii")
        rules.append(_Rule("domain", domain=domain, whole=whole, port=port))
    return tuple(rules)


def _uses_proxy(rules: tuple[_Rule, ...], host: str, port: int) -> bool:
    """Go's httpproxy rule for one host (a name or an address) and port."""
    host = host.strip().lower()
    if host == "localhost":
        return False
    address = _ip(host)
    if address is not None and address.is_loopback:
        return False
    return not any(rule.matches(host, str(port), address) for rule in rules)


@dataclass(frozen=True, slots=True)
class Choice:
    """The proxy a URL's scheme would take, and the NO_PROXY rules that may exempt a host.

    ``rules`` is None for ``proxy_url`` without ``no_proxy``: then every host, loopback
    included, goes through the proxy, as Go's http.ProxyURL does.
    """

    proxy: Proxy
    rules: tuple[_Rule, ...] | None

    def bypassed(self, host: str, port: int, address: str | None) -> bool:
        """Whether ``host`` (or the ``address`` it was resolved to) is reached directly.

        blackbox asks its proxy function about the resolved address (it rewrites the URL to
        it); we ask about the name too, so a ``no_proxy`` domain also works when the name is
        resolved here.
        """
        if self.rules is None:
            return False
        if not _uses_proxy(self.rules, host, port):
            return True
        return address is not None and not _uses_proxy(self.rules, address, port)


def _environment(*names: str) -> tuple[str, str]:
    for name in names:
        value = os.environ.get(name, "")
        if value:
            return name, value
    return names[0], ""


def choose(settings: ProxyOptions, scheme: str) -> Choice | None:
    """The proxy for a URL of ``scheme`` under ``settings``, before any host is considered."""
    if settings.proxy_from_environment:
        if scheme == "https":
            origin, value = _environment("HTTPS_PROXY", "https_proxy")
        else:
            origin, value = _environment("HTTP_PROXY", "http_proxy")
            if value and os.environ.get("REQUEST_METHOD"):
                # Go's rule: in a CGI environment a client may have set HTTP_PROXY itself.
                raise ProbeFailure(
                    FailureReason.OTHER, "HTTP_PROXY is not used when REQUEST_METHOD is set (CGI)"
                )
        proxy = parse_proxy(value, origin) if value else None
        if proxy is None:
            return None
        return Choice(proxy, no_proxy_rules(_environment("NO_PROXY", "no_proxy")[1]))
    if settings.proxy_url:
        proxy = parse_proxy(settings.proxy_url.reveal(), "proxy_url")
        if proxy is None:
            raise ProbeFailure(FailureReason.OTHER, f"proxy_url {settings.proxy_url} is not usable")
        return Choice(proxy, no_proxy_rules(settings.no_proxy) if settings.no_proxy else None)
    return None


async def tunnel(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    proxy: Proxy,
    authority: str,
    headers: list[tuple[bytes, bytes]],
) -> None:
    """Ask ``proxy`` for a tunnel to ``authority`` (host:port) with CONNECT; fail unless 2xx."""
    try:
        payload = http1.request("CONNECT", authority, [(b"Host", authority.encode("ascii")), *headers])
    except (http1.LocalProtocolError, UnicodeError):
        raise ProbeFailure(
            FailureReason.OTHER, "cannot build the CONNECT request: a proxy_connect_header is not valid HTTP"
        ) from None
    try:
        writer.write(payload)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        raise _failed(f"proxy {proxy} closed the connection without answering CONNECT") from None
    except (asyncio.LimitOverrunError, ValueError):
        raise _failed(f"proxy {proxy} sent an oversized answer to CONNECT") from None
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise _failed(f"connection to proxy {proxy} lost during CONNECT: {reason}") from None
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    version, _, rest = status_line.partition(" ")
    code, _, phrase = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not (len(code) == 3 and code.isdigit()):
        raise _failed(f"proxy {proxy} answered CONNECT with something that is not HTTP")
    if not code.startswith("2"):
        text = "".join(c for c in phrase if c.isprintable())[:80].strip()
        raise _failed(f"proxy {proxy} refused CONNECT to {authority}: {code}{' ' + text if text else ''}")


def _failed(message: str) -> ProbeFailure:
    return ProbeFailure(FailureReason.CONNECT, message)
