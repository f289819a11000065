"""aiohttp's access log line, with credentials in the query string redacted."""

from __future__ import annotations

import logging

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from exporter.logs import redact_query


class AccessLogger(AbstractAccessLogger):
    """One line per request, like aiohttp's own, but with the query string redacted.

    /push takes its token as ``?token=`` and /probe a target that may carry a password; aiohttp's
    logger would write both as they came.
    """

    @property
    def enabled(self) -> bool:
        # aiohttp asks once per connection; below info (the default) a request costs no log work.
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        query = f"?{redact_query(request.query_string)}" if request.query_string else ""
        self.logger.info(
            '%s "%s %s%s HTTP/%d.%d" %d %s %.6fs "%s"',
            request.remote,
            request.method,
            request.path,
            query,
            request.version.major,
            request.version.minor,
            response.status,
            response.body_length,
            time,
            request.headers.get("User-Agent", "-"),
        )
