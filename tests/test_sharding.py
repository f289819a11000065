"""Tests for sharding: every service in exactly one shard, and little movement when N changes."""

from __future__ import annotations

from collections import Counter

import pytest

from exporter.sharding import Shard, owner, parse_shard_index

NAMES = [f"service-{i:05d}" for i in range(5000)]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_shards_partition_the_services(count: int) -> None:
    """Each service is owned by exactly one shard, and shares are near 1/N."""
    owners = Counter()
    for name in NAMES:
        owning = [i for i in range(count) if Shard(i, count).owns(name)]
        assert len(owning) == 1, name
        owners[owning[0]] += 1
    assert set(owners) == set(range(count))
    expected = len(NAMES) / count
    assert all(abs(n - expected) < expected * 0.1 for n in owners.values()), owners


@pytest.mark.parametrize("count", [2, 3, 5, 8])
def test_growing_by_one_shard_moves_about_one_in_n_plus_one(count: int) -> None:
    """Going from N to N+1 shards moves about 1/(N+1) of services, all of them to the new shard."""
    moved = [name for name in NAMES if owner(name, count) != owner(name, count + 1)]
    assert all(owner(name, count + 1) == count for name in moved)
    share = len(moved) / len(NAMES)
    ideal = 1 / (count + 1)
    assert abs(share - ideal) < ideal * 0.15, (share, ideal)


def test_shard_index_from_hostname() -> None:
    """A StatefulSet pod name gives its ordinal; bad values are clear errors."""
    assert parse_shard_index("2", "x") == 2
    assert parse_shard_index("hostname", "outage-exporter-3") == 3
    with pytest.raises(ValueError, match="hostname ending in -N"):
        parse_shard_index("hostname", "exporter")
    with pytest.raises(ValueError, match="between 0 and 1"):
        Shard(2, 2)
