"""Forward proxies for the HTTP client: which proxy a request takes, and the tunnel through it.

The choice follows Prometheus' HTTP client, which blackbox uses: ``proxy_url`` alone sends
every request through the proxy; with ``no_proxy``, or with ``proxy_from_environment``
(HTTP_PROXY, HTTPS_PROXY, NO_PROXY, upper or lower case), Go's httpproxy rules apply, and
those never proxy ``localhost`` or a loopback address.

An http or https proxy tunnels an https target with CONNECT and takes a plain http request
whole. A SOCKS proxy (``socks5://`` or ``socks5h://``, both as Go's transport treats them)
tunnels every target (RFC 1928), with the URL's user info as RFC 1929 credentials. Go never
resolves a name for a SOCKS proxy: it sends the host it dials, which in blackbox is the address
its resolve phase found, or the name with ``skip_resolve_phase_with_proxy``; so both schemes
send the same, and so do we.
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
_DEFAULT_PORTS = {"http": 80, "https": 443, "socks5": 1080, "socks5h": 1080}
SOCKS_SCHEMES = ("socks5", "socks5h")


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
    def socks(self) -> bool:
        return self.scheme in SOCKS_SCHEMES

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

    Go ignores an environment value it cannot parse; a SOCKS proxy other than socks5 or
    socks5h, which Go would not ignore, is refused with a message.
    """
    text = text.strip()
    scheme = text.partition("://")[0].lower() if "://" in text else ""
    if scheme.startswith("socks") and scheme not in SOCKS_SCHEMES:
        raise ProbeFailure(
            FailureReason.OTHER, f"{origin} names a {scheme} proxy: only socks5 and socks5h are supported"
        )
    if scheme not in ("http", "https", *SOCKS_SCHEMES):
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


# RFC 1928 reply codes, named as Go's socks package names them.
SOCKS_REPLIES = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}
_NO_AUTH, _USER_PASSWORD, _NO_METHOD = 0x00, 0x02, 0xFF


async def socks_connect(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proxy: Proxy, host: str, port: int
) -> None:
    """Ask SOCKS5 ``proxy`` for a connection to ``host`` (an address, or a name it resolves).

    As Go's client: no authentication offered alone, or with user info both no authentication
    and username/password (RFC 1929), the proxy choosing. Every failure is ``connect``; the
    credentials are never in a message.
    """
    credentials = proxy.username or proxy.password
    username = proxy.username.encode("utf-8")
    password = proxy.password.encode("utf-8")
    if credentials and not (0 < len(username) <= 255 and len(password) <= 255):
        raise _failed(f"SOCKS proxy {proxy}: the username must be 1 to 255 bytes, the password at most 255")
    address = _ip(host)
    if address is not None:
        target = (b"\x01" if address.version == 4 else b"\x04") + address.packed
    else:
        name = host.encode("idna") if not host.isascii() else host.encode("ascii")
        if not 0 < len(name) <= 255:
            raise _failed(f"SOCKS proxy {proxy}: the host name {host!r} is too long for SOCKS")
        target = b"\x03" + bytes([len(name)]) + name
    methods = bytes([_NO_AUTH, _USER_PASSWORD]) if credentials else bytes([_NO_AUTH])
    try:
        writer.write(b"\x05" + bytes([len(methods)]) + methods)
        await writer.drain()
        version, method = await reader.readexactly(2)
        if version != 5:
            raise _failed(f"SOCKS proxy {proxy} answered with version {version}, not 5")
        if method == _USER_PASSWORD and credentials:
            writer.write(b"\x01" + bytes([len(username)]) + username + bytes([len(password)]) + password)
            await writer.drain()
            _, status = await reader.readexactly(2)
            if status != 0:
                raise _failed(f"SOCKS proxy {proxy} refused the username and password")
        elif method == _NO_METHOD or method not in methods:
            raise _failed(f"SOCKS proxy {proxy} accepts none of the authentication methods offered")
        writer.write(b"\x05\x01\x00" + target + port.to_bytes(2, "big"))
        await writer.drain()
        version, reply, _, kind = await reader.readexactly(4)
        if version != 5:
            raise _failed(f"SOCKS proxy {proxy} answered with version {version}, not 5")
        if reply != 0:
            shown = f"{_host_text(host)}:{port}"
            why = SOCKS_REPLIES.get(reply, "unknown reply")
            raise _failed(f"SOCKS proxy {proxy} refused the connection to {shown}: reply {reply} ({why})")
        if kind == 1:
            await reader.readexactly(4 + 2)
        elif kind == 4:
            await reader.readexactly(16 + 2)
        elif kind == 3:
            (length,) = await reader.readexactly(1)
            await reader.readexactly(length + 2)
        else:
            raise _failed(f"SOCKS proxy {proxy} answered with an unknown address type {kind}")
    except asyncio.IncompleteReadError:
        raise _failed(f"SOCKS proxy {proxy} closed the connection during the handshake") from None
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise _failed(f"connection to SOCKS proxy {proxy} lost during the handshake: {reason}") from None


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host
