"""Tests for the icmp prober: raw and datagram sockets against 127.0.0.1 and ::1."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from exporter import runner
from exporter.allowlist import Allowlist
from exporter.modules import ICMPProbe, Module
from exporter.probes import icmp
from exporter.probes.base import ProbeRequest
from exporter.result import FailureReason, ProbeResult, Trace
from exporter.types import HostPattern
from tests.conftest import ProbeRunner

PING_GROUP_RANGE = Path("/proc/sys/net/ipv4/ping_group_range")
PHASES = {"resolve", "setup", "rtt"}

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="raw ICMP sockets need root")


def icmp_module(**settings: object) -> Module:
    return Module(prober="icmp", sections={"icmp": ICMPProbe(**settings)})  # type: ignore[arg-type]


async def probe_with(
    target: str,
    module: Module,
    factory: icmp.SocketFactory = icmp.open_socket,
    kinds: Sequence[icmp.SocketKind] = icmp.SOCKET_KINDS,
) -> ProbeResult:
    """Run an icmp prober built on the socket seam through the runner's deadline and error boundary."""
    probe = icmp.make_prober(factory, kinds)
    trace = Trace()
    return await runner.attempt(probe, ProbeRequest(target=target, module=module, trace=trace, timeout=5))


def assert_echoed(result: ProbeResult, version: int) -> None:
    assert result.success, result.message
    assert set(result.phases) == PHASES
    assert result.phases["rtt"] > 0
    assert sum(result.phases.values()) <= result.duration
    assert result.value("probe_ip_protocol") == version


def default_hop_limit(version: int) -> int:
    """What the local stack stamps on the replies it sends over loopback."""
    path = "/proc/sys/net/ipv4/ip_default_ttl" if version == 4 else "/proc/sys/net/ipv6/conf/lo/hop_limit"
    return int(Path(path).read_text())


@pytest.fixture
def ping_group_range() -> Iterator[Callable[[str], None]]:
    """Sets net.ipv4.ping_group_range for one test and puts the original back after it."""
    original = PING_GROUP_RANGE.read_text()

    def set_range(value: str) -> None:
        try:
            PING_GROUP_RANGE.write_text(value)
        except OSError as err:
            pytest.skip(f"cannot write {PING_GROUP_RANGE}: {err.strerror}")

    yield set_range
    PING_GROUP_RANGE.write_text(original)


class RecordingFactory:
    """The real socket factory, noting each attempt; raw sockets can be refused on purpose."""

    def __init__(self, refuse_raw: bool = False) -> None:
        self.refuse_raw = refuse_raw
        self.attempts: list[tuple[icmp.SocketKind, str]] = []

    def __call__(self, family: socket.AddressFamily, kind: icmp.SocketKind) -> socket.socket:
        if kind == "raw" and self.refuse_raw:
            self.attempts.append((kind, "refused"))
            raise PermissionError(errno.EPERM, "Operation not permitted")
        try:
            sock = icmp.open_socket(family, kind)
        except PermissionError:
            self.attempts.append((kind, "refused"))
            raise
        self.attempts.append((kind, "opened"))
        return sock


@needs_root
async def test_default_prober_pings_localhost(run_probe: ProbeRunner) -> None:
    """The registered prober pings 127.0.0.1 and records blackbox's phases and hop limit."""
    result = await run_probe("127.0.0.1", icmp_module())
    assert_echoed(result, 4)
    assert result.value("probe_icmp_reply_hop_limit") == default_hop_limit(4)


@needs_root
@pytest.mark.parametrize(("target", "version"), [("127.0.0.1", 4), ("::1", 6)])
async def test_raw_socket(target: str, version: int) -> None:
    """The raw path echoes over IPv4 and ICMPv6 and reads the reply's hop limit."""
    factory = RecordingFactory()
    result = await probe_with(target, icmp_module(), factory, kinds=("raw",))
    assert_echoed(result, version)
    assert factory.attempts == [("raw", "opened")]
    assert result.value("probe_icmp_reply_hop_limit") == default_hop_limit(version)


@needs_root
async def test_name_target_uses_preferred_family() -> None:
    """A host name is resolved with preferred_ip_protocol before pinging."""
    result = await probe_with("localhost", icmp_module(preferred_ip_protocol="ip4"), kinds=("raw",))
    assert_echoed(result, 4)


@needs_root
async def test_datagram_refused_falls_back_to_raw(
    ping_group_range: Callable[[str], None],
) -> None:
    """With ping sockets refused by the kernel, the prober falls back to a raw socket."""
    ping_group_range("1 0")
    factory = RecordingFactory()
    result = await probe_with("127.0.0.1", icmp_module(), factory)
    assert_echoed(result, 4)
    assert factory.attempts == [("datagram", "refused"), ("raw", "opened")]


async def test_both_socket_kinds_refused(ping_group_range: Callable[[str], None]) -> None:
    """Without ping sockets or CAP_NET_RAW the probe fails with reason other and says why."""
    ping_group_range("1 0")
    factory = RecordingFactory(refuse_raw=True)
    result = await probe_with("::1", icmp_module(), factory)
    assert factory.attempts == [("datagram", "refused"), ("raw", "refused")]
    assert result.reason is FailureReason.OTHER
    assert result.message == (
        f"ICMP needs net.ipv4.ping_group_range to include gid {os.getgid()} or CAP_NET_RAW"
    )
    assert "rtt" not in result.phases


@pytest.mark.parametrize(("target", "version"), [("127.0.0.1", 4), ("::1", 6)])
async def test_datagram_socket(ping_group_range: Callable[[str], None], target: str, version: int) -> None:
    """With our gid in ping_group_range the unprivileged ping socket does the echo."""
    ping_group_range(f"{os.getgid()} {os.getgid()}")
    factory = RecordingFactory()
    result = await probe_with(target, icmp_module(payload_size=56), factory, kinds=("datagram",))
    assert_echoed(result, version)
    assert factory.attempts == [("datagram", "opened")]
    assert result.value("probe_icmp_reply_hop_limit") == default_hop_limit(version)


@needs_root
async def test_ttl_dont_fragment_and_payload_on_the_wire() -> None:
    """ttl, dont_fragment and payload_size show in the echo request a second raw socket sees."""
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as observer:
        observer.setblocking(False)
        module = icmp_module(ttl=5, dont_fragment=True, payload_size=1000)
        result = await probe_with("127.0.0.1", module, kinds=("raw",))
        assert_echoed(result, 4)
        # Loopback delivered the request to every raw socket before the reply was sent.
        requests = []
        while True:
            try:
                packet = observer.recv(2**16)
            except BlockingIOError:
                break
            header = (packet[0] & 0x0F) * 4
            if packet[header] == 8 and packet[header + 8 :] == icmp.payload_for(1000):
                requests.append(packet)
    (request,) = requests
    assert request[8] == 5  # TTL
    assert struct.unpack("!H", request[6:8])[0] & 0x4000  # DF flag
    assert len(request) == 20 + 8 + 1000


@needs_root
async def test_concurrent_probes_match_their_own_replies() -> None:
    """Raw sockets see every echo; each probe still takes only its own reply."""
    results = await asyncio.gather(
        *(probe_with(target, icmp_module(), kinds=("raw",)) for target in ["127.0.0.1", "::1"] * 5)
    )
    for result in results:
        assert result.success, result.message


async def test_unresolvable_target() -> None:
    """A target name that does not resolve fails with reason dns before any socket opens."""
    factory = RecordingFactory()
    result = await probe_with("no-such-host.invalid", icmp_module(), factory)
    assert result.reason is FailureReason.DNS
    assert factory.attempts == []


def quoted_v4(ident: int, seq: int, destination: str = "127.0.0.1") -> bytes:
    """The IPv4 header and first 8 bytes of an echo request, as an ICMP error quotes them."""
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 1, 0,
        socket.inet_aton("127.0.0.1"), socket.inet_aton(destination),
    )  # fmt: skip
    return header + struct.pack("!BBHHH", 8, 0, 0, ident, seq)


def quoted_v6(ident: int, seq: int, destination: str = "::1") -> bytes:
    header = struct.pack("!IHBB16s16s", 6 << 28, 8, 58, 64,
                         socket.inet_pton(socket.AF_INET6, "::1"),
                         socket.inet_pton(socket.AF_INET6, destination))  # fmt: skip
    return header + struct.pack("!BBHHH", 128, 0, 0, ident, seq)


ECHO_V4 = icmp.Echo(socket.AF_INET, "127.0.0.1", 0x1234, 7, icmp.payload_for(0))
ECHO_V6 = icmp.Echo(socket.AF_INET6, "::1", 0x1234, 7, icmp.payload_for(0))


def test_destination_unreachable_names_the_router() -> None:
    """An ICMP error quoting our echo becomes a failure message naming who sent it."""
    error = struct.pack("!BBHI", 3, 1, 0, 0) + quoted_v4(0x1234, 7)
    reply = icmp.classify(error, "127.0.0.1", ECHO_V4, ip_header=False)
    assert reply == icmp.Reply(
        error="127.0.0.1 reports destination unreachable: host unreachable for 127.0.0.1"
    )
    error6 = struct.pack("!BBHI", 3, 0, 0, 0) + quoted_v6(0x1234, 7)
    reply6 = icmp.classify(error6, "::1", ECHO_V6, ip_header=False)
    assert reply6 == icmp.Reply(error="::1 reports hop limit exceeded in transit for ::1")


def test_errors_about_other_echoes_are_ignored() -> None:
    """An ICMP error quoting someone else's echo (id, sequence or destination) is not ours."""
    for quoted in (quoted_v4(0x1235, 7), quoted_v4(0x1234, 8), quoted_v4(0x1234, 7, "127.0.0.2")):
        error = struct.pack("!BBHI", 3, 1, 0, 0) + quoted
        assert icmp.classify(error, "127.0.0.1", ECHO_V4, ip_header=False) is None


def test_echo_reply_matching() -> None:
    """Only a reply with our id, sequence and payload, from the target, counts."""
    payload = ECHO_V4.payload
    reply = struct.pack("!BBHHH", 0, 0, 0, 0x1234, 7) + payload
    assert icmp.classify(reply, "127.0.0.1", ECHO_V4, False, 61) == icmp.Reply(hop_limit=61)
    assert icmp.classify(reply, "127.0.0.2", ECHO_V4, False) is None
    assert icmp.classify(reply[:-1], "127.0.0.1", ECHO_V4, False) is None
    other = struct.pack("!BBHHH", 0, 0, 0, 0x1234, 9) + payload
    assert icmp.classify(other, "127.0.0.1", ECHO_V4, False) is None
    request = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 7) + payload
    assert icmp.classify(request, "127.0.0.1", ECHO_V4, False) is None


def test_echo_request_checksum() -> None:
    """An IPv4 echo request carries a checksum that verifies to zero."""
    packet = icmp.echo_request(socket.AF_INET, 0xBEEF, 1, icmp.payload_for(33))
    assert icmp.checksum(packet) == 0
    assert len(packet) == 8 + 33


async def test_probe_allowlist_is_enforced() -> None:
    """An on-demand probe may not ping a host outside the allowlist; no socket is opened."""
    factory = RecordingFactory()
    guard = Allowlist([HostPattern.from_yaml("10.0.0.0/8")])
    probe = icmp.make_prober(factory)
    request = ProbeRequest(target="::1", module=icmp_module(), trace=Trace(), timeout=5, guard=guard)
    result = await runner.attempt(probe, request)
    assert result.reason is FailureReason.OTHER
    assert result.message == "target host ::1 is outside probe_allowlist"
    assert factory.attempts == []
