"""The running exporter: config, discovered services, this shard's share, scheduler and reloads."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from pathlib import Path

from prometheus_client import CollectorRegistry

from exporter.allowlist import Allowlist
from exporter.collector import SelfCollector, ServiceCollector
from exporter.config import Config, Service, keep_unchanged
from exporter.configload import ISOLATE_ABOVE_BYTES, load_config_async, parse_files_async
from exporter.discovery import ServiceFiles
from exporter.errors import ConfigError
from exporter.heartbeats import HeartbeatBoard
from exporter.loopwatch import LAG_BUCKETS as LOOP_LAG_BUCKETS
from exporter.loopwatch import LoopWatch
from exporter.maintenance import MaintenanceBoard
from exporter.modules import Module, PushProbe
from exporter.probes import PROBERS, ProbeDeps, probers
from exporter.probes.net import TargetGuard
from exporter.reloadplan import ReloadPlan, plan_reload
from exporter.result import SYSTEM_CLOCK, Clock, ProbeResult
from exporter.runner import run_probe
from exporter.scheduler import LAG_BUCKETS, Scheduler
from exporter.sharding import Shard
from exporter.store import Histogram, ResultStore
from exporter.workers import Supervision, WorkerPool, merge_histograms

log = logging.getLogger(__name__)


def file_digest(path: str) -> bytes | None:
    """A digest of a file's content; reading through the path follows ConfigMap symlink swaps."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).digest()
    except OSError:
        return None


class Exporter:
    """Owns what the exporter is doing now and swaps it safely on reload."""

    def __init__(
        self,
        config: Config,
        *,
        config_file: str | None = None,
        location: str | None = None,
        shard: Shard | None = None,
        clock: Clock = SYSTEM_CLOCK,
        workers: int = 1,
        worker_argv: tuple[str, ...] = (),
        worker_supervision: Supervision | None = None,
    ) -> None:
        self.config = config
        self.config_file = config_file
        self.location_override = location
        self.shard = shard or Shard()
        self.clock = clock
        self.store = ResultStore()
        self.heartbeats = HeartbeatBoard(clock)
        # Each kind's probe, made with the parts it needs: only the push kind gets the board.
        self.probers = probers(ProbeDeps(heartbeats=self.heartbeats))
        self.loop_watch = LoopWatch()
        self._loop_watch_task: asyncio.Task[None] | None = None
        # With worker processes the front's own scheduler runs the push services only, and the
        # store follows the whole service set (see exporter.workers).
        self.pool = WorkerPool(workers, self.store, worker_argv, worker_supervision) if workers > 1 else None
        self.scheduler = Scheduler(
            self.store if self.pool is None else _FrontShare(self.store),
            config.global_.max_concurrency,
            clock,
            runner=functools.partial(run_probe, table=self.probers),
            watch=self.loop_watch,
        )
        self.allowlist = Allowlist(config.probe_allowlist)
        self.discovery = ServiceFiles()
        self.services: list[Service] = []
        self.reload_successful = True
        self.reload_success_time = clock.wall()
        self.started = False
        self._config_digest = file_digest(config_file) if config_file else None
        self._reload_lock = asyncio.Lock()
        # Config files this big are parsed in a child process on reload (see exporter.configload).
        self.isolate_above = ISOLATE_ABOVE_BYTES
        self.service_collector = ServiceCollector(self.store, self.location)
        self.service_collector.wall = clock.wall
        self.maintenance = self.service_collector.maintenance = MaintenanceBoard(config.maintenance)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SelfCollector(self))
        self._settle()

    @property
    def location(self) -> str:
        return self.location_override or self.config.global_.location

    @property
    def probes_in_flight(self) -> int:
        workers = self.pool.probes_in_flight if self.pool else 0
        return self.scheduler.probes_in_flight + workers

    @property
    def schedule_lag(self) -> Histogram:
        if self.pool is None:
            return self.scheduler.schedule_lag
        return merge_histograms(LAG_BUCKETS, (self.scheduler.schedule_lag, *self.pool.schedule_lag()))

    @property
    def loop_lag(self) -> Histogram:
        """Every event loop of the exporter's: the front's and its workers'."""
        if self.pool is None:
            return self.loop_watch.lag
        return merge_histograms(LOOP_LAG_BUCKETS, (self.loop_watch.lag, *self.pool.loop_lag()))

    @property
    def reruns_after_stall(self) -> int:
        workers = self.pool.reruns_after_stall if self.pool else 0
        return self.scheduler.reruns_after_stall + workers

    @property
    def worker_restarts(self) -> int:
        return self.pool.restarts if self.pool else 0

    @property
    def worker_services(self) -> dict[str, int]:
        """Services per probing process: the front's (push) and each worker's, with workers."""
        if self.pool is None:
            return {}
        counts = {str(index): count for index, count in self.pool.service_counts().items()}
        return {"front": len(self.scheduler.services), **counts}

    @property
    def push_rejected(self) -> dict[str, int]:
        return self.heartbeats.rejected

    @property
    def invalid_service_files(self) -> int:
        return len(self.discovery.invalid_files)

    async def probe(
        self, target: str, module: Module, timeout: float, guard: TargetGuard | None = None
    ) -> ProbeResult:
        """One probe now (for /probe): on a worker when there are workers; push modules judge here.

        Raises WorkerLost when the worker running it exits first.
        """
        if self.pool is None or not PROBERS[module.prober].needs_target:
            return await run_probe(target, module, timeout, guard, self.clock, self.probers)
        # The worker guards with the same allowlist, sent to it with its services.
        return await self.pool.probe(target, module, timeout, guarded=guard is not None)

    def service(self, name: str) -> Service | None:
        """A service this exporter knows, from the config file or a discovered file."""
        return next((s for s in self.services if s.name == name), None)

    def _settle(self, refresh: bool = True) -> None:
        """Work out this exporter's services: static and discovered, this shard's share only."""
        if refresh:
            self.discovery.refresh(self.config)
        merged = self.discovery.merge(self.config.services)
        plan = plan_reload(self.services, (s for s in merged if self.shard.owns(s.name)))
        self.services = list(plan.services)
        if plan.changed or plan.added or plan.removed:
            log.debug(
                "services: %d kept, %d changed, %d added, %d removed",
                len(plan.kept),
                len(plan.changed),
                len(plan.added),
                len(plan.removed),
            )
        self.heartbeats.expect(
            {
                s.name: s.module.section(PushProbe).token_file
                for s in self.services
                if s.module.prober == "push"
            }
        )
        self.service_collector.forget(plan.retired)
        if self.started:
            self._schedule(plan)
        else:
            self.store.apply(plan)

    def _schedule(self, plan: ReloadPlan) -> None:
        limit = self.config.global_.max_concurrency
        if self.pool is None:
            self.scheduler.apply_plan(plan, limit)
            return
        # Push services are judged here, where their heartbeats arrive; workers probe the rest.
        self.store.apply(plan)
        here: list[Service] = []
        probed: list[Service] = []
        for service in plan.services:
            (probed if PROBERS[service.module.prober].needs_target else here).append(service)
        self.scheduler.apply(here, limit)
        self.pool.apply(probed, limit, self.config.probe_allowlist)

    def start(self) -> None:
        self.started = True
        self._loop_watch_task = asyncio.create_task(self.loop_watch.run(), name="event loop watch")
        if self.pool is not None:
            self.pool.start()
        self._schedule(plan_reload(self.scheduler.services, self.services))

    async def stop(self) -> None:
        self.started = False
        if self.pool is None:
            await self.scheduler.stop()
        else:
            await asyncio.gather(self.scheduler.stop(), self.pool.stop())
        if self._loop_watch_task is not None:
            self._loop_watch_task.cancel()
            await asyncio.gather(self._loop_watch_task, return_exceptions=True)
            self._loop_watch_task = None

    def apply(self, config: Config) -> None:
        """Switch to a new config whose service files were already re-read (see reload).

        Services that did not change keep probing undisturbed.
        """
        self.config = config
        self.allowlist = Allowlist(config.probe_allowlist)
        self.service_collector.location = self.location
        if config.maintenance != self.maintenance.windows:
            self.maintenance = self.service_collector.maintenance = MaintenanceBoard(config.maintenance)
        self._settle(refresh=False)
        self.reload_successful = True
        self.reload_success_time = self.clock.wall()

    async def reload(self) -> ConfigError | None:
        """Re-read the config file; an invalid file keeps the running config."""
        if self.config_file is None:
            return ConfigError([], None)
        async with self._reload_lock:
            digest = file_digest(self.config_file)
            try:
                config = await load_config_async(self.config_file, self.isolate_above)
            except ConfigError as err:
                self.reload_successful = False
                self._config_digest = digest
                for issue in err.issues:
                    log.error("config reload failed, keeping the running config: %s", issue)
                return err
            config = keep_unchanged(config, self.config)
            # The modules may have changed, so every discovered file is parsed again.
            self.discovery, _ = await self._rediscover(config, force=True)
            self._config_digest = digest
            self.apply(config)
            log.info("config reloaded from %s: %d services here", self.config_file, len(self.services))
            return None

    async def _rediscover(self, config: Config, force: bool = False) -> tuple[ServiceFiles, bool]:
        """Read the discovered files off the event loop, into a copy of the current state.

        The caller swaps the copy in; a reload cancelled meanwhile leaves the running state as it
        was. Big batches are parsed in a child process, like big config files.
        """
        discovery = self.discovery.copy()
        scan = await asyncio.to_thread(discovery.scan, config, force)
        parsed = await parse_files_async(scan.changed, config, self.isolate_above) if scan.changed else []
        return discovery, discovery.settle(scan, parsed)

    async def watch(self, interval: float) -> None:
        """Reload when the config file's content changes; re-read discovered files as they change."""
        while True:
            await asyncio.sleep(interval)
            if self.config_file and file_digest(self.config_file) != self._config_digest:
                log.info("config file %s changed; reloading", self.config_file)
                await self.reload()
            elif self.config.service_files:
                async with self._reload_lock:
                    self.discovery, changed = await self._rediscover(self.config)
                    if changed:
                        self._settle(refresh=False)


class _FrontShare:
    """The front scheduler's way into the store when workers probe the rest: records only.

    The exporter hands the store the whole service set itself; the front scheduler's share
    (push services) must not shrink it.
    """

    def __init__(self, store: ResultStore) -> None:
        self.store = store

    def apply(self, plan: ReloadPlan) -> None:
        pass

    def record(self, name: str, result: ProbeResult) -> None:
        self.store.record(name, result)
