"""The Kubernetes manifests: schemas, hardening, embedded configs, sharding and generated files."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml

from exporter.config import Config, parse_config, parse_service_file
from exporter.sharding import Shard, parse_shard_index

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "kubernetes"
# The oldest Kubernetes the manifests promise to work on, and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.29", ".".join(kubernetes_validate.latest_version().split(".")[:2]))
MONITORING_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
# Files a kustomization deliberately leaves out: alternatives a user swaps in.
ALTERNATIVES = {"monitoring/servicemonitor.yaml"}
EXPORTER_PORT = 9715
# The Prometheus Operator's RelabelConfig and Rule fields.
RELABEL_KEYS = {"action", "sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement"}
RULE_KEYS = {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
GROUP_KEYS = {"name", "interval", "rules", "limit", "partial_response_strategy", "query_offset", "labels"}


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBERNETES.rglob("*.yaml") if p.name != "kustomization.yaml")


def documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in manifest_files() for doc in yaml.safe_load_all(path.read_text()) if doc]


def doc_id(item: tuple[Path, dict[str, Any]]) -> str:
    path, doc = item
    return f"{path.relative_to(KUBERNETES)}:{doc['kind']}/{doc['metadata']['name']}"


DOCUMENTS = documents()
WORKLOADS = [item for item in DOCUMENTS if item[1]["kind"] in WORKLOAD_KINDS]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in DOCUMENTS if doc["kind"] == kind]


def containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def exporter_containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in workload["spec"]["template"]["spec"]["containers"] if "outage-exporter" in c["image"]]


def flags(container: dict[str, Any]) -> dict[str, str]:
    """The container's ``--name=value`` arguments."""
    return dict(arg.removeprefix("--").split("=", 1) for arg in container.get("args", []) if "=" in arg)


def same_dir(path: Path, kind: str, name: str) -> dict[str, Any] | None:
    for other, doc in DOCUMENTS:
        if other.parent == path.parent and doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    return None


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kubernetes_generate", KUBERNETES / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_directory_has_manifests() -> None:
    """The four layouts exist and hold what they promise."""
    kinds: dict[str, set[str]] = {}
    for path, doc in DOCUMENTS:
        kinds.setdefault(path.relative_to(KUBERNETES).parts[0], set()).add(doc["kind"])
    assert kinds["sidecar"] >= {"Deployment", "ConfigMap"}
    assert kinds["standalone"] >= {"Deployment", "Service", "ConfigMap"}
    assert kinds["sharded"] >= {"StatefulSet", "Service", "ConfigMap"}
    assert kinds["monitoring"] >= {"PodMonitor", "ServiceMonitor", "PrometheusRule", "ConfigMap"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("item", DOCUMENTS, ids=doc_id)
def test_manifests_validate_against_kubernetes_schemas(
    item: tuple[Path, dict[str, Any]], version: str
) -> None:
    """Every built-in object passes the strict (no unknown fields) schema, offline."""
    _, doc = item
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        # The schemas cover built-in kinds only; the operator's kinds get the structural
        # checks below instead.
        assert doc["kind"] in MONITORING_KINDS, f"no schema for {doc_id(item)}"
    except kubernetes_validate.ValidationError as err:
        where = ".".join(str(p) for p in err.path)
        pytest.fail(f"{doc_id(item)} fails the Kubernetes {err.version} schema at {where}: {err.message}")


def check_scrape_endpoint(endpoint: dict[str, Any]) -> None:
    assert endpoint["port"] == "http-metrics"
    assert endpoint.get("path", "/metrics") == "/metrics"
    assert endpoint["honorLabels"] is True
    relabelings = endpoint["relabelings"]
    for relabel in relabelings:
        assert set(relabel) <= RELABEL_KEYS, relabel
    targets = {r["targetLabel"]: r for r in relabelings if "targetLabel" in r}
    # The target's location comes from the pod label the exporter's --location comes from.
    assert targets["location"]["sourceLabels"] == ["__meta_kubernetes_pod_label_outage_exporter_location"]
    # The bundled rules select this job.
    assert targets["job"]["replacement"] == "outage-exporter"
    assert 'job="outage-exporter"' in (ROOT / "prometheus/rules/outage-exporter.rules.yml").read_text()


@pytest.mark.parametrize("doc", of_kind("PodMonitor") + of_kind("ServiceMonitor"), ids=lambda d: d["kind"])
def test_monitors_honor_labels_and_set_location_and_job(doc: dict[str, Any]) -> None:
    """Monitors scrape http-metrics with honorLabels, location from the pod label, job outage-exporter."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["metadata"]["name"]
    spec = doc["spec"]
    assert spec["selector"].get("matchLabels") or spec["selector"].get("matchExpressions")
    endpoints = spec["podMetricsEndpoints"] if doc["kind"] == "PodMonitor" else spec["endpoints"]
    assert endpoints
    for endpoint in endpoints:
        check_scrape_endpoint(endpoint)


def test_podmonitor_selects_every_exporter_pod() -> None:
    """Each example's exporter pods match the PodMonitor's selector and expose http-metrics."""
    (monitor,) = of_kind("PodMonitor")
    (expression,) = monitor["spec"]["selector"]["matchExpressions"]
    assert expression["operator"] == "Exists"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    for _, workload in WORKLOADS:
        if exporter_containers(workload):
            assert expression["key"] in workload["spec"]["template"]["metadata"]["labels"]


def test_servicemonitor_selects_every_exporter_service() -> None:
    """The ServiceMonitor alternative matches the standalone and sharded Services."""
    (monitor,) = of_kind("ServiceMonitor")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    services = of_kind("Service")
    assert services
    for service in services:
        assert wanted.items() <= service["metadata"]["labels"].items()


def source_groups() -> list[Any]:
    return [
        group
        for path in sorted((ROOT / "prometheus/rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
    ]


def test_prometheus_rule_is_well_formed() -> None:
    """The PrometheusRule has the operator's shape: named groups of record or alert rules with expr."""
    (rule,) = of_kind("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["name"] == "outage-exporter"
    assert set(rule["spec"]) == {"groups"}
    names = [group["name"] for group in rule["spec"]["groups"]]
    assert len(names) == len(set(names)), "group names must be unique"
    for group in rule["spec"]["groups"]:
        assert set(group) <= GROUP_KEYS
        assert group["rules"]
        for entry in group["rules"]:
            assert set(entry) <= RULE_KEYS, entry
            assert ("record" in entry) != ("alert" in entry), entry
            assert isinstance(entry["expr"], str | int) and str(entry["expr"]).strip()
            if "alert" in entry:
                assert entry["labels"]["severity"]


def test_prometheus_rule_groups_equal_the_source_rule_files() -> None:
    """spec.groups is exactly prometheus/rules/*.yml's groups, in file-name order."""
    (rule,) = of_kind("PrometheusRule")
    assert source_groups(), "no rule files found"
    assert rule["spec"]["groups"] == source_groups()


def test_dashboard_configmaps_hold_every_dashboard_unchanged() -> None:
    """One ConfigMap per grafana/dashboards/*.json, labelled for Grafana's sidecar, byte for byte."""
    dashboards = {p.name: p.read_text() for p in sorted((ROOT / "grafana/dashboards").glob("*.json"))}
    found = {}
    for doc in of_kind("ConfigMap"):
        if doc["metadata"].get("labels", {}).get("grafana_dashboard") is not None:
            assert doc["metadata"]["labels"]["grafana_dashboard"] == "1"
            # A ConfigMap holds at most 1 MiB.
            assert len(json.dumps(doc).encode()) < 1024 * 1024
            found.update(doc["data"])
    assert found == dashboards
    for text in found.values():
        json.loads(text)


def test_generated_files_are_up_to_date() -> None:
    """Regenerating from the rules and dashboards gives the committed files exactly."""
    diffs = load_generator().stale(ROOT)
    assert not diffs, "stale generated files; run `python kubernetes/generate.py`:\n" + "\n".join(diffs)


def test_generator_check_reports_a_changed_source(tmp_path: Path) -> None:
    """--check fails after a rule changes and passes again once the files are regenerated."""
    generator = load_generator()
    for source in ("prometheus/rules", "grafana/dashboards"):
        if (ROOT / source).exists():
            shutil.copytree(ROOT / source, tmp_path / source)
    assert generator.main(["--check", "--root", str(tmp_path)]) == 1, "missing files must count as stale"
    assert generator.main(["--root", str(tmp_path)]) == 0
    assert generator.main(["--check", "--root", str(tmp_path)]) == 0
    rules = tmp_path / "prometheus/rules/outage-exporter.rules.yml"
    rules.write_text(rules.read_text().replace("for: 1m", "for: 3m") + "\n# changed\n")
    alerts = tmp_path / "prometheus/rules/outage-exporter.alerts.yml"
    alerts.write_text(alerts.read_text().replace("for: 1m", "for: 3m", 1))
    assert generator.main(["--check", "--root", str(tmp_path)]) == 1
    assert generator.main(["--root", str(tmp_path)]) == 0
    assert generator.main(["--check", "--root", str(tmp_path)]) == 0
    regenerated = yaml.safe_load((tmp_path / generator.RULE_OUTPUT).read_text())
    assert any(rule.get("for") == "3m" for group in regenerated["spec"]["groups"] for rule in group["rules"])


def test_generator_runs_as_a_script() -> None:
    """`python kubernetes/generate.py --check` exits 0 on the committed tree."""
    done = subprocess.run(
        [sys.executable, str(KUBERNETES / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def effective(container: dict[str, Any], pod: dict[str, Any], key: str) -> Any:
    """A security setting as the kubelet applies it: the container's, else the pod's."""
    return container.get("securityContext", {}).get(key, pod.get("securityContext", {}).get(key))


def container_ids(item: tuple[Path, dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    _, workload = item
    pod = workload["spec"]["template"]["spec"]
    return [(f"{doc_id(item)}/{c['name']}", c, pod) for c in containers(workload)]


ALL_CONTAINERS = [entry for item in WORKLOADS for entry in container_ids(item)]


@pytest.mark.parametrize(("name", "container", "pod"), ALL_CONTAINERS, ids=[c[0] for c in ALL_CONTAINERS])
def test_every_container_is_hardened(name: str, container: dict[str, Any], pod: dict[str, Any]) -> None:
    """Non-root, read-only root, no escalation, no capabilities, requests and limits."""
    assert effective(container, pod, "runAsNonRoot") is True
    assert effective(container, pod, "runAsUser") not in (None, 0)
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context.get("privileged", False) is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert not context["capabilities"].get("add")
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    resources = container["resources"]
    for resource in ("cpu", "memory"):
        request = parse_quantity(resources["requests"][resource])
        limit = parse_quantity(resources["limits"][resource])
        assert 0 < request <= limit, f"{resource}: request {request} above limit {limit}"


_UNITS = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def parse_quantity(text: str | int) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|k|M|G|Ki|Mi|Gi)?", str(text))
    assert match, f"unexpected quantity {text!r}"
    return float(match.group(1)) * _UNITS[match.group(2) or ""]


EXPORTERS = [(doc_id(item), item) for item in WORKLOADS if exporter_containers(item[1])]


@pytest.mark.parametrize(("name", "item"), EXPORTERS, ids=[e[0] for e in EXPORTERS])
def test_exporter_containers_serve_probes_and_metrics(name: str, item: tuple[Path, dict[str, Any]]) -> None:
    """Readiness on /-/ready and liveness on /-/healthy, metrics on 9715 named http-metrics."""
    for container in exporter_containers(item[1]):
        (port,) = [p for p in container["ports"] if p["name"] == "http-metrics"]
        assert port["containerPort"] == EXPORTER_PORT
        assert flags(container)["web.listen-address"] == f":{EXPORTER_PORT}"
        for probe, path in (("readinessProbe", "/-/ready"), ("livenessProbe", "/-/healthy")):
            get = container[probe]["httpGet"]
            assert get["path"] == path
            assert get["port"] in ("http-metrics", EXPORTER_PORT)


@pytest.mark.parametrize(("name", "item"), EXPORTERS, ids=[e[0] for e in EXPORTERS])
def test_exporter_location_comes_from_the_pod_label(name: str, item: tuple[Path, dict[str, Any]]) -> None:
    """--location reads the label that the PodMonitor copies to the target, so the two agree."""
    _, workload = item
    labels = workload["spec"]["template"]["metadata"]["labels"]
    for container in exporter_containers(workload):
        assert flags(container)["location"] == "$(LOCATION)"
        (env,) = [e for e in container["env"] if e["name"] == "LOCATION"]
        assert env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['outage-exporter/location']"
        assert labels["outage-exporter/location"]


@pytest.mark.parametrize(("name", "item"), EXPORTERS, ids=[e[0] for e in EXPORTERS])
def test_exporter_pods_allow_unprivileged_icmp(name: str, item: tuple[Path, dict[str, Any]]) -> None:
    """The pod opens ping sockets to every group, so ICMP needs no NET_RAW."""
    sysctls = item[1]["spec"]["template"]["spec"]["securityContext"]["sysctls"]
    assert {"name": "net.ipv4.ping_group_range", "value": "0 2147483647"} in sysctls


def mounted_config(
    item: tuple[Path, dict[str, Any]], container: dict[str, Any]
) -> tuple[dict[str, str], str]:
    """The data of the ConfigMap that holds the container's --config.file, and the file's key in it."""
    path, workload = item
    config_file = Path(flags(container)["config.file"])
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == config_file.parent]
    # A directory mount: a subPath mount would never see ConfigMap updates.
    assert "subPath" not in mount
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    configmap = same_dir(path, "ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    assert configmap is not None, "the config's ConfigMap is not beside the workload"
    return configmap["data"], config_file.name


def load_mounted(data: dict[str, str], key: str) -> tuple[Config, int]:
    """Parse the config and every service file its globs find among the ConfigMap's keys."""
    config = parse_config(data[key], key)
    count = len(config.services)
    found = {key}
    for pattern in config.service_files:
        for name in sorted(n for n in data if fnmatch.fnmatch(n, pattern)):
            count += len(parse_service_file(data[name], name, config))
            found.add(name)
    assert found == set(data), f"keys no config reads: {sorted(set(data) - found)}"
    return config, count


@pytest.mark.parametrize(("name", "item"), EXPORTERS, ids=[e[0] for e in EXPORTERS])
def test_embedded_exporter_configs_load(name: str, item: tuple[Path, dict[str, Any]]) -> None:
    """The config each exporter mounts, and its discovered service files, pass the exporter's loader."""
    for container in exporter_containers(item[1]):
        data, key = mounted_config(item, container)
        config, count = load_mounted(data, key)
        assert count > 0
        # --location always overrides the file's, so the file does not pretend to know it.
        assert config.global_.location == "unknown"
        assert flags(container)["config.auto-reload-interval"] == "10s"


def test_statefulset_shards_by_ordinal() -> None:
    """Each replica takes its shard from its hostname, and the shard count equals replicas."""
    statefulsets = [item for item in WORKLOADS if item[1]["kind"] == "StatefulSet"]
    assert statefulsets
    for path, workload in statefulsets:
        replicas = workload["spec"]["replicas"]
        assert replicas == 3
        for container in exporter_containers(workload):
            args = flags(container)
            assert args["shard.index"] == "hostname"
            assert int(args["shard.count"]) == replicas
            name = workload["metadata"]["name"]
            shards = [Shard(parse_shard_index("hostname", f"{name}-{i}"), replicas) for i in range(replicas)]
            assert [s.index for s in shards] == list(range(replicas))
            load_mounted(*mounted_config((path, workload), container))
        governing = same_dir(path, "Service", workload["spec"]["serviceName"])
        assert governing is not None and governing["spec"]["clusterIP"] == "None"


def test_sharded_services_are_split_between_every_replica() -> None:
    """With the example's services, every shard probes some and each service has exactly one shard."""
    ((path, workload),) = [item for item in WORKLOADS if item[1]["kind"] == "StatefulSet"]
    (container,) = exporter_containers(workload)
    data, key = mounted_config((path, workload), container)
    config = parse_config(data[key], key)
    names = [s.name for s in config.services]
    for pattern in config.service_files:
        for file in (n for n in data if fnmatch.fnmatch(n, pattern)):
            names += [s.name for s in parse_service_file(data[file], file, config)]
    count = workload["spec"]["replicas"]
    owners = [[i for i in range(count) if Shard(i, count).owns(name)] for name in names]
    assert all(len(o) == 1 for o in owners)
    assert {o[0] for o in owners} == set(range(count))


@pytest.mark.parametrize("service", of_kind("Service"), ids=lambda s: s["metadata"]["name"])
def test_services_reach_the_exporter_port(service: dict[str, Any]) -> None:
    """A Service exposes 9715 as http-metrics and selects the pods of a workload that serves it."""
    (port,) = service["spec"]["ports"]
    assert port == {"name": "http-metrics", "port": EXPORTER_PORT, "targetPort": "http-metrics"}
    selector = service["spec"]["selector"].items()
    matched = [w for _, w in WORKLOADS if selector <= w["spec"]["template"]["metadata"]["labels"].items()]
    assert len(matched) == 1
    assert exporter_containers(matched[0])


def kustomize_dirs() -> list[Path]:
    return sorted({p.parent for p in manifest_files()})


@pytest.mark.parametrize("directory", kustomize_dirs(), ids=lambda p: p.name)
def test_kustomization_lists_the_directory(directory: Path) -> None:
    """Each directory's kustomization.yaml lists files that exist, and every manifest but alternatives."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    for entry in listed:
        assert (directory / entry).is_file(), f"{directory.name}/kustomization.yaml lists missing {entry}"
    present = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
    left_out = {f"{directory.name}/{name}" for name in present - set(listed)}
    assert left_out <= ALTERNATIVES


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("directory", kustomize_dirs(), ids=lambda p: p.name)
def test_kustomize_builds(directory: Path) -> None:
    """Where kubectl is installed, `kubectl kustomize` builds each directory."""
    done = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    built = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert len(built) == sum(
        1
        for path, _ in DOCUMENTS
        if path.parent == directory and f"{directory.name}/{path.name}" not in ALTERNATIVES
    )
