"""A background service run from a state directory: pid file, logs, start, readiness, stop.

The broker, the Connect worker (JVMs) and the project's Python services started by `fraudctl demo`
share this: one pid file (`<name>.pid`) and one run record (`<name>.json`: pid, ports, start time) in
the state directory, the process's stdout/stderr in `logs/<name>.out` (log4j's output in
`logs/<name>.log` for the JVMs). A pid file is trusted only if that process is alive and its command
line carries this state directory's marker (`-Dfraud.state.dir=...` for a JVM, the ignored interpreter
option `-Xfraud.state.dir=...` for Python), so a pid reused by an unrelated process is reported as
stale rather than signalled.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fraud.errors import FraudError

RUNNING = "running"
STOPPED = "stopped"
STALE = "stale"

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ServiceStatus:
    """What the pid file says and whether it is true."""

    state: str  # RUNNING, STOPPED or STALE
    pid: int | None = None
    detail: str = ""
    info: dict | None = None  # the run record of a running service

    @property
    def running(self) -> bool:
        return self.state == RUNNING


def port_in_use(host: str, port: int) -> bool:
    """True if something listens on host:port (a bind with SO_REUSEADDR fails only then)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise FraudError(f"cannot bind {host}:{port}: {exc.strerror}") from exc
    return False


def tcp_accepts(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel considers free right now (for tests; another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _proc_state(pid: int) -> str | None:
    """The one-letter state from /proc/<pid>/stat, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def pid_alive(pid: int) -> bool:
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def _die_with_parent() -> None:
    """Runs in the child between fork and exec. Linux sends the signal when the *thread* that forked
    exits, so start such processes from a thread that lives as long as they should (the main thread)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def tail(path: Path, lines: int = 20) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    return [ln for ln in text.splitlines() if ln.strip()][-lines:]


class BackgroundService:
    """One background process bound to a state directory.

    `main_class` is what identifies the program on its command line (a JVM main class, a Python module);
    `marker_option` is the interpreter option that carries the state-directory marker, inserted right
    after the executable.
    """

    def __init__(self, name: str, label: str, state_dir: Path, main_class: str,
                 marker_option: str = "-Dfraud.state.dir") -> None:
        self.name = name  # file stem: kafka -> kafka.pid, logs/kafka.log
        self.label = label  # for messages: "Kafka broker"
        self.state_dir = state_dir
        self.main_class = main_class
        self.marker_option = marker_option
        self._proc: subprocess.Popen | None = None

    @property
    def pid_file(self) -> Path:
        return self.state_dir / f"{self.name}.pid"

    @property
    def run_file(self) -> Path:
        return self.state_dir / f"{self.name}.json"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def log_file(self) -> Path:
        return self.logs_dir / f"{self.name}.log"

    @property
    def out_file(self) -> Path:
        return self.logs_dir / f"{self.name}.out"

    @property
    def marker(self) -> str:
        return f"{self.marker_option}={self.state_dir}"

    @contextlib.contextmanager
    def start_lock(self) -> Iterator[None]:
        """Held while starting, so two concurrent `start`s of one state directory make one process."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / f".{self.name}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def status(self) -> ServiceStatus:
        try:
            text = self.pid_file.read_text().strip()
        except FileNotFoundError:
            return ServiceStatus(STOPPED)
        try:
            pid = int(text)
        except ValueError:
            return ServiceStatus(STALE, None, f"pid file {self.pid_file} does not hold a pid ({text[:20]!r})")
        if not pid_alive(pid):
            return ServiceStatus(STALE, pid, f"pid file {self.pid_file} names process {pid}, which is not running")
        if not self._is_ours(pid):
            return ServiceStatus(
                STALE, pid, f"pid file {self.pid_file} names process {pid}, which is not this {self.label}"
            )
        try:
            info = json.loads(self.run_file.read_text())
        except (FileNotFoundError, ValueError):
            info = {"pid": pid}
        return ServiceStatus(RUNNING, pid, f"{self.label} running, pid {pid}", info)

    def _is_ours(self, pid: int, attempts: int = 5) -> bool:
        # Seen once on a loaded machine: right after the launch, /proc/<pid>/cmdline did not show the new
        # command line yet, and a healthy service was reported stale. A few short re-reads settle it.
        for attempt in range(attempts):
            cmd = _cmdline(pid)
            if self.marker in cmd and self.main_class in cmd:
                return True
            if attempt < attempts - 1 and pid_alive(pid):
                time.sleep(0.05)
        return False

    def stale_error(self, status: ServiceStatus, command: str) -> FraudError:
        return FraudError(f"stale pid file: {status.detail}; run `{command}` to clear it or remove the file")

    def check_ports_free(self, ports: dict[str, tuple[str, int]], option_for: dict[str, str]) -> None:
        for what, (host, port) in ports.items():
            if port_in_use(host, port):
                hint = f"; choose another with {option_for[what]}" if what in option_for else ""
                raise FraudError(f"{what} port {host}:{port} is already taken by another process{hint}")

    def launch(
        self,
        cmd: list[str],
        info: dict,
        ready: Callable[[], bool],
        *,
        timeout_s: float,
        die_with_parent: bool = False,
        poll_s: float = 0.25,
    ) -> float:
        """Start `cmd` in the background, write pid and run files, wait until `ready()`; returns seconds taken.

        On a timeout or an early exit the process is killed, the pid file removed, and a FraudError raised
        with the end of the log.
        """
        started = time.monotonic()
        self.spawn(cmd, info, die_with_parent=die_with_parent)
        return self.wait_ready(ready, started, timeout_s=timeout_s, poll_s=poll_s)

    def spawn(self, cmd: list[str], info: dict, *, die_with_parent: bool = False) -> int:
        """Start `cmd` in the background and write the pid and run files; returns the pid (no waiting).

        With `die_with_parent` the process gets SIGKILL when the *thread* calling this exits (Linux ties
        PR_SET_PDEATHSIG to the forking thread): call it from a thread that lives as long as the process
        should. `launch` is spawn + `wait_ready`; a cluster spawns all its nodes first, then waits.
        """
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        cmd = [cmd[0], self.marker, *cmd[1:]]
        with open(self.out_file, "ab") as out:
            out.write(f"\n=== start {time.strftime('%Y-%m-%dT%H:%M:%S')} ===\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                start_new_session=True,  # a Ctrl-C in the terminal that ran `fraudctl` must not reach it
                preexec_fn=_die_with_parent if die_with_parent else None,
            )
        pid = self._proc.pid
        self.pid_file.write_text(f"{pid}\n")
        self.run_file.write_text(json.dumps({**info, "pid": pid, "started_at": time.time()}, indent=2) + "\n")
        return pid

    def wait_ready(self, ready: Callable[[], bool], started: float, *, timeout_s: float, poll_s: float = 0.25) -> float:
        """Wait until `ready()` for the process `spawn` started; returns seconds since `started`.

        On a timeout or an early exit the process is killed, the pid file removed, and a FraudError raised
        with the end of the log.
        """
        proc = self._proc
        if proc is None:
            raise FraudError(f"{self.label} was not started by this process")
        pid = proc.pid
        deadline = started + timeout_s
        last_error = ""
        while True:
            code = proc.poll()
            if code is not None:
                self._forget()
                raise FraudError(f"{self.label} exited with code {code} while starting: {self.log_summary()}")
            try:
                if ready():
                    return time.monotonic() - started
            except Exception as exc:  # noqa: BLE001 - any client error means "not ready yet"
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                self._kill(pid)
                self._forget()
                why = f" (last readiness check: {last_error})" if last_error else ""
                raise FraudError(f"{self.label} not ready after {timeout_s:.0f} s{why}: {self.log_summary()}")
            time.sleep(poll_s)

    def log_summary(self, entries: int = 2) -> str:
        """The last ERROR entries of the log, each with its exception message, on one line.

        Falls back to the end of the JVM's own output (a JVM that never got to log4j).
        """
        log_lines = tail(self.log_file, 400)
        found: list[str] = []
        for i, line in enumerate(log_lines):
            if " ERROR " not in line and " FATAL " not in line:
                continue
            entry = line.strip()
            following = log_lines[i + 1].strip() if i + 1 < len(log_lines) else ""
            if following and not following.startswith(("[", "at ", "...")):
                entry += f": {following}"
            found.append(entry[:400])
        picked = found[-entries:] or tail(self.out_file, 3) or log_lines[-3:]
        body = " | ".join(ln.strip() for ln in picked) or "no log output"
        return f"{body} (log: {self.log_file})"

    def stop(self, timeout_s: float = 60.0) -> str:
        """SIGTERM, wait for a clean exit, SIGKILL after `timeout_s`. Returns what happened, in a few words."""
        status = self.status()
        if status.state == STOPPED:
            return "not running"
        if status.state == STALE:
            self._forget()
            return f"not running (removed stale pid file: {status.detail})"
        pid = status.pid
        assert pid is not None
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            self._forget()
            return "not running"
        if self._wait_gone(pid, timeout_s):
            self._forget()
            return f"stopped (pid {pid})"
        self._kill(pid)
        self._forget()
        return f"killed (pid {pid}) after {timeout_s:.0f} s without a clean shutdown"

    def kill(self) -> str:
        """SIGKILL, no shutdown at all (a crash, for fault-injection tests); the pid file is removed."""
        status = self.status()
        if status.state == STOPPED:
            return "not running"
        if status.state == STALE or status.pid is None:
            self._forget()
            return f"not running (removed stale pid file: {status.detail})"
        self._kill(status.pid)
        self._forget()
        return f"killed (pid {status.pid})"

    def _wait_gone(self, pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.pid == pid:
                try:
                    self._proc.wait(timeout=0.2)
                    return True
                except subprocess.TimeoutExpired:
                    continue
            if not pid_alive(pid):
                return True
            time.sleep(0.2)
        return False

    def _kill(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self._wait_gone(pid, 30.0)

    def _forget(self) -> None:
        self.pid_file.unlink(missing_ok=True)
        self.run_file.unlink(missing_ok=True)
        if self._proc is not None:
            if self._proc.poll() is None:
                try:
                    self._proc.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    pass
            self._proc = None


class JvmService(BackgroundService):
    """A background JVM (KafkaBroker, ConnectStandalone): the marker is a `-D` system property."""


class PythonService(BackgroundService):
    """A background `python -m <module>` service: the marker is an `-X` option CPython ignores."""

    def __init__(self, name: str, label: str, state_dir: Path, module: str) -> None:
        super().__init__(name, label, state_dir, module, marker_option="-Xfraud.state.dir")
