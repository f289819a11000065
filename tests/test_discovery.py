"""Tests for file discovery and reloads driven by file changes, including ConfigMap symlink swaps."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from exporter.config import load_config
from exporter.runtime import Exporter
from exporter.sharding import Shard
from tests.conftest import wait_for

MAIN = """
global: {{interval: 200ms, timeout: 100ms}}
service_files: ["services/*.yml", "services/*.json"]
modules:
  tcp_connect: {{prober: tcp}}
services:
  - {{name: {name}, target: "127.0.0.1:1", module: tcp_connect}}
"""


def names(exporter: Exporter) -> list[str]:
    return sorted(s.name for s in exporter.services)


def test_service_files_add_services_and_bad_files_are_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Valid files add services; an invalid file is reported, and valid files' services stay."""
    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "a.yml").write_text(
        "- {name: a1, target: '127.0.0.1:2', module: tcp_connect}\n"
        "- {name: a2, target: '127.0.0.1:3', prober: tcp, group: files}\n"
    )
    (tmp_path / "services" / "b.json").write_text(
        '{"services": [{"name": "b1", "target": "127.0.0.1:4", "module": "tcp_connect"}]}'
    )
    (tmp_path / "services" / "bad.yml").write_text("- {name: c1, target: '127.0.0.1:5', module: nope}\n")
    (tmp_path / "config.yml").write_text(MAIN.format(name="static"))
    exporter = Exporter(load_config(tmp_path / "config.yml"), config_file=str(tmp_path / "config.yml"))
    assert names(exporter) == ["a1", "a2", "b1", "static"]
    assert exporter.invalid_service_files == 1
    assert exporter.service("a2") is not None and exporter.service("a2").group == "files"  # type: ignore[union-attr]
    bad = str(tmp_path / "services" / "bad.yml")
    assert f"{bad}: [0].module (line 1): unknown module 'nope' (modules: tcp_connect)" in caplog.text


def test_duplicate_names_across_files_keep_the_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A discovered service may not take the name of a static or earlier discovered one."""
    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "a.yml").write_text("- {name: static, target: '127.0.0.1:9', prober: tcp}\n")
    (tmp_path / "config.yml").write_text(MAIN.format(name="static"))
    exporter = Exporter(load_config(tmp_path / "config.yml"))
    assert names(exporter) == ["static"]
    assert exporter.service("static").target == "127.0.0.1:1"  # type: ignore[union-attr]
    assert "service 'static' is already defined in the config file" in caplog.text


async def test_discovered_files_are_reread_when_they_change(tmp_path: Path) -> None:
    """Adding, fixing and removing files changes the service set while the exporter runs."""
    services = tmp_path / "services"
    services.mkdir()
    (tmp_path / "config.yml").write_text(MAIN.format(name="static"))
    exporter = Exporter(load_config(tmp_path / "config.yml"), config_file=str(tmp_path / "config.yml"))
    exporter.start()
    watcher = asyncio.create_task(exporter.watch(0.05))
    try:
        (services / "new.yml").write_text("- {name: n1, target: '127.0.0.1:2', prober: tcp}\n")
        await wait_for(lambda: names(exporter) == ["n1", "static"], what="n1 discovered")
        (services / "new.yml").write_text("- {name: n1, target: 1}\n")
        await wait_for(lambda: exporter.invalid_service_files == 1, what="bad file noticed")
        assert names(exporter) == ["n1", "static"]
        (services / "new.yml").unlink()
        await wait_for(lambda: names(exporter) == ["static"], what="n1 removed")
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await exporter.stop()


def configmap_swap(mount: Path, content: str, version: int) -> None:
    """Update a directory the way the kubelet updates a mounted ConfigMap: a new dir, then an atomic
    swap of the ``..data`` symlink."""
    data_dir = mount / f"..{version}"
    data_dir.mkdir()
    (data_dir / "config.yml").write_text(content)
    tmp_link = mount / "..data_tmp"
    tmp_link.symlink_to(data_dir.name)
    os.replace(tmp_link, mount / "..data")


async def test_configmap_symlink_swap_triggers_reload_and_bad_swap_keeps_config(tmp_path: Path) -> None:
    """A symlink-swapped config is reloaded; an invalid one keeps the running config."""
    mount = tmp_path / "mount"
    mount.mkdir()
    configmap_swap(mount, MAIN.format(name="first"), 1)
    (mount / "config.yml").symlink_to("..data/config.yml")
    path = str(mount / "config.yml")
    exporter = Exporter(load_config(path), config_file=path)
    exporter.start()
    watcher = asyncio.create_task(exporter.watch(0.05))
    try:
        configmap_swap(mount, MAIN.format(name="second"), 2)
        await wait_for(lambda: names(exporter) == ["second"], what="reload after swap")
        assert exporter.reload_successful
        configmap_swap(mount, "global: {interval: nope}\n", 3)
        await wait_for(lambda: not exporter.reload_successful, what="failed reload noticed")
        assert names(exporter) == ["second"]
        configmap_swap(mount, MAIN.format(name="third"), 4)
        await wait_for(lambda: names(exporter) == ["third"] and exporter.reload_successful, what="recovery")
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await exporter.stop()


def test_exporter_probes_only_its_shard(tmp_path: Path) -> None:
    """With sharding, replicas split the configured and discovered services with no overlap."""
    lines = ["services:"] + [f"  - {{name: s{i}, target: '127.0.0.1:1', prober: tcp}}" for i in range(300)]
    (tmp_path / "config.yml").write_text("\n".join(lines))
    config = load_config(tmp_path / "config.yml")
    shares = [names(Exporter(config, shard=Shard(i, 3))) for i in range(3)]
    assert sorted(n for share in shares for n in share) == sorted(f"s{i}" for i in range(300))
    assert all(60 < len(share) < 140 for share in shares)
