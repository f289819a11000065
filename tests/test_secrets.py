"""Secrets from *_file and ${ENV} never show in /metrics, /config, logs, errors or the probe command."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient, AiohttpRawServer, AiohttpServer

from exporter.accesslog import AccessLogger
from exporter.config import load_config, parse_config
from exporter.errors import ConfigError, WebConfigError
from exporter.web import EXPORTER, make_app
from exporter.webconfig import auth_middleware, load_web_config
from tests.conftest import wait_for
from tests.test_cli import free_port, wait_until

# Every value below is a credential the exporter is given; none may ever come back out.
SECRETS = {
    "OE_SECRET_PASSWORD": "pw-from-env-7Qx2",
    "OE_SECRET_TOKEN": "tok-from-env-9Zk4",
    "OE_SECRET_CREDENTIALS": "cred-from-env-5Rt8",
    "OE_SECRET_HEADER": "hdr-from-env-2Pd6",
}
FILE_SECRETS = {
    "password": "pw-from-file-3Lm1",
    "token": "tok-from-file-8Wq3",
    "credentials": "cred-from-file-6Hs5",
    "push": "push-token-4Nc7",
}
URL_PASSWORD = "url-pw-1Bv9"
WEB_PASSWORD = "web-pw-0Kd3"


def all_secrets(extra: tuple[str, ...] = ()) -> list[str]:
    return [*SECRETS.values(), *FILE_SECRETS.values(), URL_PASSWORD, WEB_PASSWORD, *extra]


def assert_clean(text: str, where: str, extra: tuple[str, ...] = ()) -> None:
    leaked = [secret for secret in all_secrets(extra) if secret in text]
    assert not leaked, f"{where} shows {leaked}"


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def secret_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for name, value in FILE_SECRETS.items():
        path = tmp_path / f"{name}.secret"
        path.write_text(value + "\n")
        files[name] = path
    return files


class Refusing:
    """An HTTP server that answers 401 to everything and keeps the Authorization headers it saw."""

    def __init__(self) -> None:
        self.authorizations: list[str] = []
        self.api_keys: list[str] = []
        self.port = 0

    async def handle(self, request: web.BaseRequest) -> web.Response:
        self.authorizations += [value.strip() for value in request.headers.getall("Authorization", ())]
        self.api_keys += [value.strip() for value in request.headers.getall("X-Api-Key", ())]
        return web.Response(status=401, text="denied", headers={"Connection": "close"})


@pytest.fixture
async def refusing(aiohttp_raw_server: AiohttpRawServer) -> Refusing:
    target = Refusing()
    target.port = (await aiohttp_raw_server(target.handle)).port
    return target


def config_text(port: int, files: dict[str, Path]) -> str:
    """Services that carry every kind of credential to a server that refuses them all."""
    base = f"http://127.0.0.1:{port}"
    return f"""
global: {{interval: 200ms, timeout: 150ms}}
probe_allowlist: [127.0.0.1/32]
modules:
  with_password_file:
    prober: http
    http: {{preferred_ip_protocol: ip4, basic_auth: {{username: probe, password_file: {files["password"]}}}}}
  with_env_password:
    prober: http
    http: {{preferred_ip_protocol: ip4, basic_auth: {{username: probe, password: "${{OE_SECRET_PASSWORD}}"}}}}
services:
  - {{name: password-file, target: "{base}/a", module: with_password_file}}
  - {{name: password-env, target: "{base}/b", module: with_env_password}}
  - name: token-env
    target: {base}/c
    prober: http
    http: {{preferred_ip_protocol: ip4, bearer_token: "${{OE_SECRET_TOKEN}}"}}
  - name: token-file
    target: {base}/d
    prober: http
    http: {{preferred_ip_protocol: ip4, bearer_token_file: {files["token"]}}}
  - name: credentials-env
    target: {base}/e
    prober: http
    http:
      preferred_ip_protocol: ip4
      authorization: {{type: Token, credentials: "${{OE_SECRET_CREDENTIALS}}"}}
  - name: credentials-file
    target: {base}/f
    prober: http
    http: {{preferred_ip_protocol: ip4, authorization: {{credentials_file: {files["credentials"]}}}}}
  - name: header-env
    target: {base}/g
    prober: http
    http: {{preferred_ip_protocol: ip4, headers: {{X-Api-Key: "${{OE_SECRET_HEADER}}"}}}}
  - name: url-userinfo
    target: "http://probe:{URL_PASSWORD}@127.0.0.1:{port}/h"
    prober: http
    http: {{preferred_ip_protocol: ip4}}
  - name: push
    prober: push
    push: {{token_file: {files["push"]}, max_silence: 1m}}
"""


SENT = [
    "Basic " + base64.b64encode(f"probe:{FILE_SECRETS['password']}".encode()).decode(),
    "Basic " + base64.b64encode(f"probe:{SECRETS['OE_SECRET_PASSWORD']}".encode()).decode(),
    f"Bearer {SECRETS['OE_SECRET_TOKEN']}",
    f"Bearer {FILE_SECRETS['token']}",
    f"Token {SECRETS['OE_SECRET_CREDENTIALS']}",
    f"Bearer {FILE_SECRETS['credentials']}",
    "Basic " + base64.b64encode(f"probe:{URL_PASSWORD}".encode()).decode(),
]


async def test_secrets_stay_out_of_every_endpoint_and_log(
    secret_env: None,
    secret_files: dict[str, Path],
    refusing: Refusing,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
) -> None:
    """Probes send every credential and are refused; no endpoint, message or log line shows one."""
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "config.yml"
    path.write_text(config_text(refusing.port, secret_files))
    config = load_config(path)
    app = make_app(config, config_file=str(path))
    # Served with the access log class the command line uses, so its lines are checked too.
    client = await aiohttp_client(await aiohttp_server(app, access_log_class=AccessLogger))
    try:
        exporter = app[EXPORTER]
        probed = [s.name for s in config.services if s.module.prober == "http"]
        await wait_for(
            lambda: all((s := exporter.store.get(n)) is not None and s.runs >= 2 for n in probed),
            what="every service probed twice",
        )
        # The credentials really were sent: the test would prove nothing otherwise.
        assert set(SENT) <= set(refusing.authorizations), refusing.authorizations
        assert SECRETS["OE_SECRET_HEADER"] in refusing.api_keys
        for name in probed:
            state = exporter.store.get(name)
            assert state is not None and state.last is not None
            assert state.last.reason == "http_status", state.last.message
            assert_clean(state.last.message, f"the failure message of {name}")

        # A push with the right token, then wrong ones, in the header and in the query.
        push = FILE_SECRETS["push"]
        assert (await client.post("/push/push", headers={"Authorization": f"Bearer {push}"})).status == 200
        assert (await client.post("/push/push", params={"token": push})).status == 200
        wrong = await client.post("/push/push", params={"token": push + "x"})
        assert wrong.status == 401
        assert_clean(await wrong.text(), "a refused push", (push + "x",))

        pages = {
            "/metrics": await client.get("/metrics"),
            "/config": await client.get("/config"),
            "/": await client.get("/"),
            "/probe?service": await client.get("/probe", params={"service": "url-userinfo", "debug": "true"}),
            "/probe?target": await client.get(
                "/probe",
                params={
                    "target": f"http://probe:{URL_PASSWORD}@127.0.0.1:{refusing.port}/i",
                    "module": "with_password_file",
                    "debug": "true",
                },
            ),
            "/probe?module": await client.get(
                "/probe",
                params={"target": f"http://127.0.0.1:{refusing.port}/j", "module": "with_env_password"},
            ),
        }
        for where, response in pages.items():
            assert response.status == 200, where
            assert_clean(await response.text(), where)
        # Reloading a file whose secret options conflict fails without quoting them.
        path.write_text(
            config_text(refusing.port, secret_files).replace(
                'bearer_token: "${OE_SECRET_TOKEN}"',
                f'bearer_token: "${{OE_SECRET_TOKEN}}", bearer_token_file: {secret_files["token"]}',
            )
        )
        refused = await client.post("/-/reload")
        assert refused.status == 500
        assert_clean(await refused.text(), "a failed reload")
    finally:
        await client.close()
    assert any(r.name == "aiohttp.access" and "token=xxxxx" in r.getMessage() for r in caplog.records)
    assert_clean(caplog.text, "the log")
    for record in caplog.records:
        assert_clean(record.getMessage(), "a log record")


@pytest.mark.parametrize(
    ("http_settings", "why"),
    [
        (
            '{basic_auth: {username: u, password: "${OE_SECRET_PASSWORD}", password_file: /x}}',
            "two passwords",
        ),
        (
            '{bearer_token: "${OE_SECRET_TOKEN}", authorization: {credentials: "${OE_SECRET_CREDENTIALS}"}}',
            "two",
        ),
        ('{authorization: {type: Basic, credentials: "${OE_SECRET_CREDENTIALS}"}}', "basic authorization"),
        ('{headers: {X-Api-Key: ["${OE_SECRET_HEADER}"]}}', "a list for a header"),
        ('{bearer_token: "${OE_SECRET_TOKEN}${OE_SECRET_UNSET}"}', "an unset variable"),
        ('{basic_auth: {username: u, pasword: "${OE_SECRET_PASSWORD}"}}', "a misspelt key"),
        ('{bearer_token: "${OE_SECRET_TOKEN}", method: "${OE_SECRET_TOKEN}"}', "a secret where none goes"),
    ],
    ids=lambda value: value[:30],
)
def test_config_errors_do_not_quote_secrets(secret_env: None, http_settings: str, why: str) -> None:
    """A config error near a secret names the path and problem, never the value."""
    text = f"services:\n  - {{name: s, prober: http, target: 'http://127.0.0.1:1/', http: {http_settings}}}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "secrets.yml")
    assert_clean(str(info.value), why)


async def test_probe_failures_do_not_quote_secrets(
    secret_env: None, monkeypatch: pytest.MonkeyPatch, refusing: Refusing
) -> None:
    """A header value HTTP cannot carry, and a target with user info, fail without the secret."""
    monkeypatch.setenv("OE_SECRET_HEADER", SECRETS["OE_SECRET_HEADER"] + "\r\nX-Injected: 1")
    config = parse_config(
        f"""
services:
  - name: bad-header
    target: http://127.0.0.1:{refusing.port}/
    prober: http
    http: {{preferred_ip_protocol: ip4, headers: {{X-Api-Key: "${{OE_SECRET_HEADER}}"}}}}
  - name: refused-port
    target: http://probe:{URL_PASSWORD}@127.0.0.1:{free_port()}/
    prober: http
    http: {{preferred_ip_protocol: ip4}}
  - name: bad-url
    target: http://probe:{URL_PASSWORD}@127.0.0.1:notaport/
    prober: http
"""
    )
    from exporter.runner import run_probe

    for service in config.services:
        result = await run_probe(service.target, service.module, 2.0)
        assert not result.success
        assert_clean(result.message, service.name)
    assert not refusing.authorizations and not refusing.api_keys


def test_web_config_errors_and_logs_keep_passwords(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The web config's bcrypt hash and a client's password never show in errors."""
    hashed = bcrypt.hashpw(WEB_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    monkeypatch.setenv("OE_SECRET_HASH", hashed)
    path = tmp_path / "web.yml"
    path.write_text(
        "basic_auth_users:\n  admin: '${OE_SECRET_HASH}'\n  other: not-a-hash-" + WEB_PASSWORD + "\n"
    )
    with pytest.raises(WebConfigError) as info:
        load_web_config(str(path))
    assert_clean(str(info.value), "a web config error", (hashed,))
    path.write_text("basic_auth_users:\n  admin: '${OE_SECRET_HASH}'\n")
    config = load_web_config(str(path))
    assert "admin" in config.basic_auth_users
    assert_clean(repr(config), "the web config's repr", (hashed,))
    assert auth_middleware(config) is not None


def run_exporter_command(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


async def test_probe_command_output_has_no_secrets(
    secret_files: dict[str, Path], refusing: Refusing, tmp_path: Path
) -> None:
    """`probe` with --log.level debug prints result, phases and metrics but no credential."""
    path = tmp_path / "config.yml"
    # One probe per command, so no need for the short interval; a busy machine needs the time.
    path.write_text(
        config_text(refusing.port, secret_files).replace(
            "interval: 200ms, timeout: 150ms", "interval: 10s, timeout: 5s"
        )
    )
    for module, target in (
        ("with_password_file", f"http://probe:{URL_PASSWORD}@127.0.0.1:{refusing.port}/k"),
        ("with_env_password", f"http://127.0.0.1:{refusing.port}/l"),
    ):
        args = ["probe", target, "--module", module, "--config.file", str(path), "--log.level", "debug"]
        result = await asyncio.to_thread(run_exporter_command, args, SECRETS)
        assert result.returncode == 1, result.stderr
        assert "reason: http_status" in result.stdout
        assert_clean(result.stdout + result.stderr, f"probe {module} {target}")
    assert len(refusing.authorizations) == 2


def test_server_debug_log_has_no_secrets(tmp_path: Path, secret_files: dict[str, Path]) -> None:
    """The running server at --log.level debug, with basic auth and pushes, logs no credential."""
    hashed = bcrypt.hashpw(WEB_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    config = tmp_path / "config.yml"
    config.write_text(config_text(free_port(), secret_files))
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "--config.file",
            str(config),
            "--web.config.file",
            str(web),
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--log.level",
            "debug",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **SECRETS},
    )
    base = f"http://127.0.0.1:{port}"
    good = "Basic " + base64.b64encode(f"prometheus:{WEB_PASSWORD}".encode()).decode()
    bad = "Basic " + base64.b64encode(f"prometheus:{WEB_PASSWORD}-wrong".encode()).decode()

    def call(url: str, authorization: str, method: str = "GET") -> int:
        request = urllib.request.Request(url, method=method, headers={"Authorization": authorization})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as err:
            return err.code

    try:
        wait_until(lambda: call(f"{base}/-/ready", good) == 200)
        push = FILE_SECRETS["push"]
        assert call(f"{base}/push/push?token={push}", good, "POST") == 200
        assert call(f"{base}/push/push?token={push}", bad, "POST") == 401
        assert call(f"{base}/metrics", bad) == 401
        target = f"http://probe:{URL_PASSWORD}@127.0.0.1:1/"
        query = urllib.parse.urlencode({"service": "url-userinfo", "target": target})
        assert call(f"{base}/probe?{query}", good) == 200
        assert call(f"{base}/metrics", good) == 200
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        stderr = proc.stderr.read() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    assert "logger=aiohttp.access" in stderr
    assert_clean(stderr, "the server's debug log", (hashed,))
