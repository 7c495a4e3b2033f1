"""Executor of LocalInfraValidator: serve the candidate with `python -m serving`, query it, judge the answers.

The server runs as a subprocess (as TFX runs TF Serving in a container): a model that crashes the
loader cannot take the pipeline down, and the model is loaded by exactly the code that serves it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from absl import logging
from tfx import types
from tfx.components.infra_validator import request_builder
from tfx.dsl.components.base import base_executor
from tfx.proto import infra_validator_pb2
from tfx.types import artifact_utils
from tfx.utils import io_utils, path_utils, proto_utils

from components.infra_validator import spec as keys
from fraud.signature import DECISION, DEFAULT_MODEL_NAME, REQUIRED_OUTPUTS, SCORE, THRESHOLD

_DEFAULT_MAX_LOADING_SECONDS = 300
_DEFAULT_TAGS = ("serve",)
_REQUEST_TIMEOUT_SECONDS = 60
_MAX_REPORTED_FAILURES = 20


@dataclass
class ValidationReport:
    """What one validation found; written to `infra_validation.json` in the blessing."""

    blessed: bool = False
    mode: str = "LOAD_ONLY"
    model_name: str = ""
    requests: int = 0
    attempts: int = 0
    load_seconds: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_max: float | None = None
    warmup_records: int = 0
    failures: list[str] = field(default_factory=list)
    server_log_tail: str = ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prediction_log(request: Any) -> Any:
    from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_log_pb2, regression_pb2

    if isinstance(request, predict_pb2.PredictRequest):
        return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    if isinstance(request, classification_pb2.ClassificationRequest):
        return prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=request))
    if isinstance(request, regression_pb2.RegressionRequest):
        return prediction_log_pb2.PredictionLog(regress_log=prediction_log_pb2.RegressLog(request=request))
    raise TypeError(f"cannot make a warm-up record of {type(request).__name__}")


# ---------------------------------------------------------------------------------------------
# Judging answers


def _finite(values: np.ndarray) -> bool:
    return values.dtype.kind not in "fc" or bool(np.isfinite(values).all())


def check_predict(request: Any, response: Any, signature: Any, model_name: str) -> list[str]:
    """Problems with one Predict answer (empty when it is well formed)."""
    import tensorflow as tf

    problems = []
    name = request.model_spec.signature_name or "serving_default"
    if response.model_spec.name != model_name:
        problems.append(f"{name}: answer names model {response.model_spec.name!r}, not {model_name!r}")
    inputs = [tf.make_ndarray(t) for t in request.inputs.values()]
    rows = inputs[0].shape[0] if inputs and inputs[0].ndim else None
    expected = set(signature.outputs)
    got = set(response.outputs)
    if got != expected:
        problems.append(f"{name}: outputs {sorted(got)}, the signature declares {sorted(expected)}")
    arrays = {}
    for key in sorted(got & expected):
        try:
            arr = tf.make_ndarray(response.outputs[key])
        except Exception as exc:  # a tensor the official client cannot decode is ill formed
            problems.append(f"{name}.{key}: undecodable tensor ({exc})")
            continue
        info = signature.outputs[key]
        arrays[key] = arr
        if response.outputs[key].dtype != info.dtype:
            problems.append(f"{name}.{key}: dtype {response.outputs[key].dtype}, the signature declares {info.dtype}")
        if rows is not None and (arr.ndim == 0 or arr.shape[0] != rows):
            problems.append(f"{name}.{key}: shape {list(arr.shape)} for {rows} example(s)")
        if not _finite(arr):
            problems.append(f"{name}.{key}: not finite: {arr.ravel()[:5].tolist()}")
    if set(REQUIRED_OUTPUTS) <= set(arrays):  # the project's contract (fraud.signature)
        score, decision, threshold = arrays[SCORE], arrays[DECISION], arrays[THRESHOLD]
        if score.size and (score.min() < 0 or score.max() > 1):
            problems.append(f"{name}.{SCORE}: outside [0, 1]: {score.ravel()[:5].tolist()}")
        if not set(np.unique(decision).tolist()) <= {0, 1}:
            problems.append(f"{name}.{DECISION}: not 0/1: {decision.ravel()[:5].tolist()}")
        elif score.shape == decision.shape == threshold.shape and not np.array_equal(decision, score >= threshold):
            problems.append(f"{name}.{DECISION}: differs from {SCORE} >= {THRESHOLD}")
    return problems


def check_examples_answer(request: Any, response: Any, kind: str, model_name: str) -> list[str]:
    """Problems with one Classify or Regress answer."""
    name = request.model_spec.signature_name or "serving_default"
    rows = len(request.input.example_list.examples) or len(request.input.example_list_with_context.examples)
    problems = []
    if response.model_spec.name != model_name:
        problems.append(f"{name}: answer names model {response.model_spec.name!r}, not {model_name!r}")
    if kind == "classify":
        results = response.result.classifications
        if len(results) != rows:
            problems.append(f"{name}: {len(results)} classifications for {rows} example(s)")
        for item in results:
            scores = np.array([c.score for c in item.classes], dtype=np.float32)
            if not item.classes or not _finite(scores):
                problems.append(f"{name}: a classification without classes or with non-finite scores")
                break
    else:
        values = np.array([r.value for r in response.result.regressions], dtype=np.float32)
        if len(values) != rows:
            problems.append(f"{name}: {len(values)} regressions for {rows} example(s)")
        if not _finite(values):
            problems.append(f"{name}: non-finite regression values")
    return problems


# ---------------------------------------------------------------------------------------------
# One validation run


class _Server:
    """`python -m serving` on one model directory, on free ports, logging to a file."""

    def __init__(self, base_path: str, model_name: str, log_path: str) -> None:
        self.port = _free_port()
        self._log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving", f"--model_name={model_name}", f"--model_base_path={base_path}",
             f"--port={self.port}", "--rest_api_port=0", "--max_num_load_retries=0",
             "--file_system_poll_wait_seconds=0"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self._log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _wait_available(server: _Server, model_name: str, deadline: float) -> None:
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model_name
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        while True:
            if server.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {server.proc.returncode} before the model was available")
            try:
                response = stub.GetModelStatus(request, timeout=5)
                if any(s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
                       for s in response.model_version_status):
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the model was not available within max_loading_time_seconds")
            time.sleep(0.2)


def _query(port: int, requests: Sequence[Any], signatures: Mapping[str, Any], model_name: str,
           report: ValidationReport) -> None:
    import grpc
    from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_service_pb2_grpc

    latencies = []
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", -1)]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for request in requests:
            started = time.perf_counter()
            try:
                if isinstance(request, predict_pb2.PredictRequest):
                    response = stub.Predict(request, timeout=_REQUEST_TIMEOUT_SECONDS)
                    signature = signatures[request.model_spec.signature_name or "serving_default"]
                    problems = check_predict(request, response, signature, model_name)
                elif isinstance(request, classification_pb2.ClassificationRequest):
                    response = stub.Classify(request, timeout=_REQUEST_TIMEOUT_SECONDS)
                    problems = check_examples_answer(request, response, "classify", model_name)
                else:
                    response = stub.Regress(request, timeout=_REQUEST_TIMEOUT_SECONDS)
                    problems = check_examples_answer(request, response, "regress", model_name)
            except grpc.RpcError as exc:
                problems = [f"{request.model_spec.signature_name or 'serving_default'}: "
                            f"{exc.code().name}: {exc.details()}"]
            latencies.append((time.perf_counter() - started) * 1e3)
            report.failures.extend(problems)
    if latencies:
        report.latency_ms_p50 = round(float(np.percentile(latencies, 50)), 3)
        report.latency_ms_max = round(max(latencies), 3)


def validate(serve_path: str, requests: Sequence[Any], signatures: Mapping[str, Any], *, model_name: str,
             max_loading_time_seconds: float, num_tries: int, workdir: str) -> ValidationReport:
    """Serve `serve_path` as version 1 of `model_name`, send `requests`, judge the answers."""
    report = ValidationReport(model_name=model_name, requests=len(requests),
                              mode="LOAD_AND_QUERY" if requests else "LOAD_ONLY")
    base = os.path.join(workdir, "models", model_name)
    os.makedirs(base, exist_ok=True)
    version_dir = os.path.join(base, "1")
    if not os.path.exists(version_dir):
        os.symlink(os.path.abspath(serve_path), version_dir)
    for attempt in range(1, max(1, num_tries) + 1):
        report.attempts = attempt
        report.failures = []
        server = _Server(base, model_name, os.path.join(workdir, f"server-{attempt}.log"))
        started = time.monotonic()
        try:
            _wait_available(server, model_name, started + max_loading_time_seconds)
            report.load_seconds = round(time.monotonic() - started, 3)
            _query(server.port, requests, signatures, model_name, report)
        except (RuntimeError, TimeoutError) as exc:
            report.failures.append(str(exc))
        finally:
            server.stop()
            report.server_log_tail = "" if not report.failures else server.log_tail()
        if not report.failures:
            break
        logging.warning("Infra validation attempt %d/%d failed: %s", attempt, num_tries, report.failures[0])
    report.failures = report.failures[:_MAX_REPORTED_FAILURES]
    report.blessed = not report.failures
    return report


# ---------------------------------------------------------------------------------------------
# The TFX executor


def _signatures(model_path: str, tags: Sequence[str]) -> dict[str, Any]:
    from serving.servable import read_meta_graph

    return dict(read_meta_graph(model_path, tags).signature_def)


class Executor(base_executor.BaseExecutor):
    """Loads the model in the project's model server, queries it, writes the InfraBlessing."""

    def Do(self, input_dict: dict[str, list[types.Artifact]], output_dict: dict[str, list[types.Artifact]],
           exec_properties: dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model = artifact_utils.get_single_instance(input_dict[keys.MODEL_KEY])
        blessing = artifact_utils.get_single_instance(output_dict[keys.BLESSING_KEY])
        examples = (artifact_utils.get_single_instance(input_dict[keys.EXAMPLES_KEY])
                    if input_dict.get(keys.EXAMPLES_KEY) else None)
        request_spec = None
        if exec_properties.get(keys.REQUEST_SPEC_KEY):
            request_spec = infra_validator_pb2.RequestSpec()
            proto_utils.json_to_proto(exec_properties[keys.REQUEST_SPEC_KEY], request_spec)
        validation_spec = infra_validator_pb2.ValidationSpec()
        if exec_properties.get(keys.VALIDATION_SPEC_KEY):
            proto_utils.json_to_proto(exec_properties[keys.VALIDATION_SPEC_KEY], validation_spec)

        model_name = exec_properties.get(keys.MODEL_NAME_KEY) or DEFAULT_MODEL_NAME
        model_path = path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))
        tags = tuple(request_spec.tensorflow_serving.tag_set) if request_spec and \
            request_spec.tensorflow_serving.tag_set else _DEFAULT_TAGS

        report = ValidationReport(model_name=model_name)
        requests: list[Any] = []
        serve_path = model_path
        stamped = path_utils.stamped_model_path(blessing.uri)
        workdir = tempfile.mkdtemp(prefix="infra-validation-")
        try:
            if examples is not None and request_spec is not None:
                requests = list(request_builder.build_requests(model_name=model_name, model=model,
                                                               examples=examples, request_spec=request_spec))
            if requests and request_spec is not None and request_spec.make_warmup:
                io_utils.copy_dir(model_path, stamped)
                io_utils.write_tfrecord_file(path_utils.warmup_file_path(stamped),
                                             *[_prediction_log(r) for r in requests])
                serve_path = stamped
            report = validate(serve_path, requests, _signatures(model_path, tags), model_name=model_name,
                              max_loading_time_seconds=validation_spec.max_loading_time_seconds
                              or _DEFAULT_MAX_LOADING_SECONDS,
                              num_tries=validation_spec.num_tries or 1, workdir=workdir)
            if serve_path == stamped:
                report.warmup_records = len(requests)
        except Exception as exc:  # anything that stops validation means: not blessed, with the reason
            logging.exception("Infra validation could not run")
            report.failures.append(f"validation could not run: {type(exc).__name__}: {exc}")
            report.blessed = False
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

        if report.blessed:
            io_utils.write_string_file(os.path.join(blessing.uri, keys.BLESSED_FILE), "")
            blessing.set_int_custom_property(keys.BLESSED_PROPERTY, 1)
            if serve_path == stamped:
                blessing.set_int_custom_property(keys.HAS_MODEL_PROPERTY, 1)
            logging.info("Model passed infra validation (%d requests).", report.requests)
        else:
            if os.path.exists(stamped):
                shutil.rmtree(stamped, ignore_errors=True)
            io_utils.write_string_file(os.path.join(blessing.uri, keys.NOT_BLESSED_FILE), "")
            blessing.set_int_custom_property(keys.BLESSED_PROPERTY, 0)
            logging.warning("Model failed infra validation: %s", "; ".join(report.failures[:3]))
        io_utils.write_string_file(os.path.join(blessing.uri, keys.REPORT_FILE),
                                   json.dumps(asdict(report), indent=2, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
