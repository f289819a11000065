"""Runs one probe: picks the probe kind, enforces the timeout, and never lets a probe crash us."""

from __future__ import annotations

import asyncio
import logging

from exporter.modules import Module
from exporter.probes import PROBERS, ProbeRequest
from exporter.probes.net import TargetGuard
from exporter.result import SYSTEM_CLOCK, Clock, FailureReason, ProbeResult, Trace
from exporter.types import format_duration

log = logging.getLogger(__name__)


async def run_probe(
    target: str,
    module: Module,
    timeout: float,
    guard: TargetGuard | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> ProbeResult:
    """Probe ``target`` with ``module`` within ``timeout`` seconds and return what was seen."""
    trace = Trace(clock)
    kind = PROBERS.get(module.prober)
    if kind is None:
        return trace.fail(FailureReason.OTHER, f"prober {module.prober!r} is not available")
    request = ProbeRequest(target=target, module=module, trace=trace, timeout=timeout, guard=guard)
    try:
        async with asyncio.timeout(timeout):
            return await kind.probe(request)
    except TimeoutError:
        return trace.fail(FailureReason.TIMEOUT, f"no answer within {format_duration(timeout)}")
    except Exception as err:  # a probe bug must not stop the scheduler
        log.exception("probe of %s raised", target)
        return trace.fail(FailureReason.OTHER, f"internal error: {type(err).__name__}")
