"""TF Serving parity gaps found with the official client (issue 13, item 6), closed.

- MultiInference runs Classify/Regress tasks as TF Serving's TensorFlowMultiInferenceRunner does, with
  its checks and codes; a model without such signatures answers what TF Serving answers.
- A serialized tf.Example that TF cannot parse (b"\\xff\\x00garbage": its error message is not UTF-8)
  answers INVALID_ARGUMENT on every API, never INTERNAL, and the server keeps serving.
- HandleReloadConfigRequest answers UNIMPLEMENTED unless the operator passes
  --enable_reload_config_request (TF Serving always serves it: see serving/grpc_service.py for why
  UNIMPLEMENTED and not PERMISSION_DENIED).
- REST bodies above --rest_api_max_body_bytes answer 413 (TF Serving has no limit).

The first group runs against the session `model_server` (this server, or an external TF Serving named by
FRAUD_SERVING_* as in tests/test_serving_api.py); the flags are this server's own and get a server of
their own here.
"""

from __future__ import annotations

import http.client
import json
import socket

import grpc
import pytest

pytestmark = pytest.mark.integration

tf = pytest.importorskip("tensorflow")
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from fraud.signature import INPUT_EXAMPLES, SCORE, SIGNATURE_NAME  # noqa: E402
from serving import testing  # noqa: E402

T = testing.TENSORS
E = testing.EXAMPLES
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
GARBAGE = b"\xff\x00garbage"


@pytest.fixture(scope="module")
def stub(model_server):
    with grpc.insecure_channel(model_server.grpc) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _code(fn, request) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn(request, timeout=60)
    return info.value.code(), info.value.details()


def multi_request(tasks: list[tuple[str, str, str]], examples: list[bytes]) -> inference_pb2.MultiInferenceRequest:
    request = inference_pb2.MultiInferenceRequest()
    for model, signature, method in tasks:
        task = request.tasks.add()
        task.model_spec.name = model
        if signature:
            task.model_spec.signature_name = signature
        task.method_name = method
    for serialized in examples:
        request.input.example_list.examples.add().ParseFromString(serialized)
    return request


# ---------------------------------------------------------------------------------------------
# MultiInference


def test_multi_inference_runs_classify_and_regress_tasks_like_the_single_calls(stub):
    examples = [testing.example(seed=s) for s in range(3)]
    response = stub.MultiInference(multi_request([(E, "classify", CLASSIFY), (E, "regress", REGRESS)], examples),
                                   timeout=60)
    assert len(response.results) == 2
    classified, regressed = response.results
    assert classified.model_spec.name == E and classified.model_spec.signature_name == "classify"
    assert classified.model_spec.version.value == 1 and regressed.model_spec.signature_name == "regress"
    single = classification_pb2.ClassificationRequest()
    single.model_spec.name = E
    single.model_spec.signature_name = "classify"
    for serialized in examples:
        single.input.example_list.examples.add().ParseFromString(serialized)
    assert classified.classification_result == stub.Classify(single, timeout=60).result
    single_regress = regression_pb2.RegressionRequest.FromString(single.SerializeToString())  # same layout
    single_regress.model_spec.signature_name = "regress"
    assert regressed.regression_result == stub.Regress(single_regress, timeout=60).result
    for serialized, regression in zip(examples, regressed.regression_result.regressions, strict=True):
        assert regression.value == pytest.approx(testing.expected_score(serialized)[0], rel=1e-5)


def test_multi_inference_with_context_merges_it_into_each_example(stub):
    request = multi_request([(E, "regress", REGRESS)], [])
    with_context = request.input.example_list_with_context
    with_context.context.ParseFromString(testing.example({"V1": 2.0}, seed=1))
    own = testing.example({"V2": -1.0}, seed=2)
    with_context.examples.add().ParseFromString(own)
    [result] = stub.MultiInference(request, timeout=60).results
    merged = with_context.context.SerializeToString() + own  # the example's own features win
    assert result.regression_result.regressions[0].value == pytest.approx(testing.expected_score(merged)[0], rel=1e-5)


@pytest.mark.parametrize("tasks, examples, code, message", [
    ([], 1, grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified."),
    ([("no_such_model", "classify", CLASSIFY)], 1, grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Latest(no_such_model)"),
    ([(E, "classify", CLASSIFY), (T, "regress", REGRESS)], 1, grpc.StatusCode.INVALID_ARGUMENT,
     "All ModelSpecs in a MultiInferenceRequest must access the same model name."),
    ([(E, "classify", CLASSIFY), (E, "classify", REGRESS)], 1, grpc.StatusCode.INVALID_ARGUMENT,
     "Duplicate evaluation of signature: classify"),
    ([(E, "nope", CLASSIFY)], 1, grpc.StatusCode.INVALID_ARGUMENT, "Requested signature not found in model graph: nope"),
    ([(E, "classify", "tensorflow/serving/predict")], 1, grpc.StatusCode.UNIMPLEMENTED,
     "Unsupported signature method_name: tensorflow/serving/predict"),
    ([(E, "classify", CLASSIFY)], 0, grpc.StatusCode.INVALID_ARGUMENT, "Input is empty."),
    # a model whose signatures are neither Classify nor Regress ones: what PreProcess* says of them
    ([(T, "", CLASSIFY)], 1, grpc.StatusCode.INVALID_ARGUMENT, "Expected one input Tensor."),
    ([(T, "half_plus_two", REGRESS)], 1, grpc.StatusCode.INVALID_ARGUMENT, "No regression inputs found in SignatureDef"),
    ([(E, "regress", CLASSIFY)], 1, grpc.StatusCode.INVALID_ARGUMENT,
     "Expected classification signature outputs to contain at least one of"),
    ([(E, SIGNATURE_NAME, REGRESS)], 1, grpc.StatusCode.INVALID_ARGUMENT, "Expected one output Tensor."),
])
def test_multi_inference_refuses_as_tf_serving_does(stub, tasks, examples, code, message):
    request = multi_request(tasks, [testing.example(seed=s) for s in range(examples)])
    got, details = _code(stub.MultiInference, request)
    assert got == code
    assert details.startswith(message)


# ---------------------------------------------------------------------------------------------
# tf.Examples that are not tf.Examples


def _examples_request(cls, signature: str, examples: list[bytes]):
    """A Classify/Regress request whose examples are raw bytes (the stubs would refuse to build them)."""
    request = cls()
    request.model_spec.name = E
    request.model_spec.signature_name = signature
    data = request.SerializeToString()
    example_list = b"".join(b"\x0a" + bytes([len(x)]) + x for x in examples)
    input_field = b"\x0a" + bytes([len(example_list)]) + example_list
    return data + b"\x12" + bytes([len(input_field)]) + input_field


@pytest.mark.parametrize("bad", [GARBAGE, b"\x0a\x05abc", b"garbage"])
def test_an_unparsable_example_is_invalid_argument_everywhere_and_the_server_keeps_serving(model_server, stub, bad):
    # Predict on the project's signature: serialized tf.Examples in a string tensor (what the bridge sends)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = E
    request.inputs[INPUT_EXAMPLES].CopyFrom(tf.make_tensor_proto([bad, testing.example()], dtype=tf.string))
    code, details = _code(stub.Predict, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "UnicodeDecodeError" not in details and "Could not parse example input" in details
    # Classify / Regress / MultiInference carry the bytes in the request's example list
    with grpc.insecure_channel(model_server.grpc) as channel:
        for method, signature in (("Classify", "classify"), ("Regress", "regress")):
            cls = classification_pb2.ClassificationRequest if method == "Classify" else regression_pb2.RegressionRequest
            call = channel.unary_unary(f"/tensorflow.serving.PredictionService/{method}")
            with pytest.raises(grpc.RpcError) as info:
                call(_examples_request(cls, signature, [bad]), timeout=60)
            # TF Serving (gRPC C++) may refuse such a request while parsing it (INTERNAL); this server keeps
            # the example bytes, as TF Serving's lazily parsed Input does, and the graph refuses them
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    # REST: the same bytes as a b64 string of the project's signature
    import base64

    body = json.dumps({"instances": [{"b64": base64.b64encode(bad).decode()}]}).encode()
    status, payload = _rest(model_server.rest, "POST", f"/v1/models/{E}:predict", body)
    assert status == 400 and "Could not parse example input" in payload["error"]
    # and a good request right after
    request.inputs[INPUT_EXAMPLES].CopyFrom(tf.make_tensor_proto([testing.example(seed=5)], dtype=tf.string))
    out = tf.make_ndarray(stub.Predict(request, timeout=60).outputs[SCORE])
    assert out[0] == pytest.approx(testing.expected_score(testing.example(seed=5))[0], rel=1e-5)


# ---------------------------------------------------------------------------------------------
# This server's flags: reload config, REST body limit


def _rest(base: str, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict]:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, {"raw": raw.decode("utf-8", "replace")}


@pytest.fixture(scope="module")
def flagged_server(tmp_path_factory, model_server):
    """This server with --enable_reload_config_request and a 4 KiB REST body limit, on the `tensors` model."""
    if model_server.external:
        pytest.skip("this server's own flags")
    from serving.config import ModelConfig, ServerConfig
    from serving.server import ModelServer

    root = tmp_path_factory.mktemp("flagged")
    testing.save_tensor_model(root / T, 1)
    config = ServerConfig(models=(ModelConfig(T, str(root / T)),), port=0, rest_api_port=0,
                          file_system_poll_wait_seconds=0, max_num_load_retries=0,
                          enable_reload_config_request=True, rest_api_max_body_bytes=4096)
    server = ModelServer(config).start()
    try:
        yield server, root
    finally:
        server.stop()


def _reload_request(name: str, base_path: str) -> model_management_pb2.ReloadConfigRequest:
    request = model_management_pb2.ReloadConfigRequest()
    entry = request.config.model_config_list.config.add()
    entry.name = name
    entry.base_path = base_path
    entry.model_platform = "tensorflow"
    return request


def test_reload_config_is_off_unless_the_operator_turns_it_on(model_server, flagged_server):
    if model_server.external:
        pytest.skip("TF Serving always serves HandleReloadConfigRequest")
    server, root = flagged_server
    # the session server runs with defaults: off
    with grpc.insecure_channel(model_server.grpc) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        code, details = _code(stub.HandleReloadConfigRequest, _reload_request(T, str(model_server.model_dir / T)))
    assert code == grpc.StatusCode.UNIMPLEMENTED and "--enable_reload_config_request" in details
    assert server.manager.model_names() == [T]
    # turned on: the config is replaced (same model, plus a second name on the same versions)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = _reload_request(T, str(root / T))
        second = request.config.model_config_list.config.add()
        second.CopyFrom(request.config.model_config_list.config[0])
        second.name = "tensors_again"
        response = stub.HandleReloadConfigRequest(request, timeout=60)
        assert response.status.error_code == 0
        bad = model_management_pb2.ReloadConfigRequest()
        bad.config.custom_model_config.Pack(bad)  # not a model_config_list
        code, _ = _code(stub.HandleReloadConfigRequest, bad)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(server.manager.model_names()) == [T, "tensors_again"]


def test_rest_bodies_over_the_limit_are_413_and_the_server_keeps_serving(flagged_server):
    server, _ = flagged_server
    base = f"http://127.0.0.1:{server.rest_port}"
    ok = json.dumps({"signature_name": "half_plus_two", "instances": [1.0, 2.0]}).encode()
    assert _rest(base, "POST", f"/v1/models/{T}:predict", ok) == (200, {"predictions": [2.5, 3.0]})
    big = json.dumps({"signature_name": "half_plus_two", "instances": [1.0] * 2000}).encode()
    assert len(big) > 4096
    status, body = _rest(base, "POST", f"/v1/models/{T}:predict", big)
    assert status == 413 and "exceeds the server's limit of 4096 bytes" in body["error"]
    # a chunked body that grows past the limit
    host, port = "127.0.0.1", server.rest_port
    with socket.create_connection((host, port), timeout=60) as sock:
        chunk = b"x" * 3000
        sock.sendall(f"POST /v1/models/{T}:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                     + (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * 2 + b"0\r\n\r\n")
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413") and b"Connection: close" in reply
    # a Content-Length that is not a number
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.sendall(f"POST /v1/models/{T}:predict HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 400")
    assert _rest(base, "POST", f"/v1/models/{T}:predict", ok) == (200, {"predictions": [2.5, 3.0]})


def test_flags_parse_with_tf_serving_syntax():
    from serving.config import ConfigError, parse_args

    config = parse_args(["--model_base_path=/m", "--rest_api_max_body_bytes=1024", "--enable_reload_config_request"])
    assert config.rest_api_max_body_bytes == 1024 and config.enable_reload_config_request is True
    default = parse_args(["--model_base_path=/m"])
    assert default.rest_api_max_body_bytes == 64 * 1024 * 1024 and default.enable_reload_config_request is False
    with pytest.raises(ConfigError, match="--rest_api_max_body_bytes=-1"):
        parse_args(["--model_base_path=/m", "--rest_api_max_body_bytes=-1"])
