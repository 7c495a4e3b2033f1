"""Graceful shutdown: SIGTERM and SIGINT only set a stop flag; the service's loop drains, commits, closes."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from fraud.logs import log_event

log = logging.getLogger(__name__)


def install_stop_handlers(stop: threading.Event, *, logger: logging.Logger = log) -> None:
    """Make SIGTERM and SIGINT set `stop` (call from the main thread)."""

    def handler(signum: int, _frame: Any) -> None:
        log_event(logger, logging.INFO, "stop_requested", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
