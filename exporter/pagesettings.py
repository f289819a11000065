"""The ``status_page:`` section of the config: title, history, Prometheus and the public view."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

from exporter.types import Duration


@dataclass(frozen=True)
class PublicView:
    """What the status page shows to visitors who did not log in.

    Off by default: then every endpoint needs the basic auth of ``--web.config.file`` (when it
    sets any). On, the page, the service pages, the badges and their assets answer without it,
    redacted: no targets, addresses, error texts or labels unless listed here.
    """

    enabled: bool = False
    labels: tuple[str, ...] = ()
    show_errors: bool = False
    show_targets: bool = False


@dataclass(frozen=True)
class StatusPageConfig:
    title: str = "Service status"
    # Width of one slot of the history bars, and how many slots a bar has.
    slot: Duration = Duration(600)
    slots: int = 90
    refresh: Duration = Duration(30)
    public: PublicView = field(default_factory=PublicView)
    # A Prometheus that scrapes the exporters: long uptime windows and other locations come from it.
    prometheus_url: str = ""
    prometheus_timeout: Duration = Duration(2)
    # How long answers from Prometheus are reused before asking again.
    prometheus_cache: Duration = Duration(30)
    # The job label the exporters are scraped under, as the bundled rules expect.
    prometheus_job: str = "outage-exporter"

    def check(self) -> Iterator[tuple[str, str]]:
        if not self.title.strip():
            yield "title", "must not be empty"
        if self.slot < 10:
            yield "slot", f"must be at least 10s, got {self.slot}"
        if not 10 <= self.slots <= 500:
            yield "slots", f"must be between 10 and 500, got {self.slots}"
        if 0 < self.refresh < 5:
            yield "refresh", f"must be 0 (off) or at least 5s, got {self.refresh}"
        if self.prometheus_url:
            parts = urllib.parse.urlsplit(self.prometheus_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                yield "prometheus_url", f"must be an http or https URL, got {self.prometheus_url!r}"
            elif parts.query or parts.fragment:
                yield "prometheus_url", "must be Prometheus' base URL, without a query or fragment"
        if not 0 < self.prometheus_timeout <= 30:
            yield "prometheus_timeout", f"must be between 1ms and 30s, got {self.prometheus_timeout}"
        if self.prometheus_cache < 1:
            yield "prometheus_cache", f"must be at least 1s, got {self.prometheus_cache}"
