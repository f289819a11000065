"""Runs one probe: picks the probe kind, enforces the timeout, and never lets a probe crash us.

This is the one error boundary of the probes: a probe raises ProbeFailure for what it
expected to go wrong and lets anything else escape; here both become a failed result.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping

from exporter.modules import Module
from exporter.probes import ProbeDeps, Prober, ProbeRequest, probers
from exporter.probes.net import ProbeFailure, TargetGuard
from exporter.result import SYSTEM_CLOCK, Clock, FailureReason, ProbeResult, Trace
from exporter.types import format_duration, redact_target

log = logging.getLogger(__name__)

# Kinds made without the running exporter's parts: push services then fail with a clear message.
STANDALONE_PROBERS: Mapping[str, Prober] = probers(ProbeDeps())


async def run_probe(
    target: str,
    module: Module,
    timeout: float,
    guard: TargetGuard | None = None,
    clock: Clock = SYSTEM_CLOCK,
    table: Mapping[str, Prober] = STANDALONE_PROBERS,
) -> ProbeResult:
    """Probe ``target`` with ``module`` within ``timeout`` seconds and return what was seen.

    With ``module.retries``, a failed attempt is followed by another while time remains; the
    result is the last attempt's, its duration spans them all, and the reasons of the failed
    attempts travel with it so flakiness stays visible. ``table`` is the probe of each kind,
    made with the running exporter's parts (see Exporter.probers).
    """
    probe = table.get(module.prober)
    if probe is None:
        return Trace(clock).fail(FailureReason.OTHER, f"prober {module.prober!r} is not available")
    start = clock.monotonic()
    failed: list[FailureReason] = []
    while True:
        remaining = timeout - (clock.monotonic() - start)
        request = ProbeRequest(target, module, Trace(clock), remaining, guard)
        result = await attempt(probe, request)
        if result.success or len(failed) >= module.retries or result.reason is FailureReason.TIMEOUT:
            break
        failed.append(result.reason or FailureReason.OTHER)
    if not failed:
        return result
    return dataclasses.replace(
        result,
        duration=clock.monotonic() - start,
        started_at=result.started_at - (clock.monotonic() - start - result.duration),
        failed_attempts=tuple(failed),
    )


async def attempt(probe: Prober, request: ProbeRequest) -> ProbeResult:
    try:
        async with asyncio.timeout(request.timeout):
            return await probe(request)
    except TimeoutError:
        return request.trace.fail(
            FailureReason.TIMEOUT, f"no answer within {format_duration(request.timeout)}"
        )
    except ProbeFailure as failure:
        return failure.result(request.trace)
    except Exception as err:  # a probe bug must not stop the scheduler
        log.exception("%s probe of %s raised", request.module.prober, redact_target(request.target))
        return request.trace.fail(FailureReason.OTHER, f"internal error: {type(err).__name__}")
