"""What a scrape of /metrics is sent as: the format the scraper asks for, gzip when it accepts it."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_FORMAT = "application/openmetrics-text; version=1.0.0; charset=utf-8"

# zlib level 1 costs a quarter of level 6's CPU for about 15 % more bytes on an exposition (which
# is repetitive text and shrinks about 14 times either way); this runs on every scrape.
GZIP_LEVEL = 1
# Compressed on the event loop this much at a time, yielding in between: at level 1 a slice
# holds the loop for well under a millisecond. A thread would not hold the loop at all, but
# handing each slice over costs more CPU than compressing it (measured: three times the CPU).
GZIP_SLICE = 64 * 1024


@dataclass(frozen=True, slots=True)
class Negotiated:
    """How one scrape is answered."""

    openmetrics: bool
    gzip: bool

    @property
    def content_type(self) -> str:
        return OPENMETRICS_FORMAT if self.openmetrics else TEXT_FORMAT


def negotiate(accept: str, accept_encoding: str) -> Negotiated:
    """Pick the format and encoding from a scrape's Accept and Accept-Encoding headers.

    OpenMetrics when the scraper rates it at least as high as the text format (Prometheus
    sends both, OpenMetrics first); gzip when it is accepted with a weight above zero.
    """
    best = {"openmetrics": 0.0, "text": 0.0}
    for media, weight in _ranges(accept):
        if media == "application/openmetrics-text":
            best["openmetrics"] = max(best["openmetrics"], weight)
        elif media in ("text/plain", "text/*", "*/*"):
            best["text"] = max(best["text"], weight)
    openmetrics = best["openmetrics"] > 0 and best["openmetrics"] >= best["text"]
    gzip = any(coding == "gzip" and weight > 0 for coding, weight in _ranges(accept_encoding))
    return Negotiated(openmetrics=openmetrics, gzip=gzip)


def _ranges(header: str) -> list[tuple[str, float]]:
    """The items of a header like Accept, lower-cased, each with its q weight (1 by default)."""
    out = []
    for item in header.split(","):
        name, *params = item.split(";")
        name = name.strip().lower()
        if not name:
            continue
        weight = 1.0
        for param in params:
            key, _, raw = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(raw.strip())
                except ValueError:
                    weight = 0.0
        out.append((name, weight))
    return out


async def gzip_stream(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks`` as one gzip member, compressed in slices so the event loop keeps turning."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    async for chunk in chunks:
        view = memoryview(chunk)
        for start in range(0, len(view), GZIP_SLICE):
            out = compressor.compress(view[start : start + GZIP_SLICE])
            if out:
                yield out
            await asyncio.sleep(0)
    yield compressor.flush()
