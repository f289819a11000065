"""Log output in logfmt or JSON, as Prometheus components write it."""

from __future__ import annotations

import json
import logging
import sys
import time
from urllib.parse import parse_qsl, urlencode

from exporter.types import redact_url

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _level(record: logging.LogRecord) -> str:
    return {"WARNING": "warn", "CRITICAL": "error"}.get(record.levelname, record.levelname.lower())


def _logfmt_value(value: str) -> str:
    if value and not any(c in value for c in ' "=\n\t\\'):
        return value
    return json.dumps(value)


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = [
            ("ts", _timestamp(record)),
            ("level", _level(record)),
            ("logger", record.name),
            ("msg", record.getMessage()),
        ]
        if record.exc_info:
            fields.append(("err", self.formatException(record.exc_info)))
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": _timestamp(record),
            "level": _level(record),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["err"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # aiohttp's access log is noisy at scrape rate; keep it for debug.
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server.filters):
        server.addFilter(MalformedRequestFilter())


class MalformedRequestFilter(logging.Filter):
    """A client's malformed request (an 8 KiB request line, a broken header) is its problem.

    aiohttp answers it 400 and logs it as an error with a traceback; here it becomes one debug
    line without one, so a scanner cannot fill the log or page anyone reading it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        if err is None:
            return True
        # Imported here: probe workers log through this module and never load aiohttp.
        from aiohttp.http_exceptions import HttpProcessingError

        if isinstance(err, HttpProcessingError):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            # The parser's message quotes the offending bytes, which may hold a credential.
            record.msg, record.args = "malformed request answered %d (%s)", (err.code, type(err).__name__)
            record.exc_info = None
            record.exc_text = None
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


# Query parameters that carry a credential (a push token) are logged as xxxxx.
SECRET_PARAMS = frozenset({"token"})


def redact_query(query: str) -> str:
    """A query string fit for a log: credential parameters masked, URL passwords hidden."""
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode(
        [(key, "xxxxx" if key.lower() in SECRET_PARAMS else redact_url(value)) for key, value in pairs]
    )
