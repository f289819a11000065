"""OAuth 2.0 tokens for the HTTP client: a token asked for, cached until it expires.

The client credentials request follows Go's oauth2 package, which blackbox uses through
Prometheus' HTTP client: a form POST to ``token_url`` with ``grant_type=client_credentials``,
the client's credentials first in a Basic Authorization header and, if the endpoint refuses
that, in the form; the answer is JSON (or a form, by its Content-Type).

The JWT bearer grant (RFC 7523 2.1) follows prometheus/common's own token source: a JWT
signed with the client's RSA key (RS256 unless ``signature_algorithm`` says RS384 or RS512,
``kid`` from ``client_certificate_key_id``) with ``iss`` (``iss`` or client_id), ``sub``
(client_id), ``aud`` (``audience`` or token_url), a fresh ``jti``, ``iat``, ``exp`` ten
minutes on, ``scope`` when scopes are set, then ``claims`` over them; posted as
``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=...`` with no client
authentication, once (no second style), the answer read as JSON.

A token is renewed EXPIRY_MARGIN before it expires; one without ``expires_in`` is kept until
the cache drops it. Probes that need the same token at the same time share one request for it
(``TokenCache.shared``): a hundred services behind one identity provider that start together
ask it once, not a hundred times. A failed request fails the probes that waited on it and is
not kept, so the next probe asks again. Each process has its own cache, so with worker
processes each worker asks once. Neither the token, the secret nor the key is ever in a
message, a metric or a log line.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import parse_qs, quote_plus, urlencode

from exporter.modules import JWT_BEARER, BasicAuth, HTTPProbe, OAuth2, rsa_private_key
from exporter.probes.net import ProbeFailure
from exporter.result import FailureReason
from exporter.types import Secret, read_secret_file, redact_target

log = logging.getLogger(__name__)

# Go's oauth2 renews a token this many seconds before its expiry.
EXPIRY_MARGIN = 10.0
MAX_TOKENS = 256


@dataclass(frozen=True, slots=True)
class TokenAnswer:
    """What the token endpoint answered, as the HTTP client read it."""

    status: int
    content_type: str
    body: bytes


# Sends one token request: the form, and the Basic credentials (or None) for its header.
Post = Callable[[OAuth2, Mapping[str, str], tuple[str, str] | None], Awaitable[TokenAnswer]]
# Asks for a token: its Authorization value and lifetime (None: no expiry).
Fetch = Callable[[], Awaitable[tuple[str, float | None]]]


class _Abandoned(Exception):
    """The probe fetching a token was cancelled (its timeout) before the answer came."""


def request_settings(
    config: OAuth2, form: Mapping[str, str], basic: tuple[str, str] | None, probe: HTTPProbe
) -> HTTPProbe:
    """The token request as HTTP client settings: a form POST with oauth2's own TLS and proxy."""
    return HTTPProbe(
        method="POST",
        headers=MappingProxyType({"Content-Type": Secret("application/x-www-form-urlencoded")}),
        body=urlencode(form),
        basic_auth=None if basic is None else BasicAuth(username=basic[0], password=Secret(basic[1])),
        tls_config=config.tls_config,
        **config.proxy_options(),
        preferred_ip_protocol=probe.preferred_ip_protocol,
        ip_protocol_fallback=probe.ip_protocol_fallback,
    )


class TokenCache:
    """Tokens by (token_url, client_id, scopes, endpoint_params, secret digest), at most ``size``."""

    def __init__(self, size: int = MAX_TOKENS, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.clock = clock
        self._tokens: OrderedDict[tuple[object, ...], tuple[str, float]] = OrderedDict()
        # Go's auto-detection remembers per token URL whether credentials go in the form.
        self._in_form: OrderedDict[str, bool] = OrderedDict()
        # The token requests under way, by key: whoever needs the same token waits for it.
        self._flights: dict[tuple[object, ...], asyncio.Future[str]] = {}
        self._waiting = 0

    def get(self, key: tuple[object, ...]) -> str | None:
        entry = self._tokens.get(key)
        if entry is None:
            return None
        header, expires = entry
        if self.clock() >= expires - EXPIRY_MARGIN:
            del self._tokens[key]
            return None
        self._tokens.move_to_end(key)
        return header

    def put(self, key: tuple[object, ...], header: str, lifetime: float | None) -> None:
        expires = math.inf if lifetime is None else self.clock() + lifetime
        self._tokens[key] = (header, expires)
        self._tokens.move_to_end(key)
        while len(self._tokens) > self.size:
            self._tokens.popitem(last=False)

    async def shared(self, key: tuple[object, ...], fetch: Fetch) -> str:
        """The token for ``key``: cached, or from the one request under way, or fetched now.

        Callers that come while a request is under way wait for its answer, and share its
        failure too; a failure is not kept. If the caller that made the request is cancelled
        (its probe timed out), those waiting try again rather than fail with it.
        """
        while True:
            header = self.get(key)
            if header is not None:
                return header
            flight = self._flights.get(key)
            if flight is None:
                break
            self._waiting += 1
            try:
                # shield: one waiter's timeout must not cancel the answer the others wait for.
                return await asyncio.shield(flight)
            except _Abandoned:
                continue
            finally:
                self._waiting -= 1
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        try:
            header, lifetime = await fetch()
        except Exception as err:
            flight.set_exception(err)
            raise
        except BaseException:  # cancelled: those waiting ask again themselves
            flight.set_exception(_Abandoned())
            raise
        else:
            self.put(key, header, lifetime)
            flight.set_result(header)
            return header
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]
            flight.exception()  # retrieved: no complaint when nobody was waiting

    @property
    def waiting(self) -> int:
        """Callers now waiting for a token another caller is asking for."""
        return self._waiting

    def credentials_in_form(self, token_url: str) -> bool | None:
        return self._in_form.get(token_url)

    def remember_style(self, token_url: str, in_form: bool) -> None:
        self._in_form[token_url] = in_form
        while len(self._in_form) > self.size:
            self._in_form.popitem(last=False)

    def __len__(self) -> int:
        return len(self._tokens)

    def clear(self) -> None:
        self._tokens.clear()
        self._in_form.clear()
        self._flights.clear()


TOKENS = TokenCache()


def _secret(config: OAuth2) -> str:
    if config.client_secret_file:
        try:
            return read_secret_file(config.client_secret_file)
        except (OSError, UnicodeError) as err:
            detail = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
            message = f"cannot read oauth2.client_secret_file: {detail}"
            raise ProbeFailure(FailureReason.OTHER, message) from None
    return config.client_secret.reveal() if config.client_secret is not None else ""


def _key(config: OAuth2) -> str:
    if config.client_certificate_key_file:
        try:
            return read_secret_file(config.client_certificate_key_file)
        except (OSError, UnicodeError) as err:
            detail = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
            message = f"cannot read oauth2.client_certificate_key_file: {detail}"
            raise ProbeFailure(FailureReason.OTHER, message) from None
    return config.client_certificate_key.reveal() if config.client_certificate_key is not None else ""


# The hash of each JWT signature algorithm, by name (cryptography's class names).
_HASHES = {"RS256": "SHA256", "RS384": "SHA384", "RS512": "SHA512"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_value(value: object) -> object:
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_json_value(v) for v in value]
    return value


def assertion(config: OAuth2, pem: str, now: float | None = None) -> str:
    """The signed JWT that ``config`` posts for a token (RFC 7523 2.1)."""
    try:
        key = rsa_private_key(pem)
    except ValueError as err:
        raise ProbeFailure(FailureReason.OTHER, f"oauth2.client_certificate_key_file {err}") from None
    algorithm = config.signature_algorithm or "RS256"
    header: dict[str, object] = {"alg": algorithm, "typ": "JWT"}
    if config.client_certificate_key_id:
        header["kid"] = config.client_certificate_key_id
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {
        "iss": config.iss or config.client_id,
        "sub": config.client_id,
        "jti": str(uuid.uuid4()),
        "aud": config.audience or config.token_url,
        "iat": issued,
        "exp": issued + 600,
    }
    if config.scopes:
        claims["scope"] = " ".join(config.scopes)
    claims.update(_json_value(config.claims))  # type: ignore[call-overload]
    signing_input = ".".join(
        _b64(json.dumps(part, separators=(",", ":"), sort_keys=True).encode()) for part in (header, claims)
    )
    # cryptography loads with the first signed assertion, not in every probe worker.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    digest: hashes.HashAlgorithm = getattr(hashes, _HASHES[algorithm])()
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), digest)
    return f"{signing_input}.{_b64(signature)}"


def _form(config: OAuth2, base: Mapping[str, str] | None = None) -> dict[str, str]:
    form = dict(base) if base is not None else {"grant_type": "client_credentials"}
    if config.scopes:
        form["scope"] = " ".join(config.scopes)
    for name, value in config.endpoint_params.items():
        # Go lets endpoint_params replace grant_type only.
        if name in form and name != "grant_type":
            raise ProbeFailure(FailureReason.OTHER, f"oauth2 endpoint_params cannot override {name!r}")
        form[name] = value
    return form


async def authorization(config: OAuth2, post: Post, cache: TokenCache = TOKENS) -> str:
    """The Authorization value for ``config``: a cached token, or one fetched now."""
    if config.jwt_bearer:
        return await _jwt_authorization(config, post, cache)
    secret = _secret(config)
    digest = hashlib.blake2b(secret.encode("utf-8", "surrogateescape"), digest_size=16).digest()
    params = tuple(sorted(config.endpoint_params.items()))
    key = (config.token_url, config.client_id, config.scopes, params, digest)

    async def fetch() -> tuple[str, float | None]:
        form = _form(config)
        in_form = cache.credentials_in_form(config.token_url)
        if in_form is None:
            try:
                answer = await _fetch(config, secret, form, False, post)
                cache.remember_style(config.token_url, False)
            except _Refused:
                # As Go's auto-detection: the endpoint may want the credentials in the form instead.
                answer = await _attempt(config, secret, form, True, post)
                cache.remember_style(config.token_url, True)
        else:
            answer = await _attempt(config, secret, form, in_form, post)
        _fetched(config, answer[1])
        return answer

    return await cache.shared(key, fetch)


def _fetched(config: OAuth2, lifetime: float | None) -> None:
    # Shows in /logs which probe asked for a token and which used a kept one.
    where = redact_target(config.token_url)
    if lifetime is None:
        log.debug("oauth2 token fetched from %s, with no expiry", where)
    else:
        log.debug("oauth2 token fetched from %s, valid for %gs", where, lifetime)


async def _jwt_authorization(config: OAuth2, post: Post, cache: TokenCache) -> str:
    pem = _key(config)
    digest = hashlib.blake2b(pem.encode("utf-8", "surrogateescape"), digest_size=16).digest()
    claims = json.dumps(_json_value(config.claims), sort_keys=True)
    key = (
        JWT_BEARER,
        config.token_url,
        config.client_id,
        config.scopes,
        tuple(sorted(config.endpoint_params.items())),
        digest,
        config.client_certificate_key_id,
        config.signature_algorithm,
        config.iss,
        config.audience,
        claims,
    )

    async def fetch() -> tuple[str, float | None]:
        base = {"grant_type": JWT_BEARER, "assertion": assertion(config, pem)}
        if config.scopes:
            base["scope"] = " ".join(config.scopes)
        try:
            answer = await _fetch_answer(config, _form(config, base), None, post, json_only=True)
        except _Refused as refused:
            raise refused.failure from None
        _fetched(config, answer[1])
        return answer

    return await cache.shared(key, fetch)


class _Refused(Exception):
    """The endpoint answered, but not with a token: worth one more try with the other style."""

    def __init__(self, failure: ProbeFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure

    @classmethod
    def because(cls, message: str) -> _Refused:
        return cls(ProbeFailure(FailureReason.OTHER, message))


async def _attempt(
    config: OAuth2, secret: str, form: dict[str, str], in_form: bool, post: Post
) -> tuple[str, float | None]:
    try:
        return await _fetch(config, secret, form, in_form, post)
    except _Refused as refused:
        raise refused.failure from None


async def _fetch(
    config: OAuth2, secret: str, form: dict[str, str], in_form: bool, post: Post
) -> tuple[str, float | None]:
    if in_form:
        form = {**form, "client_id": config.client_id}
        if secret:
            form["client_secret"] = secret
        basic = None
    else:
        # Go escapes both as a query would before joining them.
        basic = (quote_plus(config.client_id), quote_plus(secret))
    return await _fetch_answer(config, form, basic, post)


async def _fetch_answer(
    config: OAuth2,
    form: Mapping[str, str],
    basic: tuple[str, str] | None,
    post: Post,
    json_only: bool = False,
) -> tuple[str, float | None]:
    where = redact_target(config.token_url)
    try:
        answer = await post(config, form, basic)
    except ProbeFailure as failure:
        raise ProbeFailure(
            FailureReason.OTHER, f"oauth2 token request to {where} failed: {failure.message}"
        ) from None
    if not 200 <= answer.status <= 299:
        raise _Refused.because(f"oauth2 token endpoint {where} answered status {answer.status}")
    fields = _token_fields(answer, json_only)
    if fields is None:
        raise _Refused.because(f"oauth2 token endpoint {where} answered with a body that is not JSON")
    token = fields.get("access_token")
    if not isinstance(token, str) or not token:
        raise _Refused.because(f"oauth2 token endpoint {where} answered without an access_token")
    kind = fields.get("token_type")
    header = f"{_token_type(kind if isinstance(kind, str) else '')} {token}"
    return header, _lifetime(fields.get("expires_in"))


def _token_fields(answer: TokenAnswer, json_only: bool = False) -> dict[str, object] | None:
    media = answer.content_type.partition(";")[0].strip().lower()
    if not json_only and media in ("application/x-www-form-urlencoded", "text/plain"):
        values = parse_qs(answer.body.decode("utf-8", "replace"))
        return {name: items[0] for name, items in values.items()}
    try:
        document = json.loads(answer.body)
    except (ValueError, UnicodeError):
        return None
    return document if isinstance(document, dict) else None


def _token_type(kind: str) -> str:
    """Go's Token.Type: the usual names in their canonical case, Bearer when none is given."""
    canonical = {"bearer": "Bearer", "mac": "MAC", "basic": "Basic"}
    return canonical.get(kind.lower(), kind) if kind else "Bearer"


def _lifetime(value: object) -> float | None:
    """Seconds a token lives (``expires_in``, a number or a numeric string); None for no expiry."""
    if isinstance(value, bool):
        return None
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not math.isfinite(seconds) or seconds == 0:
        return None
    return max(seconds, 0.0)
