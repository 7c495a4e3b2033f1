"""Graceful shutdown: SIGTERM and SIGINT only set a stop flag; the service's loop drains, commits, closes."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from fraud.logs import log_event

log = logging.getLogger(__name__)


def install_stop_handlers(stop: threading.Event | Callable[[], None], *, logger: logging.Logger = log) -> None:
    """Make SIGTERM and SIGINT set `stop`, or call it (a job's request_stop) (call from the main thread)."""
    request = stop.set if isinstance(stop, threading.Event) else stop

    def handler(signum: int, _frame: Any) -> None:
        log_event(logger, logging.INFO, "stop_requested", signal=signal.Signals(signum).name)
        request()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
