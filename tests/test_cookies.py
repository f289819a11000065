"""Tests for the probes' cookie jar: RFC 6265's rules, the public-suffix one included."""

from __future__ import annotations

import pytest

from exporter.probes.cookies import CookieJar, is_public_suffix
from exporter.probes.httpclient import parse_url


def stored(jar: CookieJar, url: str, *set_cookies: str) -> CookieJar:
    jar.store(parse_url(url), [("set-cookie", value) for value in set_cookies])
    return jar


def sent(jar: CookieJar, url: str) -> str:
    return jar.header(parse_url(url))


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("com", True),
        ("co.uk", True),
        (".CO.UK", True),
        ("example.co.uk", False),
        ("example.com", False),
        ("127.0.0.1", False),
        ("::1", False),
        ("", False),
    ],
)
def test_public_suffixes(domain: str, expected: bool) -> None:
    """The bundled list knows com and co.uk; a registrable name or an address is not a suffix."""
    assert is_public_suffix(domain) is expected


@pytest.mark.parametrize(
    ("origin", "domain", "elsewhere"),
    [
        ("http://www.example.co.uk/", "co.uk", "http://shop.other.co.uk/"),
        ("http://shop.example.com/", "com", "http://bank.com/"),
        ("http://shop.example.com/", ".COM", "http://bank.com/"),
    ],
)
async def test_a_cookie_for_a_public_suffix_is_refused(origin: str, domain: str, elsewhere: str) -> None:
    """A server must not set a cookie for every site under a public suffix: it is dropped."""
    jar = stored(CookieJar(), origin, f"session=stolen; Domain={domain}; Path=/")
    assert sent(jar, elsewhere) == ""
    assert sent(jar, origin) == ""
    assert jar.get("session") is None


async def test_a_cookie_for_the_registrable_domain_is_kept() -> None:
    """Domain=example.co.uk reaches the site's other hosts, and no one else."""
    jar = stored(CookieJar(), "http://www.example.co.uk/login", "session=abc; Domain=example.co.uk; Path=/")
    assert sent(jar, "http://shop.example.co.uk/cart") == "session=abc"
    assert sent(jar, "http://example.co.uk/") == "session=abc"
    assert sent(jar, "http://www.other.co.uk/") == ""
    assert jar.get("session") == "abc"


async def test_a_public_suffix_host_may_set_a_host_only_cookie() -> None:
    """RFC 6265 5.3: a host that is itself a suffix gets the cookie, host-only, not its subdomains."""
    jar = stored(CookieJar(), "https://github.io/", "pref=dark; Domain=github.io; Path=/")
    assert sent(jar, "https://github.io/page") == "pref=dark"
    assert sent(jar, "https://someone.github.io/") == ""


async def test_domain_path_secure_and_expiry_rules() -> None:
    """The rest of RFC 6265 as the jar applies it: foreign domains, paths, Secure, Max-Age=0."""
    jar = stored(
        CookieJar(),
        "http://127.0.0.1:8080/app/login",
        "foreign=1; Domain=example.com",
        "app=2; Path=/app",
        "token=3; Secure; Path=/",
        "gone=4; Path=/",
    )
    assert set(sent(jar, "http://127.0.0.1:8080/app/home").split("; ")) == {"app=2", "gone=4"}
    assert sent(jar, "http://127.0.0.1:8080/other") == "gone=4"
    assert "token=3" in sent(jar, "https://127.0.0.1:8443/")
    stored(jar, "http://127.0.0.1:8080/", "gone=; Max-Age=0; Path=/")
    assert sent(jar, "http://127.0.0.1:8080/other") == ""
    assert jar.get("foreign") is None


async def test_malformed_set_cookie_is_ignored() -> None:
    """A header the cookie parser refuses leaves the jar as it was and does not fail the probe."""
    jar = stored(CookieJar(), "http://127.0.0.1/", 'bad="unterminated; Path=/', "good=1; Path=/")
    assert sent(jar, "http://127.0.0.1/") == "good=1"
