"""Tests of the log output helpers: the access logger's switch."""

from __future__ import annotations

import logging

from exporter.accesslog import AccessLogger


def test_access_logger_is_off_below_info() -> None:
    """aiohttp skips the access logger (and its redaction work) unless its logger takes info lines."""
    logger = logging.getLogger("exporter.test_logs.access")
    logger.setLevel(logging.WARNING)
    assert not AccessLogger(logger, "").enabled
    logger.setLevel(logging.INFO)
    assert AccessLogger(logger, "").enabled
