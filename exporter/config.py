"""The config file: parsed once into frozen objects, with every error located by YAML path and line."""

from __future__ import annotations

import copyreg
import dataclasses
import difflib
import hashlib
import math
import pickle
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import yaml

from exporter.cel import CELProgram
from exporter.errors import ConfigError, ConfigIssue
from exporter.maintenance import MaintenanceWindow, Schedule, Timestamp, TimeZone
from exporter.modules import Module, Problems, check_module
from exporter.pagesettings import StatusPageConfig
from exporter.probes import PROBERS
from exporter.types import (
    Duration,
    GoDuration,
    HostPattern,
    ProxyURL,
    Regex,
    Secret,
    StatusRange,
    format_duration,
    redact_url,
)
from exporter.yamlread import (
    Reader,
    compose,
    describe,
    find_node,
    is_invalid,
    line_of,
    mapping_items,
    yaml_key,
)

DEFAULT_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SERVICE_NAME_RE = re.compile(r"^[a-zA-Z0-9_.-]+$")
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Labels the exporter sets itself on probe_service_info; user labels may not shadow them.
RESERVED_LABELS = frozenset({"service", "group", "location", "target", "prober", "module", "job", "instance"})


@dataclass(frozen=True)
class GlobalConfig:
    interval: Duration = Duration(30)
    timeout: Duration = Duration(10)
    location: str = "default"
    max_concurrency: int = 1000
    latency_buckets: tuple[float, ...] = DEFAULT_LATENCY_BUCKETS

    def check(self) -> object:
        if self.interval <= 0:
            yield "interval", "must be greater than 0s"
        if self.timeout <= 0:
            yield "timeout", "must be greater than 0s"
        elif self.timeout >= self.interval:
            yield "timeout", f"must be less than interval {self.interval}, got {self.timeout}"
        if self.max_concurrency < 1:
            yield "max_concurrency", f"must be at least 1, got {self.max_concurrency}"
        # +Inf is implied; listing it (or NaN) would write a second le="+Inf" and break the scrape.
        if any(not math.isfinite(b) for b in self.latency_buckets):
            yield "latency_buckets", "must be finite numbers (the +Inf bucket is always added)"
        elif list(self.latency_buckets) != sorted(set(self.latency_buckets)) or any(
            b <= 0 for b in self.latency_buckets
        ):
            yield "latency_buckets", "must be positive and strictly increasing"


@dataclass(frozen=True)
class Objectives:
    availability: float | None = None
    latency: Duration | None = None

    def check(self) -> object:
        if self.availability is not None and not 0 < self.availability < 1:
            yield "availability", f"must be between 0 and 1 (exclusive), got {self.availability}"
        if self.latency is not None and self.latency <= 0:
            yield "latency", "must be greater than 0s"


@dataclass(frozen=True)
class ServiceSpec:
    """A service as written in the file, before module and defaults are applied."""

    name: str
    target: str = ""  # push services have none
    group: str = "default"
    module: str | None = None
    prober: str | None = None
    interval: Duration | None = None
    timeout: Duration | None = None
    retries: int | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    objectives: Objectives = field(default_factory=Objectives)

    @property
    def inline(self) -> dict[str, object]:
        """The kinds' settings written in the service itself, by kind name."""
        return {kind: value for kind in PROBERS if (value := getattr(self, kind, None)) is not None}


@dataclass(frozen=True)
class _ModuleFields:
    """A module's own keys; the kinds' sections are added from the registry (ModuleFile)."""

    prober: str
    timeout: GoDuration | None = None
    retries: int = 0


def _with_kind_sections(name: str, base: type) -> type:
    """``base`` plus one optional field per registered kind, for the YAML reader.

    The class is made here, from PROBERS, so the file format follows the registry.
    """
    fields = [(kind.name, kind.settings | None, field(default=None)) for kind in PROBERS.values()]
    cls = dataclasses.make_dataclass(name, fields, bases=(base,), frozen=True)
    cls.__module__ = __name__  # configs cross to child processes; pickle finds it by name
    return cls


# A service and a module as written in the file (the reader's schema).
ServiceFile = _with_kind_sections("ServiceFile", ServiceSpec)
ModuleFile = _with_kind_sections("ModuleFile", _ModuleFields)


def _module_of(written: Any) -> Module:
    sections = {kind: value for kind in PROBERS if (value := getattr(written, kind)) is not None}
    return Module(written.prober, written.timeout, written.retries, MappingProxyType(sections))


def module_problems(module: Module) -> Problems:
    """Every check of a module: its own fields, and its kind's from the registry."""
    kind = PROBERS.get(module.prober)
    if kind is None:
        yield "prober", f"unknown prober {module.prober!r}; expected one of {', '.join(PROBERS)}"
    yield from check_module(module)
    if kind is not None:
        for key, message in kind.required(module.section(kind.settings)):
            yield (f"{kind.name}.{key}" if key else kind.name), message


@dataclass(frozen=True)
class Service:
    """A service ready to probe: its module resolved and its interval and timeout settled."""

    name: str
    group: str
    target: str
    module_name: str  # "" when the settings are inline
    module: Module
    interval: float
    timeout: float
    labels: Mapping[str, str]
    objectives: Objectives
    latency_buckets: tuple[float, ...]


@dataclass(frozen=True)
class Config:
    global_: GlobalConfig
    probe_allowlist: tuple[HostPattern, ...]
    modules: Mapping[str, Module]
    services: tuple[Service, ...]
    source: str | None = None
    # Globs of files that list more services (file discovery), relative to the config file.
    service_files: tuple[str, ...] = ()
    # A digest of each service's settings, by name, when share_equal_parts made them: it tells
    # a reload which services did not change without comparing their modules field by field.
    fingerprints: Mapping[str, bytes] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False
    )
    maintenance: tuple[MaintenanceWindow, ...] = ()
    status_page: StatusPageConfig = field(default_factory=StatusPageConfig)

    def service(self, name: str) -> Service | None:
        for service in self.services:
            if service.name == name:
                return service
        return None


def latency_buckets(base: tuple[float, ...], objective: float | None) -> tuple[float, ...]:
    """Histogram bounds: the configured ones plus the service's latency objective, exactly."""
    if objective is None:
        return base
    return tuple(sorted(set(base) | {float(objective)}))


def parse_config(text: str, file: str | None = None) -> Config:
    """Parse config text; raise ConfigError listing every problem at once."""
    root, issues = compose(text, file)
    if issues:
        raise ConfigError(issues, file)
    reader = Reader(file)
    # Sections and services are read one by one so that one broken service
    # does not hide the problems of the others.
    spec = _read_sections(root, reader)
    nodes = _section_nodes(root)
    for name, module in spec.modules.items():
        module_node = find_node(nodes.get("modules"), name)
        for key, message in module_problems(module):
            reader.error(f"modules.{name}.{key}", find_node(module_node, key) or module_node, message)
    services = _resolve_services(spec, reader)
    _check_status_sections(spec, services, nodes, reader)
    if reader.issues:
        raise ConfigError(sorted(reader.issues, key=_issue_order), file)
    return Config(
        global_=spec.global_,
        probe_allowlist=spec.probe_allowlist,
        modules=spec.modules,
        services=tuple(services),
        source=file,
        service_files=spec.service_files,
        maintenance=spec.maintenance,
        status_page=spec.status_page,
    )


def _check_status_sections(
    spec: _Sections, services: list[Service], nodes: dict[str, yaml.Node], reader: Reader
) -> None:
    """Checks of maintenance and status_page that need the services: names must exist.

    With service_files, services may arrive later, so unknown names are left alone then.
    """
    windows_node = nodes.get("maintenance")
    if not spec.service_files:
        names = {s.name for s in services}
        groups = {s.group for s in services}
        for index, window in enumerate(spec.maintenance):
            node = windows_node.value[index] if isinstance(windows_node, yaml.SequenceNode) else None
            for key, wanted, known in (
                ("services", window.services, names),
                ("groups", window.groups, groups),
            ):
                listed = find_node(node, key)
                for position, name in enumerate(wanted):
                    if name not in known:
                        hint = difflib.get_close_matches(name, sorted(known), n=1)
                        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                        at = listed.value[position] if isinstance(listed, yaml.SequenceNode) else listed
                        what = "service" if key == "services" else "group"
                        reader.error(
                            f"maintenance[{index}].{key}[{position}]", at, f"no {what} {name!r}{extra}"
                        )
    labels_node = find_node(nodes.get("status_page"), "public.labels")
    for position, label in enumerate(spec.status_page.public.labels):
        if not LABEL_NAME_RE.match(label):
            at = labels_node.value[position] if isinstance(labels_node, yaml.SequenceNode) else labels_node
            message = f"invalid label name {label!r}: must match [a-zA-Z_][a-zA-Z0-9_]*"
            reader.error(f"status_page.public.labels[{position}]", at, message)


def parse_service_file(text: str, file: str, config: Config) -> tuple[Service, ...]:
    """Services listed in a discovered file: a YAML or JSON list, or a mapping with ``services``.

    They use the modules and defaults of ``config``; raise ConfigError with every problem.
    """
    root, issues = compose(text, file)
    if issues:
        raise ConfigError(issues, file)
    reader = Reader(file)
    node = root
    prefix = ""
    if isinstance(root, yaml.MappingNode):
        node = find_node(root, "services")
        prefix = "services"
        unknown = [k for k, _ in mapping_items(root) if getattr(k, "value", None) != "services"]
        for key in unknown:
            reader.error(str(key.value), key, "unknown key (a service file holds a list of services)")
    specs = [] if node is None else _read_services(node, reader, prefix)
    sections = _Sections(config.global_, config.probe_allowlist, config.modules, specs, ())
    services = _resolve_services(sections, reader, prefix)
    if reader.issues:
        raise ConfigError(sorted(reader.issues, key=_issue_order), file)
    return tuple(services)


def _issue_order(issue: ConfigIssue) -> tuple[int, str]:
    return (issue.line or 0, issue.path)


@dataclass(frozen=True)
class _Sections:
    global_: GlobalConfig
    probe_allowlist: tuple[HostPattern, ...]
    modules: Mapping[str, Module]
    # (index in the file, the spec or None when it was invalid, its node)
    services: list[tuple[int, ServiceSpec | None, yaml.Node]]
    service_files: tuple[str, ...]
    maintenance: tuple[MaintenanceWindow, ...] = ()
    status_page: StatusPageConfig = field(default_factory=StatusPageConfig)


_SECTION_TYPES: dict[str, object] = {
    "global": GlobalConfig,
    "probe_allowlist": tuple[HostPattern, ...],
    "modules": Mapping[str, ModuleFile],  # type: ignore[valid-type]
    "service_files": tuple[str, ...],
    "maintenance": tuple[MaintenanceWindow, ...],
    "status_page": StatusPageConfig,
}


def _read_sections(root: yaml.Node | None, reader: Reader) -> _Sections:
    values: dict[str, object] = {
        "global": GlobalConfig(),
        "probe_allowlist": (),
        "modules": MappingProxyType({}),
        "service_files": (),
        "maintenance": (),
        "status_page": StatusPageConfig(),
    }
    services: list[tuple[int, ServiceSpec | None, yaml.Node]] = []
    if root is not None and root.tag != "tag:yaml.org,2002:null":
        if not isinstance(root, yaml.MappingNode):
            reader.error("", root, f"the config must be a mapping, got {describe(root)}")
            raise ConfigError(reader.issues, reader.file)
        for key_node, node in mapping_items(root):
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else ""
            if key == "services":
                services = _read_services(node, reader)
            elif key in _SECTION_TYPES:
                value = reader.read(_SECTION_TYPES[key], node, key)
                if key == "modules" and not is_invalid(value):
                    value = MappingProxyType({name: _module_of(m) for name, m in value.items()})
                if not is_invalid(value):
                    values[key] = value
            else:
                choices = ["services", *_SECTION_TYPES]
                hint = difflib.get_close_matches(str(key), choices, n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                reader.error(str(key), key_node, f"unknown key{extra}")
    return _Sections(
        global_=values["global"],  # type: ignore[arg-type]
        probe_allowlist=values["probe_allowlist"],  # type: ignore[arg-type]
        modules=values["modules"],  # type: ignore[arg-type]
        services=services,
        service_files=values["service_files"],  # type: ignore[arg-type]
        maintenance=values["maintenance"],  # type: ignore[arg-type]
        status_page=values["status_page"],  # type: ignore[arg-type]
    )


def _read_services(
    node: yaml.Node, reader: Reader, prefix: str = "services"
) -> list[tuple[int, ServiceSpec | None, yaml.Node]]:
    if node.tag == "tag:yaml.org,2002:null":
        return []
    if not isinstance(node, yaml.SequenceNode):
        reader.error(prefix or "<document>", node, f"must be a list, got {describe(node)}")
        return []
    out: list[tuple[int, ServiceSpec | None, yaml.Node]] = []
    for index, item in enumerate(node.value):
        spec = reader.read(ServiceFile, item, f"{prefix}[{index}]")
        # An invalid service stays in the list so a duplicate of its name is still reported.
        out.append((index, None if is_invalid(spec) else spec, item))
    return out


def load_config(path: str | Path) -> Config:
    """Read and parse a config file."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError([ConfigIssue("", None, f"cannot read {name}: {reason}", name)], name) from None
    return parse_config(text, name)


T = TypeVar("T")


def share_equal_parts(config: Config) -> Config:
    """The same config with equal modules, objectives, labels and buckets held once.

    Services written with the same inline settings each get their own copy from the parser;
    sharing them makes 10,000 services a fraction of the memory and quick to unpickle. Each
    service's fingerprint is recorded too (see ``keep_unchanged``).
    """
    seen: dict[object, Any] = {}

    def shared(key: object, value: T) -> T:
        return typing.cast(T, seen.setdefault(key, value))

    services = []
    fingerprints: dict[str, bytes] = {}
    for service in config.services:
        module_bytes = pickle.dumps(service.module)
        labels = tuple(service.labels.items())  # in written order, which the output keeps
        services.append(
            dataclasses.replace(
                service,
                module=shared(module_bytes, service.module),
                objectives=shared(service.objectives, service.objectives),
                labels=shared(("labels", *labels), service.labels),
                latency_buckets=shared(service.latency_buckets, service.latency_buckets),
            )
        )
        settings = (service.name, service.group, service.target, service.module_name, service.interval)
        rest = pickle.dumps((*settings, service.timeout, labels, service.objectives, service.latency_buckets))
        digest = hashlib.blake2b(module_bytes + rest, digest_size=16)
        fingerprints[service.name] = digest.digest()
    return dataclasses.replace(config, services=tuple(services), fingerprints=MappingProxyType(fingerprints))


def keep_unchanged(config: Config, previous: Config) -> Config:
    """``config`` with each service whose fingerprint did not change replaced by its old object.

    Comparing 10,000 services field by field takes the event loop a good part of a second; after
    this, unchanged services are the very objects the scheduler and the store already hold.
    """
    services = reuse_unchanged(config.services, config.fingerprints, previous.services, previous.fingerprints)
    return config if services is config.services else dataclasses.replace(config, services=services)


def reuse_unchanged(
    services: tuple[Service, ...],
    fingerprints: Mapping[str, bytes],
    old_services: tuple[Service, ...],
    old_fingerprints: Mapping[str, bytes],
) -> tuple[Service, ...]:
    """``services`` with each one whose fingerprint matches its old one's replaced by the old object."""
    if not fingerprints or not old_fingerprints:
        return services
    before = {service.name: service for service in old_services}
    kept = []
    for service in services:
        fingerprint = fingerprints.get(service.name)
        old = before.get(service.name)
        unchanged = fingerprint is not None and old_fingerprints.get(service.name) == fingerprint
        kept.append(old if unchanged and old is not None else service)
    return tuple(kept)


def _rebuild_mapping(items: dict[object, object]) -> Mapping[object, object]:
    return MappingProxyType(items)


def _reduce_mapping(mapping: Mapping[object, object]) -> tuple[object, tuple[dict[object, object]]]:
    return _rebuild_mapping, (dict(mapping),)


# Configs keep their mappings read-only; they pickle as plain dicts wrapped again on loading.
copyreg.pickle(MappingProxyType, _reduce_mapping)  # type: ignore[arg-type]


def _section_nodes(root: yaml.Node | None) -> dict[str, yaml.Node]:
    if not isinstance(root, yaml.MappingNode):
        return {}
    return {k.value: v for k, v in mapping_items(root) if isinstance(k, yaml.ScalarNode)}


def _needs_target(item: ServiceSpec, spec: _Sections) -> bool:
    """Whether the service's kind probes a target (a kind without one is known by its name)."""
    module = spec.modules.get(item.module or "")
    kind = PROBERS.get(module.prober if module is not None else item.prober or "")
    return kind is None or kind.needs_target


def _keys(node: yaml.Node) -> set[str]:
    if not isinstance(node, yaml.MappingNode):
        return set()
    return {str(k.value) for k, _ in mapping_items(node)}


class _ServiceErrors:
    """Reports a problem of one service at the line of the key it concerns."""

    def __init__(self, reader: Reader, path: str, node: yaml.Node) -> None:
        self.reader = reader
        self.path = path
        self.node = node

    def where(self, key: str) -> yaml.Node:
        """The node of a dotted key, or of its nearest ancestor that is written out."""
        parts = key.split(".")
        for end in range(len(parts), 0, -1):
            found = find_node(self.node, ".".join(parts[:end]))
            if found is not None:
                return found
        return self.node

    def __call__(self, key: str, message: str, at: yaml.Node | None = None) -> None:
        located = at or (self.where(key) if key else self.node)
        self.reader.error(f"{self.path}.{key}" if key else self.path, located, message)


def _resolve_services(spec: _Sections, reader: Reader, prefix: str = "services") -> list[Service]:
    seen: dict[str, int | None] = {}
    out: list[Service] = []
    for index, item, node in spec.services:
        path = f"{prefix}[{index}]"
        if item is None:
            name_node = find_node(node, "name")
            if isinstance(name_node, yaml.ScalarNode):
                name = str(name_node.value)
                if name in seen:
                    reader.error(
                        f"{path}.name",
                        name_node,
                        f"duplicate service name {name!r} (first on line {seen[name]})",
                    )
                seen.setdefault(name, line_of(name_node))
            continue

        error = _ServiceErrors(reader, path, node)
        where = error.where
        if not SERVICE_NAME_RE.match(item.name):
            error("name", f"must match [a-zA-Z0-9_.-]+, got {item.name!r}")
        if item.name in seen:
            error("name", f"duplicate service name {item.name!r} (first on line {seen[item.name]})")
        else:
            seen[item.name] = line_of(where("name"))
        if not item.target.strip() and _needs_target(item, spec):
            error("target", "is required" if "target" not in _keys(node) else "must not be empty")
        labels_node = where("labels")
        for label in item.labels:
            at = find_node(labels_node, label)
            if not LABEL_NAME_RE.match(label) or label.startswith("__"):
                message = f"invalid label name {label!r}: must match [a-zA-Z_][a-zA-Z0-9_]*"
                error(f"labels.{label}", message, at)
            elif label in RESERVED_LABELS:
                error(f"labels.{label}", f"label name {label!r} is reserved by the exporter", at)
        module = _service_module(item, spec, error)
        interval = float(item.interval if item.interval is not None else spec.global_.interval)
        timeout, origin = _service_timeout(item, module, spec)
        if item.interval is not None and item.interval <= 0:
            error("interval", "must be greater than 0s")
        elif timeout >= interval:
            key = "timeout" if origin == "timeout" else "interval"
            if key == "timeout":
                message = (
                    f"must be less than interval {format_duration(interval)}, got {format_duration(timeout)}"
                )
            else:
                message = (
                    f"must be greater than timeout {format_duration(timeout)} (from {origin}),"
                    f" got {format_duration(interval)}"
                )
            error(key, message)
        kind = PROBERS.get(module.prober) if module is not None else None
        if module is None or kind is None:
            continue  # a module of an unknown kind is reported where the module is defined
        out.append(
            Service(
                name=item.name,
                group=item.group,
                # A kind without a target (push: heartbeats) knows the service by its name.
                target=item.target.strip() if kind.needs_target else item.name,
                module_name=item.module or "",
                module=module,
                interval=interval,
                timeout=timeout,
                labels=item.labels,
                objectives=item.objectives,
                latency_buckets=latency_buckets(spec.global_.latency_buckets, item.objectives.latency),
            )
        )
    return out


def _service_module(item: ServiceSpec, spec: _Sections, error: _ServiceErrors) -> Module | None:
    written = item.inline
    inline = list(written)
    if item.module is not None and item.prober is not None:
        error("prober", "set either module or prober, not both")
        return None
    if item.module is not None:
        if inline:
            error(inline[0], f"inline {inline[0]} settings need prober, not module {item.module!r}")
            return None
        module = spec.modules.get(item.module)
        if module is None:
            known = ", ".join(sorted(spec.modules)) or "none defined"
            error("module", f"unknown module {item.module!r} (modules: {known})")
        elif item.retries is not None:
            module = dataclasses.replace(module, retries=item.retries)
            # Only the retries are the service's own; the module's problems are reported there.
            for key, message in check_module(module):
                error(key, message)
        return module
    if item.prober is None:
        error("", "needs module or prober")
        return None
    stray = [k for k in inline if k != item.prober]
    if stray:
        error(stray[0], f"{stray[0]} settings do not apply to prober {item.prober!r}")
        return None
    module = Module(
        prober=item.prober,
        timeout=item.timeout,
        retries=item.retries or 0,
        sections=MappingProxyType(written),
    )
    problems = list(module_problems(module))
    for key, message in problems:
        error(key, message)
    return None if problems else module


def _service_timeout(item: ServiceSpec, module: Module | None, spec: _Sections) -> tuple[float, str]:
    if item.timeout is not None:
        return float(item.timeout), "timeout"
    if module is not None and module.timeout is not None:
        return float(module.timeout), f"module {item.module}"
    return float(spec.global_.timeout), "global.timeout"


def _plain(value: object) -> object:
    """A config value as YAML data, secrets redacted and defaults left out."""
    if isinstance(value, ProxyURL):
        return str(value)  # the password hidden, the proxy's address kept
    if isinstance(value, Secret):
        return "<secret>"
    if isinstance(value, Duration):
        return str(value)
    if isinstance(value, Regex | CELProgram | HostPattern | StatusRange | Timestamp | Schedule | TimeZone):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, object] = {}
        for f in dataclasses.fields(value):
            current = getattr(value, f.name)
            if f.default is not dataclasses.MISSING:
                default: object = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = dataclasses.MISSING
            if current != default:
                # A URL option may carry a password (oauth2's token_url): shown redacted.
                shown = (
                    redact_url(current) if f.name.endswith("_url") and isinstance(current, str) else current
                )
                out[yaml_key(f)] = _plain(shown)
        return out
    return value


def _module_data(module: Module) -> dict[str, object]:
    data: dict[str, object] = {"prober": module.prober}
    if module.timeout is not None:
        data["timeout"] = str(module.timeout)
    section = _plain(module.sections.get(module.prober))
    if section:
        data[module.prober] = section
    return data


def dump_config(config: Config) -> str:
    """The running config as YAML, with every secret replaced by ``<secret>``."""
    services = []
    for s in config.services:
        entry: dict[str, object] = {"name": s.name, "group": s.group, "target": redact_url(s.target)}
        if s.module_name:
            entry["module"] = s.module_name
        else:
            entry.update(_module_data(s.module))
        entry["interval"] = format_duration(s.interval)
        entry["timeout"] = format_duration(s.timeout)
        if s.labels:
            entry["labels"] = dict(s.labels)
        objectives = _plain(s.objectives)
        if objectives:
            entry["objectives"] = objectives
        services.append(entry)
    data = {
        "global": _plain(config.global_) or {},
        "probe_allowlist": [str(p) for p in config.probe_allowlist],
        "modules": {name: _module_data(m) for name, m in config.modules.items()},
        "services": services,
    }
    if config.maintenance:
        data["maintenance"] = [_plain(window) for window in config.maintenance]
    status_page = _plain(config.status_page)
    if isinstance(status_page, dict) and status_page:
        if "prometheus_url" in status_page:
            status_page["prometheus_url"] = redact_url(config.status_page.prometheus_url)
        data["status_page"] = status_page
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
