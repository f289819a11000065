"""Decides which targets on-demand /probe requests may reach (probe_allowlist)."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from exporter.types import HostPattern

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_VERDICTS = 1024


# Every on-demand probe asks this of its target's host and of the address it connects to;
# the same few come back again and again, and addresses are immutable.
@functools.lru_cache(maxsize=1024)
def parse_ip(text: str) -> IPAddress | None:
    """An IP address in any form a resolver would accept, IPv4-mapped IPv6 unwrapped.

    ``2130706433``, ``0x7f.1``, ``127.1`` and ``::ffff:127.0.0.1`` all mean 127.0.0.1; checking
    only the dotted form would let them through.
    """
    host = text.strip().strip("[]").split("%", 1)[0]
    try:
        ip: IPAddress = ipaddress.ip_address(host)
    except ValueError:
        try:
            # inet_aton accepts the shorthand, octal, hex and decimal forms of IPv4.
            ip = ipaddress.IPv4Address(socket.inet_aton(host))
        except (OSError, ValueError):
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


# /probe asks this for every request, mostly for the same few targets.
@functools.lru_cache(maxsize=256)
def target_host(target: str) -> str:
    """The host part of a target, whether a URL, ``host:port``, ``[v6]:port`` or a bare host."""
    text = target.strip()
    if text.startswith(("/", "@")):
        return text  # a unix socket path, which may hold colons
    if "://" in text:
        try:
            return urlsplit(text).hostname or ""
        except ValueError:  # "http://[::1", "http://[zz]/": no host anyone could reach
            return ""
    if text.startswith("["):
        return text[1:].split("]", 1)[0]
    if text.count(":") == 1:
        return text.rsplit(":", 1)[0]
    return text


class Allowlist:
    """probe_allowlist: CIDRs for addresses, globs for names.

    A name that matches a glob is trusted wherever it resolves. Any other name is allowed only
    if every address it resolves to lies in an allowed network, so a public name pointing at an
    internal address does not slip through. An empty allowlist allows nothing.
    """

    def __init__(self, patterns: Sequence[HostPattern]) -> None:
        self.patterns = tuple(patterns)
        self._networks = [p.network for p in patterns if p.network is not None]
        self._globs = [p.glob for p in patterns if p.glob is not None]
        self._paths = [p.path for p in patterns if p.path is not None]
        # Verdicts that need no DNS (addresses, globs, paths) depend only on the host (and the
        # address): every on-demand probe asks for the same few again and again, and parsing
        # and matching addresses was the cost. Each is remembered in a bounded LRU cache of this
        # allowlist's own (a reload builds a new Allowlist).
        remember = functools.lru_cache(maxsize=MAX_VERDICTS)
        self.allows_host: Callable[[str], bool] = remember(self._allows_host)
        self.allows_address: Callable[[str, str], bool] = remember(self._allows_address)
        self._verdict_without_dns: Callable[[str], bool | None] = remember(self._decide_without_dns)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def _in_networks(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self._networks)

    def _glob_match(self, host: str) -> bool:
        name = host.lower().rstrip(".")
        return any(glob.match(name) for glob in self._globs)

    def _allows_host(self, host: str) -> bool:
        if host.startswith(("/", "@")):
            # A unix socket (the unix prober): only a path entry lists it.
            return any(path.match(host) for path in self._paths)
        ip = parse_ip(host)
        if ip is not None:
            return self._in_networks(ip)
        # An unmatched name may still pass once its addresses are checked.
        return self._glob_match(host) or bool(self._networks)

    def _allows_address(self, host: str, address: str) -> bool:
        if parse_ip(host) is None and self._glob_match(host):
            return True
        ip = parse_ip(address)
        return ip is not None and self._in_networks(ip)

    def _decide_without_dns(self, host: str) -> bool | None:
        """allows_target's verdict where no lookup is needed; None for a name to resolve."""
        if not self.allows_host(host):
            return False
        if host.startswith(("/", "@")) or parse_ip(host) is not None or self._glob_match(host):
            return True
        return None

    async def allows_target(self, host: str) -> bool:
        """Check a /probe target before probing: names outside the globs must resolve inside the networks."""
        verdict = self._verdict_without_dns(host)
        if verdict is not None:
            return verdict
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            # Unresolvable: let the probe report the DNS failure; it cannot reach anything.
            return True
        return all(self.allows_address(host, str(info[4][0])) for info in infos)

    def explain(self, target: str) -> str:
        """Why a target was refused and how to allow it."""
        host = target_host(target) or target
        if not self.patterns:
            return (
                f"target {host!r} refused: probe_allowlist is empty, so /probe may only probe "
                "configured services (?service=NAME); add a CIDR or host glob to probe_allowlist "
                "in the config file to allow arbitrary targets"
            )
        allowed = ", ".join(str(p) for p in self.patterns)
        return (
            f"target {host!r} refused: it is not covered by probe_allowlist ({allowed}); "
            "add a matching CIDR or host glob to probe_allowlist in the config file to allow it"
        )
