"""The tcp prober: connect, optionally over TLS, and hold blackbox's query_response dialogue."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl

from exporter.modules import Module, TCPProbe
from exporter.probes import net
from exporter.probes.base import NETWORK_REASONS, ProbeRequest, ProberKind
from exporter.probes.net import ProbeFailure
from exporter.result import FailureReason, ProbeResult, Trace
from exporter.types import Regex, RegexMatch, match_text, redact_url

log = logging.getLogger(__name__)

# net.connect caps the stream buffer at this size, so one endless line from a hostile peer
# cannot grow our memory; blackbox's line scanner has the same 64 KiB ceiling.
MAX_LINE_BYTES = 2**16

# How much of a peer's line a failure message may quote.
_QUOTE_CHARS = 80


def split_host_port(target: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port`` or ``[ipv6]:port``; a bare host takes ``default_port`` if one is given.

    As in Go's net.SplitHostPort, a bare IPv6 address (more than one colon, no brackets) is a
    host without a port.
    """
    text = target.strip()
    port_text = ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _bad_target(target, default_port)
        port_text = rest[1:] if rest else ""
        if rest == ":":
            raise _bad_target(target, default_port)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text:
            raise _bad_target(target, default_port)
    else:
        host = text
    if not host:
        raise _bad_target(target, default_port)
    if not port_text:
        if default_port is None:
            raise _bad_target(target, default_port)
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ProbeFailure(FailureReason.OTHER, f"target {target!r} has an invalid port {port_text!r}")
    return host, int(port_text)


def _bad_target(target: str, default_port: int | None) -> ProbeFailure:
    shape = "host:port or [ipv6]:port" if default_port is None else "host, host:port or [ipv6]:port"
    return ProbeFailure(FailureReason.OTHER, f"target {target!r} must be {shape}")


_TEMPLATE_RE = re.compile(r"\$(?:(\$)|\{(\w+)\}|(\w+))")


def expand(template: str, match: RegexMatch) -> str:
    """Fill ``$1``, ``${1}``, ``$name`` and ``${name}`` from ``match`` as Go's Regexp.Expand does.

    ``$$`` is a literal dollar; a group that does not exist or did not take part in the match
    expands to nothing; a ``$`` that starts no valid reference is kept as it is.
    """

    def fill(ref: re.Match[str]) -> str:
        if ref.group(1):
            return "$"
        name = ref.group(2) or ref.group(3)
        groups = match.re.groups
        if name.isascii() and name.isdigit():
            # Go reads a leading zero (``$01``) as a name, never as group 1.
            if len(name) > 1 and name[0] == "0":
                return ""
            number = int(name)
            return match_text(match.group(number)) if number <= groups else ""
        if name in match.re.groupindex:
            return match_text(match.group(name))
        return ""

    return _TEMPLATE_RE.sub(fill, template)


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
    try:
        await writer.drain()
    except (ConnectionError, OSError) as err:
        raise ProbeFailure(
            FailureReason.PROTOCOL, f"query_response step {step}: cannot send: {_why(err)}"
        ) from None


def _why(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def _needs_tls(settings: TCPProbe) -> bool:
    return settings.tls or any(step.starttls for step in settings.query_response)


async def _dialogue(request: ProbeRequest) -> None:
    settings = request.module.tcp
    trace = request.trace
    host, port = split_host_port(request.target)
    if request.guard is not None and not request.guard.allows_host(host):
        raise ProbeFailure(FailureReason.OTHER, f"target host {host} is outside probe_allowlist")
    # Build the TLS context before connecting so an unreadable ca_file fails without traffic.
    context = net.shared_ssl_context(settings.tls_config) if _needs_tls(settings) else None
    server_name = settings.tls_config.server_name or host
    addresses = await net.resolve(
        host, settings.preferred_ip_protocol, settings.ip_protocol_fallback, trace, request.guard
    )
    reader, writer = await net.connect(addresses, port, trace, settings.source_ip_address)
    try:
        if settings.tls and context is not None:
            await net.start_tls(writer, context, server_name, trace)
        # As blackbox 0.28: exported once connected (TLS included), 0 unless an expect fails.
        trace.set("probe_failed_due_to_regex", 0)
        trace.set("probe_failed_due_to_bytes", 0)
        lines = _LineReader(reader)
        last_match: RegexMatch | None = None
        for step_number, step in enumerate(settings.query_response, 1):
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
    except ssl.SSLError as err:
        raise ProbeFailure(FailureReason.TLS, f"TLS error during the dialogue: {_why(err)}") from None
    except (ConnectionError, OSError) as err:
        raise ProbeFailure(FailureReason.PROTOCOL, f"connection lost: {_why(err)}") from None
    finally:
        await net.close(writer)


async def probe_tcp(request: ProbeRequest) -> ProbeResult:
    """Connect to ``host:port``, upgrade to TLS if asked, and run the query_response steps."""
    trace = request.trace
    try:
        await _dialogue(request)
    except ProbeFailure as failure:
        return failure.result(trace)
    except Exception as err:  # a bug here must not take the scheduler down
        log.exception("tcp probe of %s raised", redact_url(request.target))
        return trace.fail(FailureReason.OTHER, f"internal error: {type(err).__name__}")
    return trace.succeed()


def _quiet_gauges(module: Module) -> frozenset[str]:
    """The regex and bytes gauges cannot leave 0 without an expect or expect_bytes step."""
    steps = module.tcp.query_response
    quiet = set()
    if not any(step.expect is not None and step.expect.source for step in steps):
        quiet.add("probe_failed_due_to_regex")
    if not any(step.expect_bytes for step in steps):
        quiet.add("probe_failed_due_to_bytes")
    return frozenset(quiet)


KIND = ProberKind(probe=probe_tcp, reasons=lambda module: NETWORK_REASONS, quiet_gauges=_quiet_gauges)
