"""The icmp prober: one echo request and its reply, over a datagram ICMP socket or a raw one."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import itertools
import logging
import os
import secrets
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from exporter.modules import ICMPProbe
from exporter.probes import net
from exporter.probes.base import Prober, ProbeRequest, ProberKind
from exporter.probes.net import Address, ProbeFailure, map_exceptions, why
from exporter.result import FailureReason, MetricFamily, ProbeResult, Trace

log = logging.getLogger(__name__)

SocketKind = Literal["datagram", "raw"]
SocketFactory = Callable[[socket.AddressFamily, SocketKind], socket.socket]

# Unprivileged first (it needs no capability), then raw, as blackbox does.
SOCKET_KINDS: tuple[SocketKind, ...] = ("datagram", "raw")

ECHO_REQUEST = {socket.AF_INET: 8, socket.AF_INET6: 128}
ECHO_REPLY = {socket.AF_INET: 0, socket.AF_INET6: 129}

# Python's socket module lacks these Linux constants; the values are the kernel's ABI.
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)

_DEFAULT_PAYLOAD = b"outage-exporter echo request"
_RECV_SIZE = 2**16
_ANCILLARY_SIZE = socket.CMSG_SPACE(struct.calcsize("i")) * 2

# Each echo gets a random identifier, as blackbox 0.25 and later give it, so replies to other
# pingers (and to another exporter in the same network namespace) sharing a raw socket's view
# are not taken for ours; the sequence starts at a random point and tells this process's
# concurrent probes apart even when two identifiers collide.
_SEQUENCE = itertools.count(secrets.randbelow(2**16))

_UNREACHABLE_V4 = {
    0: "network unreachable",
    1: "host unreachable",
    2: "protocol unreachable",
    3: "port unreachable",
    4: "fragmentation needed",
    5: "source route failed",
    6: "destination network unknown",
    7: "destination host unknown",
    9: "network administratively prohibited",
    10: "host administratively prohibited",
    13: "communication administratively prohibited",
}
_UNREACHABLE_V6 = {
    0: "no route to destination",
    1: "communication administratively prohibited",
    2: "beyond scope of source address",
    3: "address unreachable",
    4: "port unreachable",
    5: "source address failed ingress/egress policy",
    6: "reject route to destination",
}


# The families this kind writes beyond every probe's own (for help text and docs).
METRICS = (
    MetricFamily("probe_icmp_duration_seconds", "Duration of each ICMP phase.", ("phase",)),
    MetricFamily("probe_icmp_reply_hop_limit", "Hop limit (TTL) of the echo reply."),
    *net.ADDRESS_METRICS,
)


def open_socket(family: socket.AddressFamily, kind: SocketKind) -> socket.socket:
    """Open an ICMP socket: ``datagram`` is Linux's unprivileged ping socket, ``raw`` needs root."""
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    sock_type = socket.SOCK_DGRAM if kind == "datagram" else socket.SOCK_RAW
    return socket.socket(family, sock_type, proto)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(int(word) for word in struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def payload_for(size: int) -> bytes:
    """The echo data: our marker, cut or zero-padded to ``size`` bytes when size is set."""
    if size <= 0:
        return _DEFAULT_PAYLOAD
    return _DEFAULT_PAYLOAD[:size].ljust(size, b"\0")


def echo_request(family: socket.AddressFamily, ident: int, seq: int, payload: bytes) -> bytes:
    """An echo request; the ICMPv6 checksum is left to the kernel, which always computes it."""
    kind = ECHO_REQUEST[family]
    header = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    if family == socket.AF_INET:
        header = struct.pack("!BBHHH", kind, 0, checksum(header + payload), ident, seq)
    return header + payload


@dataclass(frozen=True, slots=True)
class Echo:
    """What we sent and where to, so a received packet can be matched against it."""

    family: socket.AddressFamily
    target: str
    ident: int
    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    """A received packet that concerns our echo: its reply, or an ICMP error about it."""

    error: str | None = None
    hop_limit: int | None = None


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.split("%", 1)[0]) == ipaddress.ip_address(b.split("%", 1)[0])
    except ValueError:
        return False


def classify(
    packet: bytes, source: str, echo: Echo, ip_header: bool, hop_limit: int | None = None
) -> Reply | None:
    """Match one received packet against ``echo``; None if it is someone else's traffic.

    ``ip_header`` is set for IPv4 raw sockets, which deliver the IP header (and with it the
    TTL) in front of the ICMP message.
    """
    if ip_header:
        if len(packet) < 20:
            return None
        header_len = (packet[0] & 0x0F) * 4
        hop_limit = packet[8]
        packet = packet[header_len:]
    if len(packet) < 8:
        return None
    kind, code, _, ident, seq = struct.unpack("!BBHHH", packet[:8])
    if kind == ECHO_REPLY[echo.family]:
        mine = (ident, seq) == (echo.ident, echo.seq) and packet[8:] == echo.payload
        return Reply(hop_limit=hop_limit) if mine and _same_ip(source, echo.target) else None
    problem = _error_text(echo.family, kind, code)
    if problem is not None and _quotes_echo(packet[8:], echo):
        return Reply(error=f"{source} reports {problem} for {echo.target}")
    return None


def _error_text(family: socket.AddressFamily, kind: int, code: int) -> str | None:
    if family == socket.AF_INET:
        if kind == 3:
            return "destination unreachable: " + _UNREACHABLE_V4.get(code, f"code {code}")
        if kind == 11:
            return "TTL exceeded in transit" if code == 0 else "fragment reassembly time exceeded"
        if kind == 12:
            return "parameter problem"
        return None
    if kind == 1:
        return "destination unreachable: " + _UNREACHABLE_V6.get(code, f"code {code}")
    if kind == 2:
        return "packet too big"
    if kind == 3:
        return "hop limit exceeded in transit" if code == 0 else "fragment reassembly time exceeded"
    if kind == 4:
        return "parameter problem"
    return None


def _quotes_echo(quoted: bytes, echo: Echo) -> bool:
    """Whether an ICMP error's quoted packet is our echo request to our target."""
    if echo.family == socket.AF_INET:
        if len(quoted) < 20:
            return False
        header_len = (quoted[0] & 0x0F) * 4
        destination = socket.inet_ntop(socket.AF_INET, quoted[16:20])
        inner = quoted[header_len : header_len + 8]
    else:
        # Our request carries no extension headers, so ICMPv6 follows the fixed header.
        if len(quoted) < 40 or quoted[6] != socket.IPPROTO_ICMPV6:
            return False
        destination = socket.inet_ntop(socket.AF_INET6, quoted[24:40])
        inner = quoted[40:48]
    if len(inner) < 8:
        return False
    kind, _, _, ident, seq = struct.unpack("!BBHHH", inner)
    return (
        kind == ECHO_REQUEST[echo.family]
        and (ident, seq) == (echo.ident, echo.seq)
        and _same_ip(destination, echo.target)
    )


def _hop_limit(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancillary:
        wanted = (level, kind) in (
            (socket.IPPROTO_IP, socket.IP_TTL),
            (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT),
        )
        if wanted and len(data) >= struct.calcsize("i"):
            return int(struct.unpack("i", data[: struct.calcsize("i")])[0])
    return None


async def _recvmsg(
    sock: socket.socket,
) -> tuple[bytes, list[tuple[int, int, bytes]], str]:
    """Receive one packet with its ancillary data; asyncio has no sock_recvmsg."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data, ancillary, _, address = sock.recvmsg(_RECV_SIZE, _ANCILLARY_SIZE)
            return data, ancillary, str(address[0]) if address else ""
        except (BlockingIOError, InterruptedError):
            pass
        await _wait_ready(loop, sock)


async def _send(sock: socket.socket, packet: bytes, address: Address, connected: bool) -> None:
    """Send one packet; uvloop implements neither sock_sendto nor sock_recvmsg, so we poll."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            if connected:
                sock.send(packet)
            else:
                sock.sendto(packet, (address.ip, 0))
            return
        except (BlockingIOError, InterruptedError):
            pass
        await _wait_ready(loop, sock, write=True)


async def _wait_ready(loop: asyncio.AbstractEventLoop, sock: socket.socket, write: bool = False) -> None:
    """Wait until ``sock`` can be read (or written), on any event loop."""
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        # The loop may report the socket again before the waiting task resumes.
        if not ready.done():
            ready.set_result(None)

    if write:
        loop.add_writer(sock.fileno(), wake)
    else:
        loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        if write:
            loop.remove_writer(sock.fileno())
        else:
            loop.remove_reader(sock.fileno())


def _open(
    family: socket.AddressFamily, factory: SocketFactory, kinds: Sequence[SocketKind]
) -> tuple[socket.socket, SocketKind]:
    for kind in kinds:
        try:
            return factory(family, kind), kind
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.EACCES):
                raise ProbeFailure(
                    FailureReason.OTHER, f"cannot open a {kind} ICMP socket: {why(err)}"
                ) from None
            log.debug("%s ICMP socket refused: %s", kind, err)
    raise ProbeFailure(
        FailureReason.OTHER,
        f"ICMP needs net.ipv4.ping_group_range to include gid {os.getgid()} or CAP_NET_RAW",
    )


def _configure(sock: socket.socket, kind: SocketKind, address: Address, settings: ICMPProbe) -> None:
    sock.setblocking(False)
    v4 = address.family == socket.AF_INET
    setup_errors: net.ExceptionMapping = {
        OSError: (FailureReason.OTHER, lambda err: f"cannot set up the ICMP socket: {why(err)}")
    }
    with map_exceptions(setup_errors):
        if settings.source_ip_address:
            sock.bind((settings.source_ip_address, 0))
        if settings.ttl > 0:
            if v4:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, settings.ttl)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, settings.ttl)
        if settings.dont_fragment and v4:
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        # Ask for the reply's TTL / hop limit (an IPv4 raw socket has it in the IP header).
        if not v4:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        elif kind == "datagram":
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        if kind == "datagram":
            # Connected, the kernel reports an ICMP error about our echo as a socket error.
            sock.connect((address.ip, 0))


async def _ping(request: ProbeRequest, factory: SocketFactory, kinds: Sequence[SocketKind]) -> Reply:
    settings = request.module.section(ICMPProbe)
    trace = request.trace
    host = request.target.strip()
    net.check_host(request.guard, host)
    addresses = await net.resolve(
        host,
        settings.preferred_ip_protocol,
        settings.ip_protocol_fallback,
        trace,
        request.guard,
    )
    address = addresses[0]
    setup_start = trace.elapsed()
    sock, kind = _open(address.family, factory, kinds)
    try:
        _configure(sock, kind, address, settings)
        payload = payload_for(settings.payload_size)
        seq = next(_SEQUENCE) & 0xFFFF
        identifier = secrets.randbelow(2**16)
        packet = echo_request(address.family, identifier, seq, payload)
        sent_at = trace.elapsed()
        trace.add_phase("setup", sent_at - setup_start)
        send_errors: net.ExceptionMapping = {
            OSError: (
                FailureReason.CONNECT,
                lambda err: f"cannot send an echo request to {address.ip}: {why(err)}",
            )
        }
        with map_exceptions(send_errors):
            await _send(sock, packet, address, connected=kind == "datagram")
        # A datagram socket's kernel puts its own identifier (the socket's port) in the echo.
        ident = sock.getsockname()[1] if kind == "datagram" else identifier
        echo = Echo(address.family, address.ip, ident, seq, payload)
        ip_header = kind == "raw" and address.family == socket.AF_INET
        while True:
            with map_exceptions({OSError: (FailureReason.CONNECT, lambda err: f"{address.ip}: {why(err)}")}):
                data, ancillary, source = await _recvmsg(sock)
            reply = classify(data, source, echo, ip_header, _hop_limit(ancillary))
            if reply is not None:
                break
        if reply.error is None:
            # Only a reply ends the rtt phase; as in blackbox a failed echo leaves it at 0.
            trace.add_phase("rtt", trace.elapsed() - sent_at)
        return reply
    finally:
        sock.close()


def make_prober(factory: SocketFactory = open_socket, kinds: Sequence[SocketKind] = SOCKET_KINDS) -> Prober:
    """An icmp prober that opens its sockets with ``factory``, trying ``kinds`` in order.

    This is the seam tests use to choose the datagram or the raw path.
    """

    async def probe_icmp(request: ProbeRequest) -> ProbeResult:
        """Ping the target host once and time the reply."""
        trace: Trace = request.trace
        reply = await _ping(request, factory, kinds)
        if reply.error is not None:
            return trace.fail(FailureReason.CONNECT, reply.error)
        if reply.hop_limit is not None:
            trace.set("probe_icmp_reply_hop_limit", reply.hop_limit)
        return trace.succeed()

    return probe_icmp


probe_icmp = make_prober()

KIND = ProberKind(
    "icmp",
    ICMPProbe,
    probe_icmp,
    metrics=METRICS,
    phases=("resolve", "setup", "rtt"),
    reasons=lambda module: frozenset(
        {FailureReason.DNS, FailureReason.CONNECT, FailureReason.TIMEOUT, FailureReason.OTHER}
    ),
)
