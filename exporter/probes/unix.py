"""The unix prober (blackbox 0.26): a stream socket on this machine, with the tcp prober's dialogue."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from exporter.modules import Module, QueryResponse, TLSConfig
from exporter.probes import net, tcp
from exporter.probes.base import NETWORK_REASONS, ProbeRequest, ProberKind
from exporter.probes.net import ProbeFailure, map_exceptions, why
from exporter.result import FailureReason, ProbeResult

# Semantics:
# - The target is the socket's path (``/run/app.sock``); ``@name`` is a Linux abstract socket.
#   There is no resolving and no address, so no probe_ip_* or probe_dns_lookup_time_seconds.
# - Then as the tcp prober: ``tls`` wraps the connection at once, ``query_response`` runs the
#   same steps (expect, expect_bytes, send, starttls, labels), with the same metrics.
# - TLS has no host name to check against, so ``tls_config.server_name`` names the certificate's
#   host (blackbox would check the socket path, which no certificate holds); without it and
#   without ``insecure_skip_verify`` the probe fails with reason ``tls`` saying so.
# - Reasons: no socket at the path, permission denied, or nobody listening is ``connect``; the
#   dialogue's are the tcp prober's.
# - /probe reaches a socket only when a probe_allowlist entry lists its path (``/run/app/*.sock``,
#   ``*`` within one directory); host globs and networks never match a path.


@dataclass(frozen=True)
class UnixProbe:
    """blackbox's ``unix`` section."""

    query_response: tuple[QueryResponse, ...] = ()
    tls: bool = False
    tls_config: TLSConfig = field(default_factory=TLSConfig)


_CONNECT_ERRORS: net.ExceptionMapping = {
    FileNotFoundError: (FailureReason.CONNECT, "no socket at this path"),
    PermissionError: (FailureReason.CONNECT, "permission denied connecting to the socket"),
    ConnectionRefusedError: (FailureReason.CONNECT, "connection refused: nothing listens on this path"),
    OSError: (FailureReason.CONNECT, lambda err: f"cannot connect to the socket: {why(err)}"),
}


# sun_path holds 108 bytes on Linux, its terminating NUL included.
_MAX_PATH_BYTES = 107


def socket_path(target: str) -> str:
    path = target.strip()
    # Only an absolute, normal path (or @name) can be matched against probe_allowlist's entries:
    # a relative one depends on the working directory, and "..", "." or a NUL (where the kernel
    # cuts the name) would reach another socket than the one listed.
    if not path.startswith(("/", "@")):
        raise ProbeFailure(FailureReason.OTHER, "the target must be an absolute socket path or @name")
    if "\0" in path or any(part in (".", "..") for part in path.split("/")):
        raise ProbeFailure(FailureReason.OTHER, "the socket path must not hold '.', '..' or a NUL byte")
    # Go's net package writes a Linux abstract socket as "@name"; the kernel wants a NUL.
    return "\0" + path[1:] if path.startswith("@") else path


async def probe_unix(request: ProbeRequest) -> ProbeResult:
    """Connect to the socket at ``request.target``, then TLS and query_response as tcp does."""
    settings = request.module.section(UnixProbe)
    trace = request.trace
    path = socket_path(request.target)
    net.check_host(request.guard, request.target.strip())
    tls = settings.tls or any(step.starttls for step in settings.query_response)
    context = net.shared_ssl_context(settings.tls_config) if tls else None
    server_name = settings.tls_config.server_name
    if context is not None and context.check_hostname and not server_name:
        raise ProbeFailure(
            FailureReason.TLS,
            "TLS over a unix socket needs tls_config.server_name (the certificate's host name)"
            " or insecure_skip_verify",
        )
    if len(path.encode()) > _MAX_PATH_BYTES:
        raise ProbeFailure(FailureReason.CONNECT, f"the socket path is longer than {_MAX_PATH_BYTES} bytes")
    with trace.phase("connect"), map_exceptions(_CONNECT_ERRORS):
        reader, writer = await asyncio.open_unix_connection(path, limit=tcp.MAX_LINE_BYTES)
    await tcp.converse(reader, writer, settings.tls, settings.query_response, context, server_name, trace)
    return trace.succeed()


def _quiet_gauges(module: Module) -> frozenset[str]:
    return tcp.quiet_gauges_for(module.section(UnixProbe).query_response)


KIND = ProberKind(
    "unix",
    UnixProbe,
    probe_unix,
    metrics=tcp.DIALOGUE_METRICS,
    reasons=lambda module: NETWORK_REASONS - {FailureReason.DNS},
    quiet_gauges=_quiet_gauges,
)
