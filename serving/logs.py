"""Structured logs: one JSON object per line on stderr, with the ids an operator follows
(model, version, signature, path, state, error code)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """`{"ts": ..., "level": ..., "logger": ..., "event": ..., <fields>}`; fields come from `extra=`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode("utf-8")


def configure(level: str = "INFO", stream: Any = None) -> None:
    """Send the `serving` loggers to `stream` (stderr) as JSON lines. Idempotent."""
    logger = logging.getLogger("serving")
    logger.setLevel(level)
    for handler in list(logger.handlers):
        if getattr(handler, "_fraud_json", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._fraud_json = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event: `name` is the event, `fields` become top-level JSON keys."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra=fields)
