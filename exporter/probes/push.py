"""The push kind: judges the latest heartbeat a service pushed instead of probing anything."""

from __future__ import annotations

from exporter.heartbeats import HeartbeatBoard
from exporter.modules import PushProbe
from exporter.probes.base import ProbeDeps, Prober, ProbeRequest, ProberKind
from exporter.result import FailureReason, MetricFamily, ProbeResult
from exporter.types import format_duration

# The families this kind writes beyond every probe's own (for help text and docs).
METRICS = (
    MetricFamily(
        "probe_push_age_seconds",
        "Seconds since the service last pushed (or since start, before any push).",
    ),
    MetricFamily("probe_push_last_timestamp_seconds", "When the service last pushed, as a unix time."),
    MetricFamily("probe_push_reported_success", "What the last push said: 1 up, 0 down."),
    MetricFamily("probe_push_reported_duration_seconds", "Duration the last push reported for its job."),
)


def make_prober(deps: ProbeDeps) -> Prober:
    """A push prober judging the heartbeats kept on the running exporter's board."""
    board = deps.heartbeats

    async def probe_push(request: ProbeRequest) -> ProbeResult:
        if board is None:
            return request.trace.fail(
                FailureReason.OTHER, "push services are judged by a running exporter only"
            )
        return judge(request, board)

    return probe_push


def judge(request: ProbeRequest, board: HeartbeatBoard) -> ProbeResult:
    """Fail when no push arrived within max_silence, or when the last push said down."""
    trace = request.trace
    settings = request.module.section(PushProbe)
    max_silence = float(settings.max_silence or 0)
    now = trace.clock.wall()
    beat = board.latest(request.target)
    if beat is None:
        waited = now - board.started_at
        trace.set("probe_push_age_seconds", waited)
        if waited > max_silence:
            return trace.fail(
                FailureReason.TIMEOUT,
                f"no push received in {format_duration(waited)}, more than max_silence"
                f" {format_duration(max_silence)}",
            )
        return trace.succeed("waiting for the first push")
    age = now - beat.received_at
    trace.set("probe_push_age_seconds", age)
    trace.set("probe_push_last_timestamp_seconds", beat.received_at)
    trace.set("probe_push_reported_success", 1.0 if beat.success else 0.0)
    if beat.duration is not None:
        trace.set("probe_push_reported_duration_seconds", beat.duration)
    if age > max_silence:
        return trace.fail(
            FailureReason.TIMEOUT,
            f"last push {format_duration(age)} ago, more than max_silence {format_duration(max_silence)}",
        )
    if not beat.success:
        detail = f": {beat.message}" if beat.message else ""
        return trace.fail(FailureReason.OTHER, f"the last push reported a failure{detail}")
    return trace.succeed(beat.message)


KIND = ProberKind(
    "push",
    PushProbe,
    factory=make_prober,
    required=PushProbe.required,
    needs_target=False,
    metrics=METRICS,
    reasons=lambda module: frozenset({FailureReason.TIMEOUT, FailureReason.OTHER}),
)
