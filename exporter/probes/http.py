"""The HTTP probe: blackbox's http prober on our own HTTP/1.1 client over asyncio streams."""

from __future__ import annotations

from exporter.modules import HTTPProbe, Module
from exporter.probes import net
from exporter.probes.base import ALL_REASONS, ProbeRequest, ProberKind
from exporter.probes.httpclient import HTTP_METRICS, PHASES, HTTPClient, has_cel, record_defaults
from exporter.result import FailureReason, MetricFamily, ProbeResult

# Semantics, and where they differ from blackbox_exporter:
# - We speak HTTP/1.1 only. ``enable_http2`` is accepted so blackbox configs load, but HTTP/2 is
#   never negotiated (ALPN offers http/1.1 only), so probe_http_version is 1.1 or 1.0.
# - Every probe opens fresh connections and sends ``Connection: close``, as blackbox does.
# - Reasons: a malformed response, a connection closed or reset before the response ended,
#   headers over MAX_HEAD_BYTES and a version outside valid_http_versions are ``protocol``;
#   a body over body_size_limit (raw or decompressed) or one that cannot be decompressed is
#   ``body``; fail_if_ssl / fail_if_not_ssl are ``tls``; more than max_redirects redirects, a
#   refused host and unusable settings (unreadable secret files) are ``other``.
# - probe_http_redirects counts redirect responses received, as blackbox does: a redirect that
#   is not followed (follow_redirects: false) still counts 1, and exceeding max_redirects counts
#   the redirect that was refused.
# - A gzip, deflate or br body is decompressed whenever the response's Content-Encoding says so;
#   blackbox instead decompresses blindly with the configured algorithm and fails on a plain
#   body. Use fail_if_header_not_matches on Content-Encoding to require compression.
# - Credentials (Authorization, Cookie headers) are not sent to a redirect target on a host that
#   is neither the first host nor a subdomain of it, as Go's own client does for its headers;
#   blackbox's auth round-tripper would send them to every hop.
# - Cookies follow RFC 6265, its public-suffix rule included (section 5.3 step 5): a cookie
#   set for Domain=com or Domain=co.uk is dropped.
# - DNS values (probe_dns_lookup_time_seconds, probe_ip_protocol, probe_ip_addr_hash) describe the
#   first hop, as in blackbox; the TLS values describe the last hop that used TLS.
# The families this kind writes beyond every probe's own (for help text and docs).
METRICS = (
    *HTTP_METRICS,
    *net.ADDRESS_METRICS,
    *net.TLS_METRICS,
    net.REGEX_METRIC,
    MetricFamily(
        "probe_failed_due_to_cel", "1 if the probe failed because a CEL check on the JSON body failed."
    ),
)


async def probe_http(request: ProbeRequest) -> ProbeResult:
    """Fetch ``request.target`` as blackbox's http prober does; a failure raises ProbeFailure."""
    trace = request.trace
    record_defaults(trace)
    settings = request.module.section(HTTPProbe)
    if has_cel(settings):
        # blackbox exports it, 0, whenever the module has a CEL check, even if the probe fails earlier.
        trace.set("probe_failed_due_to_cel", 0)
    client = HTTPClient(settings, trace, request.guard)
    await client.judge(await client.fetch(request.target))
    return trace.succeed()


def _reasons(module: Module) -> frozenset[FailureReason]:
    """``header`` comes only from the header checks; every other reason can always happen."""
    settings = module.section(HTTPProbe)
    if settings.fail_if_header_matches or settings.fail_if_header_not_matches:
        return ALL_REASONS
    return ALL_REASONS - {FailureReason.HEADER}


def _quiet_gauges(module: Module) -> frozenset[str]:
    """probe_failed_due_to_regex can only become 1 when the module has a regular expression."""
    settings = module.section(HTTPProbe)
    regexes = (
        settings.fail_if_body_matches_regexp,
        settings.fail_if_body_not_matches_regexp,
        settings.fail_if_header_matches,
        settings.fail_if_header_not_matches,
    )
    return frozenset() if any(regexes) else frozenset({"probe_failed_due_to_regex"})


KIND = ProberKind(
    "http",
    HTTPProbe,
    probe_http,
    metrics=METRICS,
    phases=PHASES,
    reasons=_reasons,
    quiet_gauges=_quiet_gauges,
)
