"""What the status page says about each service and group, built from the store, history and Prometheus."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from exporter.config import Service
from exporter.health import VENDOR_WORDS, WORDS, Health, degraded_reason, health_of, vendor_indicator
from exporter.history import History
from exporter.maintenance import ActiveWindow
from exporter.page.prometheus import PromSnapshot
from exporter.page.queries import PROMETHEUS_WINDOWS
from exporter.store import ServiceState

# Windows the in-memory history can speak for, when it is long enough.
MEMORY_WINDOWS = (("1h", 3600.0), ("6h", 6 * 3600.0), ("12h", 12 * 3600.0))


@dataclass(frozen=True)
class Uptime:
    window: str
    ratio: float | None
    source: str  # "memory" or "prometheus"
    # Seconds of data behind the ratio, when less than the window (Prometheus only).
    covered: float | None = None


@dataclass
class ServiceView:
    """One service as the page shows it."""

    service: Service
    state: ServiceState
    health: Health
    # A line saying why: the failure, the degradation or the maintenance window.
    note: str = ""
    reason: str = ""  # the FailureReason of a failure, "" otherwise
    message: str = ""  # the probe's own words; the public view leaves them out
    since: float | None = None
    latency: float | None = None
    p95: float | None = None
    uptime: list[Uptime] = field(default_factory=list)
    vendor: str | None = None
    locations: dict[str, bool] = field(default_factory=dict)
    location_p90: dict[str, float] = field(default_factory=dict)  # from Prometheus
    scope: str = ""
    maintenance: ActiveWindow | None = None

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def words(self) -> str:
        return WORDS[self.health]

    @property
    def history(self) -> History | None:
        return self.state.history


VERDICTS = {
    "up": "All up",
    "degraded": "Degraded",
    "partial": "Partial outage",
    "major": "Major outage",
    "maintenance": "In maintenance",
    "unknown": "No data yet",
}


@dataclass
class GroupView:
    name: str
    services: list[ServiceView]
    verdict: str = "unknown"
    scope: str = ""

    @property
    def words(self) -> str:
        return VERDICTS[self.verdict]


def service_view(
    state: ServiceState,
    location: str,
    now: float,
    window: ActiveWindow | None,
    prom: PromSnapshot | None,
) -> ServiceView:
    service, last, history = state.service, state.last, state.history
    view = ServiceView(service, state, health_of(service, last, window is not None), maintenance=window)
    if last is not None:
        if last.success:
            view.latency = last.duration
        if not last.success:
            view.reason = str(last.reason or "other")
            view.message = last.message
            view.note = view.reason.replace("_", " ")
        else:
            degraded = degraded_reason(service, last)
            if degraded:
                view.note = degraded
        view.vendor = vendor_indicator(last)
        if view.vendor in ("major", "critical"):
            view.note = f"vendor reports: {VENDOR_WORDS[view.vendor]}"
    if history is not None:
        view.since = history.since
        view.p95 = history.p95()
        windows = [
            (label, seconds) for label, seconds in MEMORY_WINDOWS if seconds <= history.slots * history.width
        ]
        ratios = history.uptimes(now, tuple(seconds for _, seconds in windows))
        view.uptime.extend(
            Uptime(label, ratio, "memory") for (label, _), ratio in zip(windows, ratios, strict=True)
        )
    if window is not None:
        view.note = window.reason
    if prom is not None:
        for label, query, seconds in PROMETHEUS_WINDOWS:
            if query in prom.values:
                view.uptime.append(
                    Uptime(
                        label,
                        prom.get(query, service.name),
                        "prometheus",
                        prometheus_covers(prom, now, seconds),
                    )
                )
        seen = {
            loc: value >= 1
            for (name, loc), value in prom.values.get("location_up", {}).items()
            if name == service.name
        }
        view.locations = seen
        for (name, loc), value in prom.values.get("latency_p90", {}).items():
            if name == service.name:
                view.location_p90[loc] = value
    if last is not None and service.module.prober != "statuspage":
        # This exporter's own view is fresher than Prometheus' last scrape of it.
        view.locations[location] = last.success
    _place(view, location)
    return view


def prometheus_covers(prom: PromSnapshot, now: float, window: float) -> float | None:
    """Seconds of ``window`` Prometheus has data for, or None when it has all of it.

    A window is taken as covered within 5% (the start is known to the minute).
    """
    since = prom.get("data_since")
    covered = 0.0 if since is None else max(now - since, 0.0)
    return None if covered >= window * 0.95 else covered


def _place(view: ServiceView, location: str) -> None:
    """Say whether a failure is seen everywhere or only from some locations."""
    if len(view.locations) < 2 or view.health is Health.MAINTENANCE:
        return
    down = sorted(loc for loc, up in view.locations.items() if not up)
    up = sorted(loc for loc, up in view.locations.items() if up)
    if not down:
        return
    if not up:
        view.scope = f"down from all {len(down)} locations"
        return
    view.scope = f"down from {', '.join(down)}; up from {', '.join(up)}"
    if view.health is Health.UP:
        # Fine from here, failing elsewhere: the page must not show it as plainly up.
        view.health = Health.DEGRADED
        view.note = f"regional: down from {', '.join(down)}"
    elif view.health is Health.DOWN:
        view.note = f"regional: {view.note}" if view.note else "regional"


def group_views(views: list[ServiceView], prom: PromSnapshot | None, location: str) -> list[GroupView]:
    groups: dict[str, GroupView] = {}
    for view in views:
        group = groups.get(view.service.group)
        if group is None:
            group = groups[view.service.group] = GroupView(view.service.group, [])
        group.services.append(view)
    failing = prom.values.get("location_failing", {}) if prom is not None else {}
    for group in groups.values():
        judge(group, {key[0]: value for key, value in failing.items()})
    return sorted(groups.values(), key=lambda g: g.name)


def judge(group: GroupView, location_failing: Mapping[str, float]) -> None:
    """The group's headline: all up, degraded, partial or major outage, in maintenance; and where."""
    counted = [v for v in group.services if v.health not in (Health.MAINTENANCE, Health.UNKNOWN)]
    in_maintenance = sum(1 for v in group.services if v.health is Health.MAINTENANCE)
    down = [v for v in counted if v.health is Health.DOWN]
    degraded = [v for v in counted if v.health is Health.DEGRADED]
    if not counted:
        group.verdict = "maintenance" if in_maintenance else "unknown"
        return
    if down:
        group.verdict = "major" if len(down) * 2 > len(counted) else "partial"
    elif degraded:
        group.verdict = "degraded"
    else:
        group.verdict = "up"
    if in_maintenance and group.verdict == "up":
        group.scope = f"{in_maintenance} in maintenance"
    troubled = down + degraded
    views_with_places = [v for v in troubled if len(v.locations) >= 2]
    if not views_with_places:
        return
    failing_places = {loc for v in views_with_places for loc, up in v.locations.items() if not up}
    all_places = {loc for v in views_with_places for loc in v.locations}
    if failing_places == all_places:
        group.scope = "global: failing from every location"
        return
    # One location seeing most services fail while another sees them fine is the prober's side.
    if len(failing_places) == 1:
        (place,) = failing_places
        share = location_failing.get(place)
        healthy_elsewhere = any(value < 0.5 for loc, value in location_failing.items() if loc != place)
        if share is not None and share > 0.5 and healthy_elsewhere:
            group.scope = f"prober-side: {place} sees most services fail, other locations do not"
            return
    group.scope = f"regional: failing from {', '.join(sorted(failing_places))}"


def overall(groups: list[GroupView]) -> str:
    """The verdict of the whole page: the worst of its groups."""
    order = ["major", "partial", "degraded", "up", "maintenance", "unknown"]
    verdicts = {g.verdict for g in groups}
    return next((v for v in order if v in verdicts), "unknown")
