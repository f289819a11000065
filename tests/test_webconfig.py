"""Tests for --web.config.file: TLS on the listener and bcrypt basic auth on every endpoint."""

from __future__ import annotations

import base64
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest
import trustme

from exporter.errors import WebConfigError
from exporter.webconfig import BasicAuth, load_web_config
from tests.stack import exporter_argv, free_port
from tests.test_cli import wait_until

ENDPOINTS = ["/", "/metrics", "/config", "/-/healthy", "/-/ready", "/probe?service=x", "/logs?target=x"]


def write_web_config(tmp_path: Path, server_cert: trustme.LeafCert, password: str) -> Path:
    cert = tmp_path / "cert.pem"
    key = tmp_path / "key.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    path = tmp_path / "web.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    )
    return path


def request(url: str, context: ssl.SSLContext | None, auth: tuple[str, str] | None) -> int:
    req = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        # The error holds the response; close it so no socket is left to the collector.
        err.close()
        return err.code


def test_tls_and_basic_auth_protect_every_endpoint(
    tmp_path: Path, ca: trustme.CA, server_cert: trustme.LeafCert
) -> None:
    """Over TLS, every endpoint needs the right password; plain HTTP gets no answer."""
    web_config = write_web_config(tmp_path, server_cert, "s3cret-pw")
    config = tmp_path / "config.yml"
    config.write_text("services: []\n")
    port = free_port()
    proc = subprocess.Popen(
        exporter_argv(config, port, "--web.config.file", str(web_config)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    base = f"https://localhost:{port}"
    good = ("prometheus", "s3cret-pw")
    try:
        wait_until(lambda: request(f"{base}/-/healthy", context, good) == 200)
        for path in ENDPOINTS:
            assert request(base + path, context, None) == 401, path
            assert request(base + path, context, ("prometheus", "wrong")) == 401, path
            assert request(base + path, context, ("nobody", "s3cret-pw")) == 401, path
            assert request(base + path, context, good) in (200, 404), path
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            request(f"http://127.0.0.1:{port}/metrics", None, good)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        stderr = proc.stderr.read() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    assert "s3cret-pw" not in stderr


def test_invalid_web_config_names_the_problem(tmp_path: Path) -> None:
    """A web config with a plain-text password or missing key file is refused with its path."""
    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users:\n  admin: hunter2\ntls_server_config:\n  cert_file: /x.pem\n")
    with pytest.raises(WebConfigError) as info:
        load_web_config(str(path))
    text = str(info.value)
    assert f"{path}: tls_server_config.cert_file (line 4): cert_file and key_file are both required" in text
    assert f"{path}: basic_auth_users.admin (line 2): must be a bcrypt hash" in text
    assert "hunter2" not in text


async def test_basic_auth_rejects_malformed_headers() -> None:
    """Garbage Authorization headers are refused, never an exception."""
    from exporter.types import Secret

    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    auth = BasicAuth({"u": Secret(hashed)})
    good = "Basic " + base64.b64encode(b"u:pw").decode()
    assert await auth.check(good) and await auth.check(good)
    for header in (
        None,
        "",
        "Bearer x",
        "Basic !!!",
        "Basic " + base64.b64encode(b"nocolon").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
    ):
        assert await auth.check(header) is False
    auth.close()


def test_tls_options_that_cannot_be_honoured_are_refused(tmp_path: Path) -> None:
    """An unknown cipher suite or curve, two curves, or http2 are errors, never quietly dropped."""
    path = tmp_path / "web.yml"
    path.write_text(
        "tls_server_config:\n"
        "  cert_file: c.pem\n  key_file: k.pem\n"
        "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_FANCY]\n"
        "  curve_preferences: [X25519, CurveP256]\n"
        "http_server_config:\n  http2: true\n"
    )
    with pytest.raises(WebConfigError) as info:
        load_web_config(str(path))
    assert str(info.value).splitlines() == [
        f"{path}: tls_server_config.cipher_suites[1] (line 4): unknown cipher suite 'TLS_FANCY' "
        "(Go's names, e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)",
        f"{path}: tls_server_config.curve_preferences (line 5): only one curve can be set here; "
        "list the one to use",
        f"{path}: http_server_config.http2 (line 7): HTTP/2 is not served here (HTTP/1.1 only): "
        "set it to false or leave it out",
    ]


async def test_cipher_suites_and_curve_restrict_the_listener(tmp_path: Path, ca: trustme.CA) -> None:
    """With one TLS 1.2 suite and one curve configured, a client offering only another suite is refused."""
    import asyncio

    leaf = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    path = tmp_path / "web.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  max_version: TLS12\n"
        "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]\n"
        "  curve_preferences: [CurveP384]\n  prefer_server_cipher_suites: true\n"
    )
    context = load_web_config(str(path)).ssl_context()
    assert context is not None and context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]

    async def handshake(cipher: str) -> str | None:
        client = ssl.create_default_context()
        ca.configure_trust(client)
        client.maximum_version = ssl.TLSVersion.TLSv1_2
        client.set_ciphers(cipher)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        except (ssl.SSLError, ConnectionError):
            return None
        agreed = writer.get_extra_info("cipher")[0]
        writer.close()
        return str(agreed)

    try:
        assert await handshake("ECDHE-ECDSA-AES128-GCM-SHA256") == "ECDHE-ECDSA-AES128-GCM-SHA256"
        assert await handshake("ECDHE-ECDSA-AES256-GCM-SHA384") is None
    finally:
        server.close()
        await server.wait_closed()


async def test_password_checks_queue_is_bounded_and_right_verdicts_stay_remembered() -> None:
    """Past max_waiting a check is refused at once (None); wrong verdicts never evict right ones."""
    import asyncio

    from exporter.types import Secret

    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4)).decode()
    auth = BasicAuth({"u": Secret(hashed)}, max_waiting=2, remember=4)

    def header(password: str) -> str:
        return "Basic " + base64.b64encode(f"u:{password}".encode()).decode()

    try:
        assert await auth.check(header("right")) is True
        verdicts = await asyncio.gather(*(auth.check(header(f"wrong-{n}")) for n in range(6)))
        assert verdicts.count(None) == 4 and verdicts.count(False) == 2
        for n in range(10):  # more wrong passwords than the memory holds
            assert await auth.check(header(f"other-{n}")) is False
        assert auth._waiting == 0
        # Remembered: answered without a check even with the queue full.
        auth._waiting = auth._max_waiting
        assert await auth.check(header("right")) is True
        assert await auth.check(header("other-9")) is False
        assert await auth.check(header("never-seen")) is None
    finally:
        auth.close()


def test_go_cipher_names_map_back_from_openssl() -> None:
    """probe_tls_cipher_info names a TLS 1.2 suite as Go (and so blackbox) does."""
    from exporter.modules import GO_CIPHER_NAMES

    assert GO_CIPHER_NAMES["ECDHE-RSA-AES128-GCM-SHA256"] == "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
    assert "TLS_AES_128_GCM_SHA256" not in GO_CIPHER_NAMES  # TLS 1.3 names are the same in both
