"""Reads long windows and other locations from Prometheus' HTTP API: bounded, cached, never hanging."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from exporter.page.queries import QUERIES, promql
from exporter.types import redact_url

log = logging.getLogger(__name__)

# Answers larger than this are refused: 10,000 services and a few locations fit easily.
MAX_ANSWER_BYTES = 32 * 1024 * 1024

Key = tuple[str, ...]


@dataclass(frozen=True)
class PromSnapshot:
    """What Prometheus said, by query name and label values (in the order of Query.by)."""

    values: dict[str, dict[Key, float]] = field(default_factory=dict)
    fetched_at: float = 0.0
    # Why some or all of the queries have no answer, for the page to say.
    error: str = ""
    url: str = ""

    def get(self, query: str, *key: str) -> float | None:
        return self.values.get(query, {}).get(tuple(key))

    @property
    def ok(self) -> bool:
        return bool(self.values) and not self.error


class PrometheusReader:
    """One snapshot of every named query, refreshed at most every ``cache`` seconds.

    A page never waits longer than ``timeout`` for Prometheus: a refresh still running then is
    left to finish in the background, and the page uses the last snapshot (or none).
    """

    def __init__(
        self,
        url: str,
        job: str,
        timeout: float,
        cache: float,
        session: Callable[[], aiohttp.ClientSession],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.url = url.rstrip("/")
        self.job = job
        self.timeout = timeout
        self.cache = cache
        self._session = session
        self._wall = wall
        self._snapshot = PromSnapshot(url=redact_url(self.url))
        self._refresh: asyncio.Task[PromSnapshot] | None = None
        self._tasks: set[asyncio.Task[PromSnapshot]] = set()

    def same_settings(self, url: str, job: str, timeout: float, cache: float) -> bool:
        return (url.rstrip("/"), job, timeout, cache) == (self.url, self.job, self.timeout, self.cache)

    async def snapshot(self) -> PromSnapshot:
        now = time.monotonic()
        current = self._snapshot
        if self._refresh is None and (not current.fetched_at or now - current.fetched_at >= self.cache):
            self._refresh = asyncio.create_task(self._fetch_all(), name="status page: prometheus")
            self._tasks.add(self._refresh)
            self._refresh.add_done_callback(self._done)
        if self._refresh is not None:
            try:
                return await asyncio.wait_for(asyncio.shield(self._refresh), self.timeout + 0.25)
            except TimeoutError:
                stale = self._snapshot
                why = f"Prometheus did not answer within {self.timeout:g}s"
                return PromSnapshot(stale.values, stale.fetched_at, why, stale.url)
        return current

    def _done(self, task: asyncio.Task[PromSnapshot]) -> None:
        self._tasks.discard(task)
        if task is self._refresh:
            self._refresh = None
        if not task.cancelled() and task.exception() is None:
            self._snapshot = task.result()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _fetch_all(self) -> PromSnapshot:
        names = list(QUERIES)
        answers = await asyncio.gather(*(self._query(name) for name in names), return_exceptions=True)
        values: dict[str, dict[Key, float]] = {}
        errors = []
        for name, answer in zip(names, answers, strict=True):
            if isinstance(answer, BaseException):
                if isinstance(answer, asyncio.CancelledError):
                    raise answer
                errors.append(f"{name}: {answer}")
            else:
                values[name] = answer
        error = ""
        if errors:
            error = f"Prometheus at {redact_url(self.url)} failed: {errors[0]}"
            if len(errors) > 1:
                error += f" (and {len(errors) - 1} more queries)"
            log.warning("status page: %s", error)
        return PromSnapshot(values, time.monotonic(), error, redact_url(self.url))

    async def _query(self, name: str) -> dict[Key, float]:
        query = QUERIES[name]
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with self._session().get(
                f"{self.url}/api/v1/query", params={"query": promql(name, self.job)}, timeout=timeout
            ) as response:
                body = await response.content.read(MAX_ANSWER_BYTES + 1)
                if len(body) > MAX_ANSWER_BYTES:
                    raise QueryFailed("answer too large")
                if response.status != 200:
                    raise QueryFailed(f"HTTP {response.status}")
                document = json.loads(body)
        except TimeoutError:
            raise QueryFailed(f"no answer within {self.timeout:g}s") from None
        except aiohttp.ClientConnectorError:
            raise QueryFailed("cannot connect") from None
        except aiohttp.ClientError as err:
            raise QueryFailed(type(err).__name__) from None
        except ValueError:
            raise QueryFailed("the answer is not JSON") from None
        data = document.get("data") if isinstance(document, dict) else None
        if not isinstance(data, dict) or data.get("resultType") != "vector":
            raise QueryFailed("the answer is not an instant vector")
        out: dict[Key, float] = {}
        for item in data.get("result", []):
            try:
                metric, (_, text) = item["metric"], item["value"]
                value = float(text)
            except (KeyError, TypeError, ValueError):
                continue
            if math.isfinite(value):
                out[tuple(str(metric.get(label, "")) for label in query.by)] = value
        return out


class QueryFailed(Exception):
    """One query got no usable answer; the message says why, without the URL's secrets."""
