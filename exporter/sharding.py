"""Splits services between N exporter replicas so each service is probed by exactly one."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass


def _score(name: str, shard: int, salt: str = "") -> int:
    digest = hashlib.blake2b(f"{salt}{shard}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(name: str, count: int, salt: str = "") -> int:
    """The shard that probes ``name``.

    Rendezvous hashing: every shard scores the name and the highest score wins. Adding a shard
    moves only the services the new shard now wins, about 1/(N+1) of them, and removing one moves
    only that shard's services.
    """
    return max(range(count), key=lambda shard: _score(name, shard, salt))


def worker_of(name: str, count: int) -> int:
    """The worker process (of ``count``) that probes ``name`` within this replica.

    The same rendezvous hashing as shards, salted: unsalted, a replica's services would all win
    on the worker with the replica's own index whenever the two counts are equal.
    """
    return 0 if count == 1 else owner(name, count, "worker")


@dataclass(frozen=True, slots=True)
class Shard:
    """This replica's place among ``count`` replicas."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"--shard.count must be at least 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"--shard.index must be between 0 and {self.count - 1}, got {self.index}")

    def owns(self, name: str) -> bool:
        return self.count == 1 or owner(name, self.count) == self.index


def parse_shard_index(text: str, hostname: str) -> int:
    """``--shard.index``: a number, or ``hostname`` to take the StatefulSet ordinal (``name-3`` is 3)."""
    if text.isdigit():
        return int(text)
    if text == "hostname":
        match = re.search(r"-(\d+)$", hostname)
        if match is None:
            raise ValueError(f"--shard.index=hostname needs a hostname ending in -N, got {hostname!r}")
        return int(match.group(1))
    raise ValueError(f"--shard.index must be a number or 'hostname', got {text!r}")
