"""The --web.config.file in exporter-toolkit's format: TLS for the listener and bcrypt basic auth."""

from __future__ import annotations

import base64
import binascii
import hashlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import bcrypt
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from exporter.errors import WebConfigError
from exporter.modules import TLS_VERSIONS, TLSVersion
from exporter.types import Secret
from exporter.yamlread import Reader, compose, is_invalid

ClientAuth = Literal[
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
]


@dataclass(frozen=True)
class TLSServerConfig:
    cert_file: str = ""
    key_file: str = ""
    client_auth_type: ClientAuth = "NoClientCert"
    client_ca_file: str = ""
    min_version: TLSVersion = "TLS12"
    max_version: TLSVersion | None = None
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    curve_preferences: tuple[str, ...] = ()

    def check(self) -> object:
        if not self.cert_file or not self.key_file:
            yield "cert_file", "cert_file and key_file are both required"
        verify = self.client_auth_type in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
        if verify and not self.client_ca_file:
            yield "client_ca_file", f"is required for client_auth_type {self.client_auth_type}"


@dataclass(frozen=True)
class HTTPServerConfig:
    http2: bool = True
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class WebConfig:
    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig = field(default_factory=HTTPServerConfig)
    basic_auth_users: Mapping[str, Secret] = field(default_factory=lambda: MappingProxyType({}))

    def check(self) -> object:
        for user, hashed in self.basic_auth_users.items():
            if not hashed.reveal().startswith(("$2a$", "$2b$", "$2y$")):
                yield (
                    f"basic_auth_users.{user}",
                    "must be a bcrypt hash (starting $2a$, $2b$ or $2y$)",
                )

    def ssl_context(self) -> ssl.SSLContext | None:
        tls = self.tls_server_config
        if tls is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
            if tls.client_ca_file:
                context.load_verify_locations(tls.client_ca_file)
        except (OSError, ssl.SSLError) as err:
            raise WebConfigError(f"tls_server_config: cannot load certificates: {err}") from None
        context.minimum_version = TLS_VERSIONS[tls.min_version]
        if tls.max_version:
            context.maximum_version = TLS_VERSIONS[tls.max_version]
        if tls.client_auth_type == "RequireAndVerifyClientCert":
            context.verify_mode = ssl.CERT_REQUIRED
        elif tls.client_auth_type in (
            "VerifyClientCertIfGiven",
            "RequestClientCert",
            "RequireAnyClientCert",
        ):
            context.verify_mode = ssl.CERT_OPTIONAL
        return context


def load_web_config(path: str) -> WebConfig:
    """Read and check a web config file; raise WebConfigError naming every problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise WebConfigError(f"cannot read web config {path}: {err.strerror}") from None
    root, issues = compose(text, path)
    reader = Reader(path)
    config = WebConfig() if root is None or issues else reader.read_dataclass(WebConfig, root, "")
    problems = issues + reader.issues
    if problems or is_invalid(config):
        raise WebConfigError("\n".join(f"{path}: {issue}" for issue in problems))
    config.ssl_context()  # fail at start, not at the first connection
    return config


class BasicAuth:
    """Checks basic auth against bcrypt hashes, remembering recent successes to spare the CPU."""

    def __init__(self, users: Mapping[str, Secret]) -> None:
        self._users = {user: hashed.reveal().encode() for user, hashed in users.items()}
        self._verified: dict[bytes, bool] = {}

    def check(self, header: str | None) -> bool:
        if not header or not header.lower().startswith("basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        hashed = self._users.get(user)
        if not sep or hashed is None:
            # Spend the same time as a real check so user names cannot be probed by timing.
            bcrypt.checkpw(b"x", _DUMMY_HASH)
            return False
        key = hashlib.sha256(hashed + b"\0" + password.encode()).digest()
        if key in self._verified:
            return True
        ok = bcrypt.checkpw(password.encode(), hashed)
        if ok:
            if len(self._verified) > 1024:
                self._verified.clear()
            self._verified[key] = True
        return ok


_DUMMY_HASH = bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=10))


def auth_middleware(config: WebConfig) -> Middleware:
    """Requires basic auth on every endpoint when users are configured, and adds configured headers."""
    auth = BasicAuth(config.basic_auth_users) if config.basic_auth_users else None
    headers = dict(config.http_server_config.headers)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if auth is not None and not auth.check(request.headers.get("Authorization")):
            response: web.StreamResponse = web.Response(
                status=401,
                text="Unauthorized\n",
                headers={"WWW-Authenticate": 'Basic realm="outage-exporter"'},
            )
        else:
            response = await handler(request)
        for name, value in headers.items():
            response.headers[name] = value
        return response

    return middleware
