"""The --web.config.file in exporter-toolkit's format: TLS for the listener and bcrypt basic auth."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import secrets
import ssl
import threading
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import bcrypt
from aiohttp import web
from aiohttp.typedefs import Handler

from exporter.errors import WebConfigError
from exporter.modules import CIPHER_SUITES, TLS_VERSIONS, TLSVersion
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
        for i, name in enumerate(self.cipher_suites):
            if name not in CIPHER_SUITES:
                yield (
                    f"cipher_suites[{i}]",
                    f"unknown cipher suite {name!r} (Go's names, e.g. {_EXAMPLE_SUITE})",
                )
        for i, name in enumerate(self.curve_preferences):
            if name not in CURVES:
                yield f"curve_preferences[{i}]", f"unknown curve {name!r} (known: {', '.join(CURVES)})"
        if len(self.curve_preferences) > 1:
            # Python's ssl module sets one key-exchange group; taking the first would quietly drop
            # the rest, so the choice is the user's.
            yield "curve_preferences", "only one curve can be set here; list the one to use"


@dataclass(frozen=True)
class HTTPServerConfig:
    # exporter-toolkit turns HTTP/2 on by default; this server speaks HTTP/1.1 only, so the
    # default is off and asking for it is an error rather than a setting nobody honours.
    http2: bool = False
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def check(self) -> object:
        if self.http2:
            yield "http2", "HTTP/2 is not served here (HTTP/1.1 only): set it to false or leave it out"


_EXAMPLE_SUITE = "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
# Go's curve names and OpenSSL's.
CURVES: Mapping[str, str] = MappingProxyType(
    {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}
)


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
        legacy = [CIPHER_SUITES[name] for name in tls.cipher_suites if CIPHER_SUITES.get(name)]
        try:
            if legacy:
                context.set_ciphers(":".join(name for name in legacy if name))
            if tls.curve_preferences:
                context.set_ecdh_curve(CURVES[tls.curve_preferences[0]])
        except (ssl.SSLError, ValueError) as err:
            raise WebConfigError(f"tls_server_config: cannot use the cipher suites or curve: {err}") from None
        if tls.prefer_server_cipher_suites:
            context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        else:
            context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
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
    """Checks basic auth against bcrypt hashes without ever making the event loop wait.

    bcrypt is slow on purpose (a cost-12 check takes a quarter of a second), so each check runs
    on one low-priority thread (bcrypt releases the GIL): a flood of wrong passwords costs at
    most that one thread, and the loop that times probes keeps its core. Checks already made
    are remembered, right or wrong, as exporter-toolkit does, so a scraper with the right
    password pays once and a client repeating a wrong one costs nothing. When more than
    ``max_waiting`` checks are queued, further ones are refused at once (``None``) instead of
    piling up. An unknown user costs the same as a known one, so timing tells no user names.
    """

    def __init__(self, users: Mapping[str, Secret], max_waiting: int = 32, remember: int = 1024) -> None:
        self._users = {user: hashed.reveal().encode() for user, hashed in users.items()}
        self._key = secrets.token_bytes(32)  # remembered entries hold no password, only its HMAC
        # Right and wrong verdicts are remembered apart, so a flood of wrong passwords cannot
        # push the scraper's right one out and make it wait behind the flood.
        self._right: OrderedDict[bytes, bool] = OrderedDict()
        self._wrong: OrderedDict[bytes, bool] = OrderedDict()
        self._remember = remember
        self._max_waiting = max_waiting
        self._waiting = 0
        self._dummy: bytes | None = None
        self._executor = ThreadPoolExecutor(1, "bcrypt", initializer=_lower_priority)
        # The unknown-user hash is made ahead (the thread takes jobs in order), so the first
        # unknown user costs one check too.
        self._executor.submit(self._make_dummy)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def check(self, header: str | None) -> bool | None:
        """True for a right user and password, False for a wrong one, None when too busy to say."""
        if not header or not header.lower().startswith("basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        key = hmac.new(self._key, f"{user}\0{sep}{password}".encode(), hashlib.sha256).digest()
        for known in (self._right, self._wrong):
            if key in known:
                known.move_to_end(key)
                return known is self._right
        if self._waiting >= self._max_waiting:
            return None
        hashed = self._users.get(user)
        self._waiting += 1
        try:
            if not sep or hashed is None:
                # Spend what a real check costs so user names cannot be probed by timing.
                await asyncio.get_running_loop().run_in_executor(self._executor, self._dummy_check)
                ok = False
            else:
                ok = await asyncio.get_running_loop().run_in_executor(
                    self._executor, bcrypt.checkpw, password.encode(), hashed
                )
        finally:
            self._waiting -= 1
        known = self._right if ok else self._wrong
        known[key] = True
        if len(known) > self._remember:
            known.popitem(last=False)
        return ok

    def _make_dummy(self) -> None:
        if self._dummy is None:
            # As costly as the dearest real hash (a user with a cheaper one answers faster, and
            # so shows that it exists: one dummy cannot match every cost).
            self._dummy = bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=self._cost()))

    def _dummy_check(self) -> None:
        self._make_dummy()
        assert self._dummy is not None
        bcrypt.checkpw(b"y", self._dummy)

    def _cost(self) -> int:
        costs = [int(h[4:6]) for h in self._users.values() if h[4:6].isdigit()]
        return min(max(costs), 31) if costs else 10


def _lower_priority() -> None:
    """Let the probing loop win the CPU over password checks (Linux niceness is per thread)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class AuthMiddleware:
    """Requires basic auth on every endpoint when users are configured, and adds configured headers."""

    __middleware_version__ = 1  # aiohttp's mark of a (request, handler) middleware

    def __init__(self, config: WebConfig) -> None:
        self.auth = BasicAuth(config.basic_auth_users) if config.basic_auth_users else None
        self.headers = dict(config.http_server_config.headers)

    @property
    def needed(self) -> bool:
        """Whether it changes anything: it checks passwords or adds headers."""
        return self.auth is not None or bool(self.headers)

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        auth = self.auth
        verdict = True if auth is None else await auth.check(request.headers.get("Authorization"))
        if verdict is None:
            response: web.StreamResponse = web.Response(
                status=429,
                text="Too many password checks waiting; try again shortly\n",
                headers={"Retry-After": "1"},
            )
        elif not verdict:
            response = web.Response(
                status=401,
                text="Unauthorized\n",
                headers={"WWW-Authenticate": 'Basic realm="outage-exporter"'},
            )
        else:
            response = await handler(request)
        for name, value in self.headers.items():
            response.headers[name] = value
        return response

    async def close(self, _app: web.Application | None = None) -> None:
        """Stop the password-check thread; usable as an aiohttp cleanup callback."""
        if self.auth is not None:
            self.auth.close()


def auth_middleware(config: WebConfig) -> AuthMiddleware:
    """The middleware for ``config``; add its ``close`` to the app's cleanup."""
    return AuthMiddleware(config)
