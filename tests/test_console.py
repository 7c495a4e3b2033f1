"""fraud.console: step lines on the terminal, everything else (Python, C-level writes, child processes,
logging) in the log file; and the pipeline's per-component lines read from TFX's log records."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from fraud.console import Console, quiet_output
from pipeline.progress import ComponentProgress


def test_quiet_output_sends_library_noise_to_the_log_and_steps_to_the_terminal(tmp_path, capfd):
    log = tmp_path / "logs" / "run.log"
    with quiet_output(log) as console:
        with console.step("load") as step:
            print("python stdout noise")
            os.write(2, b"C-level stderr noise\n")
            subprocess.run([sys.executable, "-c", "import sys; print('child noise'); sys.stderr.write('child err\\n')"],
                           check=True)
            logging.getLogger("some.library").warning("a library warning")
            step.detail("3 rows")
        console.say("done", "all good")
    out, err = capfd.readouterr()
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["load", "done"] and lines[0].endswith("3 rows")
    assert lines[1].split() == ["done", "all", "good"]
    assert err == ""
    text = log.read_text()
    for noise in ("python stdout noise", "C-level stderr noise", "child noise", "child err", "a library warning"):
        assert noise in text
        assert noise not in out


def test_descriptors_come_back_when_the_block_fails(tmp_path, capfd):
    with pytest.raises(RuntimeError):
        with quiet_output(tmp_path / "x.log") as console:
            with console.step("boom"):
                raise RuntimeError("failed inside")
    print("after")
    os.write(2, b"stderr after\n")
    out, err = capfd.readouterr()
    assert "boom" in out and "failed" in out and "after" in out
    assert "stderr after" in err


def test_verbose_leaves_output_alone(tmp_path, capfd):
    with quiet_output(tmp_path / "v.log", verbose=True) as console:
        print("shown live")
        console.say("step", "text")
    out, _ = capfd.readouterr()
    assert "shown live" in out and "step" in out
    assert not (tmp_path / "v.log").exists()


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("absl", logging.INFO, __file__, 1, msg, args, None)


def test_component_lines_follow_tfx_log_records(capsys):
    progress = ComponentProgress(Console(sys.stdout, live=False))
    for record in (_record("Component %s is running.", "StatisticsGen"), _record("Going to run a new execution %d", 3),
                   _record("Component %s is finished.", "StatisticsGen"),
                   _record("Component %s is running.", "Transform"), _record("A cached execution %d is used.", 4),
                   _record("Component %s is finished.", "Transform"),
                   _record("Component %s is running.", "Trainer")):
        progress.on_record(record)
    progress.failed()
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in out] == [["StatisticsGen", "done"], ["Transform", "cached"],
                                                  ["Trainer", "failed"]]
    assert progress.states == {"StatisticsGen": "done", "Transform": "cached", "Trainer": "failed"}
