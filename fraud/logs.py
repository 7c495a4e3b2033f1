"""Structured logs, the one format of every service: one JSON object per line
(`{"ts", "level", "logger", "event", <fields>}`, level in lower case), with the ids an operator needs
to follow one event (transaction id, offset, model, version, ...).

`configure_logging(level)` installs the JSON formatter on the root logger (services call it once at
start-up); `log_event(logger, level, event, **fields)` logs an event name with fields, e.g.
`log_event(log, logging.WARNING, "dead_letter", transaction_id=..., reason=..., offset=...)`.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import orjson

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        for key, value in vars(record).items():
            if key not in _RESERVED and key != "fields" and not key.startswith("_"):
                out.setdefault(key, value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure_logging(level: str | int = "INFO", stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    for noisy in ("kafka", "urllib3", "absl"):  # kafka-python logs every reconnect at INFO/WARNING
        logging.getLogger(noisy).setLevel(max(root.level, logging.ERROR))


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})
