"""What a person at the terminal sees: one line per step with its state and seconds, a live progress line
on long steps, and library noise (TensorFlow's C++ start-up lines, absl, Beam, setuptools wheel builds,
deprecation notices) in a log file named at the end.

    with quiet_output(log_path, verbose=args.verbose) as console:
        with console.step("ExampleGen") as step:
            ...                      # anything printed here, by any library or subprocess, goes to the log
            step.progress(done, total)
        console.say("done", "pushed version 3")

`quiet_output` redirects the process's file descriptors 1 and 2 to the log file (so C++ code and
subprocesses are caught too) and gives the console the terminal's original stdout; `verbose` leaves
both alone, so everything shows live. The descriptors are restored when the block ends, however it
ends, so an error raised from inside still reaches the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

#: Environment that keeps library start-up chatter low even where output is not redirected.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning"}
_NAME_WIDTH = 30


@dataclass
class Step:
    """A running step: `progress(done, total)` and `detail(text)` update its live line (on a terminal)."""

    console: Console
    name: str
    started: float = field(default_factory=time.monotonic)
    state: str = "done"
    text: str = ""
    done: float | None = None
    total: float | None = None

    def progress(self, done: float, total: float | None = None) -> None:
        self.done, self.total = done, total

    def detail(self, text: str) -> None:
        self.text = text

    def elapsed(self) -> float:
        return time.monotonic() - self.started


class Console:
    """Writes step lines to `out`; on a terminal, a running step's line is redrawn every half second."""

    def __init__(self, out: TextIO, log_path: Path | None = None, live: bool | None = None) -> None:
        self.out = out
        self.log_path = log_path
        self.live = out.isatty() if live is None else live
        self._lock = threading.Lock()
        self._running: Step | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def say(self, name: str, text: str) -> None:
        """One line: `name  text`."""
        self._write(f"{name:<{_NAME_WIDTH}} {text}")

    def echo(self, text: str) -> None:
        """Lines as they are (e.g. a summary, or what a child command printed)."""
        self._write(text)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[Step]:
        """A step: its line says `done`/`failed`/a state set on the step, the seconds it took and its detail."""
        step = Step(self, name)
        self._start(step)
        try:
            yield step
        except BaseException:
            step.state = "failed"
            raise
        finally:
            self._finish(step)

    def begin(self, name: str) -> Step:
        """Start a step whose end comes from elsewhere (e.g. a log record): pair with `end(step)`."""
        step = Step(self, name)
        self._start(step)
        return step

    def end(self, step: Step, state: str | None = None, text: str | None = None) -> None:
        if state is not None:
            step.state = state
        if text is not None:
            step.text = text
        self._finish(step)

    # -- drawing -------------------------------------------------------------------------------

    def _start(self, step: Step) -> None:
        with self._lock:
            self._running = step
        if self.live and self._ticker is None:
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick, name="console-ticker", daemon=True)
            self._ticker.start()

    def _finish(self, step: Step) -> None:
        with self._lock:
            if self._running is step:
                self._running = None
        line = f"{step.name:<{_NAME_WIDTH}} {step.state:<8} {step.elapsed():7.1f} s"
        self._write(f"{line}   {step.text}".rstrip())

    def _write(self, line: str) -> None:
        with self._lock:
            if self.live:
                self.out.write("\r\033[K")
            self.out.write(line + "\n")
            self.out.flush()

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                step = self._running
                if step is None:
                    continue
                self.out.write("\r\033[K" + _live_line(step))
                self.out.flush()

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)
            self._ticker = None
        if self.live:
            with self._lock:
                self.out.write("\r\033[K")
                self.out.flush()


def _live_line(step: Step) -> str:
    head = f"{step.name:<{_NAME_WIDTH}} running  {step.elapsed():7.1f} s"
    if step.done is not None and step.total:
        share = min(1.0, max(0.0, step.done / step.total))
        filled = int(share * 24)
        head += f"   [{'#' * filled}{'.' * (24 - filled)}] {share:4.0%} {step.done:,.0f}/{step.total:,.0f}"
    elif step.done is not None:
        head += f"   {step.done:,.0f}"
    return f"{head}   {step.text}".rstrip()


@contextlib.contextmanager
def quiet_output(log_path: Path, *, verbose: bool = False) -> Iterator[Console]:
    """A Console on the terminal; everything else written to stdout/stderr, by this process (Python,
    C++, logging) or its children, goes to `log_path` unless `verbose`."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if verbose:
        console = Console(sys.stdout, log_path=None)
        try:
            yield console
        finally:
            console.close()
        return
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved_out), "w", buffering=1, closefd=True)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    handlers = _route_logging_to(log_path)
    console = Console(terminal, log_path=log_path)
    python_streams = sys.stdout, sys.stderr
    log_stream = open(log_fd, "w", buffering=1, closefd=False)  # Python-level writes, whatever sys.stdout was
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        sys.stdout = sys.stderr = log_stream
        yield console
    finally:
        console.close()
        log_stream.flush()
        sys.stdout, sys.stderr = python_streams
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        log_stream.close()
        for fd in (saved_out, saved_err, log_fd):
            os.close(fd)
        _restore_logging(handlers)
        terminal.close()


def _route_logging_to(log_path: Path) -> list[logging.Handler]:
    """Python logging (absl included) into the log file at INFO, whatever handlers libraries installed."""
    root = logging.getLogger()
    previous = list(root.handlers)
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for h in previous:
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.INFO, logging.INFO))
    return [handler, *previous]


def _restore_logging(handlers: list[logging.Handler]) -> None:
    root = logging.getLogger()
    ours, previous = handlers[0], handlers[1:]
    root.removeHandler(ours)
    ours.close()
    for h in previous:
        root.addHandler(h)


class LogRecordWatcher(logging.Handler):
    """Calls `on_record(record)` for every log record of `logger_name` (for progress read from a library's
    own log lines, e.g. TFX's 'Component X is running.')."""

    def __init__(self, on_record: Callable[[logging.LogRecord], None]) -> None:
        super().__init__(level=logging.INFO)
        self._on_record = on_record

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._on_record(record)
        except Exception:  # noqa: BLE001 - progress display must never break the run
            self.handleError(record)


def timestamped_log(directory: Path, name: str) -> Path:
    """`<directory>/<name>-YYYYmmdd-HHMMSS.log`."""
    return Path(directory) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
