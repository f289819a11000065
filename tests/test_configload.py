"""Tests for loading big config files in a child process, and for sharing equal config parts."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from exporter import configload
from exporter.config import keep_unchanged, load_config, share_equal_parts
from exporter.configload import load_config_async
from exporter.errors import ConfigError
from exporter.runtime import Exporter

CONFIG = """
global: {interval: 30s, timeout: 5s}
modules:
  web: {prober: http, http: {valid_status_codes: [200], headers: {X-Probe: one}}}
services:
  - {name: a, target: "http://127.0.0.1:1/", module: web}
  - {name: b, target: "http://127.0.0.1:2/", prober: http, http: {preferred_ip_protocol: ip4}}
  - {name: c, target: "http://127.0.0.1:3/", prober: http, http: {preferred_ip_protocol: ip4}}
  - {name: d, target: "127.0.0.1:4", prober: tcp, labels: {team: edge}, objectives: {availability: 0.99}}
"""

INVALID = """
services:
  - {name: a, target: "http://127.0.0.1:1/", prober: http}
  - {name: a, target: "http://127.0.0.1:2/", prober: htp}
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(CONFIG)
    return path


async def test_child_process_gives_the_same_config_as_loading_here(config_file: Path) -> None:
    """A config parsed in a child equals the one parsed in this process, down to the modules."""
    from_child = await load_config_async(str(config_file), isolate_above=0)
    here = load_config(config_file)
    assert from_child == here
    assert [s.name for s in from_child.services] == ["a", "b", "c", "d"]
    assert from_child.services[0].module.http.headers == {"X-Probe": "one"}
    assert from_child.service("d").labels == {"team": "edge"}  # type: ignore[union-attr]


async def test_child_process_shares_equal_inline_settings(config_file: Path) -> None:
    """Services written with equal inline settings come back holding one module object."""
    config = await load_config_async(str(config_file), isolate_above=0)
    b, c = config.services[1], config.services[2]
    assert b.module == c.module and b.module is c.module
    assert config.services[0].module is config.modules["web"]


async def test_child_process_reports_every_problem_with_its_line(tmp_path: Path) -> None:
    """An invalid file gives the same ConfigError, issue for issue, as loading it here."""
    path = tmp_path / "bad.yml"
    path.write_text(INVALID)
    with pytest.raises(ConfigError) as from_child:
        await load_config_async(str(path), isolate_above=0)
    with pytest.raises(ConfigError) as here:
        load_config(path)
    assert from_child.value.issues == here.value.issues
    assert from_child.value.file == str(path)
    messages = [str(issue) for issue in from_child.value.issues]
    assert messages == [
        "services[1].name (line 4): duplicate service name 'a' (first on line 3)",
        "services[1].prober (line 4): unknown prober 'htp';"
        " expected one of http, tcp, dns, icmp, grpc, push, flow, statuspage, websocket",
    ]


async def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A file that cannot be read is reported as load_config reports it, not as a crash."""
    with pytest.raises(ConfigError, match=r"cannot read .*missing\.yml: No such file or directory"):
        await load_config_async(str(tmp_path / "missing.yml"), isolate_above=0)


@pytest.mark.parametrize("python", ["/nonexistent/python3", "/bin/false"])
async def test_failed_child_falls_back_to_parsing_here(
    config_file: Path, python: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A child that cannot start or dies without an answer does not fail the reload."""
    monkeypatch.setattr(configload, "PYTHON", python)
    config = await load_config_async(str(config_file), isolate_above=0)
    assert config == load_config(config_file)
    assert f"parsing {config_file} in a child process failed" in caplog.text


def test_shared_config_is_equal_and_pickles_small(config_file: Path) -> None:
    """Sharing changes no value; a shared config pickles with each module written once."""
    config = load_config(config_file)
    shared = share_equal_parts(config)
    assert shared == config
    assert pickle.loads(pickle.dumps(shared)) == config
    assert len(pickle.dumps(shared)) < len(pickle.dumps(config))


async def test_exporter_reload_through_child_applies_and_rejects(tmp_path: Path) -> None:
    """Reloads of a big file go through the child: a good file applies, a bad one keeps the old."""
    path = tmp_path / "config.yml"
    path.write_text(CONFIG)
    exporter = Exporter(load_config(path), config_file=str(path))
    exporter.isolate_above = 0
    path.write_text(CONFIG.replace("name: d,", "name: e,"))
    assert await exporter.reload() is None
    assert [s.name for s in exporter.services] == ["a", "b", "c", "e"]
    path.write_text(INVALID)
    error = await exporter.reload()
    assert error is not None and len(error.issues) == 2
    assert not exporter.reload_successful
    assert [s.name for s in exporter.services] == ["a", "b", "c", "e"]


async def test_reload_parses_discovered_files_against_the_new_modules(tmp_path: Path) -> None:
    """A discovered service using a module picks up the module's new settings on reload."""
    (tmp_path / "more.yml").write_text("- {name: found, target: 'http://127.0.0.1:5/', module: web}\n")
    path = tmp_path / "config.yml"
    path.write_text(CONFIG + 'service_files: ["more.yml"]\n')
    exporter = Exporter(load_config(path), config_file=str(path))
    assert exporter.service("found").module.http.headers == {"X-Probe": "one"}  # type: ignore[union-attr]
    path.write_text(CONFIG.replace("X-Probe: one", "X-Probe: two") + 'service_files: ["more.yml"]\n')
    assert await exporter.reload() is None
    assert exporter.service("found").module.http.headers == {"X-Probe": "two"}  # type: ignore[union-attr]


def test_fingerprints_change_with_any_setting(tmp_path: Path) -> None:
    """Equal services get equal fingerprints; a changed header, label or timeout changes one."""
    path = tmp_path / "config.yml"
    path.write_text(CONFIG)
    before = share_equal_parts(load_config(path)).fingerprints
    assert before["b"] != before["c"]  # same settings, different name and target
    for old, new, changed in [
        ("X-Probe: one", "X-Probe: two", "a"),
        ("team: edge", "team: core", "d"),
        (
            '"http://127.0.0.1:3/", prober: http, http: {',
            '"http://127.0.0.1:3/", timeout: 2s, prober: http, http: {',
            "c",
        ),
    ]:
        path.write_text(CONFIG.replace(old, new))
        after = share_equal_parts(load_config(path)).fingerprints
        assert [name for name in before if before[name] != after[name]] == [changed]


async def test_reload_keeps_the_objects_of_unchanged_services(tmp_path: Path) -> None:
    """After a reload, unchanged services are the same objects the scheduler already runs."""
    path = tmp_path / "config.yml"
    path.write_text(CONFIG)
    exporter = Exporter(share_equal_parts(load_config(path)), config_file=str(path))
    exporter.isolate_above = 0
    exporter.start()
    try:
        before = {s.name: s for s in exporter.services}
        path.write_text(CONFIG.replace("X-Probe: one", "X-Probe: two"))
        assert await exporter.reload() is None
        after = {s.name: s for s in exporter.services}
        assert [name for name in after if after[name] is not before[name]] == ["a"]
        assert after["a"].module.http.headers == {"X-Probe": "two"}
        running = {s.name: s for s in exporter.scheduler.services}
        assert all(running[name] is after[name] for name in after)
    finally:
        await exporter.stop()


async def test_label_order_is_kept_and_a_reorder_is_a_change(tmp_path: Path) -> None:
    """Labels keep the order they are written in; a reload that only reorders them applies it."""
    path = tmp_path / "config.yml"
    service = "services:\n  - {{name: a, target: '127.0.0.1:1', prober: tcp, labels: {{{}}}}}\n"
    path.write_text(service.format("y: '1', x: '2'"))
    first = share_equal_parts(load_config(path))
    assert list(first.services[0].labels) == ["y", "x"]
    path.write_text(service.format("x: '2', y: '1'"))
    second = keep_unchanged(share_equal_parts(load_config(path)), first)
    assert list(second.services[0].labels) == ["x", "y"]
    assert second.services[0] is not first.services[0]
