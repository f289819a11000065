"""The tcp prober: connect, optionally over TLS, and hold blackbox's query_response dialogue."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence

from exporter.modules import Module, QueryResponse, TCPProbe
from exporter.probes import net
from exporter.probes.base import NETWORK_REASONS, ProbeRequest, ProberKind
from exporter.probes.net import ProbeFailure, expand, map_exceptions, split_host_port, why
from exporter.result import FailureReason, MetricFamily, ProbeResult, Trace
from exporter.types import Regex, RegexMatch

# net.connect caps the stream buffer at this size, so one endless line from a hostile peer
# cannot grow our memory; blackbox's line scanner has the same 64 KiB ceiling.
MAX_LINE_BYTES = 2**16

# How much of a peer's line a failure message may quote.
_QUOTE_CHARS = 80


# What TLS and the query_response dialogue write (converse), for every kind that holds one.
DIALOGUE_METRICS = (
    *net.TLS_METRICS,
    net.REGEX_METRIC,
    MetricFamily("probe_failed_due_to_bytes", "1 if the probe failed because expect_bytes did not match."),
    MetricFamily("probe_expect_info", "Labels filled from what a query_response expect matched."),
)

# The families this kind writes beyond every probe's own (for help text and docs).
METRICS = (*net.ADDRESS_METRICS, *DIALOGUE_METRICS)


class _LineReader:
    """Reads a peer's lines the way blackbox's scanner does: LF-terminated, one CR dropped."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.last_line: str | None = None

    async def next_line(self) -> str | None:
        """The next line, or None once the peer has closed the connection."""
        try:
            raw = await self.reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as err:
            # Like Go's scanner, a final line without a newline still counts.
            if not err.partial:
                return None
            raw = err.partial
        except asyncio.LimitOverrunError:
            raise _overlong() from None
        if len(raw) > MAX_LINE_BYTES:  # should net.connect ever allow a larger buffer
            raise _overlong()
        raw = raw.removesuffix(b"\n").removesuffix(b"\r")
        # surrogateescape keeps non-UTF-8 bytes intact when a capture is sent back.
        self.last_line = raw.decode("utf-8", "surrogateescape")
        return self.last_line


def _overlong() -> ProbeFailure:
    return ProbeFailure(
        FailureReason.PROTOCOL, f"the server sent a line longer than {MAX_LINE_BYTES // 1024} KiB"
    )


async def _expect(lines: _LineReader, regex: Regex, step: int, trace: Trace) -> RegexMatch:
    while (line := await lines.next_line()) is not None:
        match = regex.search(line)
        if match is not None:
            trace.set("probe_failed_due_to_regex", 0)
            return match
    trace.set("probe_failed_due_to_regex", 1)
    seen = (
        f"; the last line was {lines.last_line[:_QUOTE_CHARS]!r}"
        if lines.last_line is not None
        else "; it sent no line"
    )
    raise ProbeFailure(
        FailureReason.PROTOCOL,
        f"query_response step {step}: the server closed the connection before a line "
        f"matched expect {regex.source!r}{seen}",
    )


async def _expect_bytes(reader: asyncio.StreamReader, expected: str, step: int, trace: Trace) -> None:
    """The next bytes from the server must be exactly ``expected`` (surrogates are raw bytes)."""
    wanted = expected.encode("utf-8", "surrogateescape")
    try:
        got = await reader.readexactly(len(wanted))
    except asyncio.IncompleteReadError as err:
        raise ProbeFailure(
            FailureReason.PROTOCOL,
            f"query_response step {step}: the server sent {len(err.partial)} of the {len(wanted)} "
            "bytes expect_bytes wants before closing",
        ) from None
    if got != wanted:
        trace.set("probe_failed_due_to_bytes", 1)
        raise ProbeFailure(
            FailureReason.PROTOCOL,
            f"query_response step {step}: the server's next {len(wanted)} bytes are not expect_bytes",
        )
    trace.set("probe_failed_due_to_bytes", 0)


async def _send(writer: asyncio.StreamWriter, text: str, step: int) -> None:
    # The text itself stays out of the message: a send may carry a credential.
    writer.write(text.encode("utf-8", "surrogateescape") + b"\n")
    with map_exceptions(
        {
            OSError: (
                FailureReason.PROTOCOL,
                lambda err: f"query_response step {step}: cannot send: {why(err)}",
            )
        }
    ):
        await writer.drain()


def _needs_tls(settings: TCPProbe) -> bool:
    return settings.tls or any(step.starttls for step in settings.query_response)


# What a connection can end in once it is open; start_tls maps its own handshake errors.
_DIALOGUE_ERRORS: net.ExceptionMapping = {
    ssl.SSLError: (FailureReason.TLS, lambda err: f"TLS error during the dialogue: {why(err)}"),
    OSError: (FailureReason.PROTOCOL, lambda err: f"connection lost: {why(err)}"),
}


async def _dialogue(request: ProbeRequest) -> None:
    settings = request.module.section(TCPProbe)
    trace = request.trace
    host, port = split_host_port(request.target)
    net.check_host(request.guard, host)
    # Build the TLS context before connecting so an unreadable ca_file fails without traffic.
    context = net.shared_ssl_context(settings.tls_config) if _needs_tls(settings) else None
    server_name = settings.tls_config.server_name or host
    addresses = await net.resolve(
        host, settings.preferred_ip_protocol, settings.ip_protocol_fallback, trace, request.guard
    )
    reader, writer = await net.connect(addresses, port, trace, settings.source_ip_address)
    await converse(reader, writer, settings.tls, settings.query_response, context, server_name, trace)


async def converse(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    tls: bool,
    steps: Sequence[QueryResponse],
    context: ssl.SSLContext | None,
    server_name: str,
    trace: Trace,
) -> None:
    """On an open connection: TLS first when ``tls``, then the query_response ``steps``; closes it.

    Shared with the kinds that reach their peer another way (the unix socket prober).
    """
    try:
        with map_exceptions(_DIALOGUE_ERRORS):
            if tls and context is not None:
                await net.start_tls(writer, context, server_name, trace)
            # As blackbox 0.28: exported once connected (TLS included), 0 unless an expect fails.
            trace.set("probe_failed_due_to_regex", 0)
            trace.set("probe_failed_due_to_bytes", 0)
            lines = _LineReader(reader)
            last_match: RegexMatch | None = None
            for step_number, step in enumerate(steps, 1):
                expect = step.expect
                # An empty expect means "expect nothing", as in blackbox.
                if expect is not None and expect.source:
                    last_match = await _expect(lines, expect, step_number, trace)
                    if step.labels:
                        labels = tuple((label.name, expand(label.value, last_match)) for label in step.labels)
                        trace.set("probe_expect_info", 1, labels)
                if step.expect_bytes:
                    await _expect_bytes(reader, step.expect_bytes, step_number, trace)
                if step.send:
                    # blackbox expands a send from its own step's match; a send-only step here
                    # reuses the most recent match so a captured token can feed several sends.
                    text = expand(step.send, last_match) if last_match is not None else step.send
                    await _send(writer, text, step_number)
                if step.starttls and context is not None:
                    await net.start_tls(writer, context, server_name, trace)
    finally:
        await net.close(writer)


async def probe_tcp(request: ProbeRequest) -> ProbeResult:
    """Connect to ``host:port``, upgrade to TLS if asked, and run the query_response steps."""
    trace = request.trace
    await _dialogue(request)
    return trace.succeed()


def _quiet_gauges(module: Module) -> frozenset[str]:
    return quiet_gauges_for(module.section(TCPProbe).query_response)


def quiet_gauges_for(steps: Sequence[QueryResponse]) -> frozenset[str]:
    """The regex and bytes gauges cannot leave 0 without an expect or expect_bytes step."""
    quiet = set()
    if not any(step.expect is not None and step.expect.source for step in steps):
        quiet.add("probe_failed_due_to_regex")
    if not any(step.expect_bytes for step in steps):
        quiet.add("probe_failed_due_to_bytes")
    return frozenset(quiet)


KIND = ProberKind(
    "tcp",
    TCPProbe,
    probe_tcp,
    metrics=METRICS,
    reasons=lambda module: NETWORK_REASONS,
    quiet_gauges=_quiet_gauges,
)
