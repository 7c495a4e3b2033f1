"""Model lifecycle: hot reload under load, failed versions, warm-up, version policies, labels, config
reload, retiring a version with a request in flight, deadlines, clean stop.

The first tests use the `model_server` fixture and also run against an external TF Serving (see
serving/README.md). The others start servers of their own with particular settings (this server only).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest

pytestmark = pytest.mark.integration

tf = pytest.importorskip("tensorflow")
from tensorflow_serving.apis import (  # noqa: E402
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from fraud.signature import INPUT_EXAMPLES, THRESHOLD  # noqa: E402
from serving import testing  # noqa: E402
from serving.config import ModelConfig, ServerConfig, VersionPolicy  # noqa: E402
from serving.errors import ServingError  # noqa: E402
from serving.metrics import RecordingMetrics  # noqa: E402
from serving.server import ModelServer  # noqa: E402

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
UNLOADING = get_model_status_pb2.ModelVersionStatus.UNLOADING
END = get_model_status_pb2.ModelVersionStatus.END


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def statuses(channel: grpc.Channel, model: str) -> dict[int, tuple[int, int, str]]:
    """version -> (state, error code, error message); {} when the model has no versions yet."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    try:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    except grpc.RpcError:
        return {}
    return {s.version: (s.state, s.status.error_code, s.status.error_message) for s in response.model_version_status}


def examples_request(model: str, rows: list[bytes]) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs[INPUT_EXAMPLES].CopyFrom(tf.make_tensor_proto(rows, dtype=tf.string))
    return request


def tensors_request(model: str, signature: str = "", **inputs) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


# ---------------------------------------------------------------------------------------------
# Against the shared server (this one, or an external TF Serving)


def test_hot_reload_under_load_switches_with_zero_failures(model_server):
    base = model_server.model_dir / testing.RELOAD
    old = testing.next_version(base) - 1
    rows = [testing.example(seed=i) for i in range(8)]
    request = examples_request(testing.RELOAD, rows)
    seen: list[list[tuple[int, float]]] = [[] for _ in range(4)]
    failures: list[BaseException] = []
    stop = threading.Event()

    def client(i: int) -> None:
        with grpc.insecure_channel(model_server.grpc) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not stop.is_set():
                try:
                    response = stub.Predict(request, timeout=30)
                    threshold = float(tf.make_ndarray(response.outputs[THRESHOLD])[0])
                    seen[i].append((response.model_spec.version.value, threshold))
                except Exception as exc:  # every failure counts; the test wants none
                    failures.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: all(len(s) >= 3 for s in seen), 60, what="clients to get answers")
        new = testing.next_version(base)
        testing.save_examples_model(base, new)
        wait_until(lambda: all(s and s[-1][0] == new for s in seen), 120, what=f"every client to get version {new}")
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    for history in seen:
        versions = [v for v, _ in history]
        assert versions[0] == old and versions[-1] == new
        switch = versions.index(new)
        assert set(versions[:switch]) == {old} and set(versions[switch:]) == {new}  # switched once, never back
        for version, threshold in history:
            assert threshold == pytest.approx(version / 10)
    with grpc.insecure_channel(model_server.grpc) as channel:
        final = wait_until(lambda: (s := statuses(channel, testing.RELOAD)) and s.get(old, (END,))[0] == END and s,
                           60, what=f"version {old} to be retired")
    assert final[new][0] == AVAILABLE


def test_failed_version_is_reported_and_previous_version_keeps_serving(model_server):
    base = model_server.model_dir / testing.BROKEN
    bad = testing.next_version(base)
    testing.save_broken_version(base, bad)
    with grpc.insecure_channel(model_server.grpc) as channel:
        state = wait_until(lambda: statuses(channel, testing.BROKEN).get(bad, (None,))[0] == END
                           and statuses(channel, testing.BROKEN), 120, what=f"version {bad} to fail")
        _, code, message = state[bad]
        assert code != 0 and message
        assert state[1][0] == AVAILABLE
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(tensors_request(testing.BROKEN, "half_plus_two", x=np.array([2.0], np.float32)),
                                timeout=30)
        assert response.model_spec.version.value == 1
        assert tf.make_ndarray(response.outputs["y"]).tolist() == [3.0]


# ---------------------------------------------------------------------------------------------
# Servers of their own (this server only)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """One saved copy of each test model, copied into the base paths the tests below set up."""
    root = tmp_path_factory.mktemp("serving-sources")
    return {"tensors": testing.save_tensor_model(root / "tensors", 1),
            "examples": testing.save_examples_model(root / "examples", 1)}


def _server(models: tuple[ModelConfig, ...], metrics=None, **settings) -> ModelServer:
    config = ServerConfig(models=models, port=0, rest_api_port=0, file_system_poll_wait_seconds=1,
                          max_num_load_retries=0, **settings)
    return ModelServer(config, metrics=metrics).start(model_timeout=120)


def _versions(server: ModelServer, model: str) -> dict[int, str]:
    return {v: s.value for v, s in server.manager.versions(model)}


def test_version_policies_latest_n_all_and_specific(tmp_path, sources):
    for version in (1, 2, 3):
        testing.copy_model(sources["tensors"], tmp_path / "m", version)
    models = (
        ModelConfig("latest2", str(tmp_path / "m"), VersionPolicy("latest", num_versions=2)),
        ModelConfig("all", str(tmp_path / "m"), VersionPolicy("all")),
        ModelConfig("specific", str(tmp_path / "m"), VersionPolicy("specific", versions=(1, 3))),
        ModelConfig("latest", str(tmp_path / "m")),
    )
    server = _server(models)
    try:
        assert _versions(server, "latest2") == {2: "AVAILABLE", 3: "AVAILABLE"}
        assert _versions(server, "all") == {1: "AVAILABLE", 2: "AVAILABLE", 3: "AVAILABLE"}
        assert _versions(server, "specific") == {1: "AVAILABLE", 3: "AVAILABLE"}
        assert _versions(server, "latest") == {3: "AVAILABLE"}
        testing.copy_model(sources["tensors"], tmp_path / "m", 4)
        wait_until(lambda: _versions(server, "latest2") == {2: "END", 3: "AVAILABLE", 4: "AVAILABLE"}, 60,
                   what="latest-2 to move to versions 3 and 4")
        wait_until(lambda: _versions(server, "latest") == {3: "END", 4: "AVAILABLE"}, 60, what="latest to switch")
        assert _versions(server, "specific") == {1: "AVAILABLE", 3: "AVAILABLE"}
    finally:
        server.stop()


def test_warmup_records_are_replayed_before_a_version_serves(tmp_path, sources):
    good = prediction_log_pb2.PredictionLog()
    good.predict_log.request.CopyFrom(examples_request("ignored-name", [testing.example(seed=1)]))
    testing.save_examples_model(tmp_path / "m", 1, warmup=[good.SerializeToString()] * 3)
    metrics = RecordingMetrics()
    server = _server((ModelConfig("m", str(tmp_path / "m")),), metrics=metrics)
    try:
        [warmup] = metrics.of("warmup")
        assert warmup["ok"] is True and warmup["records"] == 3 and warmup["version"] == 1
        # A version whose warm-up fails is not served; the previous one stays.
        bad = prediction_log_pb2.PredictionLog()
        bad.predict_log.request.CopyFrom(tensors_request("m", "", no_such_input=np.ones(1, np.float32)))
        testing.save_examples_model(tmp_path / "m", 2, warmup=[bad.SerializeToString()])
        wait_until(lambda: _versions(server, "m").get(2) == "END", 60, what="version 2 to fail its warm-up")
        [status] = server.manager.status("m", 2)
        assert status.code.name == "INVALID_ARGUMENT" and "no_such_input" in status.message
        assert _versions(server, "m")[1] == "AVAILABLE"
    finally:
        server.stop()


def test_retiring_a_version_waits_for_its_in_flight_request(tmp_path, sources):
    testing.copy_model(sources["tensors"], tmp_path / "m", 1)
    server = _server((ModelConfig("m", str(tmp_path / "m")),))
    result: dict = {}
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            started = time.monotonic()
            stub.Predict(tensors_request("m", "spin", iterations=np.array(100_000, np.int64)), timeout=60)
            per_iteration = (time.monotonic() - started) / 100_000
            slow = tensors_request("m", "spin", iterations=np.array(int(6.0 / per_iteration), np.int64))  # ~6 s

            def call() -> None:
                try:
                    result["response"] = stub.Predict(slow, timeout=120)
                except grpc.RpcError as exc:
                    result["error"] = exc

            caller = threading.Thread(target=call)
            caller.start()
            wait_until(lambda: server.manager.inflight() == 1, 30, interval=0.01, what="the slow call to start")
            testing.copy_model(sources["tensors"], tmp_path / "m", 2)
            seen = wait_until(lambda: _versions(server, "m").get(2) == "AVAILABLE" and _versions(server, "m"), 60,
                              interval=0.02, what="version 2")
            in_flight = caller.is_alive()
            caller.join()
        assert in_flight, "the slow call ended before version 2 loaded; the test proves nothing"
        assert seen[1] == "UNLOADING"  # retired, but held by the running call
        assert "error" not in result
        assert result["response"].model_spec.version.value == 1
        wait_until(lambda: _versions(server, "m").get(1) == "END", 30, what="version 1 to end")
    finally:
        server.stop()


def test_labels_need_available_versions_and_follow_config_reloads(tmp_path, sources):
    for version in (1, 2):
        testing.copy_model(sources["tensors"], tmp_path / "m", version)
    labelled = (ModelConfig("m", str(tmp_path / "m"), VersionPolicy("all"), {"stable": 1}),)
    with pytest.raises(ServingError, match="not currently available"):  # TF Serving refuses this at start
        _server(labelled)
    config_file = tmp_path / "models.config"

    def write(stable: int, extra: str = "") -> None:
        config_file.write_text(
            f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path / "m"}" model_platform: "tensorflow" '
            f'model_version_policy {{ all {{}} }} version_labels {{ key: "stable" value: {stable} }} }} {extra} }}',
            encoding="utf-8")

    write(1)
    from serving.config import parse_model_server_config

    server = _server(parse_model_server_config(config_file.read_text()), model_config_file=str(config_file),
                     model_config_file_poll_wait_seconds=1, allow_version_labels_for_unavailable_models=True)
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))

        def stable_version() -> int:
            request = tensors_request("m", "half_plus_two", x=np.array([1.0], np.float32))
            request.model_spec.version_label = "stable"
            return stub.Predict(request, timeout=30).model_spec.version.value

        wait_until(lambda: _versions(server, "m") == {1: "AVAILABLE", 2: "AVAILABLE"}, 60, what="both versions")
        assert stable_version() == 1
        testing.copy_model(sources["tensors"], tmp_path / "n", 1)
        write(2, f'config {{ name: "n" base_path: "{tmp_path / "n"}" model_platform: "tensorflow" }}')
        wait_until(lambda: stable_version() == 2, 30, what="the label to move to version 2")
        wait_until(lambda: _versions(server, "n") == {1: "AVAILABLE"}, 60, what="the added model")
    finally:
        server.stop()


def test_rest_timeout_answers_504_on_time(tmp_path, sources):
    import json
    import urllib.error
    import urllib.request

    testing.copy_model(sources["tensors"], tmp_path / "m", 1)
    server = _server((ModelConfig("m", str(tmp_path / "m")),), rest_api_timeout_in_ms=300)
    try:
        body = json.dumps({"signature_name": "spin", "inputs": 400_000}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}/v1/models/m:predict", data=body)
        started = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=60)
        elapsed = time.monotonic() - started
        assert info.value.code == 504
        assert json.loads(info.value.read()) == {"error": "Deadline Exceeded"}
        assert elapsed < 5
    finally:
        server.stop(grace=30)


def test_stop_leaves_no_threads_behind(tmp_path, sources):
    before = {t.ident for t in threading.enumerate()}
    testing.copy_model(sources["examples"], tmp_path / "m", 1)
    server = _server((ModelConfig("m", str(tmp_path / "m")),), enable_batching=True)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        stub.Predict(examples_request("m", [testing.example()]), timeout=30)
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}/v1/models/m", timeout=30) as response:
        assert response.status == 200
    assert server.stop() is True
    leftover = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert leftover == []


def test_request_counts_by_version_and_signature(tmp_path, sources):
    testing.copy_model(sources["examples"], tmp_path / "m", 1)
    metrics = RecordingMetrics()
    server = _server((ModelConfig("m", str(tmp_path / "m")),), metrics=metrics)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            stub.Predict(examples_request("m", [testing.example()]), timeout=30)
            with pytest.raises(grpc.RpcError):
                stub.Predict(examples_request("nope", [testing.example()]), timeout=30)
        requests = Counter((r["model"], r["version"], r["signature"], r["api"], r["entrypoint"], r["code"].name)
                           for r in metrics.of("request"))
        assert requests[("m", 1, "serving_default", "Predict", "GRPC", "OK")] == 1
        assert requests[("nope", None, "", "Predict", "GRPC", "NOT_FOUND")] == 1
        loads = metrics.of("load")
        assert [(x["model"], x["version"], x["ok"]) for x in loads] == [("m", 1, True)]
        states = [x["state"] for x in metrics.of("version_state") if x["model"] == "m"]
        assert states[:3] == ["START", "LOADING", "AVAILABLE"]
    finally:
        server.stop()


def test_server_side_batching_merges_concurrent_requests(tmp_path, sources):
    testing.copy_model(sources["examples"], tmp_path / "m", 1)
    metrics = RecordingMetrics()
    from serving.batching import BatchingParameters

    server = _server((ModelConfig("m", str(tmp_path / "m")),), metrics=metrics, enable_batching=True,
                     batching=BatchingParameters(max_batch_size=64, batch_timeout_micros=20_000, num_batch_threads=1))
    failures: list[BaseException] = []
    try:
        def client(i: int) -> None:
            # Odd clients send requests large enough for the bulk (tf.Tensor) decoding path; batches mix both.
            rows = [testing.example(seed=100 * i + j) for j in range(3 if i % 2 == 0 else 40)]
            try:
                with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                    for _ in range(5):
                        response = stub.Predict(examples_request("m", rows), timeout=60)
                        scores = tf.make_ndarray(response.outputs["score"]).tolist()
                        assert scores == pytest.approx([testing.expected_score(r)[0] for r in rows], rel=1e-4, abs=1e-6)
            except BaseException as exc:  # collected and asserted on below
                failures.append(exc)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.stop()
    assert failures == []
    sizes = [b["size"] for b in metrics.of("batch")]
    assert sum(sizes) == 5 * (4 * 3 + 4 * 40)  # every row went through the batcher exactly once
    assert max(sizes) > 40  # and some graph calls served several requests
