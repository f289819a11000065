"""Tests of oauth2 client credentials in the HTTP client, against a real local token endpoint."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pytest_aiohttp import AiohttpServer

from exporter.config import dump_config, parse_config
from exporter.errors import ConfigError
from exporter.modules import HTTPProbe, Module, OAuth2
from exporter.probes import http, oauth2
from exporter.result import FailureReason, ProbeResult
from exporter.types import Secret
from tests.conftest import wait_for

ProbeRunner = Callable[..., Awaitable[ProbeResult]]
SECRET = "s3cret&value"


@dataclass
class Endpoint:
    """The token endpoint's behaviour and what it and the target saw."""

    mode: str = "json"
    expires_in: object = 3600
    # Refuse client credentials sent in a Basic header (they must come in the form).
    form_only: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    issued: int = 0
    target_saw: list[str] = field(default_factory=list)
    # While set, each token request is held (after being counted) until the test opens it.
    gate: asyncio.Event | None = None


@pytest.fixture(autouse=True)
def empty_cache() -> None:
    """Every test starts without cached tokens."""
    oauth2.TOKENS.clear()


@pytest.fixture
async def site(aiohttp_server: AiohttpServer) -> AsyncIterator[tuple[str, Endpoint]]:
    """A token endpoint (/token) and a target (/ok) that wants the newest token."""
    state = Endpoint()

    async def token(request: web.Request) -> web.Response:
        form = dict(await request.post())
        state.requests.append({"form": form, "authorization": request.headers.get("Authorization")})
        if state.gate is not None:
            await state.gate.wait()
        if state.form_only and request.headers.get("Authorization"):
            return web.json_response({"error": "invalid_client"}, status=401)
        if state.mode == "status":
            return web.json_response({"error": "server_error"}, status=500)
        if state.mode == "not-json":
            return web.Response(text="<html>maintenance</html>", content_type="text/html")
        if state.mode == "no-token":
            return web.json_response({"token_type": "bearer", "expires_in": 3600})
        state.issued += 1
        answer: dict[str, object] = {"access_token": f"tok-{state.issued}", "token_type": "bearer"}
        if state.expires_in is not None:
            answer["expires_in"] = state.expires_in
        if state.mode == "form":
            return web.Response(
                text=f"access_token=tok-{state.issued}&token_type=bearer",
                content_type="application/x-www-form-urlencoded",
            )
        return web.json_response(answer)

    async def ok(request: web.Request) -> web.Response:
        seen = request.headers.get("Authorization", "")
        state.target_saw.append(seen)
        if seen != f"Bearer tok-{state.issued}":
            return web.Response(status=401, text="stale token")
        return web.Response(status=202, text="ok")

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_get("/ok", ok)
    server = await aiohttp_server(app)
    yield f"http://127.0.0.1:{server.port}", state


def module(base: str, **options: Any) -> Module:
    options.setdefault("client_id", "probe client")
    options.setdefault("client_secret", Secret(SECRET))
    options.setdefault("token_url", f"{base}/token")
    settings = HTTPProbe(oauth2=OAuth2(**options), preferred_ip_protocol="ip4", valid_status_codes=())
    return Module(prober="http", sections={"http": settings})


async def test_token_is_fetched_sent_and_cached(run_probe: ProbeRunner, site: tuple[str, Endpoint]) -> None:
    """The token is asked for once, sent as a bearer, and reused while it is valid."""
    base, state = site
    settings = module(base, scopes=("read", "write"), endpoint_params={"audience": "probes"})
    first = await run_probe(f"{base}/ok", settings)
    second = await run_probe(f"{base}/ok", settings)
    assert first.success and second.success, (first.message, second.message)
    assert len(state.requests) == 1
    assert state.target_saw == ["Bearer tok-1", "Bearer tok-1"]
    request = state.requests[0]
    assert request["form"] == {
        "grant_type": "client_credentials",
        "scope": "read write",
        "audience": "probes",
    }
    # Go's oauth2 escapes the id and the secret as a query would before Basic-encoding them.
    credentials = base64.b64encode(b"probe+client:s3cret%26value").decode()
    assert request["authorization"] == f"Basic {credentials}"
    # The probe's values are the target's: the token request is not part of them.
    assert first.value("probe_http_status_code") == 202
    assert set(first.phases) == set(http.PHASES)


async def test_expired_token_is_refreshed(run_probe: ProbeRunner, site: tuple[str, Endpoint]) -> None:
    """A token that expires within the renewal margin is fetched again for the next probe."""
    base, state = site
    state.expires_in = 5  # below the 10 s margin: stale as soon as it arrives
    settings = module(base)
    results = [await run_probe(f"{base}/ok", settings) for _ in range(3)]
    assert [r.success for r in results] == [True, True, True]
    assert len(state.requests) == 3
    assert state.target_saw == ["Bearer tok-1", "Bearer tok-2", "Bearer tok-3"]


async def test_token_without_expiry_and_form_answers(
    run_probe: ProbeRunner, site: tuple[str, Endpoint]
) -> None:
    """A token without expires_in is kept; a form-encoded answer is read as Go reads it."""
    base, state = site
    state.expires_in = None
    settings = module(base)
    assert (await run_probe(f"{base}/ok", settings)).success
    assert (await run_probe(f"{base}/ok", settings)).success
    assert len(state.requests) == 1
    state.mode = "form"
    other = module(base, client_id="other")
    assert (await run_probe(f"{base}/ok", other)).success
    assert state.target_saw[-1] == "Bearer tok-2"


async def test_credentials_move_to_the_form_when_the_header_is_refused(
    run_probe: ProbeRunner, site: tuple[str, Endpoint]
) -> None:
    """As Go's auto-detection: a refused Basic header is retried once with the credentials in the form."""
    base, state = site
    state.form_only = True
    state.expires_in = 5
    settings = module(base)
    first = await run_probe(f"{base}/ok", settings)
    second = await run_probe(f"{base}/ok", settings)
    assert first.success and second.success, (first.message, second.message)
    # Header refused, then form; the next fetch goes straight to the form.
    assert [r["authorization"] is not None for r in state.requests] == [True, False, False]
    assert state.requests[1]["form"]["client_id"] == "probe client"
    assert state.requests[1]["form"]["client_secret"] == SECRET


FAILURES = {
    "status": "oauth2 token endpoint {base}/token answered status 500",
    "not-json": "oauth2 token endpoint {base}/token answered with a body that is not JSON",
    "no-token": "oauth2 token endpoint {base}/token answered without an access_token",
}


@pytest.mark.parametrize("mode", sorted(FAILURES))
async def test_failing_token_endpoint_fails_the_probe_with_other(
    run_probe: ProbeRunner, site: tuple[str, Endpoint], mode: str
) -> None:
    """A token endpoint that answers without a token fails the probe (other), saying which way."""
    base, state = site
    state.mode = mode
    result = await run_probe(f"{base}/ok", module(base))
    assert result.reason is FailureReason.OTHER
    assert result.message == FAILURES[mode].format(base=base)
    # Tried with the header, then with the form (Go's auto-detection); the target never asked.
    assert len(state.requests) == 2
    assert state.target_saw == []
    assert SECRET not in result.message


async def test_unreachable_token_endpoint_fails_with_other(
    run_probe: ProbeRunner, site: tuple[str, Endpoint]
) -> None:
    """A token endpoint nobody answers at fails the probe with other, naming the token request."""
    base, state = site
    closed = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    result = await run_probe(f"{base}/ok", module(base, token_url=f"http://127.0.0.1:{port}/token"))
    assert result.reason is FailureReason.OTHER
    assert result.message.startswith(
        f"oauth2 token request to http://127.0.0.1:{port}/token failed: cannot connect to 127.0.0.1:{port}"
    )
    assert state.target_saw == []
    odd = await run_probe(f"{base}/ok", module(base, token_url="ftp://127.0.0.1/token"))
    assert (odd.reason, odd.message) == (
        FailureReason.OTHER,
        "oauth2 token request to ftp://127.0.0.1/token failed: unsupported URL scheme 'ftp'",
    )


async def test_client_secret_file_is_read(
    run_probe: ProbeRunner, site: tuple[str, Endpoint], tmp_path: Path
) -> None:
    """client_secret_file is read when the token is fetched; an unreadable one fails with other."""
    base, state = site
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    settings = module(base, client_secret=None, client_secret_file=str(secret_file))
    assert (await run_probe(f"{base}/ok", settings)).success
    assert (
        state.requests[0]["authorization"] == "Basic " + base64.b64encode(b"probe+client:from-file").decode()
    )
    missing = module(base, client_secret=None, client_secret_file=str(tmp_path / "missing"))
    result = await run_probe(f"{base}/ok", missing)
    assert (result.reason, result.message) == (
        FailureReason.OTHER,
        "cannot read oauth2.client_secret_file: No such file or directory",
    )


async def test_concurrent_probes_share_one_token_request(
    run_probe: ProbeRunner, site: tuple[str, Endpoint]
) -> None:
    """Probes that need the same token while it is being fetched wait for that one request."""
    base, state = site
    state.gate = asyncio.Event()
    settings = module(base)
    probes = [asyncio.create_task(run_probe(f"{base}/ok", settings)) for _ in range(8)]
    await wait_for(lambda: len(state.requests) == 1 and oauth2.TOKENS.waiting == 7, what="7 probes waiting")
    state.gate.set()
    results = await asyncio.gather(*probes)
    assert [r.success for r in results] == [True] * 8, [r.message for r in results]
    assert len(state.requests) == 1
    assert state.target_saw == ["Bearer tok-1"] * 8
    assert oauth2.TOKENS.waiting == 0


async def test_a_shared_failed_token_request_is_not_kept(
    run_probe: ProbeRunner, site: tuple[str, Endpoint]
) -> None:
    """A refused token request fails every probe that waited on it; the next probe asks anew."""
    base, state = site
    state.mode, state.gate = "status", asyncio.Event()
    settings = module(base)
    probes = [asyncio.create_task(run_probe(f"{base}/ok", settings)) for _ in range(4)]
    await wait_for(lambda: len(state.requests) == 1 and oauth2.TOKENS.waiting == 3, what="3 probes waiting")
    state.gate.set()
    failed = await asyncio.gather(*probes)
    message = FAILURES["status"].format(base=base)
    assert [(r.reason, r.message) for r in failed] == [(FailureReason.OTHER, message)] * 4
    # One fetch, tried with the header and then the form, for all four probes.
    assert len(state.requests) == 2
    state.mode = "json"
    again = await run_probe(f"{base}/ok", settings)
    assert again.success, again.message
    assert len(state.requests) == 3
    assert state.target_saw == ["Bearer tok-1"]


async def test_waiting_probes_ask_again_when_the_asking_probe_times_out(
    run_probe: ProbeRunner, site: tuple[str, Endpoint]
) -> None:
    """The probe that asked for the token times out: one that waited asks itself and succeeds."""
    base, state = site
    state.gate = asyncio.Event()
    settings = module(base)
    hasty = asyncio.create_task(run_probe(f"{base}/ok", settings, timeout=0.3))
    await wait_for(lambda: len(state.requests) == 1, what="the first token request")
    patient = asyncio.create_task(run_probe(f"{base}/ok", settings, timeout=30.0))
    await wait_for(lambda: oauth2.TOKENS.waiting == 1, what="the second probe waiting")
    held, state.gate = state.gate, None  # the next request is answered at once
    timed_out = await hasty
    assert timed_out.reason is FailureReason.TIMEOUT
    result = await patient
    assert result.success, result.message
    assert len(state.requests) == 2
    assert state.target_saw == ["Bearer tok-1"]
    held.set()  # the abandoned request may finish now; nobody reads its answer


def test_token_cache_renews_before_expiry_and_is_bounded() -> None:
    """A cached token is dropped EXPIRY_MARGIN before it expires; the cache keeps at most its size."""
    now = [0.0]
    cache = oauth2.TokenCache(size=2, clock=lambda: now[0])
    cache.put(("a",), "Bearer a", 60.0)
    assert cache.get(("a",)) == "Bearer a"
    now[0] = 60.0 - oauth2.EXPIRY_MARGIN
    assert cache.get(("a",)) is None
    cache.put(("a",), "Bearer a", None)
    cache.put(("b",), "Bearer b", 60.0)
    cache.put(("c",), "Bearer c", 60.0)
    assert len(cache) == 2
    assert cache.get(("a",)) is None and cache.get(("c",)) == "Bearer c"


# --- the jwt-bearer grant -----------------------------------------------------------------------

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
HASHES = {"RS256": hashes.SHA256, "RS384": hashes.SHA384, "RS512": hashes.SHA512}


@pytest.fixture(scope="module")
def keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    """The client's RSA key, and one the token endpoint does not know."""
    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


def pem_of(key: rsa.RSAPrivateKey, pkcs8: bool = False) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8 if pkcs8 else serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


def b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@dataclass
class JWTEndpoint:
    """A token endpoint that checks each assertion's signature and claims, and what it saw."""

    public_key: rsa.RSAPublicKey
    issuer: str = "probe client"
    audience: str = ""
    expires_in: int = 3600
    requests: list[dict[str, Any]] = field(default_factory=list)
    assertions: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    issued: int = 0
    target_saw: list[str] = field(default_factory=list)
    # While set, each token request is held (after being counted) until the test opens it.
    gate: asyncio.Event | None = None

    def verify(self, token: str) -> str | None:
        """Why ``token`` is not a valid assertion, or None."""
        header_part, claims_part, signature = token.split(".")
        header = json.loads(b64decode(header_part))
        claims = json.loads(b64decode(claims_part))
        try:
            self.public_key.verify(
                b64decode(signature),
                f"{header_part}.{claims_part}".encode(),
                padding.PKCS1v15(),
                HASHES[header["alg"]](),
            )
        except InvalidSignature:
            return "bad signature"
        self.assertions.append((header, claims))
        if claims["iss"] != self.issuer:
            return "wrong issuer"
        if claims["aud"] != self.audience:
            return "wrong audience"
        if not claims["iat"] <= time.time() < claims["exp"]:
            return "expired"
        return None


@pytest.fixture
async def jwt_site(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey], aiohttp_server: AiohttpServer
) -> AsyncIterator[tuple[str, JWTEndpoint]]:
    """A token endpoint (/token) that verifies assertions, and a target (/ok) that wants the newest token."""
    state = JWTEndpoint(keys[0].public_key())

    async def token(request: web.Request) -> web.Response:
        form = dict(await request.post())
        state.requests.append({"form": form, "authorization": request.headers.get("Authorization")})
        if state.gate is not None:
            await state.gate.wait()
        problem = (
            "wrong grant" if form.get("grant_type") != JWT_BEARER else state.verify(str(form["assertion"]))
        )
        if problem is not None:
            state.refusals.append(problem)
            return web.json_response({"error": "invalid_grant", "error_description": problem}, status=400)
        state.issued += 1
        return web.json_response(
            {"access_token": f"jwt-{state.issued}", "token_type": "bearer", "expires_in": state.expires_in}
        )

    async def ok(request: web.Request) -> web.Response:
        seen = request.headers.get("Authorization", "")
        state.target_saw.append(seen)
        return web.Response(status=202 if seen == f"Bearer jwt-{state.issued}" else 401)

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_get("/ok", ok)
    server = await aiohttp_server(app, host="127.0.0.1")
    base = f"http://127.0.0.1:{server.port}"
    state.audience = f"{base}/token"
    yield base, state


def jwt_module(base: str, **options: Any) -> Module:
    options.setdefault("grant_type", JWT_BEARER)
    options.setdefault("client_secret", None)
    return module(base, **options)


async def test_jwt_bearer_assertion_is_signed_posted_and_its_token_cached(
    run_probe: ProbeRunner,
    jwt_site: tuple[str, JWTEndpoint],
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    """The assertion is RS256 with the standard claims, posted without client auth; the token is reused."""
    base, state = jwt_site
    settings = jwt_module(
        base,
        client_certificate_key=Secret(pem_of(keys[0])),
        client_certificate_key_id="key-1",
        scopes=("read", "write"),
        endpoint_params={"resource": "probes"},
    )
    first = await run_probe(f"{base}/ok", settings)
    second = await run_probe(f"{base}/ok", settings)
    assert first.success and second.success, (first.message, second.message, state.refusals)
    assert state.target_saw == ["Bearer jwt-1", "Bearer jwt-1"]
    [request] = state.requests
    assert request["authorization"] is None
    form = request["form"]
    assert sorted(form) == ["assertion", "grant_type", "resource", "scope"]
    assert (form["grant_type"], form["scope"], form["resource"]) == (JWT_BEARER, "read write", "probes")
    [(header, claims)] = state.assertions
    assert header == {"alg": "RS256", "kid": "key-1", "typ": "JWT"}
    assert sorted(claims) == ["aud", "exp", "iat", "iss", "jti", "scope", "sub"]
    assert (claims["iss"], claims["sub"], claims["aud"]) == ("probe client", "probe client", f"{base}/token")
    assert claims["exp"] - claims["iat"] == 600
    assert claims["scope"] == "read write"
    assert first.value("probe_http_status_code") == 202


async def test_jwt_bearer_options_and_refresh(
    run_probe: ProbeRunner,
    jwt_site: tuple[str, JWTEndpoint],
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    tmp_path: Path,
) -> None:
    """A PKCS #8 key file, RS512, iss, audience and claims are used; an expiring token is fetched anew."""
    base, state = jwt_site
    state.issuer, state.audience, state.expires_in = "issuer-1", "https://auth.example/", 5
    key_file = tmp_path / "key.pem"
    key_file.write_text(pem_of(keys[0], pkcs8=True))
    settings = jwt_module(
        base,
        client_certificate_key_file=str(key_file),
        signature_algorithm="RS512",
        iss="issuer-1",
        audience="https://auth.example/",
        claims={"tenant": "ops", "limits": {"rate": (1, 2)}, "sub": "robot"},
    )
    results = [await run_probe(f"{base}/ok", settings) for _ in range(2)]
    assert [r.success for r in results] == [True, True], [r.message for r in results]
    assert state.target_saw == ["Bearer jwt-1", "Bearer jwt-2"]
    (header, claims), (_, again) = state.assertions
    assert header == {"alg": "RS512", "typ": "JWT"}
    # claims are laid over the standard ones, sub included.
    assert (claims["tenant"], claims["limits"], claims["sub"]) == ("ops", {"rate": [1, 2]}, "robot")
    assert claims["jti"] != again["jti"]


async def test_refused_assertion_fails_with_other(
    run_probe: ProbeRunner,
    jwt_site: tuple[str, JWTEndpoint],
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    tmp_path: Path,
) -> None:
    """An assertion the endpoint refuses (a key it does not know) fails once, with other; no key shown."""
    base, state = jwt_site
    stranger = pem_of(keys[1])
    result = await run_probe(f"{base}/ok", jwt_module(base, client_certificate_key=Secret(stranger)))
    assert (result.reason, result.message) == (
        FailureReason.OTHER,
        f"oauth2 token endpoint {base}/token answered status 400",
    )
    assert state.refusals == ["bad signature"]
    assert len(state.requests) == 1 and state.target_saw == []
    wrong_audience = jwt_module(base, client_certificate_key=Secret(pem_of(keys[0])), audience="elsewhere")
    assert not (await run_probe(f"{base}/ok", wrong_audience)).success
    assert state.refusals == ["bad signature", "wrong audience"]
    not_a_key = tmp_path / "key.pem"
    not_a_key.write_text("hunter2\n")
    for path, message in (
        (not_a_key, "oauth2.client_certificate_key_file must be an unencrypted RSA private key in PEM"),
        (tmp_path / "missing", "cannot read oauth2.client_certificate_key_file: No such file or directory"),
    ):
        failed = await run_probe(f"{base}/ok", jwt_module(base, client_certificate_key_file=str(path)))
        assert failed.reason is FailureReason.OTHER
        assert failed.message.startswith(message) and "hunter2" not in failed.message
    assert len(state.requests) == 2


def test_jwt_bearer_module_loads_and_redacts(keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]) -> None:
    """A jwt-bearer module in prometheus/common's format loads; /config hides the key."""
    pem = pem_of(keys[0])
    indented = "".join(f"          {line}\n" for line in pem.splitlines())
    config = parse_config(
        f"""
modules:
  jwt:
    prober: http
    http:
      oauth2:
        grant_type: urn:ietf:params:oauth:grant-type:jwt-bearer
        client_id: probe
        token_url: https://auth.example/token
        signature_algorithm: RS384
        client_certificate_key_id: key-1
        claims:
          tenant: ops
          since: 2024-01-01
          weights: [1, 2.5, true]
        client_certificate_key: |
{indented}"""
    )
    settings = config.modules["jwt"].section(HTTPProbe).oauth2
    assert settings is not None and settings.jwt_bearer
    assert settings.client_certificate_key is not None and settings.client_certificate_key.reveal() == pem
    # As Go's yaml decodes into any: a date stays the string written.
    assert dict(settings.claims) == {"tenant": "ops", "since": "2024-01-01", "weights": (1, 2.5, True)}
    dumped = dump_config(config)
    assert "PRIVATE KEY" not in dumped and "client_certificate_key: <secret>" in dumped


# --- configuration ------------------------------------------------------------------------------


def errors_of(oauth2_section: str, extra: str = "") -> list[str]:
    text = "modules:\n  m:\n    prober: http\n    http:\n" + "".join(
        f"      {line}\n" for line in extra.strip().splitlines()
    )
    text += "      oauth2:\n" + "".join(f"        {line}\n" for line in oauth2_section.strip().splitlines())
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return [str(issue) for issue in info.value.issues]


REFUSED: dict[str, tuple[str, str, list[str]]] = {
    "no-client-id": (
        "token_url: https://auth.example/token",
        "",
        ["modules.m.http.oauth2.client_id (line 6): is required: the client the token is asked for"],
    ),
    "no-token-url": (
        "client_id: probe",
        "",
        ["modules.m.http.oauth2.token_url (line 6): is required: where the token is asked for"],
    ),
    "both-secrets": (
        "client_id: probe\nclient_secret: x\nclient_secret_file: /run/secret\ntoken_url: https://a.example/t",
        "",
        [
            "modules.m.http.oauth2.client_secret (line 7): at most one of client_secret and "
            "client_secret_file may be set"
        ],
    ),
    "unknown-grant": (
        "client_id: probe\ntoken_url: https://a.example/t\ngrant_type: password",
        "",
        [
            "modules.m.http.oauth2.grant_type (line 8): must be client_credentials or "
            "urn:ietf:params:oauth:grant-type:jwt-bearer, got 'password'"
        ],
    ),
    "jwt-without-key": (
        "client_id: probe\ntoken_url: https://a.example/t\n"
        "grant_type: urn:ietf:params:oauth:grant-type:jwt-bearer",
        "",
        [
            "modules.m.http.oauth2.grant_type (line 8): the jwt-bearer grant signs with a private key: "
            "set client_certificate_key or client_certificate_key_file"
        ],
    ),
    "jwt-both-keys": (
        "client_id: probe\ntoken_url: https://a.example/t\n"
        "grant_type: urn:ietf:params:oauth:grant-type:jwt-bearer\n"
        "client_certificate_key: not-a-key\nclient_certificate_key_file: /run/key.pem",
        "",
        [
            "modules.m.http.oauth2.client_certificate_key (line 9): at most one of client_certificate_key "
            "and client_certificate_key_file may be set"
        ],
    ),
    "jwt-bad-key": (
        "client_id: probe\ntoken_url: https://a.example/t\n"
        "grant_type: urn:ietf:params:oauth:grant-type:jwt-bearer\n"
        "client_certificate_key: hunter2-not-a-key",
        "",
        [
            "modules.m.http.oauth2.client_certificate_key (line 9): must be an unencrypted RSA private key "
            "in PEM (PKCS #1 or PKCS #8)"
        ],
    ),
    "jwt-bad-algorithm": (
        "client_id: probe\ntoken_url: https://a.example/t\n"
        "grant_type: urn:ietf:params:oauth:grant-type:jwt-bearer\n"
        "client_certificate_key_file: /run/key.pem\nsignature_algorithm: ES256",
        "",
        [
            "modules.m.http.oauth2.signature_algorithm (line 10): must be one of RS256, RS384, RS512, "
            "got 'ES256'"
        ],
    ),
    "jwt-claim-not-json": (
        "client_id: probe\ntoken_url: https://a.example/t\n"
        "grant_type: urn:ietf:params:oauth:grant-type:jwt-bearer\n"
        "client_certificate_key_file: /run/key.pem\nclaims:\n  limits: {rate: .inf}",
        "",
        ["modules.m.http.oauth2.claims.limits (line 11): must be a finite number, got inf"],
    ),
    "with-basic-auth": (
        "client_id: probe\ntoken_url: https://a.example/t",
        "basic_auth: {username: u, password: p}",
        ["modules.m.http.oauth2 (line 7): only one of basic_auth, oauth2 may be set"],
    ),
    "no-proxy-without-url": (
        "client_id: probe\ntoken_url: https://a.example/t\nno_proxy: example.com",
        "",
        [
            "modules.m.http.oauth2.no_proxy (line 8): needs proxy_url: it lists the hosts reached "
            "without that proxy"
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_oauth2_config_refusals(case: str) -> None:
    """Each oauth2 rule of prometheus/common (and the grants we lack) is refused where it applies."""
    section, extra, expected = REFUSED[case]
    assert errors_of(section, extra) == expected


def test_blackbox_example_oauth2_module_loads_and_redacts() -> None:
    """blackbox's example oauth2 module loads; /config shows no secret."""
    config = parse_config(
        """
modules:
  http_2xx_oauth_client_credentials:
    prober: http
    timeout: 5s
    http:
      valid_http_versions: ["HTTP/1.1", "HTTP/2"]
      follow_redirects: true
      preferred_ip_protocol: "ip4"
      valid_status_codes:
        - 200
        - 201
      oauth2:
        client_id: "client_id"
        client_secret: "client_secret_value"
        token_url: "https://api.example.com/token"
        endpoint_params:
          grant_type: "client_credentials"
"""
    )
    settings = config.modules["http_2xx_oauth_client_credentials"].section(HTTPProbe)
    assert settings.oauth2 is not None and settings.oauth2.client_id == "client_id"
    dumped = dump_config(config)
    assert "client_secret_value" not in dumped
    assert "client_secret: <secret>" in dumped
