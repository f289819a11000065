"""The dns probe itself: one query to a DNS server over UDP, TCP or TLS, checked as blackbox does.

Its own module so that dnspython loads only in a process that runs a dns probe (see exporter.probes.dns,
the kind's entry in the registry).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeAlias

import dns._asyncbackend
import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.SOA import SOA

from exporter import offloop
from exporter.modules import DNSProbe, DNSRRValidator
from exporter.probes import net
from exporter.probes.base import ProbeRequest
from exporter.probes.net import Address, ProbeFailure, map_exceptions, split_host_port, why
from exporter.result import FailureReason, ProbeResult, Trace

DNS_PORT = 53
DOT_PORT = 853
TRUNCATED = "the answer was truncated: TC bit set"
# RFC 1035's limit for a UDP message when the query carries no EDNS (ours does not).
MAX_UDP_ANSWER = 512
# Answers up to this size are parsed on the event loop (well under a millisecond), and answers
# with up to this many records examined there.
PARSE_INLINE_BYTES = 4096
EXAMINE_INLINE_RECORDS = 64

# dnspython's own signatures name its socket classes from this module.
_Socket: TypeAlias = dns._asyncbackend.DatagramSocket | dns._asyncbackend.StreamSocket


def rr_texts(section: list[dns.rrset.RRset]) -> list[str]:
    """Each record of a section as miekg/dns prints it, which blackbox's regexes are written for.

    ``name<TAB>ttl<TAB>class<TAB>type<TAB>rdata``, e.g. ``example.org.\\t300\\tIN\\tA\\t192.0.2.1``.
    """
    texts: list[str] = []
    for rrset in section:
        prefix = "\t".join(
            (
                rrset.name.to_text(),
                str(rrset.ttl),
                dns.rdataclass.to_text(rrset.rdclass),
                dns.rdatatype.to_text(rrset.rdtype),
            )
        )
        texts.extend(f"{prefix}\t{rdata.to_text()}" for rdata in rrset)
    return texts


def check_rrs(records: list[str], validator: DNSRRValidator, section: str) -> str | None:
    """Why ``records`` fail blackbox's four regex checks, or None if they pass.

    fail_if_matches_regexp: any record matching any regex fails.
    fail_if_all_match_regexp: despite its name, blackbox fails unless every record matches
    every regex; unlike fail_if_not_matches_regexp, no records at all pass.
    fail_if_not_matches_regexp: every record must match every regex (and there must be one).
    fail_if_none_matches_regexp: some record must match some regex (and there must be one).
    """
    if not records and validator.fail_if_not_matches_regexp:
        return f"no {section} records, but fail_if_not_matches_regexp needs some"
    if not records and validator.fail_if_none_matches_regexp:
        return f"no {section} records, but fail_if_none_matches_regexp needs some"
    all_match = True
    any_match = False
    for record in records:
        for regex in validator.fail_if_matches_regexp:
            if regex.search(record):
                return f"{section} record {record!r} matches fail_if_matches_regexp {regex.source!r}"
        for regex in validator.fail_if_all_match_regexp:
            if not regex.search(record):
                all_match = False
        for regex in validator.fail_if_not_matches_regexp:
            if not regex.search(record):
                return (
                    f"{section} record {record!r} does not match fail_if_not_matches_regexp {regex.source!r}"
                )
        for regex in validator.fail_if_none_matches_regexp:
            if regex.search(record):
                any_match = True
    if validator.fail_if_all_match_regexp and not all_match:
        sources = ", ".join(repr(r.source) for r in validator.fail_if_all_match_regexp)
        return f"not every {section} record matches fail_if_all_match_regexp {sources}"
    if validator.fail_if_none_matches_regexp and not any_match:
        sources = ", ".join(repr(r.source) for r in validator.fail_if_none_matches_regexp)
        return f"no {section} record matches fail_if_none_matches_regexp {sources}"
    return None


def _make_query(settings: DNSProbe) -> dns.message.Message:
    try:
        rdtype = dns.rdatatype.from_text(settings.query_type or "ANY")
        rdclass = dns.rdataclass.from_text(settings.query_class or "IN")
        query = dns.message.make_query(settings.query_name, rdtype, rdclass)
    except (dns.exception.DNSException, ValueError) as err:
        raise ProbeFailure(FailureReason.OTHER, f"cannot build the query: {err}") from None
    if not settings.recursion_desired:
        query.flags &= ~dns.flags.RD
    return query


def _valid_rcodes(settings: DNSProbe) -> set[dns.rcode.Rcode]:
    try:
        return {dns.rcode.from_text(code) for code in settings.valid_rcodes or ("NOERROR",)}
    except dns.rcode.UnknownRcode as err:
        raise ProbeFailure(FailureReason.OTHER, f"invalid valid_rcodes: {err}") from None


async def _open(settings: DNSProbe, address: Address, host: str, port: int, trace: Trace) -> _Socket:
    """Open the socket the query goes over; this is blackbox's ``connect`` phase."""
    backend = dns.asyncbackend.get_backend("asyncio")
    source = (settings.source_ip_address, 0) if settings.source_ip_address else None
    where = f"{address.ip}:{port}" if address.version == 4 else f"[{address.ip}]:{port}"
    context: ssl.SSLContext | None = None
    if settings.dns_over_tls:
        context = net.shared_ssl_context(settings.tls_config)
    errors: net.ExceptionMapping = {
        **net.HANDSHAKE_ERRORS,
        OSError: (FailureReason.CONNECT, lambda err: f"cannot connect to {where}: {why(err)}"),
    }
    with trace.phase("connect"), map_exceptions(errors):
        if settings.transport_protocol == "udp" and not settings.dns_over_tls:
            # A connected UDP socket hears the ICMP port-unreachable of a server that is
            # down, so the probe fails at once with "connection refused", as blackbox does.
            datagram: _Socket = await backend.make_socket(  # type: ignore[no-untyped-call]
                address.family, socket.SOCK_DGRAM, 0, source, (address.ip, port)
            )
            return datagram
        stream: _Socket = await backend.make_socket(  # type: ignore[no-untyped-call]
            address.family,
            socket.SOCK_STREAM,
            0,
            source,
            (address.ip, port),
            None,
            context,
            (settings.tls_config.server_name or host) if context is not None else None,
        )
        return stream


async def _exchange(
    settings: DNSProbe, query: dns.message.Message, sock: _Socket, address: Address, port: int
) -> dns.message.Message:
    where = f"{address.ip}:{port}" if address.version == 4 else f"[{address.ip}]:{port}"
    with map_exceptions(
        {
            EOFError: (FailureReason.PROTOCOL, f"{where} closed the connection without a complete answer"),
            ssl.SSLError: (FailureReason.TLS, lambda err: f"TLS error from {where}: {err}"),
            OSError: (FailureReason.CONNECT, lambda err: f"{where}: {why(err)}"),
            dns.exception.DNSException: (
                FailureReason.PROTOCOL,
                lambda err: f"{where} sent a malformed answer: {err}",
            ),
        }
    ):
        if isinstance(sock, dns._asyncbackend.DatagramSocket):
            wire = await _ask_udp(sock, query, where)
        else:
            wire = await _ask_stream(sock, query)
        answer = await _parse(wire)
    if not query.is_response(answer):
        raise ProbeFailure(
            FailureReason.PROTOCOL,
            f"{where} answered with a message that does not match the query (wrong id or question)",
        )
    return answer


async def _ask_udp(sock: dns._asyncbackend.DatagramSocket, query: dns.message.Message, where: str) -> bytes:
    await sock.sendto(query.to_wire(), None, None)  # type: ignore[no-untyped-call]
    wire: bytes
    wire, _ = await sock.recvfrom(65535, None)  # type: ignore[no-untyped-call]
    if len(wire) > MAX_UDP_ANSWER:
        # Our query carries no EDNS, so a conforming server truncates and sets TC; blackbox's
        # client reads only 512 bytes of such a datagram and fails on the cut-off message.
        raise ProbeFailure(
            FailureReason.PROTOCOL,
            f"{where} sent a {len(wire)}-byte UDP answer; without EDNS an answer may have "
            f"{MAX_UDP_ANSWER} bytes (a server should truncate and set TC)",
        )
    return wire


async def _ask_stream(sock: dns._asyncbackend.StreamSocket, query: dns.message.Message) -> bytes:
    wire = query.to_wire()
    await sock.sendall(struct.pack("!H", len(wire)) + wire, None)  # type: ignore[no-untyped-call]
    (length,) = struct.unpack("!H", await _read_exactly(sock, 2))
    return await _read_exactly(sock, length)


async def _read_exactly(sock: dns._asyncbackend.StreamSocket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk: bytes = await sock.recv(count - len(data), None)  # type: ignore[no-untyped-call]
        if not chunk:
            raise EOFError
        data += chunk
    return data


async def _parse(wire: bytes) -> dns.message.Message:
    # one_rr_per_rrset keeps every record apart, so counts match what the server sent (and what
    # blackbox counts) even when it repeats a record. A big answer (a TCP one may hold thousands
    # of records, a quarter of a second of parsing) is parsed in a thread, where the event loop
    # gets the interpreter back every few milliseconds.
    if len(wire) <= PARSE_INLINE_BYTES:
        return _from_wire(wire)
    return await offloop.in_thread(_from_wire, wire)


def _from_wire(wire: bytes) -> dns.message.Message:
    """Parse an answer as miekg/dns (so blackbox) does: header counts that lie are forgiven.

    miekg reads records while the message has them: counts larger than what follows, when the
    message ends at a record's end, give the records that are there, and bytes after the
    counted records are ignored. dnspython refuses both, so a retry rewrites the counts.
    """
    try:
        return dns.message.from_wire(wire, one_rr_per_rrset=True, ignore_trailing=True)
    except dns.exception.FormError:
        fixed = _recount(wire)
        if fixed is None:
            raise
        return dns.message.from_wire(fixed, one_rr_per_rrset=True, ignore_trailing=True)


def _skip_name(wire: bytes, offset: int) -> int | None:
    while offset < len(wire):
        length = wire[offset]
        if length & 0xC0 == 0xC0:
            return offset + 2 if offset + 2 <= len(wire) else None
        if length == 0:
            return offset + 1
        offset += 1 + length
    return None


def _recount(wire: bytes) -> bytes | None:
    """``wire`` with its record counts set to the records it holds, or None if one is cut off."""
    if len(wire) < 12:
        return None
    questions, *counts = struct.unpack_from("!4H", wire, 4)
    offset: int | None = 12
    for _ in range(questions):
        offset = _skip_name(wire, offset) if offset is not None else None
        if offset is None or offset + 4 > len(wire):
            return None
        offset += 4
    found = 0
    while offset is not None and offset < len(wire) and found < sum(counts):
        offset = _skip_name(wire, offset)
        if offset is None or offset + 10 > len(wire):
            return None
        end = offset + 10 + struct.unpack_from("!H", wire, offset + 8)[0]
        if end > len(wire):
            return None
        offset, found = end, found + 1
    if found == sum(counts):
        return None  # the counts were right: the message is broken in some other way
    # The records that are there fill the sections in order, as miekg reads them.
    kept = []
    for count in counts:
        kept.append(min(count, found))
        found -= kept[-1]
    return wire[:6] + struct.pack("!3H", *kept) + wire[12:]


def _stream_writer(sock: _Socket) -> asyncio.StreamWriter | None:
    # dnspython's asyncio stream socket keeps its StreamWriter as ``writer``.
    writer = getattr(sock, "writer", None)
    return writer if isinstance(writer, asyncio.StreamWriter) else None


def _record_tls(sock: _Socket, trace: Trace) -> None:
    """DNS over TLS: record the certificate values too, so expiry alerts cover DoT servers."""
    writer = _stream_writer(sock)
    if writer is not None:
        net.record_tls(trace, writer.get_extra_info("ssl_object"))


async def _close(sock: _Socket) -> None:
    writer = _stream_writer(sock)
    if writer is not None:
        # Wait for the close (and TLS shutdown) to finish, which dnspython's close() does not.
        await net.close(writer)
    else:
        await sock.close()  # type: ignore[no-untyped-call]


def _sections(answer: dns.message.Message) -> Iterator[tuple[str, list[dns.rrset.RRset]]]:
    yield "answer", answer.answer
    yield "authority", answer.authority
    yield "additional", answer.additional


async def _query(request: ProbeRequest) -> str:
    settings = request.module.section(DNSProbe)
    trace = request.trace
    for name in ("probe_dns_answer_rrs", "probe_dns_authority_rrs", "probe_dns_additional_rrs"):
        trace.set(name, 0)
    trace.set("probe_dns_query_succeeded", 0)
    host, port = split_host_port(request.target, DOT_PORT if settings.dns_over_tls else DNS_PORT)
    net.check_host(request.guard, host)
    query = _make_query(settings)
    valid_rcodes = _valid_rcodes(settings)
    if settings.dns_over_tls and settings.transport_protocol != "tcp":
        raise ProbeFailure(FailureReason.OTHER, "dns_over_tls needs transport_protocol: tcp")
    addresses = await net.resolve(
        host, settings.preferred_ip_protocol, settings.ip_protocol_fallback, trace, request.guard
    )
    address = addresses[0]
    sock = await _open(settings, address, host, port, trace)
    try:
        _record_tls(sock, trace)
        with trace.phase("request"):
            answer = await _exchange(settings, query, sock, address, port)
    finally:
        await _close(sock)
    trace.set("probe_dns_query_succeeded", 1)
    # Thousands of records take tens of milliseconds to print and check: a thread does that.
    records = sum(len(rrset) for _, section in _sections(answer) for rrset in section)
    if records > EXAMINE_INLINE_RECORDS:
        verdict = await offloop.in_thread(_examine, answer, settings, valid_rcodes)
    else:
        verdict = _examine(answer, settings, valid_rcodes)
    trace.set("probe_dns_answer_rrs", verdict.counts["answer"])
    trace.set("probe_dns_authority_rrs", verdict.counts["authority"])
    trace.set("probe_dns_additional_rrs", verdict.counts["additional"])
    if verdict.serial is not None:
        trace.set("probe_dns_serial", verdict.serial)
    if verdict.problem is not None:
        raise ProbeFailure(FailureReason.PROTOCOL, verdict.problem)
    return verdict.truncated


@dataclass(frozen=True, slots=True)
class _Verdict:
    counts: dict[str, int]
    serial: int | None
    truncated: str
    problem: str | None


def _examine(answer: dns.message.Message, settings: DNSProbe, valid_rcodes: set[dns.rcode.Rcode]) -> _Verdict:
    """Counts, serial and blackbox's checks of an answer; pure, so it may run in a thread."""
    counts = {name: sum(len(rrset) for rrset in section) for name, section in _sections(answer)}
    serial = None
    for rrset in answer.answer:
        for rdata in rrset:
            if isinstance(rdata, SOA):
                serial = int(rdata.serial)
    # A truncated UDP answer is still an answer from a live server; blackbox reports it as is,
    # and so do we, checking what arrived. Failing it would flag every server whose answer
    # (the default query type is ANY) outgrows a datagram.
    truncated = TRUNCATED if answer.flags & dns.flags.TC else ""
    note = f" ({truncated})" if truncated else ""

    def verdict(problem: str | None) -> _Verdict:
        return _Verdict(counts, serial, truncated, None if problem is None else problem + note)

    # A wrong rcode means the server answered but not as required; like an unexpected
    # protocol reply it gets reason "protocol" (blackbox counts it as a plain failure).
    rcode = answer.rcode()
    if rcode not in valid_rcodes:
        expected = ", ".join(sorted(dns.rcode.to_text(c) for c in valid_rcodes))
        return verdict(f"rcode {dns.rcode.to_text(rcode)} is not one of valid_rcodes ({expected})")
    validators = {
        "answer": settings.validate_answer_rrs,
        "authority": settings.validate_authority_rrs,
        "additional": settings.validate_additional_rrs,
    }
    for name, section in _sections(answer):
        validator = validators[name]
        if not _checks_anything(validator):
            continue  # printing thousands of records for no check is the costly part
        problem = check_rrs(rr_texts(section), validator, name)
        if problem is not None:
            return verdict(problem)
    return verdict(None)


def _checks_anything(validator: DNSRRValidator) -> bool:
    return bool(
        validator.fail_if_matches_regexp
        or validator.fail_if_all_match_regexp
        or validator.fail_if_not_matches_regexp
        or validator.fail_if_none_matches_regexp
    )


async def probe_dns(request: ProbeRequest) -> ProbeResult:
    """Send one query to the DNS server ``host[:port]`` and check the answer."""
    return request.trace.succeed(await _query(request))
