"""The HTTP side: /metrics, /probe, /config, reload and health endpoints, built by make_app."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter import page, probelogs
from exporter.allowlist import Allowlist, target_host
from exporter.collector import render_result
from exporter.config import Config, Service, dump_config
from exporter.exposition import TEXT_FORMAT, gzip_stream, negotiate
from exporter.modules import Module
from exporter.result import SYSTEM_CLOCK, Clock, ProbeResult, Sample
from exporter.runtime import Exporter
from exporter.sharding import Shard
from exporter.types import redact_url
from exporter.workers import Supervision, WorkerLost

log = logging.getLogger(__name__)

# blackbox_exporter leaves this much of Prometheus' scrape timeout for the network.
SCRAPE_TIMEOUT_OFFSET = 0.5
MAX_QUERY_LENGTH = 4096


EXPORTER = web.AppKey("exporter", Exporter)
WATCH_INTERVAL = web.AppKey("watch_interval", float)
PROBE_LOGS = web.AppKey("probe_logs", probelogs.ProbeLogBook)


def make_app(
    config: Config,
    *,
    config_file: str | None = None,
    location: str | None = None,
    shard: Shard | None = None,
    clock: Clock = SYSTEM_CLOCK,
    schedule: bool = True,
    watch_interval: float = 0.0,
    middlewares: tuple[Middleware, ...] = (),
    workers: int = 1,
    worker_argv: tuple[str, ...] = (),
    worker_supervision: Supervision | None = None,
) -> web.Application:
    """Build the web app; with ``schedule`` the services are probed while it runs.

    With ``watch_interval`` the config file and discovered files are checked for changes
    that often. With ``workers`` above 1, that many worker processes probe (exporter.workers),
    watched as ``worker_supervision`` says.
    """
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024)
    exporter = Exporter(
        config,
        config_file=config_file,
        location=location,
        shard=shard,
        clock=clock,
        workers=workers,
        worker_argv=worker_argv,
        worker_supervision=worker_supervision,
    )
    app[EXPORTER] = exporter
    app[WATCH_INTERVAL] = watch_interval
    app[PROBE_LOGS] = probelogs.ProbeLogBook()
    if schedule:
        app.cleanup_ctx.append(_scheduler_context)
        app.cleanup_ctx.append(_watch_context)
    page.install(app, exporter)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/probe", probe)
    app.router.add_get("/logs", probe_logs)
    app.router.add_post("/-/reload", reload)
    app.router.add_put("/-/reload", reload)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_get("/config", show_config)
    app.router.add_post("/push/{service}", push)
    return app


async def _scheduler_context(app: web.Application) -> AsyncIterator[None]:
    exporter = app[EXPORTER]
    exporter.start()
    yield
    await exporter.stop()


async def _watch_context(app: web.Application) -> AsyncIterator[None]:
    interval = app[WATCH_INTERVAL]
    task = asyncio.create_task(app[EXPORTER].watch(interval)) if interval > 0 else None
    yield
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def metrics(request: web.Request) -> web.StreamResponse:
    exporter = request.app[EXPORTER]
    wanted = negotiate(request.headers.get("Accept", ""), request.headers.get("Accept-Encoding", ""))
    headers = {"Content-Type": wanted.content_type}
    if wanted.gzip:
        headers["Content-Encoding"] = "gzip"
    # Rendered on the event loop in slices and sent family by family: a thread would fight the
    # loop for the GIL, and one big join of tens of megabytes would stall every probe in flight.
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    body = _metrics_body(exporter, wanted.openmetrics)
    async for chunk in gzip_stream(body) if wanted.gzip else body:
        await response.write(chunk)
    await response.write_eof()
    return response


async def _metrics_body(exporter: Exporter, openmetrics: bool) -> AsyncIterator[bytes]:
    async for chunk in exporter.service_collector.stream(openmetrics=openmetrics):
        yield chunk
    # The OpenMetrics writer ends with "# EOF", which must come last.
    yield (generate_openmetrics if openmetrics else generate_latest)(exporter.registry)


def _bad(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n")


async def probe(request: web.Request) -> web.Response:
    """blackbox_exporter's /probe: one probe now, its metrics without service labels."""
    exporter = request.app[EXPORTER]
    config = exporter.config
    query = request.query
    if len(request.query_string) > MAX_QUERY_LENGTH:
        return _bad(414, f"query string longer than {MAX_QUERY_LENGTH} bytes")
    service_name = query.get("service")
    guard: Allowlist | None = None
    if service_name is not None:
        service = exporter.service(service_name)
        if service is None:
            return _bad(404, f"unknown service {service_name!r}")
        target, module, timeout = service.target, service.module, service.timeout
        log_key, module_name = probelogs.service_key(service_name), service.module_name or "(inline)"
    else:
        target = query.get("target", "")
        if not target.strip():
            return _bad(400, "target parameter is missing")
        module_name = query.get("module", "http_2xx")
        found = config.modules.get(module_name)
        if found is None:
            return _bad(400, f"unknown module {module_name!r}")
        module = found
        host = target_host(target)
        if not host or not await exporter.allowlist.allows_target(host):
            return _bad(403, exporter.allowlist.explain(target))
        guard = exporter.allowlist
        timeout = float(module.timeout or config.global_.timeout)
        log_key = probelogs.target_key(target, module_name)
    header = request.headers.get("X-Prometheus-Scrape-Timeout-Seconds")
    if header is not None:
        try:
            scrape_timeout = float(header)
        except ValueError:
            return _bad(400, f"invalid X-Prometheus-Scrape-Timeout-Seconds {header[:64]!r}")
        if not scrape_timeout > 0:
            return _bad(400, "X-Prometheus-Scrape-Timeout-Seconds must be positive")
        budget = scrape_timeout - SCRAPE_TIMEOUT_OFFSET
        timeout = min(timeout, budget if budget > 0 else scrape_timeout)
    with probelogs.capture() as captured:
        try:
            result = await exporter.probe(target, module, timeout, guard)
        except WorkerLost as err:
            return _bad(503, f"{err} before the probe finished; try again")
    # blackbox (0.25 and later) reports the timeout it applied beside the probe's values.
    body = render_result(result, module.prober, (Sample("probe_timeout_seconds", timeout),))
    draft = probelogs.Draft(result, target, module_name, module.prober, timeout, tuple(captured), body)
    request.app[PROBE_LOGS].add(log_key, probelogs.Entry(result.started_at, result.success, draft))
    if query.get("debug", "").lower() == "true":
        return web.Response(text=debug_text(target, module, result))
    return web.Response(body=body, headers={"Content-Type": TEXT_FORMAT})


async def probe_logs(request: web.Request) -> web.Response:
    """blackbox's /logs?target=&module=: what the latest probes of a target logged; also ?service=."""
    exporter = request.app[EXPORTER]
    book = request.app[PROBE_LOGS]
    query = request.query
    if len(request.query_string) > MAX_QUERY_LENGTH:
        return _bad(414, f"query string longer than {MAX_QUERY_LENGTH} bytes")
    target, module, service = query.get("target", ""), query.get("module", ""), query.get("service", "")
    if "id" in query:
        return _bad(400, "probe ids are not kept here: ask by target= (and module=) or by service=")
    if target and service:
        return _bad(400, "target and service cannot be given together")
    if module and not target:
        return _bad(400, "module only works together with target")
    if service:
        found = exporter.service(service)
        if found is None:
            return _bad(404, f"unknown service {service[:100]!r}")
        entries = book.latest(probelogs.service_key(service))
        state = exporter.store.get(service)
        if state is not None and state.last is not None:
            entries.append(_scheduled_entry(found, state.last))
            entries.sort(key=lambda e: e.wall, reverse=True)
            entries = entries[: book.entries]
        if not entries:
            return _bad(404, f"service {service!r} has not been probed yet")
    elif target:
        entries = book.latest(probelogs.target_key(target, module)) if module else book.by_target(target)
        if not entries:
            which = f" with module {module[:100]!r}" if module else ""
            return _bad(404, f"no probe of this target{which} is kept: logs are kept for /probe requests")
    else:
        return _bad(400, "target (with an optional module) or service must be given")
    return web.Response(text=probelogs.render(entries), content_type="text/plain")


def _scheduled_entry(service: Service, result: ProbeResult) -> probelogs.Entry:
    """The account of a service's latest scheduled probe, written from its stored result."""
    text = probelogs.account(
        result,
        target=service.target,
        module=service.module_name or "(inline)",
        prober=service.module.prober,
        timeout=service.timeout,
        captured=[],
        metrics=render_result(result, service.module.prober).decode("utf-8", "replace"),
    )
    return probelogs.Entry(result.started_at, result.success, text)


def debug_text(target: str, module: Module, result: ProbeResult) -> str:
    """A readable account of one probe, for ?debug=true and the probe command."""
    lines = [
        f"target: {redact_url(target)}",
        f"prober: {module.prober}",
        f"success: {'yes' if result.success else 'no'}",
        f"duration: {result.duration:.6f}s",
    ]
    if not result.success:
        lines.append(f"reason: {result.reason}")
    if result.message:
        lines.append(f"message: {result.message}")
    if result.phases:
        lines.append("phases:")
        lines.extend(f"  {name}: {seconds:.6f}s" for name, seconds in result.phases.items())
    return "\n".join(lines) + "\n"


_UP = {"up", "ok", "success", "1", "true"}
_DOWN = {"down", "fail", "failure", "error", "0", "false"}
MAX_PUSH_MESSAGE = 256


async def push(request: web.Request) -> web.Response:
    """A heartbeat from a push service: token required; optional status, duration and message."""
    board = request.app[EXPORTER].heartbeats
    name = request.match_info["service"]
    fields: dict[str, str] = dict(request.query)
    if request.can_read_body and request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            return _bad(400, "the body is not valid JSON")
        if not isinstance(body, dict):
            return _bad(400, "the JSON body must be an object")
        fields.update({str(k): str(v) for k, v in body.items()})
    elif request.can_read_body:
        form = await request.post()
        fields.update({k: v for k, v in form.items() if isinstance(v, str)})
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else fields.get("token", "")
    refusal = board.authorize(name, token)
    if refusal is not None:
        return _bad(refusal.status, refusal.message)
    status = fields.get("status", "up").strip().lower()
    if status not in _UP | _DOWN:
        return _bad(400, f"status must be up or down, got {status[:20]!r}")
    duration: float | None = None
    if "duration" in fields:
        try:
            duration = float(fields["duration"])
        except ValueError:
            duration = -1.0
        if not 0 <= duration < 1e9:
            return _bad(400, "duration must be a number of seconds, 0 or more")
    message = fields.get("message", "")[:MAX_PUSH_MESSAGE]
    board.record(name, status in _UP, duration, message)
    return web.Response(text="ok\n")


async def reload(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER]
    if exporter.config_file is None:
        return _bad(400, "no config file to reload: the exporter was started without --config.file")
    error = await exporter.reload()
    if error is not None:
        return _bad(500, "config reload failed, keeping the running config:\n" + str(error))
    return web.Response(text=f"config reloaded: {len(exporter.config.services)} services\n")


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="Healthy\n")


async def ready(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER]
    if not exporter.started:
        return web.Response(status=503, text="Not ready\n")
    return web.Response(text="Ready\n")


async def show_config(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER]
    return web.Response(text=dump_config(exporter.config), content_type="text/plain")
