"""Probe worker processes: the front process hands each its share of services and gets results back.

With ``--workers N`` (N > 1) the process started by the command line is the *front*: it serves
HTTP (``/metrics``, ``/probe``, pushes, the status page, auth), reloads the config and reads
discovered files. N worker processes do the probing; their event loops do nothing but
schedule, probe and time, so nothing the front does (a 40 MB scrape, a password check, a
config parse) lands inside a probe's duration.

Where things live:

- **Counters live in the front.** A worker keeps no per-service state beyond its schedule:
  each finished run is sent to the front, which records it in its ResultStore exactly as one
  process does. So a worker that dies and is restarted, or a service that lands on another
  process after a reload (push <-> probed), keeps its series and counters: nothing about them
  was in the process that went away. The front renders ``/metrics`` from its store with the
  same per-service cache as one process, so a scrape formats only the services probed since
  the last scrape, and that work stays off the probing loops.
- **Which worker probes a service** is ``sharding.worker_of``: rendezvous hashing on the name,
  salted apart from the shards. It depends only on the name and N, so a reload sends a worker
  only what was added, changed or removed, and never moves a service that stayed.
- **Push services are judged in the front**, where their heartbeats arrive; they cost no
  network time, so their being on the front's loop measures nothing wrong.
- **Results carry the version of the service they ran under.** Every time a service's
  definition changes the front gives it a new version; a result of an older version (one
  already on its way when the reload happened) is dropped, as one process drops the result of
  a cancelled run. Unchanged services keep their version, wherever they run.

The IPC is one Unix stream socket pair per worker, carrying length-prefixed pickles; each side
reads it as an asyncio stream, so neither side needs a thread, a lock or a poll. A socket
pair was chosen over shared memory because the traffic is small (500 results a second are
tens of kilobytes a second, sent in batches every ``FLUSH_DELAY``) and a socket also tells the
front at once when a worker is gone (end of stream), where shared memory would need a
protocol of its own for both. multiprocessing's Queue would add a feeder thread per process
and its own pickling round; a plain socket is less. Results travel as flat tuples
(``pack_result``), not as objects, so each costs a few microseconds to send and to read.

Workers are started as fresh interpreters (``python -m exporter.workers``, the socket passed
as an inherited descriptor): the equivalent of multiprocessing's spawn. Forking the front
would copy a running event loop, its sockets and its threads into the child.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import logging
import math
import os
import pickle
import signal
import socket
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from exporter import probelogs
from exporter.allowlist import Allowlist
from exporter.config import Service
from exporter.loopwatch import LAG_BUCKETS as LOOP_LAG_BUCKETS
from exporter.loopwatch import LoopWatch
from exporter.modules import Module
from exporter.reloadplan import ReloadPlan
from exporter.result import FailureReason, ProbeResult, Sample
from exporter.runner import run_probe
from exporter.scheduler import LAG_BUCKETS, STOP_GRACE, Scheduler
from exporter.sharding import worker_of
from exporter.store import Histogram, ResultStore
from exporter.types import HostPattern

log = logging.getLogger(__name__)

# How long a worker gathers results before sending them as one message. Each message wakes
# both loops; at 0.1 s a worker at 250 probes/s sends 10 a second rather than 50, and a result
# still reaches /metrics far sooner than any scrape interval.
FLUSH_DELAY = 0.1
# How often a worker reports its in-flight count and lag histograms.
STATS_INTERVAL = 0.5
# A worker silent this long (no results, no stats) is stuck: it is killed and started again.
SILENCE_LIMIT = 60.0
# How long a starting worker may take to say hello: an interpreter's start on a busy machine.
START_LIMIT = 60.0
# Modules of on-demand probes each worker keeps, so a module crosses the socket once, not with
# every /probe (pickling one both ways costs about 50 us). Both sides evict the oldest first.
MODULE_CACHE = 64
# How long an on-demand probe waits for a worker to be up, when none is.
WORKER_WAIT = 30.0
# Restarts of a worker that keeps dying right after start back off from MIN_BACKOFF, doubling,
# up to MAX_BACKOFF. "Right after start": before its hello, or within QUICK_DEATH of it.
MIN_BACKOFF = 0.25
MAX_BACKOFF = 10.0
QUICK_DEATH = 5.0
_HEADER = struct.Struct("!I")

PackedResult = tuple[Any, ...]
# An on-demand probe as sent to a worker: id, target, module token, the module (None when the
# worker holds it already), timeout, and whether the allowlist guards it.
ProbeRequest = tuple[int, str, int, "Module | None", float, bool]


class WorkerLost(Exception):
    """The worker running an on-demand probe exited before answering."""


@dataclass(frozen=True, slots=True)
class Supervision:
    """How the front watches its workers. The defaults serve; tests shorten them."""

    # Killed and restarted after this long without a word (see SILENCE_LIMIT).
    silence_limit: float = SILENCE_LIMIT
    # The longest wait before starting again a worker that keeps dying right after start.
    max_backoff: float = MAX_BACKOFF

    def backoff(self, quick_deaths: int) -> float:
        """The wait before the next start after ``quick_deaths`` deaths in a row (0: none)."""
        if quick_deaths <= 0:
            return 0.0
        return min(MIN_BACKOFF * 2.0 ** min(quick_deaths - 1, 32), self.max_backoff)


def frame(message: object) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


async def read_message(reader: asyncio.StreamReader) -> Any:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return pickle.loads(await reader.readexactly(size))


def pack_result(result: ProbeResult) -> PackedResult:
    """A result as a flat tuple of builtins: cheap to pickle and to read back."""
    return (
        result.success,
        result.duration,
        result.started_at,
        None if result.reason is None else result.reason.value,
        result.message,
        tuple(result.phases.items()),
        tuple((s.name, s.value, s.labels) for s in result.samples),
        tuple(reason.value for reason in result.failed_attempts),
        result.stalled,
    )


def unpack_result(packed: PackedResult) -> ProbeResult:
    success, duration, started_at, reason, message, phases, samples, failed, stalled = packed
    return ProbeResult(
        success=success,
        duration=duration,
        started_at=started_at,
        reason=None if reason is None else _REASONS[reason],
        message=message,
        phases=MappingProxyType({sys.intern(name): seconds for name, seconds in phases}),
        samples=_samples(samples),
        failed_attempts=tuple(_REASONS[r] for r in failed) if failed else (),
        stalled=stalled,
    )


_REASONS: dict[str, FailureReason] = {reason.value: reason for reason in FailureReason}


# Samples the front has unpacked, shared by every result with the same one. Whole-number
# values repeat run after run (status code, version, content length, address hash, certificate
# expiry); sharing them makes unpacking a lookup and keeps the front's last result of each
# service small: a fresh Sample with its own name string is about 150 bytes, ten per result.
# Fractions (durations) hardly ever repeat and are not kept.
_SAMPLES: dict[tuple[str, float, tuple[tuple[str, str], ...]], Sample] = {}
MAX_SHARED_SAMPLES = 100_000


def _samples(packed: Iterable[tuple[str, float, tuple[tuple[str, str], ...]]]) -> tuple[Sample, ...]:
    shared = _SAMPLES
    samples = []
    for item in packed:
        # Most samples were seen before: the packed triple is the key. A hit is the very value
        # only for a float that is not -0.0 (an int or -0.0 equals a shared sample's value too).
        sample = shared.get(item)
        if sample is None or type(item[1]) is not float or (not item[1] and math.copysign(1.0, item[1]) < 0):
            sample = _sample(*item)
        samples.append(sample)
    return tuple(samples)


def _sample(name: str, value: float, labels: tuple[tuple[str, str], ...]) -> Sample:
    # Only plain whole floats, and not -0.0 (which equals 0.0): a shared sample must be the
    # very value the probe wrote.
    if type(value) is not float or not value.is_integer() or (value == 0 and math.copysign(1.0, value) < 0):
        return Sample(sys.intern(name), value, labels)
    key = (name, value, labels)
    sample = _SAMPLES.get(key)
    if sample is None:
        if len(_SAMPLES) >= MAX_SHARED_SAMPLES:
            _SAMPLES.clear()  # bounds it whatever the targets send (a timestamp per run)
        sample = _SAMPLES[key] = Sample(sys.intern(name), value, labels)
    return sample


def _histogram_state(histogram: Histogram) -> tuple[list[int], float, int]:
    return list(histogram.counts), histogram.total, histogram.count


def merge_histograms(bounds: tuple[float, ...], parts: Iterable[Histogram]) -> Histogram:
    merged = Histogram(bounds)
    for part in parts:
        merged.counts = [a + b for a, b in zip(merged.counts, part.counts, strict=True)]
        merged.total += part.total
        merged.count += part.count
    return merged


def concurrency_share(max_concurrency: int, count: int, index: int) -> int:
    """Worker ``index``'s part of the global cap: the cap split as evenly as it goes, at least 1."""
    base, extra = divmod(max_concurrency, count)
    return max(1, base + (1 if index < extra else 0))


@dataclass
class WorkerStats:
    """What a worker last reported about itself; cumulative since the worker started."""

    in_flight: int = 0
    schedule_lag: Histogram = field(default_factory=lambda: Histogram(LAG_BUCKETS))
    loop_lag: Histogram = field(default_factory=lambda: Histogram(LOOP_LAG_BUCKETS))
    reruns_after_stall: int = 0

    def add(self, other: WorkerStats) -> None:
        """Fold a gone worker's totals in, so the exported counters never go backwards."""
        self.schedule_lag = merge_histograms(LAG_BUCKETS, (self.schedule_lag, other.schedule_lag))
        self.loop_lag = merge_histograms(LOOP_LAG_BUCKETS, (self.loop_lag, other.loop_lag))
        self.reruns_after_stall += other.reruns_after_stall


Entry = tuple[Service, int]


class TurnBatch:
    """Messages of one kind given in one turn of the event loop, written at its end as one.

    Under /probe load several requests (and answers) come in one turn; each message costs both
    sides a write, a wake-up and a read, which is more than the request itself.
    """

    __slots__ = ("items", "kind", "writer")

    def __init__(self, kind: str, writer: Callable[[], asyncio.StreamWriter | None]) -> None:
        self.kind = kind
        self.writer = writer
        self.items: list[Any] = []

    def add(self, item: Any) -> None:
        if not self.items:
            asyncio.get_running_loop().call_soon(self.flush)
        self.items.append(item)

    def flush(self) -> None:
        items, self.items = self.items, []
        writer = self.writer()
        if items and writer is not None and not writer.is_closing():
            writer.write(frame((self.kind, items)))


@dataclass
class _Worker:
    index: int
    # The services this worker should probe, each with its version.
    share: dict[str, Entry] = field(default_factory=dict)
    writer: asyncio.StreamWriter | None = None
    process: asyncio.subprocess.Process | None = None
    # The loop's time when the running process said hello; None before that.
    up_since: float | None = None
    stats: WorkerStats = field(default_factory=WorkerStats)
    # On-demand probes sent, answered with the result and the log lines captured meanwhile.
    pending: dict[int, asyncio.Future[tuple[PackedResult, list[str]]]] = field(default_factory=dict)
    # The tokens of the modules this worker holds, oldest first: the same rule as its cache.
    modules: dict[int, None] = field(default_factory=dict)
    # What the worker was last sent, to send only differences.
    max_concurrency: int = 0
    allowlist: tuple[HostPattern, ...] = ()

    # On-demand probe requests (ProbeRequest) waiting for the end of this turn of the event loop.
    queued: TurnBatch = field(init=False)

    def __post_init__(self) -> None:
        self.queued = TurnBatch("probe", lambda: self.writer)

    @property
    def connected(self) -> bool:
        return self.writer is not None

    def send(self, message: object) -> None:
        self.queued.flush()  # what was asked first arrives first
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(frame(message))


class WorkerPool:
    """The front's side: starts, feeds, watches and restarts the worker processes."""

    def __init__(
        self,
        count: int,
        store: ResultStore,
        argv: Sequence[str] = (),
        supervision: Supervision | None = None,
    ) -> None:
        if count < 2:
            raise ValueError("a worker pool needs at least 2 workers; 1 means probing in the front")
        self.count = count
        self.store = store
        self.argv = tuple(argv)
        self.supervision = supervision or Supervision()
        self.restarts = 0
        self._workers = [_Worker(index) for index in range(count)]
        self._versions: dict[str, Entry] = {}
        self._version = itertools.count(1)
        self._ids = itertools.count(1)
        # A token per module object; holding the module keeps its id from being reused.
        self._module_tokens: dict[int, tuple[Module, int]] = {}
        self._max_concurrency = 1
        self._allowlist: tuple[HostPattern, ...] = ()
        self._retired = WorkerStats()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._some_connected = asyncio.Event()

    def owner(self, name: str) -> int:
        return worker_of(name, self.count)

    def service_counts(self) -> dict[int, int]:
        return {worker.index: len(worker.share) for worker in self._workers}

    # -- the services --------------------------------------------------------------------------

    def apply(
        self, services: Iterable[Service], max_concurrency: int, allowlist: Sequence[HostPattern]
    ) -> None:
        """Give every worker its share of ``services``; send each only what changed for it."""
        versions: dict[str, Entry] = {}
        shares: list[dict[str, Entry]] = [{} for _ in self._workers]
        for service in services:
            old = self._versions.get(service.name)
            # Identity first: after a reload, unchanged services are the very same objects.
            if old is not None and (old[0] is service or old[0] == service):
                entry = old
            else:
                entry = (service, next(self._version))
            versions[service.name] = entry
            shares[self.owner(service.name)][service.name] = entry
        self._versions = versions
        self._max_concurrency = max_concurrency
        self._allowlist = tuple(allowlist)
        for worker, share in zip(self._workers, shares, strict=True):
            before = worker.share
            worker.share = share
            if not worker.connected:
                continue  # it gets its whole share when it connects
            changed = [entry for name, entry in share.items() if before.get(name) is not entry]
            removed = [name for name in before if name not in share]
            self._send_apply(worker, changed, removed, full=False)

    def _send_apply(self, worker: _Worker, changed: list[Entry], removed: list[str], full: bool) -> None:
        concurrency = concurrency_share(self._max_concurrency, self.count, worker.index)
        allowlist = None if (self._allowlist == worker.allowlist and not full) else self._allowlist
        if not (full or changed or removed or allowlist is not None or concurrency != worker.max_concurrency):
            return
        worker.max_concurrency = concurrency
        worker.allowlist = self._allowlist
        worker.send(("apply", full, concurrency, changed, removed, allowlist))

    def _record(self, results: list[tuple[str, int, PackedResult]]) -> None:
        for name, version, packed in results:
            entry = self._versions.get(name)
            # A result of an older version of the service was on its way when it changed.
            if entry is not None and entry[1] == version:
                self.store.record(name, unpack_result(packed))

    # -- on-demand probes ----------------------------------------------------------------------

    async def probe(self, target: str, module: Module, timeout: float, guarded: bool) -> ProbeResult:
        """One probe now, on the connected worker with the fewest on-demand probes waiting.

        Right after start (or while every worker restarts) it waits for one: up to
        ``WORKER_WAIT``, since starting an interpreter on a busy machine takes seconds.
        """
        if not any(w.connected for w in self._workers):
            try:
                await asyncio.wait_for(self._some_connected.wait(), WORKER_WAIT)
            except TimeoutError:
                raise WorkerLost("no probe worker is running") from None
        workers = [w for w in self._workers if w.connected]
        if not workers:
            raise WorkerLost("every probe worker exited")
        worker = min(workers, key=lambda w: len(w.pending))
        probe_id = next(self._ids)
        future: asyncio.Future[tuple[PackedResult, list[str]]] = asyncio.get_running_loop().create_future()
        worker.pending[probe_id] = future
        token = self._module_token(module)
        if token in worker.modules:
            sent: Module | None = None
        else:
            sent = module
            worker.modules[token] = None
            if len(worker.modules) > MODULE_CACHE:
                del worker.modules[next(iter(worker.modules))]
        try:
            request: ProbeRequest = (probe_id, target, token, sent, timeout, guarded)
            worker.queued.add(request)
            packed, lines = await future
        finally:
            worker.pending.pop(probe_id, None)
        # What the worker logged while probing joins this request's account, as in one process.
        probelogs.add_captured(lines)
        return unpack_result(packed)

    def _module_token(self, module: Module) -> int:
        known = self._module_tokens.get(id(module))
        if known is not None and known[0] is module:
            return known[1]
        if len(self._module_tokens) >= 4 * MODULE_CACHE:
            # Modules of reloaded configs: forget them; a module seen again gets a new token.
            self._module_tokens.clear()
        token = next(self._ids)
        self._module_tokens[id(module)] = (module, token)
        return token

    # -- what the workers report ---------------------------------------------------------------

    @property
    def probes_in_flight(self) -> int:
        return sum(w.stats.in_flight for w in self._workers if w.connected)

    @property
    def reruns_after_stall(self) -> int:
        return self._retired.reruns_after_stall + sum(w.stats.reruns_after_stall for w in self._workers)

    def schedule_lag(self) -> list[Histogram]:
        return [self._retired.schedule_lag, *(w.stats.schedule_lag for w in self._workers)]

    def loop_lag(self) -> list[Histogram]:
        return [self._retired.loop_lag, *(w.stats.loop_lag for w in self._workers)]

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._supervise(worker), name=f"probe worker {worker.index}")
            for worker in self._workers
        ]

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Ask every worker to stop, wait up to ``grace`` (plus a second) and kill what is left."""
        self._stopping = True
        for worker in self._workers:
            worker.send(("stop",))
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=grace + 1.0)
        for worker in self._workers:
            if pending and worker.process is not None and worker.process.returncode is None:
                log.warning("probe worker %d did not stop within %gs; killing it", worker.index, grace)
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        for task in pending:
            task.cancel()
        self._tasks = []

    async def _supervise(self, worker: _Worker) -> None:
        """Run the worker; start it again whenever it exits, until the pool stops."""
        loop = asyncio.get_running_loop()
        quick_deaths = 0
        while not self._stopping:
            try:
                code = await self._run(worker)
            except Exception:
                log.exception("probe worker %d failed", worker.index)
                code = None
            if self._stopping:
                return
            self.restarts += 1
            log.error(
                "probe worker %d exited (code %s); starting it again with its %d services",
                worker.index,
                code,
                len(worker.share),
            )
            # One that dies right after starting (a broken install, no memory) is retried
            # slower and slower rather than in a busy loop.
            quick = worker.up_since is None or loop.time() - worker.up_since < QUICK_DEATH
            quick_deaths = quick_deaths + 1 if quick else 0
            delay = self.supervision.backoff(quick_deaths)
            if delay:
                log.warning(
                    "probe worker %d died right after start %d times in a row; next start in %gs",
                    worker.index,
                    quick_deaths,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _run(self, worker: _Worker) -> int | None:
        """Start one worker process and serve it until it is gone; its exit code."""
        worker.up_since = None
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "exporter.workers",
                "--index",
                str(worker.index),
                "--fd",
                str(child.fileno()),
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(child.fileno(),),
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        worker.process = process
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_unix_connection(sock=parent)
            hello = await asyncio.wait_for(read_message(reader), START_LIMIT)
            if hello[0] != "hello":
                raise ConnectionError(f"unexpected first message {hello[0]!r}")
            worker.up_since = asyncio.get_running_loop().time()
            worker.stats = WorkerStats()
            worker.modules.clear()
            worker.writer = writer
            self._some_connected.set()
            log.info(
                "probe worker %d started (pid %d): %d services", worker.index, process.pid, len(worker.share)
            )
            if self._stopping:
                worker.send(("stop",))
            else:
                self._send_apply(worker, list(worker.share.values()), [], full=True)
            silence = self.supervision.silence_limit
            while True:
                message = await asyncio.wait_for(read_message(reader), silence)
                self._handle(worker, message)
        except (asyncio.IncompleteReadError, ConnectionError, EOFError):
            pass
        except TimeoutError:
            limit = START_LIMIT if worker.up_since is None else self.supervision.silence_limit
            log.error("probe worker %d sent nothing for %gs; killing it", worker.index, limit)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        finally:
            worker.writer = None
            worker.queued.items.clear()
            if not any(w.connected for w in self._workers):
                self._some_connected.clear()
            self._retired.add(worker.stats)
            worker.stats = WorkerStats()
            for future in worker.pending.values():
                if not future.done():
                    future.set_exception(WorkerLost(f"probe worker {worker.index} exited"))
            worker.pending.clear()
            if writer is not None:
                writer.close()
            else:
                parent.close()
            code = await _reap(process)
        return code

    def _handle(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "results":
            self._record(message[1])
        elif kind == "stats":
            _, in_flight, schedule, loop, reruns = message
            stats = worker.stats
            stats.in_flight = in_flight
            stats.schedule_lag.counts, stats.schedule_lag.total, stats.schedule_lag.count = schedule
            stats.loop_lag.counts, stats.loop_lag.total, stats.loop_lag.count = loop
            stats.reruns_after_stall = reruns
        elif kind == "probed":
            for probe_id, packed, lines in message[1]:
                future = worker.pending.get(probe_id)
                if future is not None and not future.done():
                    future.set_result((packed, lines))


async def _reap(process: asyncio.subprocess.Process) -> int | None:
    """Wait for a worker whose socket closed to exit; kill it if it lingers."""
    try:
        return await asyncio.wait_for(process.wait(), STOP_GRACE + 1.0)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        return await process.wait()


# -- the worker process ------------------------------------------------------------------------


class Outbox:
    """A worker's stand-in for the result store: finished runs go to the front in batches."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.versions: dict[str, int] = {}
        self._pending: list[tuple[str, int, PackedResult]] = []
        self._flush: asyncio.TimerHandle | None = None
        self._due = 0.0

    def apply(self, plan: ReloadPlan) -> None:
        """Nothing to keep: the front's store follows the config."""

    def record(self, name: str, result: ProbeResult) -> None:
        version = self.versions.get(name)
        if version is None:
            return  # removed meanwhile
        self._pending.append((name, version, pack_result(result)))
        loop = asyncio.get_running_loop()
        if self._flush is None:
            self._due = loop.time() + FLUSH_DELAY
            self._flush = loop.call_at(self._due, self.flush)
        elif loop.time() >= self._due:
            # Awake for this result anyway: send now rather than wake again for the timer.
            self.flush()

    def flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._pending and not self.writer.is_closing():
            self.writer.write(frame(("results", self._pending)))
        self._pending = []


class WorkerProcess:
    """One worker: a scheduler for its share, on-demand probes, and reports to the front."""

    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.index = index
        self.reader = reader
        self.writer = writer
        self.outbox = Outbox(writer)
        self.watch = LoopWatch()
        self.scheduler = Scheduler(self.outbox, 1, watch=self.watch)
        self.services: dict[str, Service] = {}
        self.allowlist = Allowlist(())
        self.modules: dict[int, Module] = {}
        self.stopping = asyncio.Event()
        self._probes: set[asyncio.Task[None]] = set()
        self._frozen = False
        # Answers to on-demand probes, (id, packed result, captured lines), finished in this
        # turn of the loop and not sent yet.
        self._answers = TurnBatch("probed", lambda: self.writer)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        # Ctrl-C and a terminal's hangup reach the whole process group; the front decides when
        # its workers stop, and reloads are the front's business.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        background = [
            loop.create_task(self.watch.run(), name="event loop watch"),
            loop.create_task(self._report(), name="stats"),
            loop.create_task(self._listen(), name="front"),
        ]
        self.writer.write(frame(("hello", os.getpid())))
        await self.stopping.wait()
        await self.scheduler.stop()
        for task in (*self._probes, *background):
            task.cancel()
        await asyncio.gather(*self._probes, *background, return_exceptions=True)
        self._answers.flush()
        self.outbox.flush()
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()
        self.writer.close()

    async def _listen(self) -> None:
        try:
            while True:
                self._handle(await read_message(self.reader))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the front is gone: stop too
        finally:
            self.stopping.set()

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "apply":
            _, full, concurrency, changed, removed, allowlist = message
            if full:
                self.services.clear()
                self.outbox.versions.clear()
            for name in removed:
                self.services.pop(name, None)
                self.outbox.versions.pop(name, None)
            for service, version in changed:
                self.services[service.name] = service
                self.outbox.versions[service.name] = version
            if allowlist is not None:
                self.allowlist = Allowlist(allowlist)
            self.scheduler.apply(self.services.values(), concurrency)
            if not self._frozen:
                self._freeze()
        elif kind == "probe":
            loop = asyncio.get_running_loop()
            for probe_id, target, token, sent, timeout, guarded in message[1]:
                if sent is not None:
                    self.modules[token] = sent
                    if len(self.modules) > MODULE_CACHE:
                        del self.modules[next(iter(self.modules))]
                module = self.modules[token]
                task = loop.create_task(self._probe(probe_id, target, module, timeout, guarded))
                self._probes.add(task)
                task.add_done_callback(self._probes.discard)
        elif kind == "stop":
            self.stopping.set()

    def _freeze(self) -> None:
        # As in the front (see cli.serve): the services live as long as the process, and
        # collecting young generations less often keeps pauses off the schedule.
        self._frozen = True
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)

    async def _probe(self, probe_id: int, target: str, module: Module, timeout: float, guarded: bool) -> None:
        guard = self.allowlist if guarded else None
        # Its own task, so only this probe's records are captured; they go back with the result.
        with probelogs.capture() as lines:
            result = await run_probe(target, module, timeout, guard=guard)
        self._answers.add((probe_id, pack_result(result), lines))

    async def _report(self) -> None:
        while True:
            scheduler = self.scheduler
            message = (
                "stats",
                scheduler.probes_in_flight,
                _histogram_state(scheduler.schedule_lag),
                _histogram_state(self.watch.lag),
                scheduler.reruns_after_stall,
            )
            self.writer.write(frame(message))
            await asyncio.sleep(STATS_INTERVAL)


async def _worker_main(index: int, fd: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    await WorkerProcess(index, reader, writer).run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter.workers", description="A probe worker process.")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--log.level", dest="log_level", default="info")
    parser.add_argument("--log.format", dest="log_format", default="logfmt")
    args = parser.parse_args(argv)
    from exporter.logs import setup_logging

    setup_logging(args.log_level, args.log_format)
    # As the front does (exporter.cli), without importing the command line and its web server.
    try:
        import uvloop
    except ImportError:
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_worker_main(args.index, args.fd))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
