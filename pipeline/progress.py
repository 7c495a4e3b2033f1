"""A pipeline run shown as one console line per component (state and seconds), read from the lines
TFX's LocalDagRunner and launcher log for each node ("Component X is running.", "A cached execution N is
used.", "Component X is finished.")."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from fraud.console import Console, LogRecordWatcher, Step

#: TFX log message templates (record.msg, before % args) -> what they mean for the node running now.
_RUNNING = "Component %s is running."
_FINISHED = "Component %s is finished."
_CACHED = "A cached execution %d is used."
_SKIPPED = ("Skipping component %s.", "Skipping execution for %s")


class ComponentProgress:
    """Turns TFX's per-node log records into console steps; `failed()` closes the node that raised."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.current: Step | None = None
        self.states: dict[str, str] = {}

    def on_record(self, record: logging.LogRecord) -> None:
        if record.msg == _RUNNING and record.args:
            self.current = self.console.begin(str(record.args[0]))
        elif self.current is None:
            return
        elif record.msg == _CACHED:
            self.current.state = "cached"
        elif record.msg in _SKIPPED:
            self.current.state = "skipped"
        elif record.msg == _FINISHED:
            self._close()

    def failed(self) -> None:
        if self.current is not None:
            self.current.state = "failed"
            self._close()

    def _close(self) -> None:
        assert self.current is not None
        self.states[self.current.name] = self.current.state
        self.console.end(self.current)
        self.current = None


@contextlib.contextmanager
def component_lines(console: Console) -> Iterator[ComponentProgress]:
    """While the block runs a pipeline in this process, each component gets its console line."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO)  # TFX logs its node transitions at INFO
    progress = ComponentProgress(console)
    watcher = LogRecordWatcher(progress.on_record)
    logger = logging.getLogger("absl")
    logger.addHandler(watcher)
    try:
        yield progress
    except BaseException:
        progress.failed()
        raise
    finally:
        logger.removeHandler(watcher)
