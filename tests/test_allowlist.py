"""Tests of the allowlist's remembered verdicts: the same answers as fresh ones, and bounded."""

from __future__ import annotations

from exporter import allowlist
from exporter.allowlist import Allowlist
from exporter.types import HostPattern

PATTERNS = [HostPattern.from_yaml(p) for p in ("127.0.0.0/8", "::1/128", "*.internal", "/run/apps/*")]


async def test_remembered_verdicts_match_fresh_ones_past_the_bound() -> None:
    """Asked about more hosts than it remembers, twice over, the allowlist answers as a new one would."""
    hosts = [f"127.0.{n // 256}.{n % 256}" for n in range(allowlist.MAX_VERDICTS + 50)]
    hosts += [f"10.0.{n // 256}.{n % 256}" for n in range(60)]
    hosts += ["0x7f.1", "2130706433", "::ffff:127.0.0.1", "[::1]", "db.internal", "/run/apps/x", "/tmp/x"]
    guard = Allowlist(PATTERNS)
    for _ in range(2):
        for host in hosts:
            fresh = Allowlist(PATTERNS)
            assert await guard.allows_target(host) == await fresh.allows_target(host), host
            assert guard.allows_host(host) == fresh.allows_host(host), host
            assert guard.allows_address("example.test", host) == fresh.allows_address("example.test", host)
    assert await guard.allows_target("2130706433") and not await guard.allows_target("10.0.0.1")
    assert guard.allows_address("db.internal", "192.0.2.1") and not guard.allows_address(
        "x.test", "192.0.2.1"
    )
    for cache in (guard._verdict_without_dns, guard.allows_host, guard.allows_address):
        assert 0 < cache.cache_info().currsize <= allowlist.MAX_VERDICTS  # type: ignore[attr-defined]
