"""The status page's endpoints: /, /services/{name}, /api/v1/..., /badge/... and their assets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from html import escape
from importlib import resources

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from exporter.config import Service
from exporter.health import VENDOR_WORDS, WORDS, degraded_reason, health_of, vendor_indicator
from exporter.history import DEGRADED, FAILED, OK, Cell, History
from exporter.page import badges
from exporter.page.html import (
    PAGE_END,
    BarPainter,
    Viewer,
    detail_page,
    group_head,
    page_top,
    service_card,
)
from exporter.page.model import (
    VERDICTS,
    GroupView,
    ServiceView,
    group_views,
    overall,
    prometheus_covers,
    service_view,
)
from exporter.page.prometheus import PrometheusReader, PromSnapshot
from exporter.page.queries import PROMETHEUS_WINDOWS
from exporter.pagesettings import StatusPageConfig
from exporter.result import ProbeResult
from exporter.runtime import Exporter
from exporter.store import ServiceState
from exporter.types import format_duration, redact_url
from exporter.webconfig import AuthMiddleware, WebConfig, auth_middleware

# Services handled between two yields to the event loop while a page is built, so a page of
# 10,000 services never holds up probing for long (see benchmarks/statuspage.py).
CHUNK = 100
PUBLIC = web.RequestKey("public_view", bool)
ASSETS = {"style.css": "text/css", "favicon.svg": "image/svg+xml"}


class StatusBoard:
    """The page's state: it keeps each service's history and asks Prometheus for the rest."""

    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter
        exporter.store.on_record = self.record
        self._reader: PrometheusReader | None = None
        self._session: aiohttp.ClientSession | None = None
        self._views: dict[str, tuple[object, Service, ServiceView]] = {}
        self._cards: dict[str, tuple[ServiceView, Viewer, str]] = {}
        self._painter = BarPainter(exporter.config.status_page.slots, float(exporter.config.status_page.slot))
        self._assets: dict[str, bytes] = {}

    @property
    def settings(self) -> StatusPageConfig:
        return self.exporter.config.status_page

    def record(self, state: ServiceState, result: ProbeResult) -> None:
        settings = self.settings
        history = state.history
        if history is None or history.slots != settings.slots or history.width != settings.slot:
            history = state.history = History(settings.slots, float(settings.slot))
        service = state.service
        at = result.started_at + result.duration
        window = self.exporter.maintenance.active(service.name, service.group, at)
        # As health_of, which would look for the vendor's word and run degraded_reason twice.
        if not result.success:
            history.add(at, result.duration, FAILED, result.reason, result.message, window is not None)
        elif vendor_indicator(result) in ("major", "critical"):  # the vendor reports an outage
            history.add(at, result.duration, FAILED, None, "vendor reports an outage", window is not None)
        else:
            code = DEGRADED if degraded_reason(service, result) else OK
            history.add(at, result.duration, code, maintenance=window is not None)

    def _session_factory(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    def reader(self) -> PrometheusReader | None:
        s = self.settings
        if not s.prometheus_url:
            self._reader = None
            return None
        timeout, cache = float(s.prometheus_timeout), float(s.prometheus_cache)
        if self._reader is None or not self._reader.same_settings(
            s.prometheus_url, s.prometheus_job, timeout, cache
        ):
            self._reader = PrometheusReader(
                s.prometheus_url, s.prometheus_job, timeout, cache, self._session_factory
            )
        return self._reader

    async def prometheus(self) -> PromSnapshot | None:
        reader = self.reader()
        return None if reader is None else await reader.snapshot()

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()
        if self._session is not None:
            await self._session.close()

    def notices(self, snapshot: PromSnapshot | None) -> list[str]:
        """What the page lacks, in words: windows without data and why."""
        windows = ", ".join(label for label, _, _ in PROMETHEUS_WINDOWS)
        if snapshot is None:
            return [
                f"Uptime over {windows} and other locations' views need Prometheus: "
                "set status_page.prometheus_url. Shown here: this exporter's own recent history."
            ]
        missing = [label for label, query, _ in PROMETHEUS_WINDOWS if query not in snapshot.values]
        notes = []
        if snapshot.error or missing:
            lacking = ", ".join(missing) if missing else "none"
            notes.append(f"{snapshot.error or 'Prometheus gave no answer'}. Windows missing: {lacking}.")
            if "location_up" not in snapshot.values:
                notes.append("Other locations' views are missing: only this exporter's own view is shown.")
        now = self._now()
        short = [
            label
            for label, query, seconds in PROMETHEUS_WINDOWS
            if query in snapshot.values and prometheus_covers(snapshot, now, seconds) is not None
        ]
        if short:
            since = snapshot.get("data_since")
            held = "no" if since is None else format_duration(round(max(now - since, 0.0), -1))
            notes.append(
                f"Prometheus holds {held} of data so far: {', '.join(short)} uptime covers only that."
            )
        return notes

    def _now(self) -> float:
        return self.exporter.clock.wall()

    def view_of(self, state: ServiceState, now: float, snapshot: PromSnapshot | None) -> ServiceView:
        """What the page says about a service, reused while nothing it depends on has changed.

        It depends on the service's results (runs), the slot the clock is in, the maintenance
        window, the Prometheus snapshot and the settings; a cached view is reused when all match.
        """
        service = state.service
        window = self.exporter.maintenance.active(service.name, service.group, now)
        s = self.settings
        key = (
            state.runs,
            int(now // s.slot),
            s.slot,
            s.slots,
            window,
            snapshot.fetched_at if snapshot is not None else None,
            snapshot.error if snapshot is not None else None,
            self.exporter.location,
        )
        cached = self._views.get(service.name)
        if cached is not None and cached[0] == key and cached[1] is service and cached[2].state is state:
            return cached[2]
        view = service_view(state, self.exporter.location, now, window, snapshot)
        self._views[service.name] = (key, service, view)
        return view

    async def views(self, now: float, snapshot: PromSnapshot | None) -> list[ServiceView]:
        out = []
        for index, state in enumerate(self.exporter.store):
            if index % CHUNK == CHUNK - 1:
                await asyncio.sleep(0)
            out.append(self.view_of(state, now, snapshot))
        return out

    def painter(self) -> BarPainter:
        s = self.settings
        if self._painter.slots != s.slots or self._painter.width != float(s.slot):
            self._painter = BarPainter(s.slots, float(s.slot))
        return self._painter

    def card(self, view: ServiceView, viewer: Viewer, now: float) -> str:
        """A service's HTML, reused while its view is the same object."""
        cached = self._cards.get(view.name)
        if cached is not None and cached[0] is view and cached[1] == viewer:
            return cached[2]
        html = service_card(view, viewer, now, self.painter())
        self._cards[view.name] = (view, viewer, html)
        return html

    def forget_removed(self) -> None:
        names = {state.service.name for state in self.exporter.store}
        for cache in (self._cards, self._views):
            for name in [n for n in cache if n not in names]:
                del cache[name]

    def asset(self, name: str) -> bytes:
        data = self._assets.get(name)
        if data is None:
            data = self._assets[name] = resources.files("exporter.page").joinpath("static", name).read_bytes()
        return data


BOARD = web.AppKey("status_board", StatusBoard)


def viewer_of(request: web.Request, settings: StatusPageConfig) -> Viewer:
    if not request.get(PUBLIC, False):
        return Viewer()
    public = settings.public
    return Viewer(False, public.labels, public.show_errors, public.show_targets)


def install(app: web.Application, exporter: Exporter) -> None:
    """Add the status page's routes and state to the exporter's app."""
    board = StatusBoard(exporter)
    app[BOARD] = board

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        yield
        await board.close()

    app.cleanup_ctx.append(lifecycle)
    router = app.router
    router.add_get("/", index)
    router.add_get("/services/{name}", service_page)
    router.add_get("/api/v1/status", api_status)
    router.add_get("/api/v1/services/{name}", api_service)
    router.add_get("/badge/{service}/{kind}.svg", badge)
    router.add_get("/badge/{service}/{kind}.json", shields)
    router.add_get("/assets/{name}", asset)
    router.add_get("/favicon.ico", favicon)
    router.add_get("/login", login)


def is_public_path(path: str) -> bool:
    """Paths the public view serves without authentication (when status_page.public is on)."""
    return path in ("/", "/favicon.ico") or path.startswith(("/services/", "/badge/", "/assets/"))


def access_middleware(config: WebConfig, guarded: AuthMiddleware | None = None) -> Middleware:
    """The web config's basic auth, except for the public status page when it is switched on.

    A request that carries credentials is always checked, so a signed-in visitor gets the full
    view; one without them gets the public view of the public paths, and 401 elsewhere.
    """
    check = guarded if guarded is not None else auth_middleware(config)
    headers = dict(config.http_server_config.headers)
    needs_auth = bool(config.basic_auth_users)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        board = request.app.get(BOARD)
        if (
            needs_auth
            and board is not None
            and "Authorization" not in request.headers
            and board.settings.public.enabled
            and is_public_path(request.path)
        ):
            request[PUBLIC] = True
            response = await handler(request)
            for name, value in headers.items():
                response.headers[name] = value
            return response
        return await check(request, handler)

    return middleware


HTML = "text/html"


async def index(request: web.Request) -> web.StreamResponse:
    board = request.app[BOARD]
    settings = board.settings
    viewer = viewer_of(request, settings)
    snapshot = await board.prometheus()
    now = board._now()
    views = await board.views(now, snapshot)
    groups = group_views(views, snapshot, board.exporter.location)
    verdict = overall(groups)
    response = web.StreamResponse(
        headers={"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-cache"}
    )
    # The bars' repeated markup compresses about twentyfold; a wall display on a slow link thanks us.
    response.enable_compression()
    await response.prepare(request)
    top = page_top(
        settings.title,
        verdict,
        VERDICTS[verdict],
        board.exporter.location,
        now,
        float(settings.refresh),
        board.notices(snapshot),
        viewer,
    )
    parts = [top, _summary(groups)]
    done = 0
    for group in groups:
        parts.append(group_head(group))
        for view in group.services:
            parts.append(board.card(view, viewer, now))
            done += 1
            if done % CHUNK == 0:
                await response.write("".join(parts).encode())
                parts.clear()
                # write() only waits when the socket's buffer is full: yield to probes here.
                await asyncio.sleep(0)
        parts.append("</ul></section>")
    parts.append(PAGE_END)
    await response.write("".join(parts).encode())
    await response.write_eof()
    board.forget_removed()
    return response


def _summary(groups: list[GroupView]) -> str:
    if not groups:
        return '<p class="notice">No services are configured.</p>'
    items = "".join(
        f'<li><a href="#g-{escape(g.name)}">{escape(g.name)}</a> '
        f'<span class="verdict vd-{g.verdict}">{g.words}</span></li>'
        for g in groups
    )
    return f'<nav aria-label="Groups"><ul class="summary">{items}</ul></nav>'


def _find(request: web.Request, key: str) -> ServiceState | None:
    return request.app[BOARD].exporter.store.get(request.match_info[key])


async def service_page(request: web.Request) -> web.Response:
    board = request.app[BOARD]
    state = _find(request, "name")
    if state is None:
        return web.Response(status=404, text="no such service\n")
    snapshot = await board.prometheus()
    now = board._now()
    settings = board.settings
    view = board.view_of(state, now, snapshot)
    page = detail_page(
        view,
        viewer_of(request, settings),
        now,
        settings.title,
        settings.slots,
        float(settings.slot),
        float(settings.refresh),
    )
    return web.Response(text=page, content_type=HTML, headers={"Cache-Control": "no-cache"})


def service_json(
    view: ServiceView, now: float, slots: int, width: float, full: bool = False
) -> dict[str, object]:
    service = view.service
    history = view.history
    cells = history.cells(now, slots) if history is not None else [None] * slots
    data: dict[str, object] = {
        "name": service.name,
        "group": service.group,
        "state": view.health.value,
        "words": view.words,
        "note": view.note,
        "reason": view.reason or None,
        "message": view.message or None,
        "since": view.since,
        "target": redact_url(service.target),
        "prober": service.module.prober,
        "labels": dict(service.labels),
        "latency_seconds": view.latency,
        "latency_p95_seconds": view.p95,
        "uptime": {u.window: u.ratio for u in view.uptime},
        "uptime_sources": {u.window: u.source for u in view.uptime},
        "uptime_covered_seconds": {u.window: u.covered for u in view.uptime if u.covered is not None},
        "uptime_since_start": history.uptime_since_start(now) if history is not None else None,
        "vendor": None
        if view.vendor is None
        else {"indicator": view.vendor, "words": VENDOR_WORDS.get(view.vendor)},
        "maintenance": None
        if view.maintenance is None
        else {
            "reason": view.maintenance.reason,
            "start": view.maintenance.start,
            "end": view.maintenance.end,
        },
        "locations": {loc: ("up" if up else "down") for loc, up in sorted(view.locations.items())},
        "scope": view.scope or None,
        "history": {
            "slot_seconds": width,
            "slots": [_slot_json(cell, width, history) for cell in cells],
        },
    }
    if full:
        data["recent"] = [
            {"at": at, "duration_seconds": round(d, 6), "result": ("ok", "degraded", "down")[code]}
            for at, d, code in (history.recent() if history is not None else [])
        ]
        data["failures"] = [
            {
                "at": f.at,
                "reason": f.reason,
                "message": f.message,
                "duration_seconds": round(f.duration, 6),
            }
            for f in (reversed(history.failures) if history is not None else [])
        ]
    return data


_WORST = ("ok", "degraded", "down")


def _slot_json(cell: Cell | None, width: float, history: History | None) -> dict[str, object] | None:
    if cell is None or history is None:
        return None
    number, runs, failed, degraded, worst, peak, maintenance = cell
    reason = history.reason_at(number) if failed else None
    return {
        "start": number * width,
        "runs": runs,
        "failed": failed,
        "degraded": degraded,
        "worst": _WORST[worst],
        "reason": None if reason is None else reason.value,
        "slowest_seconds": round(peak, 6),
        "maintenance": maintenance,
    }


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(data, separators=(",", ":")), content_type="application/json"
    )


async def api_status(request: web.Request) -> web.StreamResponse:
    board = request.app[BOARD]
    settings = board.settings
    snapshot = await board.prometheus()
    now = board._now()
    views = await board.views(now, snapshot)
    groups = group_views(views, snapshot, board.exporter.location)
    data = {
        "title": settings.title,
        "generated_at": now,
        "location": board.exporter.location,
        "state": overall(groups),
        "words": VERDICTS[overall(groups)],
        "prometheus": None
        if snapshot is None
        else {"url": snapshot.url, "ok": snapshot.ok, "error": snapshot.error or None},
        "notices": board.notices(snapshot),
        "groups": [
            {
                "name": g.name,
                "verdict": g.verdict,
                "words": g.words,
                "scope": g.scope or None,
                "services": [v.name for v in g.services],
            }
            for g in groups
        ],
    }
    # Written service by service, yielding between chunks: at 10,000 services one json.dumps of
    # the whole document would hold the event loop for seconds.
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
    response.enable_compression()
    await response.prepare(request)
    head = json.dumps(data, separators=(",", ":"))
    await response.write((head[:-1] + ',"services":[').encode())
    width = float(settings.slot)
    for start in range(0, len(views), CHUNK):
        chunk = [
            json.dumps(service_json(view, now, settings.slots, width), separators=(",", ":"))
            for view in views[start : start + CHUNK]
        ]
        await response.write((("," if start else "") + ",".join(chunk)).encode())
        await asyncio.sleep(0)
    await response.write(b"]}")
    await response.write_eof()
    return response


async def api_service(request: web.Request) -> web.Response:
    board = request.app[BOARD]
    state = _find(request, "name")
    if state is None:
        return _json({"error": f"no service named {request.match_info['name'][:100]!r}"}, 404)
    snapshot = await board.prometheus()
    now = board._now()
    settings = board.settings
    view = board.view_of(state, now, snapshot)
    return _json(service_json(view, now, settings.slots, float(settings.slot), full=True))


BADGE_KINDS = ("status", "uptime", "latency")


def _badge_facts(request: web.Request) -> tuple[str, str, str, str] | web.Response:
    """(label, message, SVG colour, shields colour) of the badge asked for, or an error response."""
    board = request.app[BOARD]
    kind = request.match_info["kind"]
    if kind not in BADGE_KINDS:
        return web.Response(status=404, text=f"badges are {', '.join(BADGE_KINDS)}\n")
    state = _find(request, "service")
    if state is None:
        return web.Response(status=404, text="no such service\n")
    now = board._now()
    service = state.service
    window = board.exporter.maintenance.active(service.name, service.group, now)
    label = request.query.get("label", service.name)[:60]
    if kind == "status":
        health = health_of(service, state.last, window is not None)
        return (
            label,
            WORDS[health].lower(),
            badges.COLOURS[health.value],
            badges.SHIELDS_COLOURS[health.value],
        )
    history = state.history
    if kind == "latency":
        last = state.last
        seconds = last.duration if last is not None and last.success else None
        colour, shields_colour = badges.latency_colour(seconds, service.objectives.latency)
        text = "n/a" if seconds is None else f"{seconds * 1000:.0f} ms"
        return f"{label} latency", text, colour, shields_colour
    ratio = None
    window_name = "since start"
    if history is not None:
        ratio = history.uptime(now, 3600.0)
        window_name = "1h"
        if ratio is None:
            ratio, window_name = history.uptime_since_start(now), "since start"
    colour, shields_colour = badges.uptime_colour(ratio)
    text = "n/a" if ratio is None else f"{min(ratio * 100, 100):.2f}%".replace("100.00%", "100%")
    return f"{label} uptime {window_name}", text, colour, shields_colour


async def badge(request: web.Request) -> web.Response:
    facts = _badge_facts(request)
    if isinstance(facts, web.Response):
        return facts
    label, message, colour, _ = facts
    return web.Response(
        body=badges.badge_svg(label, message, colour),
        content_type="image/svg+xml",
        headers={"Cache-Control": "max-age=30"},
    )


async def shields(request: web.Request) -> web.Response:
    """shields.io's endpoint badge schema: https://img.shields.io/endpoint?url=... renders it."""
    facts = _badge_facts(request)
    if isinstance(facts, web.Response):
        return facts
    label, message, _, colour = facts
    return _json({"schemaVersion": 1, "label": label, "message": message, "color": colour})


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    kind = ASSETS.get(name)
    if kind is None:
        return web.Response(status=404, text="no such asset\n")
    body = request.app[BOARD].asset(name)
    return web.Response(body=body, content_type=kind, headers={"Cache-Control": "max-age=300"})


async def favicon(request: web.Request) -> web.Response:
    body = request.app[BOARD].asset("favicon.svg")
    return web.Response(body=body, content_type="image/svg+xml", headers={"Cache-Control": "max-age=3600"})


async def login(request: web.Request) -> web.Response:
    """Behind basic auth like everything but the public page: a browser signs in here, then goes back."""
    raise web.HTTPSeeOther(location="/")
