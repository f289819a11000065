"""The status page's HTML: written by the server, readable without JavaScript, state always in words."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from html import escape

from exporter.health import VENDOR_WORDS, WORDS, Health, troubled_components
from exporter.history import DEGRADED, FAILED, History
from exporter.page.model import GroupView, ServiceView
from exporter.types import format_duration, redact_url

# A symbol beside each state's words, so neither colour nor words alone carry it.
SYMBOLS = {
    Health.UP: "\u2714",  # check mark
    Health.DEGRADED: "\u25b2",  # triangle
    Health.DOWN: "\u2716",  # heavy x
    Health.MAINTENANCE: "\u25a0",  # square
    Health.UNKNOWN: "?",
}
VERDICT_SYMBOLS = {
    "up": "\u2714",
    "degraded": "\u25b2",
    "partial": "\u2716",
    "major": "\u2716",
    "maintenance": "\u25a0",
    "unknown": "?",
}


@dataclass(frozen=True)
class Viewer:
    """Who is looking: the full (private) view, or the public one and what it may show."""

    private: bool = True
    labels: tuple[str, ...] = ()
    show_errors: bool = False
    show_targets: bool = False

    @property
    def errors(self) -> bool:
        return self.private or self.show_errors

    @property
    def targets(self) -> bool:
        return self.private or self.show_targets

    def labels_of(self, labels: dict[str, str]) -> dict[str, str]:
        if self.private:
            return labels
        return {k: v for k, v in labels.items() if k in self.labels}


def clock(t: float) -> str:
    return time.strftime("%H:%M", time.gmtime(t))


def moment(t: float, now: float, seconds: bool = False) -> str:
    """A time readably: HH:MM UTC within a day of now, with the date otherwise."""
    clock_format = "%H:%M:%S" if seconds else "%H:%M"
    if abs(now - t) < 20 * 3600:
        return time.strftime(f"{clock_format} UTC", time.gmtime(t))
    return time.strftime(f"%Y-%m-%d {clock_format} UTC", time.gmtime(t))


def millis(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 10:
        return f"{seconds * 1000:.0f} ms"
    return format_duration(seconds)


def percent(ratio: float | None) -> str:
    if ratio is None:
        return "no probes"
    if ratio >= 1:
        return "100%"
    return f"{min(ratio * 100, 99.99):.2f}%"


def head(title: str, refresh: float, base: str) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh:.0f}">' if refresh > 0 else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{meta}<title>{escape(title)}</title>"
        f'<link rel="stylesheet" href="{base}assets/style.css">'
        f'<link rel="icon" href="{base}assets/favicon.svg" type="image/svg+xml">'
        "</head><body>"
    )


def state_badge(health: Health, extra: str = "") -> str:
    return (
        f'<span class="state st-{health.value}{extra}" data-state="{health.value}">'
        f'<span aria-hidden="true">{SYMBOLS[health]}</span> {WORDS[health]}</span>'
    )


_SLOT_CLASS = {0: "s-ok", DEGRADED: "s-deg", FAILED: "s-down"}
_EMPTY_SLOT = '<li class="s-none"></li>'


class BarPainter:
    """Draws history bars; the time span of each slot is written once and shared by every bar.

    Slots are aligned to multiples of their width, so all services' bars share slot numbers.
    """

    def __init__(self, slots: int, width: float) -> None:
        self.slots = slots
        self.width = width
        self._spans: dict[int, str] = {}

    def span(self, number: int) -> str:
        text = self._spans.get(number)
        if text is None:
            start = number * self.width
            text = self._spans[number] = f"{clock(start)}\u2013{clock(start + self.width)}"
            if len(self._spans) > 4 * self.slots:
                self._spans.clear()
        return text

    def bar(self, history: History | None, now: float) -> str:
        """The last ``slots`` slots, oldest first; every slot an element, empty ones too."""
        slots, width = self.slots, self.width
        if history is None:
            label = f"History, {slots} slots of {format_duration(width)}: no probes yet"
            return f'<ol class="bar" aria-label="{label}">{_EMPTY_SLOT * slots}</ol>'
        cells = history.cells(now, slots)
        known = failing = 0
        parts: list[str] = []
        append = parts.append
        for cell in cells:
            if cell is None:
                append(_EMPTY_SLOT)
                continue
            number, runs, failed, degraded, worst, peak, maintenance = cell
            known += 1
            if failed:
                failing += 1
                reason = history.reason_at(number) or "other"
                what = f"{failed} of {runs} failed ({reason})"
            elif degraded:
                what = f"{degraded} of {runs} degraded"
            else:
                what = f"{runs} ok"
            css = _SLOT_CLASS[worst]
            if maintenance:
                css = "s-maint" if worst else css
                what += ", maintenance"
            append(f'<li class="{css}" title="{self.span(number)} UTC: {what}, slowest {millis(peak)}"></li>')
        every = format_duration(width)
        label = f"History, {slots} slots of {every}: {known} with probes, {failing} with failures"
        return f'<ol class="bar" aria-label="{label}">{"".join(parts)}</ol>'


def _uptime_text(view: ServiceView, now: float) -> str:
    shown = [
        f"<span>{u.window} {percent(u.ratio)}</span>"
        if u.covered is None
        else f"<span>{u.window} {percent(u.ratio)} ({format_duration(round(u.covered, -1))} of data)</span>"
        for u in view.uptime
        if u.ratio is not None
    ]
    history = view.history
    if not shown and history is not None and history.first is not None:
        since = history.uptime_since_start(now)
        if since is not None:
            shown.append(f"<span>since start {percent(since)}</span>")
    return " ".join(shown) or "<span>not enough data yet</span>"


def service_card(view: ServiceView, viewer: Viewer, now: float, painter: BarPainter) -> str:
    """One service's block on the main page."""
    name = escape(view.name)
    rows = [
        f"<div><dt>Uptime</dt><dd>{_uptime_text(view, now)}</dd></div>",
        f"<div><dt>Latency</dt><dd>{millis(view.latency)} now · p95 {millis(view.p95)}</dd></div>",
    ]
    if view.vendor is not None:
        words = VENDOR_WORDS.get(view.vendor, view.vendor)
        rows.append(
            f'<div><dt>Vendor says</dt><dd class="vendor v-{escape(view.vendor)}">{escape(words)}</dd></div>'
        )
    if view.scope:
        rows.append(f"<div><dt>Locations</dt><dd>{escape(view.scope)}</dd></div>")
    if viewer.targets:
        target = escape(redact_url(view.service.target))
        rows.append(f'<div><dt>Target</dt><dd class="target">{target}</dd></div>')
    labels = viewer.labels_of(dict(view.service.labels))
    if labels:
        text = ", ".join(f"{escape(k)}={escape(v)}" for k, v in labels.items())
        rows.append(f"<div><dt>Labels</dt><dd>{text}</dd></div>")
    why = ""
    if view.health is Health.MAINTENANCE and view.maintenance is not None:
        why = (
            f'<p class="why">{escape(view.maintenance.reason)}, until {moment(view.maintenance.end, now)}</p>'
        )
    elif view.health in (Health.DOWN, Health.DEGRADED) and view.note:
        since = f" since {moment(view.since, now)}" if view.since else ""
        detail = f": {escape(view.message)}" if view.message and viewer.errors else ""
        verb = "Failing" if view.health is Health.DOWN else "Degraded"
        why = f'<p class="why">{verb}{since}: {escape(view.note)}{detail}</p>'
    return (
        f'<li class="svc st-{view.health.value}" data-service="{name}" data-state="{view.health.value}">'
        f'<div class="svc-head"><h3><a href="services/{name}">{name}</a></h3>'
        f"{state_badge(view.health)}</div>{why}"
        f"{painter.bar(view.history, now)}"
        f'<dl class="facts">{"".join(rows)}</dl></li>'
    )


def group_head(group: GroupView) -> str:
    name = escape(group.name)
    scope = f'<p class="scope">{escape(group.scope)}</p>' if group.scope else ""
    return (
        f'<section class="group" aria-labelledby="g-{name}" data-group="{name}" '
        f'data-verdict="{group.verdict}"><div class="group-head"><h2 id="g-{name}">{name}</h2>'
        f'<span class="verdict vd-{group.verdict}">'
        f'<span aria-hidden="true">{VERDICT_SYMBOLS[group.verdict]}</span>'
        f' {group.words}</span></div>{scope}<ul class="services">'
    )


def page_top(
    title: str,
    verdict: str,
    words: str,
    location: str,
    now: float,
    refresh: float,
    notices: Iterable[str],
    viewer: Viewer,
) -> str:
    notes = "".join(f'<p class="notice">{escape(n)}</p>' for n in notices)
    links = (
        '<a href="api/v1/status">JSON</a> · <a href="metrics">Metrics</a>'
        if viewer.private
        else '<a href="login">Sign in for the full view</a>'
    )
    return (
        head(title, refresh, "") + f'<header class="top"><h1>{escape(title)}</h1>'
        f'<p class="overall vd-{verdict}" role="status">'
        f'<span aria-hidden="true">{VERDICT_SYMBOLS[verdict]}</span>'
        f" {escape(words)}</p>"
        f'<p class="meta">Seen from {escape(location)} · updated {moment(now, now)} · {links}</p>'
        f"{notes}</header><main>"
    )


PAGE_END = "</main></body></html>\n"


def chart(history: History | None, objective: float | None) -> str:
    """The recent probes' latency as an inline SVG: a line for successes, marks for failures."""
    points = history.recent() if history is not None else []
    w, h, left, bottom = 720, 240, 56, 28
    inner_w, inner_h = w - left - 12, h - bottom - 12
    right = left + inner_w
    ok = [(t, d) for t, d, code in points if code != FAILED]
    top = max([d for _, d in ok] + ([objective] if objective else []) + [0.001]) * 1.15
    parts = [
        f'<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-labelledby="chart-title" '
        f'xmlns="http://www.w3.org/2000/svg"><title id="chart-title">Latency of the last {len(points)} '
        f"probes, up to {millis(top / 1.15)}</title>",
        f'<rect x="{left}" y="12" width="{inner_w}" height="{inner_h}" class="plot"/>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        gy = 12 + inner_h * (1 - fraction)
        parts.append(f'<line x1="{left}" x2="{right}" y1="{gy:.1f}" y2="{gy:.1f}" class="grid"/>')
        label = millis(top * fraction)
        parts.append(f'<text x="{left - 6}" y="{gy + 4:.1f}" class="axis" text-anchor="end">{label}</text>')
    if not points:
        middle = f'x="{left + inner_w / 2}" y="{12 + inner_h / 2}"'
        parts.append(f'<text {middle} class="axis" text-anchor="middle">no probes yet</text></svg>')
        return "".join(parts)
    first, last = points[0][0], points[-1][0]
    span = max(last - first, 1e-9)

    def px(t: float) -> float:
        return left + (inner_w * (t - first) / span if len(points) > 1 else inner_w / 2)

    def py(d: float) -> float:
        return 12 + inner_h * (1 - min(d / top, 1))

    if objective:
        oy = py(objective)
        parts.append(f'<line x1="{left}" x2="{right}" y1="{oy:.1f}" y2="{oy:.1f}" class="objective"/>')
        parts.append(
            f'<text x="{right - 4}" y="{oy - 4:.1f}" class="axis" text-anchor="end">'
            f"objective {millis(objective)}</text>"
        )
    if ok:
        line = " ".join(f"{px(t):.1f},{py(d):.1f}" for t, d in ok)
        parts.append(f'<polyline points="{line}" class="latency"/>')
    for t, _, code in points:
        if code == FAILED:
            parts.append(
                f'<circle cx="{px(t):.1f}" cy="{12 + inner_h - 5}" r="4" class="fail">'
                f"<title>failed at {clock(t)} UTC</title></circle>"
            )
    parts.append(f'<text x="{left}" y="{h - 8}" class="axis">{clock(first)} UTC</text>')
    parts.append(f'<text x="{right}" y="{h - 8}" class="axis" text-anchor="end">{clock(last)} UTC</text>')
    parts.append("</svg>")
    return "".join(parts)


def _reach(up: bool) -> str:
    """A location's last probe of the service, in words: succeeded or failed."""
    health, words = (Health.UP, "Succeeded") if up else (Health.DOWN, "Failed")
    symbol = f'<span aria-hidden="true">{SYMBOLS[health]}</span>'
    return f'<span class="state st-{health.value}">{symbol} {words}</span>'


def detail_page(
    view: ServiceView, viewer: Viewer, now: float, title: str, slots: int, width: float, refresh: float
) -> str:
    """A page about one service: state, history, latency chart, locations and recent failures."""
    name = escape(view.name)
    history = view.history
    parts = [
        head(f"{view.name} · {title}", refresh, "../"),
        f'<header class="top"><p class="crumbs"><a href="../">{escape(title)}</a> / '
        f"{escape(view.service.group)}</p>"
        f'<h1>{name}</h1>{state_badge(view.health, " big")}</header><main class="detail">',
        '<ul class="services">',
        service_card(view, viewer, now, BarPainter(slots, width)).replace('href="services/', 'href="'),
        "</ul>",
        f"<section><h2>Latency</h2>{chart(history, view.service.objectives.latency)}</section>",
    ]
    if view.vendor is not None:
        troubled = troubled_components(view.state.last)
        items = "".join(
            f"<li>{escape(name)}: {escape(status.replace('_', ' '))}</li>" for name, status in troubled
        )
        words = escape(VENDOR_WORDS.get(view.vendor, view.vendor))
        listing = f"<ul>{items}</ul>" if items else "<p>No component is listed as in trouble.</p>"
        parts.append(
            f'<section><h2>What the vendor says</h2><p class="vendor">{words}</p>{listing}</section>'
        )
    if view.locations:
        rows = "".join(
            f"<tr><td>{escape(loc)}</td><td>{_reach(up)}</td>"
            f"<td>{millis(view.location_p90.get(loc))}</td></tr>"
            for loc, up in sorted(view.locations.items())
        )
        parts.append(
            f'<section><h2>Locations</h2><table class="locations"><thead><tr><th scope="col">Location</th>'
            f'<th scope="col">Last probe</th><th scope="col">p90, 5 min</th></tr></thead>'
            f"<tbody>{rows}</tbody></table></section>"
        )
    failures = list(reversed(history.failures)) if history is not None else []
    if failures:
        rows = "".join(
            f"<tr><td>{moment(f.at, now, seconds=True)}</td><td>{escape(f.reason)}</td>"
            + (f"<td>{escape(f.message)}</td>" if viewer.errors else "")
            + f"<td>{millis(f.duration)}</td></tr>"
            for f in failures
        )
        message_head = '<th scope="col">Message</th>' if viewer.errors else ""
        parts.append(
            '<section><h2>Recent failures</h2><table class="failures"><thead><tr><th scope="col">When</th>'
            f'<th scope="col">Reason</th>{message_head}<th scope="col">Took</th></tr></thead>'
            f"<tbody>{rows}</tbody></table></section>"
        )
    else:
        parts.append(
            "<section><h2>Recent failures</h2><p>None recorded since the exporter started.</p></section>"
        )
    parts.append(PAGE_END)
    return "".join(parts)
