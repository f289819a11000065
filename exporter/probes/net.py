"""Name resolution, connecting and TLS shared by the probes, recording blackbox's values."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import os
import re
import socket
import ssl
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Any, Protocol

from exporter.modules import GO_CIPHER_NAMES, TLS_VERSIONS, TLSConfig
from exporter.result import FailureReason, MetricFamily, ProbeResult, Trace
from exporter.types import RegexMatch, match_text

if TYPE_CHECKING:
    from cryptography import x509

# What resolving and connecting write, for every kind that reaches a host over the network.
ADDRESS_METRICS = (
    MetricFamily("probe_dns_lookup_time_seconds", "How long resolving the target took."),
    MetricFamily("probe_ip_protocol", "IP version used: 4 or 6."),
    MetricFamily("probe_ip_addr_hash", "Hash of the IP address probed, to notice changes."),
)
# What a TLS handshake writes (record_tls).
TLS_METRICS = (
    MetricFamily(
        "probe_ssl_earliest_cert_expiry",
        "Earliest expiry of the certificates the server sent, as a unix time.",
    ),
    MetricFamily(
        "probe_ssl_last_chain_expiry_timestamp_seconds",
        "Earliest expiry in the last certificate chain.",
    ),
    MetricFamily(
        "probe_ssl_last_chain_info",
        "Leaf certificate of the last chain.",
        ("fingerprint_sha256", "subject", "issuer", "subjectalternative", "serialnumber"),
    ),
    MetricFamily("probe_tls_version_info", "TLS version used.", ("version",)),
    MetricFamily(
        "probe_tls_cipher_info",
        "TLS cipher suite used, by Go's name as blackbox reports it.",
        ("cipher",),
    ),
)
REGEX_METRIC = MetricFamily(
    "probe_failed_due_to_regex",
    "1 if the probe failed because a regular expression check failed.",
)


def drop_tracebacks(err: BaseException) -> None:
    """Detach the tracebacks of a handled error and the errors chained to it.

    A failed connect or handshake leaves its exception on a future whose traceback holds the
    frames that hold that future: a reference cycle per failed probe. Thousands of failing
    services make thousands a minute, and the collector pauses the event loop to free them.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [err]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        pending += [current.__context__, current.__cause__]


class ProbeFailure(Exception):
    """Raised inside a probe to stop it with a reason; the runner turns it into a failed result.

    The probes' errors, all in one place: a probe raises this for what it expected to go wrong
    (``map_exceptions`` turns a library's errors into it); anything else it lets escape, and
    the runner reports that as ``internal error: <type>``. CancelledError is never caught.
    """

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def result(self, trace: Trace) -> ProbeResult:
        """The failed result this failure stands for, once it has been caught.

        Its traceback goes: it holds the frames that hold the probe's objects, which may hold
        this failure (a body that stopped early keeps why), a cycle per failed probe.
        """
        drop_tracebacks(self)
        return trace.fail(self.reason, self.message)


ExceptionMapping = Mapping[type[BaseException], tuple[FailureReason, str | Callable[[Any], str]]]


@contextlib.contextmanager
def map_exceptions(mapping: ExceptionMapping) -> Iterator[None]:
    """Turn the errors of a block into ProbeFailure, as httpx's ``map_exceptions`` does.

    ``mapping`` gives, per exception type, the reason and the message: a text, or a function of
    the error that makes it. The entry for the closest type in the error's class hierarchy
    wins (an ``ssl.SSLError`` entry beats an ``OSError`` one, whatever their order). A
    ProbeFailure and errors of unmapped types pass through: the runner turns the latter into
    an internal error.
    """
    try:
        yield
    except ProbeFailure:
        raise
    except Exception as err:
        mro = type(err).__mro__
        matches = [kind for kind in mapping if kind in mro]
        if not matches:
            raise
        reason, message = mapping[min(matches, key=mro.index)]
        text = message if isinstance(message, str) else message(err)
        drop_tracebacks(err)
        raise ProbeFailure(reason, text) from None


# How a failed TLS handshake reads, whichever probe started it.
HANDSHAKE_ERRORS: ExceptionMapping = {
    ssl.SSLCertVerificationError: (
        FailureReason.TLS,
        lambda err: f"certificate verification failed: {err.verify_message}",
    ),
    ssl.SSLError: (FailureReason.TLS, lambda err: f"TLS handshake failed: {err}"),
}


def why(err: BaseException) -> str:
    """An error in a few words: the OS's text for it, else its own, else its type's name."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def tls_detail(err: ssl.SSLError) -> str:
    """OpenSSL's reason (``tlsv13 alert certificate required``), else the error's text."""
    return err.reason.lower().replace("_", " ") if err.reason else str(err)


async def read(reader: asyncio.StreamReader, size: int, when: str) -> bytes:
    """Read from a connection; TLS errors are ``tls``, a lost connection ``protocol``.

    With TLS 1.3 a rejected client certificate only shows up here, after the handshake.
    The mapping is ``map_exceptions``' written out: this runs for every read of every probe,
    and a context manager with its mapping costs more than the read's own Python part.
    """
    try:
        return await reader.read(size)
    except ssl.SSLError as err:
        drop_tracebacks(err)
        raise ProbeFailure(FailureReason.TLS, f"TLS error {when}: {tls_detail(err)}") from None
    except OSError as err:
        drop_tracebacks(err)
        raise ProbeFailure(
            FailureReason.PROTOCOL, f"connection lost {when}: {err.strerror or type(err).__name__}"
        ) from None


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


class TargetGuard(Protocol):
    """Decides which hosts and addresses an on-demand probe may reach."""

    def allows_host(self, host: str) -> bool: ...

    def allows_address(self, host: str, address: str) -> bool:
        """May ``host``, resolved to ``address``, be probed?"""
        ...


def check_host(guard: TargetGuard | None, host: str) -> None:
    """Stop an on-demand probe whose target host is outside probe_allowlist, before any traffic."""
    if guard is not None and not guard.allows_host(host):
        raise ProbeFailure(FailureReason.OTHER, f"target host {host} is outside probe_allowlist")


@dataclass(frozen=True, slots=True)
class Address:
    """A resolved address and the family it belongs to."""

    ip: str
    family: socket.AddressFamily

    @property
    def version(self) -> int:
        return 6 if self.family == socket.AF_INET6 else 4


@functools.lru_cache(maxsize=4096)
def _literal(host: str) -> Address | None:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return Address(str(ip), socket.AF_INET6 if ip.version == 6 else socket.AF_INET)


async def _lookup(host: str, family: socket.AddressFamily) -> list[Address]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, family=family, type=socket.SOCK_STREAM)
    seen: dict[str, Address] = {}
    for fam, _, _, _, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]), Address(str(sockaddr[0]), socket.AddressFamily(fam)))
    return list(seen.values())


async def resolve(
    host: str,
    preferred: str,
    fallback: bool,
    trace: Trace,
    guard: TargetGuard | None = None,
    phase: str | None = "resolve",
) -> list[Address]:
    """Resolve ``host`` the way blackbox does: the preferred family first, the other on failure.

    Records ``probe_ip_protocol``, ``probe_ip_addr_hash`` and ``probe_dns_lookup_time_seconds``.
    The returned list puts the preferred family first and, with fallback on, ends with the other
    family's addresses so a connect failure can fall back to them.
    """
    start = trace.elapsed()
    try:
        literal = _literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            addresses = await _resolve_name(host, preferred, fallback)
    finally:
        lookup = trace.elapsed() - start
        trace.set("probe_dns_lookup_time_seconds", lookup)
        if phase:
            trace.add_phase(phase, lookup)
    if guard is not None:
        refused = [a.ip for a in addresses if not guard.allows_address(host, a.ip)]
        if refused:
            raise ProbeFailure(
                FailureReason.OTHER, f"{host} resolves to {refused[0]}, outside probe_allowlist"
            )
    trace.set("probe_ip_protocol", addresses[0].version)
    trace.set("probe_ip_addr_hash", ip_hash(addresses[0].ip))
    return addresses


async def _resolve_name(host: str, preferred: str, fallback: bool) -> list[Address]:
    if preferred == "ip":
        order = [socket.AF_UNSPEC]
    else:
        first = socket.AF_INET if preferred == "ip4" else socket.AF_INET6
        second = socket.AF_INET6 if first == socket.AF_INET else socket.AF_INET
        order = [first, second] if fallback else [first]
    found: list[Address] = []
    last_error = "no addresses"
    for family in order:
        try:
            found.extend(await _lookup(host, family))
        except (socket.gaierror, UnicodeError) as err:
            last_error = (err.strerror if isinstance(err, socket.gaierror) else None) or str(err)
    if not found:
        raise ProbeFailure(FailureReason.DNS, f"cannot resolve {host}: {last_error}")
    return found


# Parsing addresses showed up in profiles at 1,000 probes a second; targets repeat.
@functools.lru_cache(maxsize=4096)
def ip_hash(ip: str) -> float:
    """blackbox's probe_ip_addr_hash: 32-bit FNV-1a of the address bytes, so values match."""
    value = 0x811C9DC5
    for byte in ipaddress.ip_address(ip).packed:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return float(value)


async def connect(
    addresses: Sequence[Address],
    port: int,
    trace: Trace,
    source_ip: str = "",
    phase: str | None = "connect",
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a TCP connection to the first address that accepts, in the given order."""
    # Only the reason is kept: holding the exception past its except block would tie it, its
    # traceback and this frame into a cycle that only the garbage collector can free.
    reason = "no address to connect to"
    for address in addresses:
        start = trace.elapsed()
        try:
            local = (source_ip, 0) if source_ip else None
            streams = await asyncio.open_connection(
                address.ip, port, family=address.family, local_addr=local, limit=2**16
            )
        except OSError as err:
            reason = err.strerror or str(err)
            drop_tracebacks(err)
            continue
        finally:
            if phase:
                trace.add_phase(phase, trace.elapsed() - start)
        if address.version != trace.get("probe_ip_protocol"):
            trace.set("probe_ip_protocol", address.version)
            trace.set("probe_ip_addr_hash", ip_hash(address.ip))
        return streams
    where = f"{addresses[-1].ip}:{port}" if addresses else f"port {port}"
    raise ProbeFailure(FailureReason.CONNECT, f"cannot connect to {where}: {reason}")


def make_ssl_context(config: TLSConfig) -> ssl.SSLContext:
    """An SSL context for blackbox's ``tls_config``; unreadable files become ProbeFailure."""
    try:
        context = ssl.create_default_context(cafile=config.ca_file or None, cadata=config.ca or None)
    except (OSError, ssl.SSLError, ValueError) as err:
        raise ProbeFailure(
            FailureReason.TLS, f"cannot load {'ca' if config.ca else 'ca_file'}: {err}"
        ) from None
    try:
        if config.cert or config.key is not None:
            _load_inline_chain(context, config)
        elif config.cert_file:
            context.load_cert_chain(config.cert_file, config.key_file or None)
    except (OSError, ssl.SSLError) as err:
        # Not the error's text when the key was inline: OpenSSL may quote it.
        detail = "not a usable certificate and key" if config.key is not None else str(err)
        raise ProbeFailure(FailureReason.TLS, f"cannot load client certificate: {detail}") from None
    if config.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.min_version:
        context.minimum_version = TLS_VERSIONS[config.min_version]
    if config.max_version:
        context.maximum_version = TLS_VERSIONS[config.max_version]
    return context


def _load_inline_chain(context: ssl.SSLContext, config: TLSConfig) -> None:
    """Load a client certificate and key, each inline or in a file (OpenSSL reads only files).

    Inline ones are written for the moment of loading into a private directory, then removed.
    """
    with tempfile.TemporaryDirectory(prefix="outage-exporter-tls-") as directory:
        cert, key = config.cert_file, config.key_file
        if config.cert:
            cert = os.path.join(directory, "cert.pem")
            _write_private(cert, config.cert)
        if config.key is not None:
            key = os.path.join(directory, "key.pem")
            _write_private(key, config.key.reveal())
        context.load_cert_chain(cert, key or None)


def _write_private(path: str, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)


# Building a context loads the system's CA store: tens of milliseconds of CPU on the event loop,
# which at a few TLS probes a second would stall every other service. Contexts are shared instead,
# keyed by everything that shapes them, the files' identity on disk included so that a renewed
# certificate is read again.
_SHARED_CONTEXTS: dict[tuple[object, ...], ssl.SSLContext] = {}
_MAX_SHARED_CONTEXTS = 64


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def shared_ssl_context(config: TLSConfig, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    """A context for ``config`` offering ``alpn``, shared by every probe that asks the same.

    Callers must not change it; ask for the ALPN protocols here instead of setting them.
    """
    files = tuple(
        _file_identity(p) if p else None for p in (config.ca_file, config.cert_file, config.key_file)
    )
    key = (config, alpn, files)
    context = _SHARED_CONTEXTS.get(key)
    if context is None:
        context = make_ssl_context(config)
        if alpn:
            context.set_alpn_protocols(list(alpn))
        if len(_SHARED_CONTEXTS) >= _MAX_SHARED_CONTEXTS:
            _SHARED_CONTEXTS.clear()
        _SHARED_CONTEXTS[key] = context
    return context


async def start_tls(
    writer: asyncio.StreamWriter,
    context: ssl.SSLContext,
    server_name: str,
    trace: Trace,
    phase: str | None = "tls",
) -> None:
    """Upgrade a connection to TLS and record the certificate and version values."""
    start = trace.elapsed()
    try:
        with map_exceptions({**HANDSHAKE_ERRORS, OSError: HANDSHAKE_ERRORS[ssl.SSLError]}):
            await writer.start_tls(context, server_hostname=server_name or None)
    finally:
        if phase:
            trace.add_phase(phase, trace.elapsed() - start)
    record_tls(trace, writer.get_extra_info("ssl_object"))


_VERSION_LABELS = {
    "TLSv1": "TLS 1.0",
    "TLSv1.1": "TLS 1.1",
    "TLSv1.2": "TLS 1.2",
    "TLSv1.3": "TLS 1.3",
}


def peer_chain(ssl_object: ssl.SSLObject) -> list[x509.Certificate]:
    """The certificates the server sent, leaf first."""
    # cryptography loads with the first TLS handshake: a worker probing plain HTTP never needs it.
    from cryptography import x509

    raw = getattr(ssl_object, "_sslobj", None)
    chain = []
    getter = getattr(raw, "get_verified_chain", None)
    try:
        chain = list(getter()) if getter is not None else []
    except (ssl.SSLError, ValueError):
        chain = []
    if not chain:
        unverified = getattr(raw, "get_unverified_chain", None)
        chain = list(unverified() or []) if unverified is not None else []
    certs = []
    for item in chain:
        der = item.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
        certs.append(x509.load_der_x509_certificate(der))
    if not certs:
        der = ssl_object.getpeercert(binary_form=True)
        if der:
            certs.append(x509.load_der_x509_certificate(der))
    return certs


def record_tls(trace: Trace, ssl_object: ssl.SSLObject | None) -> None:
    """Record blackbox's TLS values: earliest expiry, last-chain expiry, version, leaf fingerprint."""
    if ssl_object is None:
        return
    version = ssl_object.version() or ""
    trace.set("probe_tls_version_info", 1, (("version", _VERSION_LABELS.get(version, version)),))
    cipher = ssl_object.cipher()
    if cipher is not None:
        # blackbox (0.25 and later) names the suite as Go does; TLS 1.3 names are the same.
        trace.set("probe_tls_cipher_info", 1, (("cipher", GO_CIPHER_NAMES.get(cipher[0], cipher[0])),))
    certs = peer_chain(ssl_object)
    if not certs:
        return
    expiries = [c.not_valid_after_utc.replace(tzinfo=UTC).timestamp() for c in certs]
    trace.set("probe_ssl_earliest_cert_expiry", min(expiries))
    # blackbox takes the last chain from the verified chains; with verification off there are
    # none, and it exports Go's zero time.
    verified = ssl_object.context.verify_mode != ssl.CERT_NONE
    trace.set("probe_ssl_last_chain_expiry_timestamp_seconds", min(expiries) if verified else GO_ZERO_TIME)
    trace.set("probe_ssl_last_chain_info", 1, leaf_labels(certs[0]))


# time.Time{}.Unix() in Go: 0001-01-01T00:00:00Z.
GO_ZERO_TIME = -62135596800.0


def leaf_labels(leaf: x509.Certificate) -> tuple[tuple[str, str], ...]:
    """probe_ssl_last_chain_info's labels as blackbox writes them (0.28, serialnumber included)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    serial = leaf.serial_number
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = names.get_values_for_type(x509.DNSName)
    except (x509.ExtensionNotFound, ValueError):
        dns_names = []
    return (
        ("fingerprint_sha256", leaf.fingerprint(hashes.SHA256()).hex()),
        ("issuer", leaf.issuer.rfc4514_string()),
        # Go prints the serial's big-endian bytes in hex, so leading zero bytes stay.
        ("serialnumber", serial.to_bytes((serial.bit_length() + 7) // 8, "big").hex() if serial > 0 else ""),
        ("subject", leaf.subject.rfc4514_string()),
        ("subjectalternative", ",".join(dns_names)),
    )


async def close(writer: asyncio.StreamWriter) -> None:
    """Close a connection without waiting long on a peer that does not answer.

    A probe being cancelled (its timeout ran out) drops the connection at once: a polite TLS
    close to a silent peer would hold the probe up to a second past its timeout.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        writer.transport.abort()
        return
    writer.close()
    # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that arrives
    # as the connection finishes closing, and the cancelled probe task would run on.
    with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
