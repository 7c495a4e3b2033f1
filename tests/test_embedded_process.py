"""JvmService's process handling, with a shell script standing in for the JVM (no Kafka needed)."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest

from fraud.embedded.process import RUNNING, STALE, STOPPED, JvmService, pid_alive, port_in_use
from fraud.errors import FraudError

MAIN = "fake.Main"


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fakejvm"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _service(tmp_path: Path) -> JvmService:
    return JvmService("fake", "fake service", tmp_path / "state", MAIN)


def test_launch_records_pid_and_run_info_then_stop_terminates(tmp_path):
    svc = _service(tmp_path)
    svc.state_dir.mkdir()
    script = _script(tmp_path, "while :; do sleep 0.1; done")
    took = svc.launch([str(script), MAIN], {"port": 1234}, lambda: True, timeout_s=10)
    assert took >= 0
    status = svc.status()
    assert status.state == RUNNING and status.info["port"] == 1234
    assert json.loads(svc.run_file.read_text())["pid"] == status.pid == int(svc.pid_file.read_text())
    assert svc.stop(timeout_s=10) == f"stopped (pid {status.pid})"
    assert not pid_alive(status.pid) and not svc.pid_file.exists() and not svc.run_file.exists()
    assert svc.status().state == STOPPED


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path):
    svc = _service(tmp_path)
    svc.state_dir.mkdir()
    script = _script(tmp_path, "trap '' TERM\ntouch trapped\nwhile :; do sleep 0.1; done")
    svc.launch([str(script), MAIN], {}, (svc.state_dir / "trapped").exists, timeout_s=10)  # runs in state_dir
    pid = svc.status().pid
    assert svc.stop(timeout_s=1.0).startswith(f"killed (pid {pid}) after 1 s")
    assert not pid_alive(pid)


def test_a_process_that_exits_while_starting_is_reported_with_its_output(tmp_path):
    svc = _service(tmp_path)
    svc.state_dir.mkdir()
    script = _script(tmp_path, "echo 'Error: could not find or load main class' ; exit 3")
    with pytest.raises(FraudError, match=r"fake service exited with code 3 while starting: .*could not find or load"):
        svc.launch([str(script), MAIN], {}, lambda: False, timeout_s=10)
    assert not svc.pid_file.exists()


def test_a_process_that_never_gets_ready_is_killed_after_the_timeout(tmp_path):
    svc = _service(tmp_path)
    svc.state_dir.mkdir()
    script = _script(tmp_path, "while :; do sleep 0.1; done")

    def never() -> bool:
        raise ConnectionRefusedError("nobody home")

    with pytest.raises(FraudError, match=r"not ready after 1 s \(last readiness check: ConnectionRefusedError: nobody home\)"):
        svc.launch([str(script), MAIN], {}, never, timeout_s=1)
    assert not svc.pid_file.exists()


def test_status_tells_a_reused_pid_from_ours(tmp_path):
    svc = _service(tmp_path)
    svc.state_dir.mkdir()
    svc.pid_file.write_text(f"{os.getpid()}\n")  # alive, but not a fake.Main of this state dir
    status = svc.status()
    assert status.state == STALE and "not this fake service" in status.detail
    svc.pid_file.write_text("garbage\n")
    assert svc.status().state == STALE
    assert "removed stale pid file" in svc.stop()
    assert not svc.pid_file.exists()


def test_port_in_use():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.listen()
        assert port_in_use("127.0.0.1", port)
    assert not port_in_use("127.0.0.1", port)
