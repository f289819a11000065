"""Tests for loading big config files in a child process, and for sharing equal config parts."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from exporter import configload
from exporter.config import Config, keep_unchanged, load_config, share_equal_parts
from exporter.configload import load_config_async, parse_files_async
from exporter.discovery import Scan, ServiceFiles, parse_files
from exporter.errors import ConfigError
from exporter.probes import PROBERS
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
    assert from_child.services[0].module.sections["http"].headers == {"X-Probe": "one"}
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
        f"services[1].prober (line 4): unknown prober 'htp'; expected one of {', '.join(PROBERS)}",
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
    assert exporter.service("found").module.sections["http"].headers == {"X-Probe": "one"}  # type: ignore[union-attr]
    path.write_text(CONFIG.replace("X-Probe: one", "X-Probe: two") + 'service_files: ["more.yml"]\n')
    assert await exporter.reload() is None
    assert exporter.service("found").module.sections["http"].headers == {"X-Probe": "two"}  # type: ignore[union-attr]


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
        assert after["a"].module.sections["http"].headers == {"X-Probe": "two"}
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


FILES = {
    "one.yml": "- {name: f1, target: 'http://127.0.0.1:5/', module: web}\n"
    "- {name: f2, target: '127.0.0.1:6', prober: tcp, labels: {team: edge}}\n",
    "two.yml": "services:\n  - {name: f3, target: '127.0.0.1:7', prober: tcp}\n",
    "bad.yml": "- {name: f4, target: '127.0.0.1:8', module: nope}\n",
}


def scanned(tmp_path: Path) -> tuple[ServiceFiles, Scan, Config]:
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    # .yaml, so that the glob finds only the service files.
    path = tmp_path / "main.yaml"
    path.write_text(CONFIG + 'service_files: ["*.yml"]\n')
    config = load_config(path)
    files = ServiceFiles()
    return files, files.scan(config), config


async def test_service_files_parsed_in_a_child_match_parsing_here(tmp_path: Path) -> None:
    """Discovered files parsed in a child give the same services, fingerprints and errors."""
    _, scan, config = scanned(tmp_path)
    assert [Path(path).name for path, _, _ in scan.changed] == ["bad.yml", "one.yml", "two.yml"]
    from_child = await parse_files_async(scan.changed, config, isolate_above=0)
    here = parse_files(scan.changed, config)
    assert isinstance(from_child[0], ConfigError) and isinstance(here[0], ConfigError)
    assert from_child[0].issues == here[0].issues
    assert [str(i) for i in from_child[0].issues] == [
        "[0].module (line 1): unknown module 'nope' (modules: web)"
    ]
    assert from_child[1:] == here[1:]
    services, prints = from_child[1]  # type: ignore[misc]
    assert [s.name for s in services] == ["f1", "f2"]
    assert services[0].module == config.modules["web"]
    assert set(prints) == {"f1", "f2"}


async def test_failed_child_parses_service_files_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A child that dies without an answer leaves the parsing to this process, with a warning."""
    _, scan, config = scanned(tmp_path)
    monkeypatch.setattr(configload, "PYTHON", "/bin/false")
    from_child = await parse_files_async(scan.changed, config, isolate_above=0)
    here = parse_files(scan.changed, config)
    assert from_child[1:] == here[1:] and len(from_child[1]) == 2
    assert isinstance(from_child[0], ConfigError) and isinstance(here[0], ConfigError)
    assert from_child[0].issues == here[0].issues
    assert "parsing service files in a child process failed (exit code 1" in caplog.text


async def test_exporter_discovers_through_the_child_and_keeps_unchanged_objects(tmp_path: Path) -> None:
    """Reloads and file changes go through the child; unchanged discovered services keep their objects."""
    scanned(tmp_path)
    path = tmp_path / "main.yaml"
    exporter = Exporter(share_equal_parts(load_config(path)), config_file=str(path))
    exporter.isolate_above = 0
    assert sorted(s.name for s in exporter.services) == ["a", "b", "c", "d", "f1", "f2", "f3"]
    assert exporter.invalid_service_files == 1
    path.write_text(path.read_text().replace("X-Probe: one", "X-Probe: two"))
    assert await exporter.reload() is None
    before = {s.name: s for s in exporter.services}
    assert before["f1"].module.sections["http"].headers == {"X-Probe": "two"}
    # Same modules again: a forced re-read of every file keeps every discovered object.
    assert await exporter.reload() is None
    assert all(exporter.service(name) is before[name] for name in ("f1", "f2", "f3"))
    (tmp_path / "two.yml").write_text("services:\n  - {name: f3, target: '127.0.0.1:9', prober: tcp}\n")
    (tmp_path / "bad.yml").unlink()
    discovery, changed = await exporter._rediscover(exporter.config)
    assert changed
    exporter.discovery = discovery
    exporter._settle(refresh=False)
    assert exporter.service("f3").target == "127.0.0.1:9"  # type: ignore[union-attr]
    assert exporter.service("f1") is before["f1"]
    assert exporter.invalid_service_files == 0
