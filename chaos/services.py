"""The services of a run as real processes: `fraudctl preprocess|bridge|sink|monitor run` and the model server
(`python -m serving`), each configured through its environment variables, logging to a file, killable,
and a supervisor that restarts one that exits on its own (as Kubernetes would), counting it.

Processes are started with PR_SET_PDEATHSIG, so they die with the harness. Linux sends that signal when
the *thread* that forked them ends, so every start happens on one long-lived spawner thread.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent import futures
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Service:
    """One service process, restartable: `start`, `kill` (SIGKILL), `stop` (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path,
                 spawner: futures.Executor) -> None:
        self.name = name
        self._spawner = spawner
        self.argv = list(argv)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.kills = 0

    def start(self) -> None:
        self._spawner.submit(self._start).result()

    def _start(self) -> None:
        if self.running:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- chaos: start {self.starts + 1} of {self.name} at {time.time():.3f}\n".encode())
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.starts += 1

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        """kill -9: no drain, no commit, no close."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.kills += 1
        self.proc.wait(30)

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (the service drains, commits and closes); SIGKILL after `timeout_s`. The exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        return self.proc.returncode

    def run_to_end(self, extra: Sequence[str], timeout_s: float) -> int:
        """Run once more in the foreground with `extra` flags (e.g. --stop-when-idle-s) until it exits."""
        return self._spawner.submit(self._run_to_end, extra, timeout_s).result()

    def _run_to_end(self, extra: Sequence[str], timeout_s: float) -> int:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- chaos: final run of {self.name} at {time.time():.3f}\n".encode())
            log.flush()
            done = subprocess.run([*self.argv, *extra], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout_s, preexec_fn=_die_with_parent)
        return done.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class Supervisor(threading.Thread):
    """Restarts a service that exited without being told to (after `backoff_s`), and remembers why."""

    def __init__(self, services: Mapping[str, Service], backoff_s: float = 2.0) -> None:
        super().__init__(name="chaos-supervisor", daemon=True)
        self.services = services
        self.backoff_s = backoff_s
        self.down: set[str] = set()  # services that are meant to be stopped now
        self.exits: list[str] = []
        self._closing = threading.Event()
        self._lock = threading.Lock()

    def hold(self, name: str) -> None:
        with self._lock:
            self.down.add(name)

    def release(self, name: str) -> None:
        with self._lock:
            self.down.discard(name)

    def run(self) -> None:
        died_at: dict[str, float] = {}
        while not self._closing.wait(0.5):
            for name, svc in self.services.items():
                with self._lock:
                    if name in self.down or svc.proc is None or svc.running:
                        died_at.pop(name, None)
                        continue
                first = died_at.setdefault(name, time.monotonic())
                if time.monotonic() - first < self.backoff_s:
                    continue
                tail = " | ".join(line[:300] for line in svc.log_text().splitlines()[-3:])
                self.exits.append(f"{name} exited with {svc.exit_code}; restarted. Last lines: {tail}")
                died_at.pop(name, None)
                with self._lock:
                    if name not in self.down:
                        svc.start()

    def close(self) -> None:
        self._closing.set()
        self.join(10)


def fraudctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "fraudctl.cli", *args]


def model_server(model_base: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "serving", f"--port={port}", "--rest_api_port=0", "--model_name=fraud",
            f"--model_base_path={model_base}", "--file_system_poll_wait_seconds=0", "--log_level=WARNING"]
