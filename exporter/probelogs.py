"""Per-target probe logs, as blackbox (0.25 and later) serves them at /logs?target=&module=.

Each probe's account is a few logfmt lines made from its result (start, each phase, each
value, the verdict), the lines the exporter logged while the probe ran, and the metrics /probe
returned. They are kept in memory with hard bounds, so no sequence of requests can grow it:

- a ring of the last ``ENTRIES`` accounts per (target, module) pair, and per service;
- at most ``MAX_PAIRS`` pairs, the least recently probed dropped first;
- at most ``MAX_ENTRY_BYTES`` per account (cut with a note), ``MAX_TOTAL_BYTES`` in all.

Nothing secret is written: targets have their URL password and ``token`` parameters masked,
probe messages never carry credentials (each probe's contract), and the metrics are what
/probe shows anyway.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from exporter.logs import LogfmtFormatter
from exporter.result import ProbeResult
from exporter.types import redact_target

ENTRIES = 3
MAX_PAIRS = 1000
MAX_ENTRY_BYTES = 16 * 1024
MAX_TOTAL_BYTES = 4 * 1024 * 1024
# Log records one probe may add to its account; its own lines are few, so this only bites a flood.
MAX_CAPTURED = 50

Key = tuple[str, ...]


def target_key(target: str, module: str) -> Key:
    return ("target", target, module)


def service_key(name: str) -> Key:
    return ("service", name)


def _when(wall: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall))
    return f"{seconds}.{int(wall % 1 * 1000):03d}Z"


def _value(text: str) -> str:
    if text and not any(c in text for c in ' "=\n\t\\'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _line(wall: float, level: str, msg: str, **fields: object) -> str:
    parts = [f"ts={_when(wall)}", f"level={level}", f"msg={_value(msg)}"]
    parts.extend(f"{key}={_value(str(value))}" for key, value in fields.items())
    return " ".join(parts)


def account(
    result: ProbeResult,
    *,
    target: str,
    module: str,
    prober: str,
    timeout: float,
    captured: list[str],
    metrics: str,
) -> str:
    """The text /logs shows for one probe: its log lines, then the metrics it returned."""
    start = result.started_at
    end = start + result.duration
    shown = redact_target(target)
    lines = [
        _line(
            start,
            "info",
            "Beginning probe",
            probe=prober,
            module=module,
            target=shown,
            timeout_seconds=timeout,
        )
    ]
    for phase, seconds in result.phases.items():
        lines.append(_line(end, "debug", "Phase done", phase=phase, duration_seconds=f"{seconds:.6f}"))
    for failed in result.failed_attempts:
        lines.append(_line(end, "warn", "Attempt failed, retried", reason=failed.value))
    lines.extend(captured)
    if result.success:
        lines.append(_line(end, "info", "Probe succeeded", duration_seconds=f"{result.duration:.6f}"))
    else:
        reason = result.reason.value if result.reason is not None else "other"
        lines.append(
            _line(
                end,
                "error",
                "Probe failed",
                reason=reason,
                err=result.message,
                duration_seconds=f"{result.duration:.6f}",
            )
        )
    text = (
        "Logs for the probe:\n"
        + "\n".join(lines)
        + "\n\n\nMetrics that would have been returned:\n"
        + metrics
    )
    return _cut(text)


def _cut(text: str) -> str:
    data = text.encode("utf-8")
    if len(data) <= MAX_ENTRY_BYTES:
        return text
    note = f"\n[cut: this probe's account was {len(data)} bytes, {MAX_ENTRY_BYTES} are kept]\n"
    room = MAX_ENTRY_BYTES - len(note.encode())
    return data[:room].decode("utf-8", "ignore") + note


@dataclass(frozen=True, slots=True)
class Draft:
    """What ``account`` needs to write one /probe's account, kept until /logs asks for it.

    Writing every account when its probe ends cost a tenth of the front's time under /probe
    load, and nearly all of them are dropped unread; the same inputs always give the same text.
    """

    result: ProbeResult
    target: str
    module: str
    prober: str
    timeout: float
    captured: tuple[str, ...]
    metrics: bytes

    def text(self) -> str:
        return account(
            self.result,
            target=self.target,
            module=self.module,
            prober=self.prober,
            timeout=self.timeout,
            captured=list(self.captured),
            metrics=self.metrics.decode("utf-8", "replace"),
        )

    @property
    def held(self) -> int:
        """Bytes this draft keeps alive, roughly: its texts and the result's objects."""
        result = self.result
        texts = len(self.metrics) + len(self.target) + len(result.message) + sum(map(len, self.captured))
        return texts + _RESULT_OVERHEAD + 48 * (len(result.phases) + len(result.samples))


class Entry:
    """One probe's account for /logs, written (``str``) or still a Draft."""

    __slots__ = ("_account", "size", "success", "wall")

    def __init__(self, wall: float, success: bool, account: str | Draft) -> None:
        if isinstance(account, Draft) and account.held > MAX_ENTRY_BYTES:
            account = account.text()  # cut to size now rather than kept whole
        self.wall = wall
        self.success = success
        self._account = account
        # What this entry costs the book's byte budget: the text it holds, or what its draft
        # keeps alive (about the size of the text it would write), beside the objects holding it.
        held = len(account.encode("utf-8", "replace")) if isinstance(account, str) else account.held
        self.size = held + _OVERHEAD

    @property
    def text(self) -> str:
        account = self._account
        return account if isinstance(account, str) else account.text()


# What a kept account or key costs beside its text, roughly: the objects that hold it.
_OVERHEAD = 64
# A result's own objects (the result, its phase mapping, its samples' tuple), roughly.
_RESULT_OVERHEAD = 512


def _key_size(key: Key) -> int:
    return sum(len(part.encode("utf-8", "replace")) for part in key) + _OVERHEAD


class ProbeLogBook:
    """The bounded store of probe accounts, by (target, module) pair or service."""

    def __init__(
        self,
        entries: int = ENTRIES,
        max_pairs: int = MAX_PAIRS,
        max_total_bytes: int = MAX_TOTAL_BYTES,
    ) -> None:
        self.entries = entries
        self.max_pairs = max_pairs
        self.max_total_bytes = max_total_bytes
        self._rings: OrderedDict[Key, deque[Entry]] = OrderedDict()
        self._bytes = 0

    def add(self, key: Key, entry: Entry) -> None:
        ring = self._rings.pop(key, None)
        if ring is None:
            ring = deque()
            self._bytes += _key_size(key)  # a target may be as long as a query string allows
        if len(ring) >= self.entries:
            self._bytes -= ring.popleft().size
        ring.append(entry)
        self._bytes += entry.size
        self._rings[key] = ring  # now the most recently used
        while self._rings and (len(self._rings) > self.max_pairs or self._bytes > self.max_total_bytes):
            oldest_key, oldest = next(iter(self._rings.items()))
            if oldest_key == key and len(self._rings) == 1:
                # The newest account alone is over budget: keep only it (it is cut to size).
                while len(oldest) > 1:
                    self._bytes -= oldest.popleft().size
                break
            del self._rings[oldest_key]
            self._bytes -= sum(e.size for e in oldest) + _key_size(oldest_key)

    def latest(self, key: Key) -> list[Entry]:
        """The accounts kept for ``key``, newest first."""
        return list(reversed(self._rings.get(key, ())))

    def by_target(self, target: str) -> list[Entry]:
        """Accounts of ``target`` under any module, newest first (blackbox's module-less lookup)."""
        found = [e for key, ring in self._rings.items() if key[:2] == ("target", target) for e in ring]
        return sorted(found, key=lambda e: e.wall, reverse=True)

    def __len__(self) -> int:
        return len(self._rings)

    @property
    def bytes(self) -> int:
        return self._bytes


# Log records written while a probe runs in the current task are added to its account.
_CAPTURE: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("probe_log_capture", default=None)
_FORMAT = LogfmtFormatter()


class _CaptureHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        lines = _CAPTURE.get()
        if lines is not None and len(lines) < MAX_CAPTURED:
            # A record that cannot be formatted is left out, as logging itself would skip it.
            with contextlib.suppress(Exception):
                lines.append(_FORMAT.format(record).replace("\n", "\\n"))


_HANDLER = _CaptureHandler()
# Looked up once: getLogger takes logging's lock, on every /probe request otherwise.
_PACKAGE = logging.getLogger("exporter")


@contextmanager
def capture() -> Iterator[list[str]]:
    """Collect the exporter's log records (at the configured level) written in this task meanwhile."""
    if _HANDLER not in _PACKAGE.handlers:
        _PACKAGE.addHandler(_HANDLER)
    lines: list[str] = []
    token = _CAPTURE.set(lines)
    try:
        yield lines
    finally:
        _CAPTURE.reset(token)


def add_captured(lines: list[str]) -> None:
    """Add records captured elsewhere for this task's probe (by the worker that ran it)."""
    mine = _CAPTURE.get()
    if mine is not None:
        mine.extend(lines[: max(0, MAX_CAPTURED - len(mine))])


def render(entries: list[Entry]) -> str:
    """Accounts for /logs, newest first; several are told apart by a heading."""
    if len(entries) == 1:
        return entries[0].text
    blocks = []
    for number, entry in enumerate(entries):
        state = "succeeded" if entry.success else "failed"
        heading = "latest probe" if number == 0 else f"{number} before the latest"
        blocks.append(f"=== {heading}, at {_when(entry.wall)}, {state} ===\n{entry.text}")
    return "\n\n".join(blocks)
