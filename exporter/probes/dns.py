"""The dns prober: one query to a DNS server over UDP, TCP or TLS, checked as blackbox does."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Iterator
from typing import TypeAlias

import dns._asyncbackend
import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.SOA import SOA

from exporter.modules import DNSProbe, DNSRRValidator
from exporter.probes import net
from exporter.probes.base import NETWORK_REASONS, ProbeRequest, ProberKind
from exporter.probes.net import Address, ProbeFailure
from exporter.probes.tcp import split_host_port
from exporter.result import FailureReason, ProbeResult, Trace

log = logging.getLogger(__name__)

DNS_PORT = 53
DOT_PORT = 853
TRUNCATED = "the answer was truncated: TC bit set"

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
    with trace.phase("connect"):
        try:
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
        except ssl.SSLCertVerificationError as err:
            raise ProbeFailure(
                FailureReason.TLS, f"certificate verification failed: {err.verify_message}"
            ) from None
        except ssl.SSLError as err:
            raise ProbeFailure(FailureReason.TLS, f"TLS handshake failed: {err}") from None
        except OSError as err:
            raise ProbeFailure(FailureReason.CONNECT, f"cannot connect to {where}: {_why(err)}") from None


async def _exchange(
    settings: DNSProbe, query: dns.message.Message, sock: _Socket, address: Address, port: int
) -> dns.message.Message:
    where = f"{address.ip}:{port}" if address.version == 4 else f"[{address.ip}]:{port}"
    try:
        # one_rr_per_rrset keeps every record apart, so counts match what the server sent
        # (and what blackbox counts) even when it repeats a record.
        if isinstance(sock, dns._asyncbackend.DatagramSocket):
            return await dns.asyncquery.udp(query, address.ip, port=port, sock=sock, one_rr_per_rrset=True)
        if settings.dns_over_tls:
            return await dns.asyncquery.tls(query, address.ip, port=port, sock=sock, one_rr_per_rrset=True)
        return await dns.asyncquery.tcp(query, address.ip, port=port, sock=sock, one_rr_per_rrset=True)
    except dns.query.BadResponse:
        raise ProbeFailure(
            FailureReason.PROTOCOL,
            f"{where} answered with a message that does not match the query (wrong id or question)",
        ) from None
    except EOFError:
        raise ProbeFailure(
            FailureReason.PROTOCOL, f"{where} closed the connection without a complete answer"
        ) from None
    except ssl.SSLError as err:
        raise ProbeFailure(FailureReason.TLS, f"TLS error from {where}: {err}") from None
    except OSError as err:
        raise ProbeFailure(FailureReason.CONNECT, f"{where}: {_why(err)}") from None
    except dns.exception.DNSException as err:
        raise ProbeFailure(FailureReason.PROTOCOL, f"{where} sent a malformed answer: {err}") from None


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


def _why(err: OSError) -> str:
    return err.strerror or str(err) or type(err).__name__


def _sections(answer: dns.message.Message) -> Iterator[tuple[str, list[dns.rrset.RRset]]]:
    yield "answer", answer.answer
    yield "authority", answer.authority
    yield "additional", answer.additional


async def _query(request: ProbeRequest) -> str:
    settings = request.module.dns
    trace = request.trace
    for name in ("probe_dns_answer_rrs", "probe_dns_authority_rrs", "probe_dns_additional_rrs"):
        trace.set(name, 0)
    trace.set("probe_dns_query_succeeded", 0)
    host, port = split_host_port(request.target, DOT_PORT if settings.dns_over_tls else DNS_PORT)
    if request.guard is not None and not request.guard.allows_host(host):
        raise ProbeFailure(FailureReason.OTHER, f"target host {host} is outside probe_allowlist")
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

    counts = {name: sum(len(rrset) for rrset in section) for name, section in _sections(answer)}
    trace.set("probe_dns_answer_rrs", counts["answer"])
    trace.set("probe_dns_authority_rrs", counts["authority"])
    trace.set("probe_dns_additional_rrs", counts["additional"])
    for rrset in answer.answer:
        for rdata in rrset:
            if isinstance(rdata, SOA):
                trace.set("probe_dns_serial", rdata.serial)

    # A truncated UDP answer is still an answer from a live server; blackbox reports it as is,
    # and so do we, checking what arrived. Failing it would flag every server whose answer
    # (the default query type is ANY) outgrows a datagram.
    truncated = TRUNCATED if answer.flags & dns.flags.TC else ""
    note = f" ({truncated})" if truncated else ""

    # A wrong rcode means the server answered but not as required; like an unexpected
    # protocol reply it gets reason "protocol" (blackbox counts it as a plain failure).
    rcode = answer.rcode()
    if rcode not in valid_rcodes:
        expected = ", ".join(sorted(dns.rcode.to_text(c) for c in valid_rcodes))
        raise ProbeFailure(
            FailureReason.PROTOCOL,
            f"rcode {dns.rcode.to_text(rcode)} is not one of valid_rcodes ({expected}){note}",
        )
    validators = {
        "answer": settings.validate_answer_rrs,
        "authority": settings.validate_authority_rrs,
        "additional": settings.validate_additional_rrs,
    }
    for name, section in _sections(answer):
        problem = check_rrs(rr_texts(section), validators[name], name)
        if problem is not None:
            raise ProbeFailure(FailureReason.PROTOCOL, problem + note)
    return truncated


async def probe_dns(request: ProbeRequest) -> ProbeResult:
    """Send one query to the DNS server ``host[:port]`` and check the answer."""
    trace = request.trace
    try:
        message = await _query(request)
    except ProbeFailure as failure:
        return failure.result(trace)
    except Exception as err:  # a bug here must not take the scheduler down
        log.exception("dns probe of %s raised", request.target)
        return trace.fail(FailureReason.OTHER, f"internal error: {type(err).__name__}")
    return trace.succeed(message)


# blackbox exports probe_dns_duration_seconds{phase="resolve"|"connect"|"request"}.
KIND = ProberKind(
    probe=probe_dns,
    phase_metric="probe_dns_duration_seconds",
    phases=("resolve", "connect", "request"),
    reasons=lambda module: NETWORK_REASONS,
)
