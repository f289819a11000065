"""The reload plan: one step decides kept, changed, added and removed, and everything follows it."""

from __future__ import annotations

import asyncio

from exporter.config import parse_config
from exporter.reloadplan import plan_reload
from exporter.result import Trace
from exporter.runtime import Exporter
from tests.metrics_util import labelsets, parse, value

BEFORE = """
global: {interval: 1h, timeout: 5s}
services:
  - {name: same, target: 'http://127.0.0.1:1/', prober: http}
  - {name: retargeted, target: 'http://127.0.0.1:2/', prober: http}
  - {name: relabelled, target: 'http://127.0.0.1:3/', prober: http, labels: {team: a}}
  - {name: gone, target: '127.0.0.1:4', prober: tcp}
"""
AFTER = """
global: {interval: 1h, timeout: 5s}
services:
  - {name: same, target: 'http://127.0.0.1:1/', prober: http}
  - {name: retargeted, target: 'http://127.0.0.1:9/', prober: http}
  - {name: relabelled, target: 'http://127.0.0.1:3/', prober: http, labels: {team: b}}
  - {name: new, target: '127.0.0.1:5', prober: tcp}
"""


def test_plan_sorts_every_name_once() -> None:
    old = parse_config(BEFORE).services
    new = parse_config(AFTER).services
    plan = plan_reload(old, new)
    assert plan.kept == {"same"}
    assert plan.changed == {"retargeted", "relabelled"}
    assert plan.added == {"new"}
    assert plan.removed == {"gone"}
    assert [s.name for s in plan.services] == [s.name for s in new]
    # The invariant: an equal service, parsed again, is carried on as the old object.
    assert new[0] is not old[0]
    assert plan.services[0] is old[0]
    assert plan.services[1] is new[1]
    assert plan.restarted == {"retargeted", "relabelled", "new"}
    assert plan.retired == {"retargeted", "relabelled", "gone"}


def test_empty_before_adds_everything() -> None:
    new = parse_config(AFTER).services
    plan = plan_reload((), new)
    assert plan.added == {s.name for s in new}
    assert not (plan.kept or plan.changed or plan.removed)


async def test_exporter_applies_the_plan_to_scheduler_store_and_collector() -> None:
    exporter = Exporter(parse_config(BEFORE))
    exporter.start()
    try:
        tasks = {name: task for name, (_, task) in exporter.scheduler._tasks.items()}
        for name in ("same", "retargeted", "relabelled", "gone"):
            exporter.store.record(name, Trace().succeed())
        await exporter.service_collector.render()
        exporter.apply(parse_config(AFTER))
        after = exporter.scheduler._tasks
        assert set(after) == {"same", "retargeted", "relabelled", "new"}
        assert after["same"][1] is tasks["same"]  # kept: same task, same rhythm
        assert after["retargeted"][1] is not tasks["retargeted"]
        assert after["relabelled"][1] is not tasks["relabelled"]
        await asyncio.sleep(0)
        assert tasks["gone"].cancelled() or tasks["gone"].done()
        series = parse((await exporter.service_collector.render()).decode())
        runs = {
            dict(labels)["service"]: v for (name, labels), v in series.items() if name == "probe_runs_total"
        }
        # Counters stay with kept and changed services; a new target forgets the last result.
        assert runs == {"same": 1.0, "retargeted": 1.0, "relabelled": 1.0, "new": 0.0}
        assert value(series, "probe_success", service="same") == 1.0
        assert value(series, "probe_success", service="relabelled") == 1.0
        succeeded = {dict(labels)["service"] for (name, labels) in series if name == "probe_success"}
        assert "retargeted" not in succeeded
        info = {d["service"]: d for d in labelsets(series, "probe_service_info")}
        assert info["relabelled"]["team"] == "b"  # re-rendered, not the cached lines
    finally:
        await exporter.stop()


def test_a_new_kind_forgets_the_last_result_but_keeps_counters() -> None:
    from exporter.store import ResultStore

    store = ResultStore()
    store.sync(parse_config("services:\n  - {name: a, target: '127.0.0.1:1', prober: tcp}\n").services)
    store.record("a", Trace().succeed())
    store.sync(parse_config("services:\n  - {name: a, target: '127.0.0.1:1', prober: http}\n").services)
    [state] = list(store)
    assert state.last is None  # the tcp result says nothing about the http probe
    assert state.runs == 1
