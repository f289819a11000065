"""The docker-compose stack: its file, what it mounts, the image it builds and the demo target it probes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.stack import ROOT, Process, free_port

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEMO_TARGET = ROOT / "examples" / "demo-target" / "app.py"
SERVICES = {"exporter", "demo-target", "prometheus", "alertmanager", "grafana"}
# A bound on each subprocess and on the demo target's start; a safety net, not an expectation.
DEADLINE = 60.0
# The demo certificate must trip ProbeTLSCertificateExpiringSoon, which looks 14 days ahead.
SOON = 14 * 86400

# Build tools that must not reach the final image.
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|cc|make|build-essential|apt-get|apt|apk|dnf|yum)\b")

# Requests to 127.0.0.1 must not go through a proxy set in the environment.
LOCAL_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def binary(name: str, package: str) -> str:
    """Return the path of a required tool, failing (not skipping) when it is missing."""
    path = shutil.which(name)
    assert path is not None, f"{name} is not on PATH; install the Debian package {package}"
    return path


def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args], cwd=cwd, capture_output=True, text=True, timeout=DEADLINE, check=False
    )


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE_FILE.read_text()))


def service(name: str) -> dict[str, Any]:
    return dict(compose()["services"][name])


def bind_mounts(name: str) -> dict[str, Path]:
    """A service's bind mounts: container path to the repository path mounted there."""
    mounts = {}
    for volume in service(name).get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (ROOT / source).resolve()
    return mounts


def mirror_mounts(name: str, dest: Path) -> Path:
    """Copy what a service mounts to where it would see it, under ``dest``; return ``dest``."""
    for target, source in bind_mounts(name).items():
        where = dest / target.lstrip("/")
        where.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, where)
        else:
            shutil.copy(source, where)
    return dest


def host_path(name: str, container_path: str) -> Path:
    """The repository path a service sees at ``container_path`` through its bind mounts."""
    for target, source in bind_mounts(name).items():
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"{name} mounts nothing at {container_path}")


def exporter_config() -> dict[str, Any]:
    return dict(yaml.safe_load(host_path("exporter", "/etc/outage-exporter/config.yml").read_text()))


def prometheus_config() -> dict[str, Any]:
    return dict(yaml.safe_load(host_path("prometheus", "/etc/prometheus/prometheus.yml").read_text()))


# ---------------------------------------------------------------- the compose file


def test_compose_file_is_valid() -> None:
    """docker-compose accepts the file."""
    result = run(binary("docker-compose", "docker-compose"), "--file", COMPOSE_FILE, "config", "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_services() -> None:
    """The stack has its five services, the exporter built from the Dockerfile, ports on loopback only."""
    services = compose()["services"]
    assert set(services) == SERVICES
    assert services["exporter"]["build"] == "."
    for name, settings in services.items():
        for port in settings.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_mounted_paths_exist() -> None:
    """Every file and directory the stack mounts is in the repository."""
    for name in SERVICES:
        for target, source in bind_mounts(name).items():
            assert source.exists(), f"{name} mounts {source} at {target}, which does not exist"
            assert source.is_relative_to(ROOT), source


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """promtool accepts the Prometheus config as mounted, and finds both rule files through it."""
    root = mirror_mounts("prometheus", tmp_path)
    config = root / "etc" / "prometheus" / "prometheus.yml"
    result = run(binary("promtool", "prometheus"), "check", "config", config)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    rule_files = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
    assert f"SUCCESS: {len(rule_files)} rule files found" in output, output


def test_prometheus_scrapes_the_exporter() -> None:
    """Prometheus scrapes the exporter service as job outage-exporter, labelled with its location."""
    config = prometheus_config()
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "outage-exporter"]
    assert job["honor_labels"] is True
    (static,) = job["static_configs"]
    assert static["targets"] == ["exporter:9715"]
    assert static["labels"]["location"] == exporter_config()["global"]["location"]
    (alerting,) = config["alerting"]["alertmanagers"]
    assert alerting["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert host_path("alertmanager", "/etc/alertmanager/alertmanager.yml") == (
        ROOT / "prometheus" / "alertmanager.yml"
    )


def test_exporter_config_is_valid() -> None:
    """The exporter's compose config passes check-config and probes the demo target's ports."""
    path = host_path("exporter", "/etc/outage-exporter/config.yml")
    result = run(sys.executable, "-m", "exporter", "check-config", path)
    assert result.returncode == 0, result.stdout + result.stderr
    command = service("demo-target")["command"]
    ports = {command[command.index(flag) + 1].rsplit(":", 1)[1] for flag in ("--http", "--https")}
    demo = [s["target"] for s in exporter_config()["services"] if "demo-target" in s["target"]]
    assert demo, "the compose config probes nothing of the demo target"
    for target in demo:
        port = re.search(r"demo-target:(\d+)", target)
        assert port is None or port.group(1) in ports, f"{target} is not a port the demo target serves"
    assert "--cert-days" in command and float(command[command.index("--cert-days") + 1]) * 86400 < SOON


def test_grafana_provisioning_matches_mounts() -> None:
    """Grafana's provisioning finds the dashboards where they are mounted and a fixed-uid Prometheus."""
    provisioning = host_path("grafana", "/etc/grafana/provisioning")
    assert provisioning == ROOT / "grafana" / "provisioning"
    (provider_file,) = sorted((provisioning / "dashboards").glob("*.yml"))
    (provider,) = yaml.safe_load(provider_file.read_text())["providers"]
    assert provider["type"] == "file"
    dashboards = host_path("grafana", provider["options"]["path"])
    assert dashboards == ROOT / "grafana" / "dashboards"
    assert sorted(dashboards.glob("*.json")), "no dashboards where the provider looks"
    home = service("grafana")["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path("grafana", home).is_file(), home

    (datasource_file,) = sorted((provisioning / "datasources").glob("*.yml"))
    (datasource,) = yaml.safe_load(datasource_file.read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["uid"] == "outage-exporter-prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["isDefault"] is True
    # $__rate_interval is computed from the scrape interval Grafana is told.
    assert datasource["jsonData"]["timeInterval"] == prometheus_config()["global"]["scrape_interval"]


# ---------------------------------------------------------------- the Dockerfile


def instructions(text: str) -> list[tuple[str, str]]:
    """The Dockerfile's (INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    found: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        found.append((keyword.upper(), rest.strip()))
        current = ""
    return found


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's build stages, each a list of instructions starting with its FROM."""
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions(DOCKERFILE.read_text()):
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def arguments(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for kind, rest in stage if kind == keyword]


def test_dockerfile_builds_a_wheel_in_a_builder_stage() -> None:
    """The first stage copies the package from the repository and builds its wheel."""
    builder, *_ = stages()
    assert len(stages()) >= 2, "the Dockerfile must have a builder stage and a final stage"
    assert re.search(r"\bAS builder$", builder[0][1], re.IGNORECASE), builder[0]
    copied = " ".join(arguments(builder, "COPY"))
    assert "pyproject.toml" in copied and "exporter" in copied, copied
    assert any("pip wheel" in run_ for run_ in arguments(builder, "RUN")), arguments(builder, "RUN")


def test_dockerfile_final_stage() -> None:
    """The final stage is slim, installs the wheel offline, runs as a non-root user and checks health."""
    final = stages()[-1]
    assert re.match(r"python:\S*-slim\b", final[0][1]), final[0]
    runs = " ".join(arguments(final, "RUN"))
    assert "pip install" in runs and "--no-index" in runs, runs
    assert "from=builder" in runs or any("--from=builder" in c for c in arguments(final, "COPY")), runs
    assert not BUILD_TOOLS.search(runs), f"build tools in the final stage: {runs}"

    users = arguments(final, "USER")
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, users[-1]
    if not user.isdigit():
        assert "useradd" in runs and user in runs, f"user {user} is never created"

    (healthcheck,) = arguments(final, "HEALTHCHECK")
    assert "/-/healthy" in healthcheck and "python" in healthcheck, healthcheck
    assert arguments(final, "EXPOSE") == ["9715"]
    (entrypoint,) = arguments(final, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["outage-exporter", "--config.file=/etc/outage-exporter/config.yml"]


def test_dockerignore_keeps_only_the_build_inputs() -> None:
    """The build context holds what the Dockerfile copies, and not tests, .git or caches."""
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*", "ignore everything, then let the build inputs back in"
    allowed = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    for stage in stages():
        for copy in arguments(stage, "COPY"):
            if copy.startswith("--from"):
                continue
            *sources, _ = copy.split()
            for source in sources:
                source = source.rstrip("/")
                assert source in allowed, f"COPY {source} is excluded by .dockerignore"
                assert (ROOT / source).exists(), source
    assert not allowed & {"tests", ".git", "benchmarks"}, allowed


def test_default_image_config_is_valid() -> None:
    """The configuration baked into the image passes check-config."""
    final = stages()[-1]
    (default,) = [
        c.split()[0] for c in arguments(final, "COPY") if c.endswith("/etc/outage-exporter/config.yml")
    ]
    result = run(sys.executable, "-m", "exporter", "check-config", ROOT / default)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- the demo target


@pytest.fixture
def demo_target(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The demo target on loopback ports: (http base URL, https base URL)."""
    http_port, https_port = free_port(), free_port()
    args = [
        sys.executable,
        str(DEMO_TARGET),
        "--http",
        f"127.0.0.1:{http_port}",
        "--https",
        f"127.0.0.1:{https_port}",
        "--slow",
        "0.3",
    ]
    process = Process("demo-target", args, f"http://127.0.0.1:{http_port}", tmp_path)
    try:
        process.wait_ready("/healthy", timeout=DEADLINE)
        yield f"http://127.0.0.1:{http_port}", f"https://127.0.0.1:{https_port}"
    finally:
        process.stop()
        print(process.logs())
    assert process.popen.returncode == 0, f"the demo target did not stop cleanly:\n{process.logs()}"


def probe(target: str, module: str) -> tuple[int, str, dict[str, float]]:
    """Probe ``target`` with a module of the compose config: (exit code, output, metrics by name)."""
    config = host_path("exporter", "/etc/outage-exporter/config.yml")
    result = run(
        sys.executable, "-m", "exporter", "probe", target, "--module", module, "--config.file", config
    )
    text = result.stdout.split("metrics:\n", 1)[-1]
    metrics = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }
    return result.returncode, result.stdout + result.stderr, metrics


def status(url: str) -> int:
    try:
        with LOCAL_HTTP.open(url, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as err:
        err.close()
        return int(err.code)


def test_demo_target_healthy_and_failing(demo_target: tuple[str, str]) -> None:
    """/healthy and /slow pass the compose config's HTTP probe, /fail fails it on its status."""
    http, _ = demo_target
    for path in ("/healthy", "/slow"):
        code, output, metrics = probe(http + path, "http_2xx")
        assert code == 0, output
        assert metrics["probe_success"] == 1.0
        assert metrics["probe_http_status_code"] == 200.0
    code, output, metrics = probe(http + "/fail", "http_2xx")
    assert code == 1, output
    assert "reason: http_status" in output
    assert metrics["probe_http_status_code"] == 500.0


def test_demo_target_flaky(demo_target: tuple[str, str]) -> None:
    """/flaky fails exactly one request in four."""
    http, _ = demo_target
    assert [status(http + "/flaky") for _ in range(8)] == [200, 200, 200, 503, 200, 200, 200, 503]


def test_demo_target_certificate_expires_soon(demo_target: tuple[str, str]) -> None:
    """The HTTPS port passes the compose config's TLS probe with a certificate expiring within 14 days."""
    _, https = demo_target
    code, output, metrics = probe(https + "/healthy", "https_self_signed")
    assert code == 0, output
    assert metrics["probe_http_ssl"] == 1.0
    left = metrics["probe_ssl_earliest_cert_expiry"] - time.time()
    assert 0 < left < SOON, f"the certificate expires in {left / 86400:.1f} days"
