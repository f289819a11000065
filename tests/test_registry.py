"""The probe-kind registry is the one list of kinds: everything else must follow from it."""

from __future__ import annotations

import dataclasses
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from exporter import cli, collector, config
from exporter.modules import Module
from exporter.probes import KINDS, PROBERS, ProbeDeps, ProberKind, probers

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
# Metrics every probe has, written by the runner and the collector rather than by a kind.
COMMON = {"probe_success", "probe_duration_seconds", "probe_timeout_seconds"}
NAMES = [kind.name for kind in KINDS]


def test_names_are_unique_and_keyed_by_name() -> None:
    assert len(set(NAMES)) == len(NAMES)
    assert list(PROBERS) == NAMES
    assert all(PROBERS[name].name == name for name in NAMES)


@pytest.mark.parametrize("kind", KINDS, ids=NAMES)
def test_kind_is_complete(kind: ProberKind) -> None:
    assert dataclasses.is_dataclass(kind.settings), f"{kind.name}: settings must be a dataclass"
    kind.settings()  # every option has a default: a module may leave the section out
    assert kind.make(ProbeDeps()) is not None, f"{kind.name}: neither probe nor factory"
    assert kind.metrics, f"{kind.name}: no metric families"
    names = [family.name for family in kind.metrics]
    assert len(set(names)) == len(names), f"{kind.name}: a family listed twice"
    for family in kind.metrics:
        assert family.help.strip(), f"{kind.name}: {family.name} has no help"
        assert family.name.startswith("probe_"), family.name
    if kind.phase_metric is not None:
        assert kind.phase_metric in names
        assert kind.phases


@pytest.mark.parametrize("kind", KINDS, ids=NAMES)
def test_kind_has_docs_and_tests(kind: ProberKind) -> None:
    assert f"**{kind.name}**" in README or f"### {kind.name}" in README, f"{kind.name}: not in the README"
    assert (ROOT / "tests" / f"test_{kind.name}.py").is_file(), f"{kind.name}: no tests/test_{kind.name}.py"


@pytest.mark.parametrize("kind", KINDS, ids=NAMES)
def test_every_metric_a_kind_writes_is_declared(kind: ProberKind) -> None:
    """Each probe_* name in the kind's modules (its probe's too) is one of its families, with help text."""
    module = importlib.import_module(f"exporter.probes.{kind.name}")
    assert module.KIND is kind
    modules = [module]
    if kind.probe_module is not None:
        assert kind.probe_module.startswith("exporter.probes."), kind.probe
        modules.append(importlib.import_module(kind.probe_module))
    written: set[str] = set()
    for one in modules:
        source = Path(one.__file__ or "").read_text(encoding="utf-8")
        written |= set(re.findall(r'"(probe_[a-z0-9_]+)"', source))
    declared = {family.name for family in kind.metrics} | COMMON
    assert written <= declared, f"{kind.name}: undeclared {sorted(written - declared)}"


def test_everything_else_is_derived(capsys: pytest.CaptureFixture[str]) -> None:
    service_keys = {f.name for f in dataclasses.fields(config.ServiceFile)}
    module_keys = {f.name for f in dataclasses.fields(config.ModuleFile)}
    assert set(NAMES) <= service_keys
    assert set(NAMES) <= module_keys
    for kind in KINDS:
        for family in kind.metrics:
            assert collector.metric_help(family.name) == family.help
    with pytest.raises(SystemExit):
        cli.probe_command(["--help"])
    assert "{" + ",".join(NAMES) + "}" in capsys.readouterr().out
    assert set(probers(ProbeDeps())) == set(NAMES)


def test_unknown_prober_lists_the_registry() -> None:
    with pytest.raises(config.ConfigError) as err:
        config.parse_config("modules:\n  m:\n    prober: nosuch\n    bogus_key: 1\n")
    messages = [issue.message for issue in err.value.issues]
    assert f"unknown prober 'nosuch'; expected one of {', '.join(NAMES)}" in messages
    assert any("unknown key" in message for message in messages)  # every error at once


def test_a_module_section_for_another_kind_is_kept_and_checked() -> None:
    text = "modules:\n  m:\n    prober: http\n    tcp: {query_response: [{expect: '('}]}\n"
    with pytest.raises(config.ConfigError) as err:
        config.parse_config(text)
    assert [issue.path for issue in err.value.issues] == ["modules.m.tcp.query_response[0].expect"]
    loaded = config.parse_config("modules:\n  m:\n    prober: http\n    tcp: {tls: true}\n")
    module = loaded.modules["m"]
    assert set(module.sections) == {"tcp"}
    http_settings = PROBERS["http"].settings
    assert module.section(http_settings) == http_settings()
    assert module.section(PROBERS["tcp"].settings).tls is True


def test_section_defaults_are_shared_and_equal() -> None:
    settings = PROBERS["dns"].settings
    assert Module("dns").section(settings) is Module("icmp").section(settings)


def test_shared_probe_code_writes_only_declared_metrics() -> None:
    """The probes' shared modules (client, network helpers) write nothing a kind does not declare."""
    declared = {family.name for kind in KINDS for family in kind.metrics} | COMMON
    for path in sorted((ROOT / "exporter" / "probes").glob("*.py")):
        written = set(re.findall(r'"(probe_[a-z0-9_]+)"', path.read_text(encoding="utf-8")))
        assert written <= declared, f"{path.name}: undeclared {sorted(written - declared)}"


def test_a_service_of_a_module_of_unknown_kind_is_one_located_error() -> None:
    text = (
        "modules:\n  ftp_banner:\n    prober: ftp\n"
        "services:\n  - {name: a, module: ftp_banner, target: 'x:21'}\n"
    )
    with pytest.raises(config.ConfigError) as err:
        config.parse_config(text)
    assert [issue.path for issue in err.value.issues] == ["modules.ftp_banner.prober"]


def test_kinds_without_a_target_are_known_by_name() -> None:
    """push needs no target; every other kind does (the registry says which)."""
    assert [kind.name for kind in KINDS if not kind.needs_target] == ["push"]
    with pytest.raises(config.ConfigError) as err:
        config.parse_config("services:\n  - {name: a, prober: tcp}\n")
    assert [issue.path for issue in err.value.issues] == ["services[0].target"]


# Run in a fresh interpreter: the test process has imported every kind already.
LAZY_KINDS_SCRIPT = """
import asyncio, sys
import exporter.workers
from exporter.modules import Module
from exporter.probes import ProbeDeps, probers
from exporter.runner import run_probe

def loaded():
    return " ".join(m for m in ("aiohttp", "cryptography", "dns", "h2", "wsproto") if m in sys.modules)

asyncio.run(run_probe("http://127.0.0.1:1/", Module("http"), 1.0))
print(loaded())
table = probers(ProbeDeps())
assert table.get("nosuch") is None
assert table.get("dns") is not None
print(loaded())
"""


def test_a_kind_loads_its_own_libraries_only_when_it_runs() -> None:
    """A probe worker that runs HTTP probes never imports dnspython, h2, wsproto, aiohttp or cryptography."""
    done = subprocess.run(
        [sys.executable, "-c", LAZY_KINDS_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["", "dns"]
