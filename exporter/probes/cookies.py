"""The cookie jar of one probe: aiohttp's RFC 6265 jar behind a public-suffix check.

Login pages often set a cookie and redirect to a page that needs it; without a jar such a
probe would loop until max_redirects. A flow shares one jar across its steps.

aiohttp's jar does the domain, path, Secure and expiry rules; what it lacks is RFC 6265's
public-suffix rule (section 5.3 step 5): a server must not set a cookie for ``com`` or
``co.uk``, or every site under that suffix would receive it. The list comes with the
``publicsuffixlist`` package, read from its bundled file: it is never fetched.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING

# aiohttp, yarl and the public-suffix list are imported at the first cookie: a probe worker
# whose targets set none never loads them (aiohttp alone is about 13 MiB per process).
if TYPE_CHECKING:  # the client imports the jar
    import aiohttp
    from publicsuffixlist import PublicSuffixList
    from yarl import URL as YarlURL

    from exporter.probes.httpclient import URL


@functools.cache
def _suffixes() -> PublicSuffixList:
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


def is_public_suffix(domain: str) -> bool:
    """Whether ``domain`` is a public suffix (``com``, ``co.uk``); addresses never are."""
    domain = domain.strip(".").lower()
    if not domain:
        return False
    try:
        ipaddress.ip_address(domain)
    except ValueError:
        return bool(_suffixes().is_public(domain))
    return False


def _yarl(url: URL) -> YarlURL:
    from yarl import URL as YarlURL

    return YarlURL.build(scheme=url.scheme, host=url.host, port=url.port, path=url.path, encoded=True)


class CookieJar:
    """The cookies one probe collects across its redirects (and a flow across its steps)."""

    def __init__(self) -> None:
        # Made at the first cookie: most probes see none, and an empty aiohttp jar costs about
        # a tenth of an HTTP probe's own CPU time.
        self._jar: aiohttp.CookieJar | None = None

    def store(self, url: URL, headers: Sequence[tuple[str, str]]) -> None:
        """Keep the cookies of the Set-Cookie headers among ``headers`` of a response from ``url``."""
        host = url.host.lower()
        for name, value in headers:
            if name != "set-cookie":
                continue
            parsed: SimpleCookie = SimpleCookie()
            try:
                parsed.load(value)
            except CookieError:
                continue
            for morsel in parsed.values():
                domain = morsel["domain"].strip().lstrip(".").lower()
                if domain and is_public_suffix(domain):
                    if domain != host:
                        continue  # a cookie for a whole public suffix
                    morsel["domain"] = ""  # the suffix's own host: host-only (RFC 6265 5.3)
                if self._jar is None:
                    import aiohttp

                    # unsafe: probes reach addresses as often as names, and their cookies count.
                    self._jar = aiohttp.CookieJar(unsafe=True)
                single: SimpleCookie = SimpleCookie()
                single[morsel.key] = morsel
                self._jar.update_cookies(single, _yarl(url))

    def get(self, name: str) -> str | None:
        """The value of the cookie ``name``, whatever its domain and path (the first one stored)."""
        for morsel in self._jar or ():
            if morsel.key == name:
                return morsel.coded_value
        return None

    def header(self, url: URL) -> str:
        """The Cookie header value for a request to ``url``, empty when no cookie applies."""
        if self._jar is None:
            return ""
        found = self._jar.filter_cookies(_yarl(url))
        return "; ".join(f"{morsel.key}={morsel.coded_value}" for morsel in found.values())
