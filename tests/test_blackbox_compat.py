"""Side by side with a real blackbox_exporter: same modules, same targets, same /probe answers."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import ClientError, ClientSession, ClientTimeout, web
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpServer

from exporter.config import parse_config
from exporter.web import make_app
from tests.stack import Process

BLACKBOX = "prometheus-blackbox-exporter"
BLACKBOX_CONFIG = Path("/etc/prometheus/blackbox.yml")
READY_TIMEOUT = 20.0
# Sent to both exporters so neither falls back to its own long default.
SCRAPE_TIMEOUT = "5"

HTTP_VALUES = (
    "probe_success",
    "probe_http_status_code",
    "probe_http_version",
    "probe_http_ssl",
    "probe_http_redirects",
    "probe_http_content_length",
    "probe_ip_protocol",
    "probe_ip_addr_hash",
)
TCP_VALUES = ("probe_success", "probe_ip_protocol", "probe_ip_addr_hash")

Samples = dict[str, float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unlabelled(text: str) -> tuple[set[str], Samples]:
    """Every sample name in a /probe answer, and the values of the samples without labels."""
    names: set[str] = set()
    values: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.add(sample.name)
            if not sample.labels:
                values[sample.name] = sample.value
    return names, values


@pytest.fixture
def modules_file(tmp_path: Path) -> Path:
    """The packaged blackbox.yml, pinned to IPv4 for the modules compared here."""
    data = yaml.safe_load(BLACKBOX_CONFIG.read_text(encoding="utf-8"))
    modules = data["modules"]
    modules["http_2xx"].setdefault("http", {})["preferred_ip_protocol"] = "ip4"
    modules["tcp_connect"].setdefault("tcp", {})["preferred_ip_protocol"] = "ip4"
    path = tmp_path / "blackbox.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
async def target(aiohttp_server: AiohttpServer) -> AsyncIterator[str]:
    """A real local HTTP server: /ok, /status/{code} and /redirect (a 302 to /ok)."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="status")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/ok")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/redirect", redirect)
    server = await aiohttp_server(app)
    yield f"127.0.0.1:{server.port}"


@pytest.fixture
async def session() -> AsyncIterator[ClientSession]:
    async with ClientSession(timeout=ClientTimeout(total=15)) as client:
        yield client


class Blackbox:
    """A blackbox_exporter process: where it listens and where it logs."""

    def __init__(self, proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
        self.proc = proc
        self.base = base
        self.log = log

    async def failure(self, what: str) -> str:
        output = await asyncio.to_thread(self.log.read_text, errors="replace")
        return f"{BLACKBOX} {what}:\n{output}"


@pytest.fixture
def blackbox_process(blackbox_binary: str, modules_file: Path, tmp_path: Path) -> Iterator[Blackbox]:
    """A real blackbox_exporter on a free loopback port, stopped after the test."""
    port = free_port()
    log = tmp_path / "blackbox.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                blackbox_binary,
                f"--config.file={modules_file}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Blackbox(proc, f"http://127.0.0.1:{port}", log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
async def blackbox(blackbox_process: Blackbox, session: ClientSession) -> str:
    """blackbox_exporter's base URL once it answers; fails early if it dies, late after a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT
    while loop.time() < deadline:
        if blackbox_process.proc.poll() is not None:
            pytest.fail(await blackbox_process.failure(f"exited with {blackbox_process.proc.returncode}"))
        try:
            async with session.get(f"{blackbox_process.base}/-/healthy") as response:
                if response.status == 200:
                    return blackbox_process.base
        except ClientError:
            pass
        await asyncio.sleep(0.05)
    pytest.fail(await blackbox_process.failure(f"not ready within {READY_TIMEOUT}s"))


@pytest.fixture
def our_config(modules_file: Path) -> str:
    """Our config: the same modules, probing allowed on loopback, no services."""
    data = yaml.safe_load(modules_file.read_text(encoding="utf-8"))
    return yaml.safe_dump({"probe_allowlist": ["127.0.0.0/8"], "modules": data["modules"]})


async def probe(session: ClientSession, base: str, target: str, module: str) -> tuple[set[str], Samples]:
    params = {"target": target, "module": module}
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": SCRAPE_TIMEOUT}
    async with session.get(f"{base}/probe", params=params, headers=headers) as response:
        text = await response.text()
        assert response.status == 200, f"{base}/probe?target={target}&module={module}: {text}"
    return unlabelled(text)


async def compare(
    session: ClientSession, blackbox: str, ours: str, target: str, module: str, compared: tuple[str, ...]
) -> Samples:
    """Probe through both; our names must cover blackbox's, and the ``compared`` values must agree."""
    theirs_names, theirs = await probe(session, blackbox, target, module)
    our_names, our_values = await probe(session, ours, target, module)
    missing = sorted(theirs_names - our_names)
    extra = sorted(our_names - theirs_names)
    assert not missing, (
        f"{module} {target}: blackbox emits names we do not: {missing} (we also emit extra names: {extra})"
    )
    differ = {
        name: {"blackbox": theirs.get(name), "ours": our_values.get(name)}
        for name in compared
        if theirs.get(name) != our_values.get(name)
    }
    assert not differ, f"{module} {target}: values differ: {differ}"
    return theirs


@pytest.mark.parametrize(
    ("path", "success", "status", "redirects"),
    [("/ok", 1, 200, 0), ("/status/404", 0, 404, 0), ("/redirect", 1, 200, 1)],
)
async def test_http_2xx_matches_blackbox(
    session: ClientSession,
    blackbox: str,
    ours: str,
    target: str,
    path: str,
    success: int,
    status: int,
    redirects: int,
) -> None:
    """http_2xx: same metric names (ours a superset) and the same success, status, version and sizes."""
    theirs = await compare(session, blackbox, ours, f"http://{target}{path}", "http_2xx", HTTP_VALUES)
    # Pin blackbox's own answer too, so a change on its side cannot hide behind agreement.
    assert theirs["probe_success"] == success
    assert theirs["probe_http_status_code"] == status
    assert theirs["probe_http_redirects"] == redirects
    assert theirs["probe_http_version"] == 1.1
    assert theirs["probe_http_ssl"] == 0


async def test_tcp_connect_matches_blackbox(
    session: ClientSession, blackbox: str, ours: str, target: str
) -> None:
    """tcp_connect to an open port: same metric names (ours a superset), success and IP protocol."""
    theirs = await compare(session, blackbox, ours, target, "tcp_connect", TCP_VALUES)
    assert theirs["probe_success"] == 1
    assert theirs["probe_ip_protocol"] == 4


def test_blackbox_accepts_the_pinned_copy(blackbox_binary: str, modules_file: Path) -> None:
    """The edited copy is still a valid blackbox.yml, so both sides really load the same file."""
    result = subprocess.run(
        [blackbox_binary, f"--config.file={modules_file}", "--config.check"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def console_script() -> str:
    """The installed ``outage-exporter`` command, preferably the one beside this interpreter."""
    interpreter = Path(sys.executable)
    for directory in (interpreter.parent, interpreter.resolve().parent):
        if (directory / "outage-exporter").exists():
            return str(directory / "outage-exporter")
    path = shutil.which("outage-exporter")
    if path is None:
        pytest.fail("the outage-exporter console script is not installed: pip install -e .")
    return path


def test_check_config_loads_packaged_blackbox_yml(console_script: str) -> None:
    """`outage-exporter check-config /etc/prometheus/blackbox.yml` accepts blackbox's own file unchanged."""
    assert BLACKBOX_CONFIG.exists(), f"{BLACKBOX_CONFIG} is missing: install prometheus-blackbox-exporter"
    result = subprocess.run(
        [console_script, "check-config", str(BLACKBOX_CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"{BLACKBOX_CONFIG}: OK: 0 services, "), result.stdout


def labelled(text: str, name: str) -> tuple[dict[str, str], float]:
    """The labels and value of the one sample ``name`` in a /probe answer."""
    found = [
        (dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]
    assert len(found) == 1, f"{len(found)} samples of {name}"
    return found[0]


async def test_tls_values_match_blackbox(
    tmp_path: Path, ca: Any, blackbox_binary: str, aiohttp_server: AiohttpServer
) -> None:
    """A TLS target, verified and not: the leaf's labels and the last-chain expiry as blackbox says."""
    import ssl

    leaf = ca.issue_cert("127.0.0.1", "localhost", organization_name="Acme Inc")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    target = await aiohttp_server(app, ssl=context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    modules = {
        "verified": {
            "prober": "http",
            "http": {"preferred_ip_protocol": "ip4", "tls_config": {"ca_file": str(ca_file)}},
        },
        "insecure": {
            "prober": "http",
            "http": {"preferred_ip_protocol": "ip4", "tls_config": {"insecure_skip_verify": True}},
        },
    }
    path = tmp_path / "blackbox.yml"
    path.write_text(yaml.safe_dump({"modules": modules}))
    port = free_port()
    theirs = Process(
        "blackbox",
        [blackbox_binary, f"--config.file={path}", f"--web.listen-address=127.0.0.1:{port}"],
        f"http://127.0.0.1:{port}",
        tmp_path,
    )
    ours_server = await aiohttp_server(
        make_app(
            parse_config(yaml.safe_dump({"probe_allowlist": ["127.0.0.0/8"], "modules": modules})),
            schedule=False,
        )
    )
    try:
        await asyncio.to_thread(theirs.wait_ready, "/-/healthy")
        async with ClientSession(timeout=ClientTimeout(total=15)) as session:
            for module in modules:
                answers = []
                for base in (theirs.url, f"http://127.0.0.1:{ours_server.port}"):
                    params = {"target": f"https://127.0.0.1:{target.port}/", "module": module}
                    async with session.get(f"{base}/probe", params=params) as response:
                        answers.append(await response.text())
                (their_labels, _), (our_labels, _) = (
                    labelled(a, "probe_ssl_last_chain_info") for a in answers
                )
                # 0.28 adds the serial; the Debian 0.23 binary predates it.
                serial = our_labels.pop("serialnumber")
                assert (
                    serial == format(leaf_serial(leaf), "x").rjust(len(serial), "0") and len(serial) % 2 == 0
                )
                assert our_labels == their_labels, module
                # 0.25 added the cipher by Go's name and the applied timeout; 0.23 has neither.
                cipher, _ = labelled(answers[1], "probe_tls_cipher_info")
                assert cipher["cipher"].startswith("TLS_"), cipher
                assert labelled(answers[1], "probe_timeout_seconds")[1] > 0
                expiries = [labelled(a, "probe_ssl_last_chain_expiry_timestamp_seconds")[1] for a in answers]
                assert expiries[0] == expiries[1], module
                if module == "insecure":
                    assert expiries[0] == -62135596800.0
    finally:
        theirs.stop()


def leaf_serial(leaf: Any) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number
