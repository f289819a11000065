"""What a reload changes, worked out once and handed to the scheduler, the store and the collector.

The invariant every part relies on: **a service that did not change is the very same object
before and after a reload.** plan_reload establishes it: for each new service whose settings
equal its old one's (the config's fingerprints, or identity, decide cheaply; equality otherwise),
the plan carries the *old* object. So downstream a plain identity test (``new is old``) tells
kept from changed, without comparing 10,000 services field by field:

- the scheduler keeps a kept service's task, and so its rhythm and any probe in flight;
- the store keeps its counters, histogram and last result (a changed service keeps its
  counters too, and drops its last result only when its target or group changed);
- the collector keeps its rendered lines until the service's next result.

Changed services are the same name with other settings: their task is replaced and their
lines re-rendered. Added and removed are names new to, or gone from, the set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from exporter.config import Service


@dataclass(frozen=True)
class ReloadPlan:
    """The new service set, in order, and which names are kept, changed, added and removed."""

    services: tuple[Service, ...]
    kept: frozenset[str] = frozenset()
    changed: frozenset[str] = frozenset()
    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()
    # The services that were running, by name (removed and changed ones included).
    before: Mapping[str, Service] = field(default_factory=dict, repr=False)

    @property
    def restarted(self) -> frozenset[str]:
        """Names whose probing starts afresh: changed and added."""
        return self.changed | self.added

    @property
    def retired(self) -> frozenset[str]:
        """Names whose old task and rendered lines go: changed and removed."""
        return self.changed | self.removed


def plan_reload(old: Iterable[Service], new: Iterable[Service]) -> ReloadPlan:
    """Compare the running services with the new ones (see the module's invariant)."""
    before = {service.name: service for service in old}
    services: list[Service] = []
    kept: set[str] = set()
    changed: set[str] = set()
    added: set[str] = set()
    for service in new:
        previous = before.get(service.name)
        if previous is None:
            added.add(service.name)
        elif previous is service or previous == service:
            kept.add(service.name)
            service = previous
        else:
            changed.add(service.name)
        services.append(service)
    names = {service.name for service in services}
    removed = frozenset(set(before) - names)
    return ReloadPlan(tuple(services), frozenset(kept), frozenset(changed), frozenset(added), removed, before)
