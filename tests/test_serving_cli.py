"""`fraudctl serve` / `python -m serving` as a process: one-line errors, SIGTERM drains in-flight calls."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest

from fraudctl import cli

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fraudctl_serve_bad_flags_is_one_line(capsys):
    assert cli.main(["serve", "--port=0", "--model_base_path=/nowhere"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fraudctl serve: --port=0: this server always serves gRPC; give it a port"]


def test_python_m_serving_unreadable_config_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "serving", f"--model_config_file={tmp_path}/missing.config"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"serving: --model_config_file={tmp_path}/missing.config:")


def test_startup_failure_exits_non_zero(tmp_path):
    from serving import testing

    testing.save_broken_version(tmp_path / "m", 1)
    proc = subprocess.run([sys.executable, "-m", "serving", "--model_name=m", f"--model_base_path={tmp_path / 'm'}",
                           f"--port={_free_port()}", "--rest_api_port=0", "--max_num_load_retries=0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("serving: cannot start: 1 model(s) did not become available")


def test_sigterm_lets_the_in_flight_call_finish_then_exits_zero(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from tensorflow_serving.apis import (
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    from serving import testing

    home = tmp_path / "home"
    testing.save_tensor_model(home / "serving" / "models" / "fraud", 1)
    port = _free_port()
    env = dict(os.environ, FRAUD_HOME=str(home))
    fraudctl = os.path.join(os.path.dirname(sys.executable), "fraudctl")
    proc = subprocess.Popen([fraudctl, "serve", f"--port={port}", "--rest_api_port=0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = get_model_status_pb2.GetModelStatusRequest()
            status.model_spec.name = "fraud"  # the directory name under FRAUD_HOME/serving/models
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, proc.communicate()[1]
                try:
                    model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status, timeout=2)
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, "server did not come up"
                    time.sleep(0.2)
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "fraud"
            request.model_spec.signature_name = "spin"
            request.inputs["iterations"].CopyFrom(tf.make_tensor_proto(np.array(100_000, np.int64)))
            started = time.monotonic()
            stub.Predict(request, timeout=60)
            per_iteration = (time.monotonic() - started) / 100_000
            request.inputs["iterations"].CopyFrom(tf.make_tensor_proto(np.array(int(2.0 / per_iteration), np.int64)))
            result: dict = {}

            def call() -> None:
                try:
                    result["response"] = stub.Predict(request, timeout=60)
                except grpc.RpcError as exc:
                    result["error"] = exc

            caller = threading.Thread(target=call)
            caller.start()
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            caller.join()
        assert "error" not in result, result.get("error")
        assert result["response"].model_spec.version.value == 1
        assert proc.wait(60) == 0
        stderr = proc.stderr.read()
        assert '"event":"server_stopped"' in stderr and '"drained":true' in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
