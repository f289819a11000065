"""Generates the Grafana dashboards in grafana/dashboards/ from code.

    python grafana/generate.py           # write the JSON files
    python grafana/generate.py --check   # exit 1 if the committed files are stale

The dashboards are built with grafana-foundation-sdk, pinned to its Grafana 11.6 variant
(``pip install 'grafana-foundation-sdk==1769699379!11.6.0'``); another variant writes other
JSON. Every panel reads the data source chosen in the ``datasource`` variable, and most
panels read the recording rules of prometheus/rules/outage-exporter.rules.yml.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders import (
    bargauge,
    common,
    dashboard,
    prometheus,
    stat,
    statetimeline,
    table,
    timeseries,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BarGaugeDisplayMode,
    BigValueColorMode,
    BigValueGraphMode,
    BigValueTextMode,
    GraphThresholdsStyleMode,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    StackingMode,
    TableCellDisplayMode,
    TooltipDisplayMode,
    VisibilityMode,
    VizOrientation,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DashboardRangeMapOptions,
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    FieldColorModeId,
    GridPos,
    RangeMap,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

SDK_VERSION = "1769699379!11.6.0"
OUTPUT_DIR = Path(__file__).resolve().parent / "dashboards"

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
TAG = "outage-exporter"
JOB = 'job="outage-exporter"'
# The value a multi-value variable takes when "All" is selected: every value, also none.
ALL = ".*"

RULES_DIR = Path(__file__).resolve().parent.parent / "prometheus" / "rules"


class RulesChanged(Exception):
    """A bundled alert no longer has the shape its threshold is read from."""


def _alerts(rules_dir: Path) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(rules_dir.glob("*.yml")):
        for group in yaml.safe_load(path.read_text(encoding="utf-8")).get("groups", []):
            for rule in group.get("rules", []):
                if "alert" in rule:
                    found.setdefault(rule["alert"], []).append(rule)
    return found


def _number(alerts: dict[str, list[dict[str, Any]]], name: str, pattern: str) -> float:
    for rule in alerts.get(name, []):
        match = re.search(pattern, rule["expr"])
        if match:
            value = float(match.group(1))
            return int(value) if value.is_integer() else value
    raise RulesChanged(f"alert {name}: no threshold matching {pattern!r} in prometheus/rules")


_BURN_CLAUSE = re.compile(
    r"ratio_avg(\w+)\s*/ on \(service, group\) "
    r"\(1 - service:probe_objective_availability_ratio:max\) > ([0-9.]+)"
)


def read_alert_thresholds(rules_dir: Path = RULES_DIR) -> dict[str, Any]:
    """The thresholds of the bundled alerts, read from the rules themselves.

    Panels draw the lines the alerts cross; reading them here means a changed rule changes
    the dashboards on the next generate, and a rule whose shape changed stops the generator
    with the alert's name instead of drawing a stale line.
    """
    alerts = _alerts(rules_dir)
    windows = []
    for rule in alerts.get("ProbeErrorBudgetBurn", []):
        clauses = _BURN_CLAUSE.findall(rule["expr"])
        if not clauses or len(clauses) % 2:
            raise RulesChanged("alert ProbeErrorBudgetBurn: expected pairs of long and short burn windows")
        severity = "page" if rule.get("labels", {}).get("severity") == "critical" else "ticket"
        for (long, factor), (short, short_factor) in zip(clauses[::2], clauses[1::2], strict=True):
            if factor != short_factor:
                raise RulesChanged(f"alert ProbeErrorBudgetBurn: {long}/{short} windows differ in factor")
            windows.append((long, short, float(factor), severity))
    if not windows:
        raise RulesChanged("alert ProbeErrorBudgetBurn: not found in prometheus/rules")
    return {
        "burn_rate_windows": tuple(windows),
        "latency_objective_share": _number(alerts, "ProbeSlow", r"ratio_rate5m < ([0-9.]+)"),
        "tls_soon_days": _number(alerts, "ProbeTLSCertificateExpiringSoon", r"time\(\) < ([0-9.]+) \* 86400"),
        "tls_very_soon_days": _number(
            alerts, "ProbeTLSCertificateExpiringVerySoon", r"time\(\) < ([0-9.]+) \* 86400"
        ),
        "stale_seconds": _number(alerts, "ProbeStale", r"clamp_min\(.*, ([0-9.]+)\)"),
    }


# Thresholds the bundled alerts use, so panels draw the lines the alerts cross.
_THRESHOLDS = read_alert_thresholds()
BURN_RATE_WINDOWS: tuple[tuple[str, str, float, str], ...] = _THRESHOLDS["burn_rate_windows"]
LATENCY_OBJECTIVE_SHARE: float = _THRESHOLDS["latency_objective_share"]  # ProbeSlow
TLS_SOON_DAYS: float = _THRESHOLDS["tls_soon_days"]  # ProbeTLSCertificateExpiringSoon
TLS_VERY_SOON_DAYS: float = _THRESHOLDS["tls_very_soon_days"]  # ProbeTLSCertificateExpiringVerySoon
STALE_SECONDS: float = _THRESHOLDS["stale_seconds"]  # ProbeStale

GREEN, ORANGE, RED, BLUE, GREY = "green", "orange", "red", "blue", "text"


# ---------------------------------------------------------------- selectors


def sel(*parts: str) -> str:
    """A label selector body from the given matchers, empty ones dropped."""
    return ", ".join(part for part in parts if part)


GROUP = 'group=~"$group"'
SERVICES = 'service=~"$service"'
ONE_SERVICE = 'service="$service"'
LOCATIONS = 'location=~"$location"'
P90 = 'quantile="0.9"'


def error_ratio_30d(services: str) -> str:
    """Share of the last 30 days a service was down by the location quorum (no 30-day rule exists).

    The average of the recorded 5-minute averages: the same signal the error budget alerts use.
    """
    return f"avg_over_time(service:probe_down:ratio_avg5m{{{sel(GROUP, services)}}}[30d])"


def objective(services: str) -> str:
    return f"service:probe_objective_availability_ratio:max{{{sel(GROUP, services)}}}"


def budget_remaining_30d(services: str) -> str:
    """Share of the 30-day error budget left: 1 is untouched, 0 spent, below 0 overspent."""
    return f"1 - (\n{error_ratio_30d(services)}\n) / on (service, group) (1 - {objective(services)})"


def burn_rate(window: str, services: str) -> str:
    return (
        f"service:probe_down:ratio_avg{window}{{{sel(GROUP, services)}}}\n"
        f"  / on (service, group) (1 - {objective(services)})"
    )


def latency_quantile(q: float, by: str, selector: str) -> str:
    return (
        f"histogram_quantile({q}, sum by ({by}, le) "
        f"(rate(probe_latency_seconds_bucket{{{selector}}}[$__rate_interval])))"
    )


# ---------------------------------------------------------------- building blocks


def query(
    expr: str,
    legend: str = "__auto",
    *,
    instant: bool = False,
    table_format: bool = False,
) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).datasource(DATASOURCE).legend_format(legend)
    q = q.instant() if instant else q.range()
    if table_format:
        q = q.format(PromQueryFormat.TABLE)
    return q


def thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in steps])
    )


def built_thresholds(*steps: tuple[float | None, str]) -> Any:
    return thresholds(*steps).build()


def value_map(mapping: dict[str, tuple[str, str]]) -> ValueMap:
    return ValueMap(
        options={
            value: ValueMappingResult(text=text, color=color, index=index)
            for index, (value, (text, color)) in enumerate(mapping.items())
        }
    )


UP_DOWN = [value_map({"1": ("Up", GREEN), "0": ("Down", RED)})]
# The share of locations a service is up from: all, none, or some.
UP_PARTIAL_DOWN = [
    value_map({"1": ("Up", GREEN), "0": ("Down everywhere", RED)}),
    RangeMap(
        options=DashboardRangeMapOptions(
            from_val=0.000001, to=0.999999, result=ValueMappingResult(text="Down somewhere", color=ORANGE)
        )
    ),
]
RELOAD = [value_map({"1": ("OK", GREEN), "0": ("Failed", RED)})]


def prop(name: str, value: Any) -> DynamicConfigValue:
    """One field property of an override."""
    return DynamicConfigValue(id_val=name, value=value)


def organize(names: dict[str, str], hidden: Sequence[str] = ()) -> DataTransformerConfig:
    """Renames table columns (in the given order) and hides the rest that are named."""
    return DataTransformerConfig(
        id_val="organize",
        options={
            "excludeByName": dict.fromkeys(hidden, True),
            "indexByName": {name: index for index, name in enumerate(names)},
            "renameByName": names,
        },
    )


MERGE = DataTransformerConfig(id_val="merge", options={})


def legend_table(*calcs: str) -> common.VizLegendOptions:
    return (
        common.VizLegendOptions()
        .show_legend(True)
        .display_mode(LegendDisplayMode.TABLE)
        .placement(LegendPlacement.BOTTOM)
        .calcs(list(calcs))
    )


def legend_list() -> common.VizLegendOptions:
    return (
        common.VizLegendOptions()
        .show_legend(True)
        .display_mode(LegendDisplayMode.LIST)
        .placement(LegendPlacement.BOTTOM)
    )


def tooltip() -> common.VizTooltipOptions:
    return common.VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING)


def graph(title: str, description: str, unit_name: str, *targets: prometheus.Dataquery) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit_name)
        .legend(legend_table("lastNotNull", "max"))
        .tooltip(tooltip())
        .fill_opacity(10)
        .line_width(1)
        .show_points(VisibilityMode.NEVER)
    )
    for target in targets:
        panel = panel.with_target(target)
    return panel


def threshold_lines(panel: timeseries.Panel, *steps: tuple[float | None, str]) -> timeseries.Panel:
    return panel.thresholds(thresholds(*steps)).thresholds_style(
        common.GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.DASHED)
    )


def big_number(title: str, description: str, unit_name: str, target: prometheus.Dataquery) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit_name)
        .with_target(target)
        .graph_mode(BigValueGraphMode.NONE)
        .color_mode(BigValueColorMode.BACKGROUND)
        .text_mode(BigValueTextMode.VALUE)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def timeline(
    title: str, description: str, unit_name: str, *targets: prometheus.Dataquery
) -> statetimeline.Panel:
    panel = (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit_name)
        .show_value(VisibilityMode.NEVER)
        .merge_values(True)
        .row_height(0.9)
        .fill_opacity(80)
        .line_width(0)
        .legend(legend_list())
        .tooltip(common.VizTooltipOptions().mode(TooltipDisplayMode.SINGLE).sort(SortOrder.NONE))
    )
    for target in targets:
        panel = panel.with_target(target)
    return panel


def instant_table(
    title: str,
    description: str,
    columns: Sequence[tuple[str, str]],
    names: dict[str, str],
    hide: Sequence[str] = (),
) -> table.Panel:
    """A table of instant queries merged on their labels.

    ``columns`` are (header, expr) pairs; ``names`` renames label columns, in display order;
    ``hide`` lists more columns (by their new names) to leave out.
    """
    panel = (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit("none")
        .filterable(True)
        .footer(common.TableFooterOptions().show(False).reducer(["sum"]))
    )
    renames = dict(names)
    for index, (header, expr) in enumerate(columns):
        ref = chr(ord("A") + index)
        panel = panel.with_target(query(expr, instant=True, table_format=True).ref_id(ref))
        renames[f"Value #{ref}" if len(columns) > 1 else "Value"] = header
    hidden = ["Time", "__name__", "job", *hide]
    return panel.with_transformation(MERGE).with_transformation(organize(renames, hidden))


# ---------------------------------------------------------------- layout


class Layout:
    """Places panels left to right in rows of 24 columns and gives each a unique id."""

    def __init__(self, board: dashboard.Dashboard) -> None:
        self.board = board
        self.y = 0
        self.next_id = 1

    def row(self, height: int, *panels: tuple[int, Any]) -> None:
        x = 0
        for width, panel in panels:
            panel = panel.id(self.next_id).grid_pos(GridPos(h=height, w=width, x=x, y=self.y))
            panel = _number_targets(panel)
            self.board.with_panel(panel)
            self.next_id += 1
            x += width
        if x != 24:
            raise ValueError(f"a row must be 24 columns wide, got {x}")
        self.y += height


def _number_targets(panel: Any) -> Any:
    """Give each query a refId (A, B, ...) unless it has one."""
    built = panel.build()
    for index, target in enumerate(built.targets or []):
        if not target.ref_id:
            target.ref_id = chr(ord("A") + index)
    return panel


# ---------------------------------------------------------------- variables


def variable(
    name: str, label: str, expr: str, description: str, *, multi: bool = True
) -> dashboard.QueryVariable:
    var = (
        dashboard.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query(expr)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
    )
    if multi:
        var = (
            var.multi(True)
            .include_all(True)
            .all_value(ALL)
            .current(VariableOption(selected=True, text=["All"], value=["$__all"]))
        )
    return var


def base_dashboard(
    uid: str, title: str, description: str, *, single_service: bool = False
) -> dashboard.Dashboard:
    service_filter = sel(JOB, GROUP)
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG])
        .editable()
        .time("now-3h", "now")
        .refresh("1m")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .link(
            dashboard.DashboardLink("outage-exporter")
            .type(DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
        .with_variable(
            dashboard.DatasourceVariable("datasource")
            .label("Data source")
            .description("The Prometheus that scrapes the exporters and evaluates the bundled rules.")
            .type("prometheus")
        )
        .with_variable(
            variable(
                "group",
                "Group",
                f"label_values(probe_service_info{{{JOB}}}, group)",
                "Provider or product family of the services.",
            )
        )
        .with_variable(
            variable(
                "service",
                "Service",
                f"label_values(probe_service_info{{{service_filter}}}, service)",
                "The service to show." if single_service else "Services to show.",
                multi=not single_service,
            )
        )
        .with_variable(
            variable(
                "location",
                "Location",
                f"label_values(probe_success{{{JOB}}}, location)",
                "Probing locations, one exporter (or a redundant set) each.",
            )
        )
    )


# ---------------------------------------------------------------- dashboards


def overview() -> dashboard.Dashboard:
    board = base_dashboard(
        "outage-exporter-overview",
        "Outage exporter / Overview",
        "Which services are down, from where, and which alerts fire.",
    )
    layout = Layout(board)
    success = f"service_location:probe_success:max{{{sel(GROUP, SERVICES, LOCATIONS)}}}"
    up_everywhere = f"min by (service, group) ({success}) == 1"
    down_everywhere = f"max by (service, group) ({success}) == 0"
    down_somewhere = (
        f"(max by (service, group) ({success}) == 1) and (min by (service, group) ({success}) == 0)"
    )
    alerts = 'ALERTS{alertstate="firing", group=~"$group|", service=~"$service|", location=~"$location|"}'

    def counter(title: str, description: str, expr: str, bad: str) -> stat.Panel:
        return big_number(
            title, description, "none", query(f"count({expr}) or vector(0)", instant=True)
        ).thresholds(thresholds((None, GREEN), (1, bad)))

    layout.row(
        4,
        (
            4,
            counter(
                "Services up",
                "Services whose last probe succeeded from every selected location.",
                up_everywhere,
                GREEN,
            ),
        ),
        (
            4,
            counter(
                "Down everywhere",
                "Services whose last probe failed from every selected location: an outage of the service.",
                down_everywhere,
                RED,
            ),
        ),
        (
            4,
            counter(
                "Down somewhere",
                "Services failing from some selected locations but reached from others: a regional "
                "outage, or trouble on the probing side of those locations.",
                down_somewhere,
                ORANGE,
            ),
        ),
        (
            4,
            counter(
                "Alerts firing",
                "Alerts of the bundled rules firing now for the selected services (and alerts without a "
                "service, such as group and exporter alerts).",
                alerts,
                RED,
            ),
        ),
        (
            4,
            big_number(
                "Exporters up",
                "Exporters Prometheus scraped successfully at the last scrape, over all in the selected "
                "locations. Below 100% a location is blind: see the Exporter dashboard.",
                "percentunit",
                query(f"avg(up{{{sel(JOB, LOCATIONS)}}})", instant=True),
            ).thresholds(thresholds((None, RED), (0.999, GREEN))),
        ),
        (
            4,
            big_number(
                "Soonest TLS expiry",
                "Days until the first of the selected services' certificates expires "
                f"(alerts below {TLS_SOON_DAYS} and {TLS_VERY_SOON_DAYS} days).",
                "d",
                query(
                    f"min((probe_ssl_earliest_cert_expiry{{{sel(JOB, GROUP, SERVICES, LOCATIONS)}}} > 0)"
                    " - time()) / 86400",
                    instant=True,
                ),
            )
            .decimals(1)
            .thresholds(thresholds((None, RED), (TLS_VERY_SOON_DAYS, ORANGE), (TLS_SOON_DAYS, GREEN))),
        ),
    )
    layout.row(
        10,
        (
            24,
            timeline(
                "Status by service and location",
                "Whether the service answered probes from each location (any exporter there "
                "succeeding counts as up). A column of red across services is a provider outage; a red "
                "row of one location only, a problem on that side.",
                "none",
                query(success, "{{service}} · {{location}}"),
            ).mappings(UP_DOWN),
        ),
    )
    in_selection = sel(JOB, GROUP, SERVICES, LOCATIONS)
    services_table = instant_table(
        "Services",
        "One row per service. Status: up from every selected location, down from every one, or down "
        "somewhere. Availability is the share of time the service was up, down meaning down from most "
        "locations (a broken prober or a regional failure costs nothing); the error budget "
        "is what the availability objective allows to fail in 30 days (below 0: overspent). Click a "
        "service for its detail dashboard.",
        [
            ("Status", f"avg by (service, group) ({success})"),
            ("HTTP status", f"max by (service, group) (probe_http_status_code{{{in_selection}}})"),
            ("Last probe duration", f"max by (service, group) (probe_duration_seconds{{{in_selection}}})"),
            (
                "TLS days left",
                f"(min by (service, group) (probe_ssl_earliest_cert_expiry{{{in_selection}}} > 0) - time())"
                " / 86400",
            ),
            (
                "Availability 24h",
                f"1 - service:probe_down:ratio_avg1d{{{sel(GROUP, SERVICES)}}}",
            ),
            ("Availability 30d", f"1 - (\n{error_ratio_30d(SERVICES)}\n)"),
            ("Objective", objective(SERVICES)),
            ("Error budget left 30d", budget_remaining_30d(SERVICES)),
        ],
        {"service": "Service", "group": "Group"},
    )
    services_table = (
        services_table.sort_by([common.TableSortByFieldState().display_name("Status")])
        .override_by_name(
            "Status",
            [
                prop("mappings", UP_PARTIAL_DOWN),
                prop("custom.cellOptions", {"type": TableCellDisplayMode.COLOR_BACKGROUND.value}),
            ],
        )
        .override_by_name(
            "Last probe duration",
            [prop("unit", "s")],
        )
        .override_by_name(
            "TLS days left",
            [
                prop("unit", "d"),
                prop("decimals", 1),
                prop(
                    "thresholds",
                    built_thresholds((None, RED), (TLS_VERY_SOON_DAYS, ORANGE), (TLS_SOON_DAYS, GREEN)),
                ),
                prop("custom.cellOptions", {"type": TableCellDisplayMode.COLOR_TEXT.value}),
            ],
        )
        .override_by_regexp("Availability.*|Objective", [prop("unit", "percentunit"), prop("decimals", 3)])
        .override_by_name(
            "Error budget left 30d",
            [
                prop("unit", "percentunit"),
                prop("decimals", 1),
                prop("thresholds", built_thresholds((None, RED), (0, ORANGE), (0.25, GREEN))),
                prop("custom.cellOptions", {"type": TableCellDisplayMode.COLOR_TEXT.value}),
            ],
        )
        .override_by_name(
            "Service",
            [
                prop(
                    "links",
                    [
                        {
                            "title": "Service detail",
                            "url": "/d/outage-exporter-service?var-service=${__value.raw}"
                            "&${datasource:queryparam}&${location:queryparam}&${__url_time_range}",
                        }
                    ],
                )
            ],
        )
    )
    layout.row(10, (24, services_table))
    firing = instant_table(
        "Firing alerts",
        "Alerts of the bundled rules firing now (the ALERTS series Prometheus writes). Each alert's "
        "runbook section is in docs/runbook.md.",
        [("Active", alerts)],
        {"alertname": "Alert", "severity": "Severity", "service": "Service", "group": "Group"},
        hide=["Active", "alertstate"],
    )
    layout.row(8, (24, firing))
    return board


def service_detail() -> dashboard.Dashboard:
    board = base_dashboard(
        "outage-exporter-service",
        "Outage exporter / Service detail",
        "One service from every location: success, latency, HTTP phases, status codes, DNS, ICMP and TLS.",
        single_service=True,
    )
    layout = Layout(board)
    one = sel(JOB, ONE_SERVICE, LOCATIONS)
    rule_one = sel(ONE_SERVICE, LOCATIONS)
    layout.row(
        4,
        (
            4,
            big_number(
                "Up from",
                "Share of the selected locations from which the last probe succeeded.",
                "percentunit",
                query(f"avg(service_location:probe_success:max{{{rule_one}}})", instant=True),
            ).thresholds(thresholds((None, RED), (0.001, ORANGE), (0.999, GREEN))),
        ),
        (
            4,
            big_number(
                "Availability 24h",
                "Share of the last 24 hours the service was up: down means down from most locations.",
                "percentunit",
                query(f"1 - service:probe_down:ratio_avg1d{{{ONE_SERVICE}}}", instant=True),
            )
            .decimals(3)
            .thresholds(thresholds((None, RED), (0.99, ORANGE), (0.999, GREEN))),
        ),
        (
            4,
            big_number(
                "Latency p90 (5m)",
                "90th percentile of successful probe durations over 5 minutes, slowest selected location.",
                "s",
                query(
                    "max(service_location:probe_latency_seconds:histogram_quantile5m"
                    f"{{{sel(ONE_SERVICE, LOCATIONS, P90)}}})",
                    instant=True,
                ),
            ).color_mode(BigValueColorMode.NONE),
        ),
        (
            4,
            big_number(
                "HTTP status",
                "Status code of the last response, highest over the selected locations (0: no response).",
                "none",
                query(f"max(probe_http_status_code{{{one}}})", instant=True),
            ).thresholds(thresholds((None, RED), (200, GREEN), (300, BLUE), (400, ORANGE), (500, RED))),
        ),
        (
            4,
            big_number(
                "TLS certificate expires in",
                "Days until the earliest certificate the service serves expires, soonest over the selected "
                "locations.",
                "d",
                query(f"min((probe_ssl_earliest_cert_expiry{{{one}}} > 0) - time()) / 86400", instant=True),
            )
            .decimals(1)
            .thresholds(thresholds((None, RED), (TLS_VERY_SOON_DAYS, ORANGE), (TLS_SOON_DAYS, GREEN))),
        ),
        (
            4,
            big_number(
                "Target",
                "What is probed and by which prober, from the service's info series.",
                "none",
                query(
                    f"max by (prober, target) (probe_service_info{{{one}}})",
                    "{{prober}}: {{target}}",
                    instant=True,
                ),
            )
            .text_mode(BigValueTextMode.NAME)
            .color_mode(BigValueColorMode.NONE),
        ),
    )
    layout.row(
        8,
        (
            12,
            timeline(
                "Up or down by location",
                "The last probe's result from each location over time.",
                "none",
                query(f"service_location:probe_success:max{{{rule_one}}}", "{{location}}"),
            ).mappings(UP_DOWN),
        ),
        (
            12,
            graph(
                "Success ratio by location",
                "Share of probes that succeeded in each interval, per location.",
                "percentunit",
                query(
                    f"1 - sum by (location) (rate(probe_failures_total{{{one}}}[$__rate_interval]))\n"
                    f"/\nsum by (location) (rate(probe_runs_total{{{one}}}[$__rate_interval]))",
                    "{{location}}",
                ),
            )
            .min(0)
            .max(1),
        ),
    )
    latency = graph(
        "Latency quantiles by location",
        "Quantiles of successful probe durations from the probe_latency_seconds histogram, with the "
        "service's latency objective (dashed) when it has one.",
        "s",
        query(latency_quantile(0.5, "location", one), "{{location}} p50"),
        query(latency_quantile(0.9, "location", one), "{{location}} p90"),
        query(latency_quantile(0.99, "location", one), "{{location}} p99"),
        query(f"max(probe_objective_latency_seconds{{{one}}})", "objective"),
    ).override_by_name(
        "objective",
        [
            prop("custom.lineStyle", {"fill": "dash", "dash": [10, 10]}),
            prop("color", {"mode": "fixed", "fixedColor": RED}),
        ],
    )
    failures = graph(
        "Failures by reason",
        "Failed probes per second by location and reason (dns, connect, tls, timeout, http_status, body, "
        "header, protocol, other). The reason says where to look first.",
        "ops",
        query(
            f"sum by (location, reason) (rate(probe_failures_total{{{one}}}[$__rate_interval])) > 0",
            "{{location}} {{reason}}",
        ),
    )
    layout.row(8, (12, latency), (12, failures))
    phases = (
        graph(
            "HTTP phases",
            "Time spent in each phase of the last HTTP probe (resolve, connect, tls, processing, "
            "transfer), stacked; averaged over the selected locations, so select one location to see "
            "its own.",
            "s",
            query(f"avg by (phase) (probe_http_duration_seconds{{{one}}})", "{{phase}}"),
        )
        .stacking(common.StackingConfig().mode(StackingMode.NORMAL))
        .fill_opacity(60)
    )
    codes = timeline(
        "HTTP status codes by location",
        "Status code of the last response from each location: green 2xx, blue 3xx, orange 4xx, red "
        "5xx and 0 (no response).",
        "none",
        query(f"probe_http_status_code{{{one}}}", "{{location}}"),
    ).thresholds(thresholds((None, RED), (200, GREEN), (300, BLUE), (400, ORANGE), (500, RED)))
    codes = codes.show_value(VisibilityMode.AUTO).color_scheme(
        dashboard.FieldColor().mode(FieldColorModeId.THRESHOLDS)
    )
    layout.row(8, (12, phases), (12, codes))
    layout.row(
        8,
        (
            8,
            graph(
                "DNS timings",
                "Name resolution before each probe (lookup), and for DNS services the phases of the "
                "query itself (resolve, connect, request).",
                "s",
                query(f"probe_dns_lookup_time_seconds{{{one}}}", "{{location}} lookup"),
                query(f"probe_dns_duration_seconds{{{one}}}", "{{location}} {{phase}}"),
            ),
        ),
        (
            8,
            graph(
                "ICMP timings",
                "Phases of the last ICMP echo (resolve, setup, rtt) from each location.",
                "s",
                query(f"probe_icmp_duration_seconds{{{one}}}", "{{location}} {{phase}}"),
            ),
        ),
        (
            8,
            graph(
                "Probe duration",
                "Total duration of the last probe from each location, failed probes included.",
                "s",
                query(f"probe_duration_seconds{{{one}}}", "{{location}}"),
            ),
        ),
    )
    expiry = threshold_lines(
        graph(
            "TLS certificate expiry",
            "Days until the earliest certificate the service serves expires; the dashed lines are the "
            f"alert bands ({TLS_SOON_DAYS} and {TLS_VERY_SOON_DAYS} days).",
            "d",
            query(f"((probe_ssl_earliest_cert_expiry{{{one}}} > 0) - time()) / 86400", "{{location}}"),
        ),
        (None, RED),
        (TLS_VERY_SOON_DAYS, ORANGE),
        (TLS_SOON_DAYS, GREEN),
    )
    version = instant_table(
        "TLS version by location",
        "TLS version negotiated by the last probe from each location.",
        [("Probes", f"max by (location, version) (probe_tls_version_info{{{one}}})")],
        {"location": "Location", "version": "TLS version"},
        hide=["Probes", "instance"],
    )
    layout.row(8, (12, expiry), (12, version))
    return board


def slo() -> dashboard.Dashboard:
    board = base_dashboard(
        "outage-exporter-slo",
        "Outage exporter / SLO",
        "Availability and latency against each service's objectives, error budget and burn rates.",
    )
    layout = Layout(board)
    rules = sel(GROUP, SERVICES)
    objectives = instant_table(
        "Objectives",
        "Per service: the availability objective and the availability over 24 hours and 30 days (the "
        "share of time up, down meaning down from most locations); the share of the 30-day error "
        "budget left; the latency objective and the share of successful probes within it over the "
        "last hour, worst location.",
        [
            ("Availability objective", objective(SERVICES)),
            ("Availability 24h", f"1 - service:probe_down:ratio_avg1d{{{rules}}}"),
            ("Availability 30d", f"1 - (\n{error_ratio_30d(SERVICES)}\n)"),
            ("Error budget left 30d", budget_remaining_30d(SERVICES)),
            (
                "Latency objective",
                f"max by (service, group) (probe_objective_latency_seconds{{{sel(JOB, rules)}}})",
            ),
            (
                "Within latency objective 1h",
                "min by (service, group) "
                f"(service_location:probe_latency_within_objective:ratio_rate1h{{{sel(rules, LOCATIONS)}}})",
            ),
        ],
        {"service": "Service", "group": "Group"},
    )
    objectives = (
        objectives.override_by_regexp("Availability.*", [prop("unit", "percentunit"), prop("decimals", 3)])
        .override_by_name(
            "Error budget left 30d",
            [
                prop("unit", "percentunit"),
                prop("decimals", 1),
                prop("thresholds", built_thresholds((None, RED), (0, ORANGE), (0.25, GREEN))),
                prop("custom.cellOptions", {"type": TableCellDisplayMode.COLOR_TEXT.value}),
            ],
        )
        .override_by_name("Latency objective", [prop("unit", "s")])
        .override_by_name(
            "Within latency objective 1h",
            [
                prop("unit", "percentunit"),
                prop("decimals", 1),
                prop("thresholds", built_thresholds((None, RED), (LATENCY_OBJECTIVE_SHARE, GREEN))),
                prop("custom.cellOptions", {"type": TableCellDisplayMode.COLOR_TEXT.value}),
            ],
        )
    )
    layout.row(8, (24, objectives))
    budget = (
        bargauge.Panel()
        .title("Error budget left (30d)")
        .description(
            "Share of each service's 30-day error budget left: 100% untouched, 0% spent, below 0 "
            "overspent. Services without an availability objective are not shown."
        )
        .datasource(DATASOURCE)
        .unit("percentunit")
        .min(0)
        .max(1)
        .with_target(query(budget_remaining_30d(SERVICES), "{{service}}", instant=True))
        .display_mode(BarGaugeDisplayMode.BASIC)
        .orientation(VizOrientation.HORIZONTAL)
        .show_unfilled(True)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(thresholds((None, RED), (0, ORANGE), (0.25, GREEN)))
    )
    availability = graph(
        "Availability vs objective",
        "Share of the last hour each service was up (down: down from most locations), and its "
        "availability objective (dashed).",
        "percentunit",
        query(f"1 - service:probe_down:ratio_avg1h{{{rules}}}", "{{service}}"),
        query(objective(SERVICES), "{{service}} objective"),
    ).override_by_regexp(".* objective", [prop("custom.lineStyle", {"fill": "dash", "dash": [10, 10]})])
    layout.row(8, (12, budget), (12, availability))
    latency = graph(
        "Latency p90 vs objective",
        "90th percentile of successful probe durations over 5 minutes (slowest selected location), and "
        "each service's latency objective (dashed).",
        "s",
        query(
            "max by (service) (service_location:probe_latency_seconds:histogram_quantile5m"
            f"{{{sel(rules, LOCATIONS, P90)}}})",
            "{{service}} p90",
        ),
        query(
            f"max by (service) (probe_objective_latency_seconds{{{sel(JOB, rules, LOCATIONS)}}})",
            "{{service}} objective",
        ),
    ).override_by_regexp(".* objective", [prop("custom.lineStyle", {"fill": "dash", "dash": [10, 10]})])
    within = (
        threshold_lines(
            graph(
                "Probes within latency objective",
                "Share of successful probes no slower than the latency objective over 5 minutes, worst "
                f"selected location. ProbeSlow fires below {LATENCY_OBJECTIVE_SHARE:.0%} (dashed line).",
                "percentunit",
                query(
                    "min by (service) (service_location:probe_latency_within_objective:ratio_rate5m"
                    f"{{{sel(rules, LOCATIONS)}}})",
                    "{{service}}",
                ),
            ),
            (None, RED),
            (LATENCY_OBJECTIVE_SHARE, GREEN),
        )
        .min(0)
        .max(1)
    )
    layout.row(8, (12, latency), (12, within))
    burn_panels = []
    for long, short, factor, severity in BURN_RATE_WINDOWS:
        burn_panels.append(
            (
                12,
                threshold_lines(
                    graph(
                        f"Burn rate {long} and {short} (alert at {factor:g})",
                        f"How many times faster than its objective allows each service spends its error "
                        f"budget, over {long} and over {short}. ProbeErrorBudgetBurn ({severity}) fires "
                        f"when both exceed {factor:g} (dashed line).",
                        "suffix:\u00d7",
                        query(burn_rate(long, SERVICES), f"{{{{service}}}} {long}"),
                        query(burn_rate(short, SERVICES), f"{{{{service}}}} {short}"),
                    ),
                    (None, GREEN),
                    (factor, RED),
                ).min(0),
            )
        )
    layout.row(8, *burn_panels[:2])
    layout.row(8, *burn_panels[2:])
    return board


def exporter() -> dashboard.Dashboard:
    board = base_dashboard(
        "outage-exporter-exporter",
        "Outage exporter / Exporter",
        "The probers themselves: scrapes, schedule lag, probes in flight, configuration reloads.",
    )
    layout = Layout(board)
    exporters = sel(JOB, LOCATIONS)
    probes = sel(JOB, GROUP, SERVICES, LOCATIONS)
    layout.row(
        4,
        (
            4,
            big_number(
                "Exporters up",
                "Exporters whose last scrape succeeded, of those Prometheus knows in the selected locations.",
                "none",
                query(f"sum(up{{{exporters}}})", instant=True),
            ).thresholds(thresholds((None, RED), (1, GREEN))),
        ),
        (
            4,
            big_number(
                "Exporters down",
                "Exporters whose last scrape failed: nothing is probed from their location meanwhile.",
                "none",
                query(f"count(up{{{exporters}}} == 0) or vector(0)", instant=True),
            ).thresholds(thresholds((None, GREEN), (1, RED))),
        ),
        (
            4,
            big_number(
                "Config reloads failing",
                "Exporters whose last configuration reload failed; they keep probing with the previous "
                "configuration.",
                "none",
                query(
                    f"count(outage_exporter_config_last_reload_successful{{{exporters}}} == 0) or vector(0)",
                    instant=True,
                ),
            ).thresholds(thresholds((None, GREEN), (1, RED))),
        ),
        (
            4,
            big_number(
                "Services probed",
                "Configured services over the selected exporters (a service counts once per exporter).",
                "none",
                query(f"count(probe_service_info{{{probes}}})", instant=True),
            ).color_mode(BigValueColorMode.NONE),
        ),
        (
            4,
            big_number(
                "Probes per second",
                "Probes completed per second over the selected exporters and services.",
                "ops",
                query(f"sum(rate(probe_runs_total{{{probes}}}[$__rate_interval]))", instant=True),
            ).color_mode(BigValueColorMode.NONE),
        ),
        (
            4,
            big_number(
                "Probes in flight",
                "Probes running right now over the selected exporters.",
                "none",
                query(f"sum(outage_exporter_probes_in_flight{{{exporters}}})", instant=True),
            ).color_mode(BigValueColorMode.NONE),
        ),
    )
    layout.row(
        8,
        (
            12,
            timeline(
                "Scrape health by location",
                "Whether Prometheus could scrape each exporter (up). A location whose exporter is down "
                "stops reporting on every service.",
                "none",
                query(f"up{{{exporters}}}", "{{location}} {{instance}}"),
            ).mappings(UP_DOWN),
        ),
        (
            12,
            graph(
                "Scrape duration",
                "How long Prometheus took to scrape each exporter; it grows with the number of services.",
                "s",
                query(f"scrape_duration_seconds{{{exporters}}}", "{{location}} {{instance}}"),
            ),
        ),
    )
    lag = sel(JOB, LOCATIONS)
    layout.row(
        8,
        (
            12,
            graph(
                "Schedule lag",
                "How late scheduled probes started, from the outage_exporter_schedule_lag_seconds "
                "histogram. A growing lag means the exporter cannot keep up (CPU, event loop, too many "
                "services for one process).",
                "s",
                query(
                    "histogram_quantile(0.5, sum by (location, instance, le) "
                    f"(rate(outage_exporter_schedule_lag_seconds_bucket{{{lag}}}[$__rate_interval])))",
                    "{{location}} {{instance}} p50",
                ),
                query(
                    "histogram_quantile(0.99, sum by (location, instance, le) "
                    f"(rate(outage_exporter_schedule_lag_seconds_bucket{{{lag}}}[$__rate_interval])))",
                    "{{location}} {{instance}} p99",
                ),
            ),
        ),
        (
            12,
            graph(
                "Probes in flight by exporter",
                "Probes running at scrape time on each exporter.",
                "none",
                query(f"outage_exporter_probes_in_flight{{{exporters}}}", "{{location}} {{instance}}"),
            ).min(0),
        ),
    )
    layout.row(
        8,
        (
            12,
            timeline(
                "Config reload status",
                "Whether each exporter's last configuration reload succeeded (POST /-/reload or SIGHUP).",
                "none",
                query(
                    f"outage_exporter_config_last_reload_successful{{{exporters}}}",
                    "{{location}} {{instance}}",
                ),
            ).mappings(RELOAD),
        ),
        (
            12,
            graph(
                "Time since last successful reload",
                "Age of the configuration each exporter runs with.",
                "s",
                query(
                    f"time() - outage_exporter_config_last_reload_success_timestamp_seconds{{{exporters}}}",
                    "{{location}} {{instance}}",
                ),
            ),
        ),
    )
    layout.row(
        8,
        (
            12,
            graph(
                "Probes per second by location",
                "Probes completed per second, per location, for the selected services.",
                "ops",
                query(
                    f"sum by (location) (rate(probe_runs_total{{{probes}}}[$__rate_interval]))",
                    "{{location}}",
                ),
            ),
        ),
        (
            12,
            threshold_lines(
                graph(
                    "Oldest last probe",
                    "Age of the stalest service's last probe per location. ProbeStale fires above "
                    f"{STALE_SECONDS} s (dashed line).",
                    "s",
                    query(
                        f"max by (location) (time() - probe_last_run_timestamp_seconds{{{probes}}})",
                        "{{location}}",
                    ),
                ),
                (None, GREEN),
                (STALE_SECONDS, RED),
            ),
        ),
    )
    build = instant_table(
        "Versions",
        "Version of each exporter and of the Python it runs on.",
        [
            (
                "Exporters",
                "count by (location, instance, version, pythonversion) "
                f"(outage_exporter_build_info{{{exporters}}})",
            )
        ],
        {"location": "Location", "instance": "Instance", "version": "Version", "pythonversion": "Python"},
    )
    layout.row(6, (24, build))
    return board


DASHBOARDS: dict[str, Callable[[], dashboard.Dashboard]] = {
    "overview.json": overview,
    "service-detail.json": service_detail,
    "slo.json": slo,
    "exporter.json": exporter,
}


# ---------------------------------------------------------------- output


def check_sdk_version() -> None:
    installed = importlib.metadata.version("grafana-foundation-sdk")
    if installed != SDK_VERSION:
        raise SystemExit(
            f"grafana-foundation-sdk {installed} is installed; the dashboards are generated with "
            f"{SDK_VERSION}: pip install 'grafana-foundation-sdk=={SDK_VERSION}'"
        )


def render(build: Callable[[], dashboard.Dashboard]) -> str:
    model = build().build()
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_all() -> dict[str, str]:
    """Every dashboard's JSON text by file name."""
    check_sdk_version()
    return {name: render(build) for name, build in DASHBOARDS.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the files on disk")
    parser.add_argument("--output", type=Path, default=OUTPUT_DIR, help="directory of the JSON files")
    args = parser.parse_args(argv)
    stale = 0
    for name, text in render_all().items():
        path = args.output / name
        current = path.read_text() if path.exists() else ""
        if current == text:
            continue
        if args.check:
            stale += 1
            sys.stdout.writelines(
                difflib.unified_diff(current.splitlines(True), text.splitlines(True), str(path), "generated")
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"{stale} dashboard(s) out of date: run python grafana/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
