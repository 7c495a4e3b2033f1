"""Unit tests of the server's own logic, no TensorFlow model and no network: config parsing, version
policies, the model manager (with a fake loader), batching (with a fake runner), the REST JSON mapping
and the metrics rendering."""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fraud import dtypes
from serving import rest_json
from serving.batching import BatchingParameters, BatchScheduler
from serving.config import (
    ConfigError,
    ModelConfig,
    ServerConfig,
    VersionPolicy,
    add_flags,
    config_from_args,
    parse_batching_parameters,
    parse_model_server_config,
    parse_monitoring_config,
)
from serving.errors import Code, ServingError
from serving.manager import ModelManager, aspired_versions, parse_version
from serving.metrics import PrometheusMetrics, RecordingMetrics
from serving.requests import ModelSpec
from serving.servable import TensorInfo

# ---------------------------------------------------------------------------------------------
# Config


def test_model_server_config_in_tf_serving_text_format():
    models = parse_model_server_config("""
        model_config_list {
          config { name: "a" base_path: "/models/a" model_platform: "tensorflow"
                   model_version_policy { latest { num_versions: 2 } } }
          config { name: "b" base_path: "/models/b" model_platform: "tensorflow"
                   model_version_policy { specific { versions: 3 versions: 5 } }
                   version_labels { key: "stable" value: 3 } version_labels { key: "canary" value: 5 } }
          config { name: "c" base_path: "/models/c" model_platform: "tensorflow" model_version_policy { all {} } }
        }""")
    assert [m.name for m in models] == ["a", "b", "c"]
    assert models[0].policy == VersionPolicy("latest", num_versions=2)
    assert models[1].policy == VersionPolicy("specific", versions=(3, 5))
    assert dict(models[1].labels) == {"stable": 3, "canary": 5}
    assert models[2].policy.kind == "all"


@pytest.mark.parametrize("text, message", [
    ('model_config_list { config { name: "a" base_path: "/m" model_platform: "tensorflow" } '
     'config { name: "a" base_path: "/n" model_platform: "tensorflow" } }', "multiple times"),
    ('model_config_list { config { name: "a" base_path: "relative/m" model_platform: "tensorflow" } }', "absolute path"),
    ('model_config_list { config { name: "a" base_path: "/m" } }', "Illegal setting neither"),
    ('model_config_list { config { name: "a" base_path: "/m" model_platform: "pytorch" } }', "unsupported platform"),
    ("model_config_list { nonsense: 1 }", "not a ModelServerConfig"),
])
def test_model_server_config_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_model_server_config(text)


def test_batching_and_monitoring_files_in_tf_serving_text_format():
    params = parse_batching_parameters("""
        max_batch_size { value: 64 } batch_timeout_micros { value: 500 } num_batch_threads { value: 3 }
        max_enqueued_batches { value: 7 } allowed_batch_sizes: 16 allowed_batch_sizes: 64""")
    assert (params.max_batch_size, params.batch_timeout_micros, params.num_batch_threads,
            params.max_enqueued_batches, params.allowed_batch_sizes) == (64, 500, 3, 7, (16, 64))
    assert parse_batching_parameters("").max_batch_size == BatchingParameters().max_batch_size
    with pytest.raises(ConfigError, match="final entry"):
        parse_batching_parameters("max_batch_size { value: 64 } allowed_batch_sizes: 16")
    assert parse_monitoring_config('prometheus_config { enable: true, path: "/metrics" }') == "/metrics"
    assert parse_monitoring_config("prometheus_config { enable: true }") == "/monitoring/prometheus/metrics"
    assert parse_monitoring_config("prometheus_config { enable: false }") is None


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return parser.parse_args(list(argv))


def test_flags_parse_like_tensorflow_model_server(tmp_path):
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 32 }")
    config = config_from_args(_args("--model_name=fraud", f"--model_base_path={tmp_path}", "--port=9000",
                                    "--rest_api_port=0", "--enable_batching", f"--batching_parameters_file={batching}",
                                    "--file_system_poll_wait_seconds=5", "--enable_model_warmup=false"))
    assert config.models == (ModelConfig("fraud", str(tmp_path)),)
    assert config.port == 9000 and config.rest_api_port is None  # 0 disables REST, as in TF Serving
    assert config.enable_batching and config.batching.max_batch_size == 32
    assert config.file_system_poll_wait_seconds == 5 and config.enable_model_warmup is False
    assert config.host == "127.0.0.1" and config.rest_api_host == "127.0.0.1"


@pytest.mark.parametrize("argv, message", [
    (("--port=0", "--model_base_path=/m"), "--port=0"),
    (("--model_base_path=/m", "--port=8500", "--rest_api_port=8500"), "different"),
    (("--model_base_path=/m", "--batching_parameters_file=/x"), "without setting --enable_batching"),
    ((), "--model_base_path"),
    (("--model_config_file=/no/such/file",), "cannot read"),
])
def test_flag_errors_are_one_line(argv, message):
    with pytest.raises(ConfigError, match=message) as info:
        config_from_args(_args(*argv))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Version policies


def test_version_directories_and_policies():
    assert [parse_version(n) for n in ("1", "0007", " 3 ", "x1", ".tmp-2", "", "-4")] == [1, 7, 3, None, None, None, -4]
    children = ["1", "2", "10", "tmp", ".tmp-11-ab", "3"]
    latest = ModelConfig("m", "/b")
    assert aspired_versions(latest, children) == {10: "/b/10"}
    assert set(aspired_versions(ModelConfig("m", "/b", VersionPolicy("latest", num_versions=2)), children)) == {3, 10}
    assert set(aspired_versions(ModelConfig("m", "/b", VersionPolicy("all")), children)) == {1, 2, 3, 10}
    assert set(aspired_versions(ModelConfig("m", "/b", VersionPolicy("specific", versions=(2, 4))), children)) == {2}
    assert aspired_versions(latest, []) == {}


# ---------------------------------------------------------------------------------------------
# Model manager, with a fake loader


class FakeServable:
    def __init__(self, name: str, version: int, path: str) -> None:
        self.name, self.version, self.path = name, version, path
        self.closed = False

    def warmup(self, iterations: int = 1) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


class FakeLoader:
    """Loads any directory unless it holds a file named BAD; counts attempts per path."""

    def __init__(self, failures_before_success: int = 0) -> None:
        self.attempts: dict[str, int] = {}
        self.failures_before_success = failures_before_success

    def __call__(self, name, version, path, **kwargs):
        self.attempts[path] = self.attempts.get(path, 0) + 1
        if (Path(path) / "BAD").exists() or self.attempts[path] <= self.failures_before_success:
            raise ServingError(Code.DATA_LOSS, f"cannot load {path}")
        return FakeServable(name, version, path)


def _manager(tmp_path, *, policy=None, labels=None, loader=None, **settings):
    config = ServerConfig(models=(ModelConfig("m", str(tmp_path), policy or VersionPolicy(), labels or {}),),
                          max_num_load_retries=0, load_retry_interval_micros=0, **settings)
    metrics = RecordingMetrics()
    manager = ModelManager(config, metrics, loader=loader or FakeLoader())
    manager.apply_config(config.models, initial=True)
    return manager, metrics


def _settle(manager: ModelManager) -> dict[int, str]:
    """Poll once and take every action the policy asks for (unloads finish in their threads)."""
    manager._poll()
    while manager._step():
        pass
    for t in list(manager._unloaders):
        t.join(10)
    return {v: s.value for v, s in manager.versions("m")}


def _version(tmp_path: Path, version: int, bad: bool = False) -> None:
    (tmp_path / str(version)).mkdir()
    if bad:
        (tmp_path / str(version) / "BAD").write_text("")


def test_new_version_loads_before_the_old_one_is_retired(tmp_path):
    _version(tmp_path, 1)
    manager, metrics = _manager(tmp_path)
    assert _settle(manager) == {1: "AVAILABLE"}
    _version(tmp_path, 2)
    assert _settle(manager) == {1: "END", 2: "AVAILABLE"}
    events = [(e["version"], e["state"]) for e in metrics.of("version_state")]
    assert events.index((2, "AVAILABLE")) < events.index((1, "UNLOADING"))
    with manager.acquire(ModelSpec("m")) as handle:
        assert handle.version == 2


def test_failed_version_keeps_previous_serving_and_is_not_retried_while_aspired(tmp_path):
    loader = FakeLoader()
    _version(tmp_path, 1)
    manager, _ = _manager(tmp_path, loader=loader)
    _settle(manager)
    _version(tmp_path, 2, bad=True)
    assert _settle(manager) == {1: "AVAILABLE", 2: "END"}
    assert _settle(manager) == {1: "AVAILABLE", 2: "END"}
    assert loader.attempts[str(tmp_path / "2")] == 1
    [status] = manager.status("m", 2)
    assert status.code == Code.DATA_LOSS and "cannot load" in status.message
    with manager.acquire(ModelSpec("m")) as handle:
        assert handle.version == 1
    (tmp_path / "2").rename(tmp_path / "tmp")  # gone from the aspired set ...
    _settle(manager)
    (tmp_path / "tmp" / "BAD").unlink()
    (tmp_path / "tmp").rename(tmp_path / "2")  # ... and back, fixed: loaded again
    assert _settle(manager) == {1: "END", 2: "AVAILABLE"}


def test_load_retries(tmp_path):
    _version(tmp_path, 1)
    loader = FakeLoader(failures_before_success=2)
    config = ServerConfig(models=(ModelConfig("m", str(tmp_path)),), max_num_load_retries=2,
                          load_retry_interval_micros=0)
    manager = ModelManager(config, RecordingMetrics(), loader=loader)
    manager.apply_config(config.models, initial=True)
    assert _settle(manager) == {1: "AVAILABLE"}
    assert loader.attempts[str(tmp_path / "1")] == 3


def test_removing_every_version_unloads_the_model(tmp_path):
    _version(tmp_path, 1)
    manager, _ = _manager(tmp_path)
    _settle(manager)
    (tmp_path / "1").rename(tmp_path / "old")
    assert _settle(manager) == {1: "END"}
    with pytest.raises(ServingError) as info:
        manager.acquire(ModelSpec("m"))
    assert info.value.code == Code.NOT_FOUND and info.value.message == "Servable not found for request: Latest(m)"


def test_retiring_waits_for_in_flight_requests(tmp_path):
    _version(tmp_path, 1)
    manager, _ = _manager(tmp_path)
    _settle(manager)
    handle = manager.acquire(ModelSpec("m"))
    _version(tmp_path, 2)
    manager._poll()
    while manager._step():
        pass
    time.sleep(0.2)
    assert dict((v, s.value) for v, s in manager.versions("m")) == {1: "UNLOADING", 2: "AVAILABLE"}
    assert handle.servable.closed is False
    handle.release()
    for t in list(manager._unloaders):
        t.join(10)
    assert dict((v, s.value) for v, s in manager.versions("m")) == {1: "END", 2: "AVAILABLE"}
    assert handle.servable.closed is True


def test_labels_and_request_resolution(tmp_path):
    for v in (1, 2):
        _version(tmp_path, v)
    with pytest.raises(ServingError, match="not currently available"):
        _manager(tmp_path, policy=VersionPolicy("all"), labels={"stable": 1})
    manager, _ = _manager(tmp_path, policy=VersionPolicy("all"), labels={"stable": 1},
                          allow_version_labels_for_unavailable_models=True)
    _settle(manager)
    with manager.acquire(ModelSpec("m", version_label="stable")) as handle:
        assert handle.version == 1
    with manager.acquire(ModelSpec("m")) as handle:
        assert handle.version == 2
    # Moving an existing label to a version that is not loaded is refused even with the flag.
    with pytest.raises(ServingError, match="not currently available"):
        manager.apply_config((ModelConfig("m", str(tmp_path), VersionPolicy("all"), {"stable": 9}),))
    for spec, code, message in [
        (ModelSpec("m", version_label="nope"), Code.INVALID_ARGUMENT, "Unrecognized servable version label: nope"),
        (ModelSpec("m", version=7), Code.NOT_FOUND, "Servable not found for request: Specific(m, 7)"),
        (ModelSpec(""), Code.INVALID_ARGUMENT, "ModelSpec has no name specified."),
    ]:
        with pytest.raises(ServingError) as info:
            manager.acquire(spec)
        assert (info.value.code, info.value.message) == (code, message)
    assert [s.version for s in manager.status("m")] == [2, 1]  # newest first
    with pytest.raises(ServingError, match="Could not find version 5 of model m"):
        manager.status("m", 5)


# ---------------------------------------------------------------------------------------------
# Batching, with a fake runner


class Runner:
    """Doubles its input; records each call's batch size; can be held to let tasks pile up."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, inputs):
        self.entered.set()
        self.gate.wait(10)
        x = inputs["x"]
        self.sizes.append(len(x))
        return {"y": x * 2}


def _submit_many(scheduler, runner, arrays, deadline=None):
    results: list = [None] * len(arrays)

    def one(i):
        try:
            results[i] = scheduler.submit("o", ("s", ()), runner, {"x": arrays[i]}, deadline)
        except ServingError as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(arrays))]
    for t in threads:
        t.start()
    return threads, results


def test_concurrent_requests_are_merged_into_one_call_and_split_back():
    runner = Runner()
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=16, num_batch_threads=1), RecordingMetrics())
    try:
        runner.gate.clear()
        first, first_result = _submit_many(scheduler, runner, [np.array([100.0])])
        assert runner.entered.wait(5)  # the only batch thread is now busy
        arrays = [np.arange(i, i + 3, dtype=np.float32) for i in range(0, 12, 3)]
        threads, results = _submit_many(scheduler, runner, arrays)
        time.sleep(0.3)  # let all four queue behind the held batch
        runner.gate.set()
        for t in first + threads:
            t.join(10)
        assert runner.sizes == [1, 12]  # four requests, one graph call
        for arr, result in zip(arrays, results, strict=True):
            assert result["y"].tolist() == (arr * 2).tolist()
        assert first_result[0]["y"].tolist() == [200.0]
    finally:
        scheduler.close()


def test_batch_limits_splitting_padding_and_queue_full():
    runner = Runner()
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=4, num_batch_threads=1, max_enqueued_batches=1))
    try:
        with pytest.raises(ServingError) as info:
            scheduler.submit("o", ("s", ()), runner, {"x": np.zeros(5)}, None)
        assert info.value.code == Code.INVALID_ARGUMENT
        assert info.value.message == "Task size 5 is larger than maximum input batch size 4"
        runner.gate.clear()
        held, _ = _submit_many(scheduler, runner, [np.zeros(1)])
        assert runner.entered.wait(5)
        queued, queued_results = _submit_many(scheduler, runner, [np.zeros(4)])  # fills the one allowed batch
        time.sleep(0.2)
        with pytest.raises(ServingError) as info:
            scheduler.submit("o", ("s", ()), runner, {"x": np.zeros(2)}, None)
        assert info.value.code == Code.UNAVAILABLE
        runner.gate.set()
        for t in held + queued:
            t.join(10)
        assert queued_results[0]["y"].shape == (4,)
    finally:
        scheduler.close()
    runner = Runner()
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=8, enable_large_batch_splitting=True,
                                                  max_execution_batch_size=3, allowed_batch_sizes=(2, 3),
                                                  num_batch_threads=1))
    try:
        x = np.arange(7, dtype=np.float32)
        result = scheduler.submit("o", ("s", ()), runner, {"x": x}, None)
        assert result["y"].tolist() == (x * 2).tolist()
        assert sorted(runner.sizes) == [2, 3, 3]  # 3 + 3 + 1 (padded to 2)
    finally:
        scheduler.close()


def test_queued_task_past_its_deadline_is_dropped():
    runner = Runner()
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=8, num_batch_threads=1))
    try:
        runner.gate.clear()
        held, _ = _submit_many(scheduler, runner, [np.zeros(1)])
        assert runner.entered.wait(5)
        started = time.monotonic()
        with pytest.raises(ServingError) as info:
            scheduler.submit("o", ("s", ()), runner, {"x": np.ones(2)}, time.monotonic() + 0.2)
        assert info.value.code == Code.DEADLINE_EXCEEDED and time.monotonic() - started < 2
        runner.gate.set()
        for t in held:
            t.join(10)
        time.sleep(0.2)
        assert runner.sizes == [1]  # the expired task never ran
    finally:
        scheduler.close()
    assert not any(t.is_alive() for t in scheduler._threads)


def test_outputs_without_a_batch_dimension_fall_back_to_one_call_per_request():
    calls: list[int] = []
    gate = threading.Event()

    def runner(inputs):
        gate.wait(10)
        calls.append(len(inputs["x"]))
        return {"total": np.array(inputs["x"].sum())}  # a scalar: cannot be split per request

    scheduler = BatchScheduler(BatchingParameters(max_batch_size=8, num_batch_threads=1))
    try:
        held, held_result = _submit_many(scheduler, runner, [np.ones(1)])
        time.sleep(0.2)
        threads, results = _submit_many(scheduler, runner, [np.ones(2), np.full(3, 2.0)])
        time.sleep(0.3)
        gate.set()
        for t in held + threads:
            t.join(10)
        assert [r["total"].item() for r in results] == [2.0, 6.0]
    finally:
        scheduler.close()


# ---------------------------------------------------------------------------------------------
# REST JSON mapping


FLOAT = TensorInfo("x", "x:0", dtypes.DT_FLOAT, (-1, 3))
STRING = TensorInfo("s", "s:0", dtypes.DT_STRING, (-1,))
INT = TensorInfo("k", "k:0", dtypes.DT_INT64, (-1,))


def _parse(doc, infos, may_contain_bools=True):
    return rest_json.parse_predict(doc, lambda name: infos, may_contain_bools)


def test_rest_row_and_columnar_requests():
    _, inputs, fmt = _parse({"instances": [[1, 2, 3], [4, 5, 6.5]]}, {"x": FLOAT}, may_contain_bools=False)
    assert fmt == rest_json.Format.ROW and inputs["x"].dtype == np.float32
    assert inputs["x"].tolist() == [[1, 2, 3], [4, 5, 6.5]]
    _, inputs, _ = _parse({"instances": [{"x": [1, 2, 3], "k": 5}, {"x": [0, 0, 0], "k": -1}]}, {"x": FLOAT, "k": INT})
    assert inputs["k"].tolist() == [5, -1] and inputs["x"].shape == (2, 3)
    sig, inputs, fmt = _parse({"signature_name": "sig", "inputs": {"s": ["a", {"b64": "AAE="}]}}, {"s": STRING})
    assert (sig, fmt) == ("sig", rest_json.Format.COLUMNAR)
    assert inputs["s"].tolist() == [b"a", b"\x00\x01"]


@pytest.mark.parametrize("doc, infos, message", [
    ({"instances": ["a"]}, {"x": FLOAT},
     'Failed to process element: 0 of \'instances\' list. Error: INVALID_ARGUMENT: JSON Value: "a" Type: String '
     "is not of expected type: float"),
    ({"instances": [[1, 2, 3], [4, 5]]}, {"x": FLOAT}, "Expecting tensor size: 3 but got: 2"),
    ({"inputs": [[1, 2, 3], [True, 1, 1]]}, {"x": FLOAT}, "JSON Value: true Type: True is not of expected type: float"),
    ({"inputs": [1.5]}, {"k": INT}, "JSON Value: 1.5 Type: Number is not of expected type: int64"),
    ({"inputs": [[1, 2], [3]]}, {"x": FLOAT}, "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
    ({"instances": [1], "inputs": [1]}, {"x": FLOAT}, "Not formatted correctly expecting only one of"),
    ({"instances": []}, {"x": FLOAT}, "No values in 'instances' array"),
    ({"instances": [{"x": [1, 2, 3]}]}, {"x": FLOAT, "k": INT}, "keys must be equal to: k,x"),
    ({"instances": [1]}, {"x": FLOAT, "k": INT}, "instances is a plain list, but expecting list of objects"),
    ({"inputs": {"x": [[1, 2, 3]]}}, {"x": FLOAT, "k": INT}, "Missing named input: k in 'inputs' object."),
    ({"inputs": [{"b64": "!!"}]}, {"s": STRING}, "Unable to base64 decode"),
    ({"signature_name": 3, "inputs": [1]}, {"x": FLOAT}, "'signature_name' key must be a string value."),
])
def test_rest_request_errors_match_tf_serving(doc, infos, message):
    with pytest.raises(ServingError) as info:
        _parse(doc, infos)
    assert info.value.code == Code.INVALID_ARGUMENT
    assert message in info.value.message


def test_rest_conversion_to_unsupported_dtype_is_unimplemented():
    with pytest.raises(ServingError) as info:
        rest_json.to_array([1.0], dtypes.DT_HALF)
    assert info.value.code == Code.UNIMPLEMENTED and info.value.http_status == 501


def test_rest_body_parsing_accepts_nan_and_infinity():
    doc = rest_json.loads(b'{"inputs": [NaN, Infinity, -Infinity]}')
    assert np.isnan(doc["inputs"][0]) and doc["inputs"][1:] == [float("inf"), float("-inf")]
    with pytest.raises(ServingError, match="JSON Parse error: The document is empty"):
        rest_json.loads(b"")
    with pytest.raises(ServingError, match="Is not object"):
        rest_json.loads(b"[1]")


def test_rest_responses_print_floats_like_tf_serving():
    out = {"y": np.array([0.1, 1.0, 1e-5, np.nan, np.inf, -np.inf, 123456.0], np.float32)}
    text = rest_json.predict_response(out, {"y": dtypes.DT_FLOAT}, rest_json.Format.ROW).decode()
    assert text == '{"predictions": [0.1, 1.0, 1e-05, NaN, Infinity, -Infinity, 123456.0]}'
    many = {"a_bytes": np.array([b"\x00\xff"], dtype=object), "n": np.array([[1, 2]], np.int64),
            "ok": np.array([True])}
    row = json.loads(rest_json.predict_response(many, {"a_bytes": dtypes.DT_STRING, "n": dtypes.DT_INT64,
                                                       "ok": dtypes.DT_BOOL}, rest_json.Format.ROW))
    assert row == {"predictions": [{"a_bytes": {"b64": "AP8="}, "n": [1, 2], "ok": True}]}
    col = json.loads(rest_json.predict_response(many, {}, rest_json.Format.COLUMNAR))
    assert col == {"outputs": {"a_bytes": [{"b64": "AP8="}], "n": [[1, 2]], "ok": [True]}}
    with pytest.raises(ServingError, match="inconsistent batch size"):
        rest_json.predict_response({"a": np.zeros(2), "b": np.zeros(3)}, {}, rest_json.Format.ROW)
    assert rest_json.classify_response(np.array([[b"x"]], dtype=object), None) == b'{"results": [[["x", 0.0]]]}'
    assert rest_json.regress_response(np.array([0.5, 2.0], np.float32)) == b'{"results": [0.5, 2.0]}'


def test_rest_examples_become_tf_examples():
    from tensorflow.core.example import example_pb2

    sig, rows = rest_json.parse_examples({"signature_name": "c", "context": {"ctx": "v"},
                                          "examples": [{"f": 1.5, "i": [1, 2], "b": {"b64": "eA=="}, "t": True}]})
    assert sig == "c"
    ex = example_pb2.Example.FromString(rows[0])
    assert list(ex.features.feature["f"].float_list.value) == [1.5]
    assert list(ex.features.feature["i"].int64_list.value) == [1, 2]
    assert list(ex.features.feature["b"].bytes_list.value) == [b"x"]
    assert list(ex.features.feature["t"].int64_list.value) == [1]
    assert list(ex.features.feature["ctx"].bytes_list.value) == [b"v"]
    with pytest.raises(ServingError, match="Unexpected element type in feature: m expecting type: float"):
        rest_json.parse_examples({"examples": [{"m": [1.5, "a"]}]})
    with pytest.raises(ServingError, match="'examples' value is an empty array"):
        rest_json.parse_examples({"examples": []})


# ---------------------------------------------------------------------------------------------
# Metrics


def test_prometheus_text_uses_tf_serving_names_and_cumulative_buckets():
    metrics = PrometheusMetrics()
    metrics.request(model="m", version=3, signature="serving_default", api="Predict", entrypoint="GRPC",
                    code=Code.OK, latency_s=0.0001)
    metrics.request(model="m", version=3, signature="serving_default", api="Predict", entrypoint="GRPC",
                    code=Code.OK, latency_s=0.5)
    metrics.request(model="m", version=None, signature="", api="Predict", entrypoint="REST",
                    code=Code.NOT_FOUND, latency_s=0.001)
    metrics.load(model="m", version=3, path="/m/3", ok=True, latency_s=1.5)
    metrics.version_state(model="m", version=3, state="AVAILABLE")
    text = metrics.render()
    lines = text.splitlines()
    assert "# TYPE :tensorflow:serving:request_count counter" in lines
    assert ':tensorflow:serving:request_count{model_name="m",status="OK"} 2' in lines
    assert ':tensorflow:serving:request_count{model_name="m",status="NOT_FOUND"} 1' in lines
    assert ':tensorflow:serving:request_latency_bucket{model_name="m",API="Predict",entrypoint="GRPC",le="+Inf"} 2' in lines
    assert ':tensorflow:serving:request_latency_count{model_name="m",API="Predict",entrypoint="GRPC"} 2' in lines
    assert ':tensorflow:cc:saved_model:load_attempt_count{model_path="/m/3",status="success"} 1' in lines
    assert ('fraud_serving_requests_total{model_name="m",version="3",signature_name="serving_default",API="Predict",'
            'entrypoint="GRPC",status="OK"} 2') in lines
    assert 'fraud_serving_model_version_state{model_name="m",version="3",state="AVAILABLE"} 1' in lines
    assert 'fraud_serving_model_version_state{model_name="m",version="3",state="LOADING"} 0' in lines
    buckets = [float(line.rsplit(" ", 1)[1]) for line in lines
               if line.startswith('fraud_serving_request_latency_seconds_bucket{model_name="m",version="3"')]
    assert buckets == sorted(buckets) and buckets[0] == 1 and buckets[-1] == 2  # cumulative
