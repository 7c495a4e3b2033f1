"""The serving API as clients see it: official tensorflow_serving.apis stubs over gRPC, plain HTTP for REST.

Runs against this repo's server (in process, on the tiny models of serving.testing) or, with
FRAUD_SERVING_GRPC / FRAUD_SERVING_REST / FRAUD_SERVING_MODEL_DIR set, against any TF Serving; see
serving/README.md. Assertions are on what TF Serving itself returns (codes, payload shapes and, where
TF Serving's wording is fixed, messages); checks of this server's own wording are marked local.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

pytestmark = pytest.mark.integration

tf = pytest.importorskip("tensorflow")
from tensorflow.core.example import example_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from fraud.signature import DECISION, FEATURE_CONTRIBUTIONS, INPUT_EXAMPLES, REQUIRED_OUTPUTS, SCORE, THRESHOLD  # noqa: E402
from serving import testing  # noqa: E402

T = testing.TENSORS
E = testing.EXAMPLES


@pytest.fixture(scope="module")
def channel(model_server):
    with grpc.insecure_channel(model_server.grpc) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


def http(target, method: str, path: str, body=None) -> tuple[int, dict | str]:
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    request = urllib.request.Request(target.rest + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def predict_request(model: str, signature: str = "", version: int | None = None, label: str | None = None,
                    **inputs) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if signature:
        request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(value if isinstance(value, type(request.inputs[key])) else tf.make_tensor_proto(value))
    return request


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, timeout=30, **kwargs)
    return info.value


def outputs(response) -> dict[str, np.ndarray]:
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


# ---------------------------------------------------------------------------------------------
# Status and metadata


def test_status_grpc_reports_the_available_version(model_stub):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = T
    response = model_stub.GetModelStatus(request, timeout=30)
    [status] = response.model_version_status
    assert status.version == 1
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.status.error_code == 0


def test_status_rest_has_tf_serving_json_shape(model_server):
    code, body = http(model_server, "GET", f"/v1/models/{T}")
    assert code == 200
    assert body == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    code, body = http(model_server, "GET", f"/v1/models/{T}/versions/1")
    assert code == 200 and [s["version"] for s in body["model_version_status"]] == ["1"]


def test_status_of_all_versions_and_unknowns(model_server, model_stub):
    code, body = http(model_server, "GET", f"/v1/models/{testing.LABELS}")
    assert code == 200
    assert sorted(s["version"] for s in body["model_version_status"]) == ["1", "2"]
    assert {s["state"] for s in body["model_version_status"]} == {"AVAILABLE"}
    code, body = http(model_server, "GET", "/v1/models/no_such_model")
    assert code == 404 and body == {"error": "Could not find any versions of model no_such_model"}
    code, body = http(model_server, "GET", f"/v1/models/{T}/versions/99")
    assert code == 404 and body == {"error": f"Could not find version 99 of model {T}"}
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "no_such_model"
    assert rpc_error(model_stub.GetModelStatus, request).code() == grpc.StatusCode.NOT_FOUND


def test_metadata_grpc_lists_every_signature(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = T
    request.metadata_field.append("signature_def")
    response = stub.GetModelMetadata(request, timeout=30)
    assert response.model_spec.name == T and response.model_spec.version.value == 1
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sig_map)
    sigs = sig_map.signature_def
    assert {"serving_default", "half_plus_two", "echo", "spin"} <= set(sigs)
    inputs = sigs["serving_default"].inputs
    assert inputs["x"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in inputs["x"].tensor_shape.dim] == [-1, 3]
    assert inputs["k"].dtype == tf.int64.as_datatype_enum
    assert set(sigs["serving_default"].outputs) == {"total", "doubled", "k_plus_one", "positive", "tag_bytes", "version"}
    assert sigs["serving_default"].method_name == "tensorflow/serving/predict"


def test_metadata_rest_has_tf_serving_json_shape(model_server):
    code, body = http(model_server, "GET", f"/v1/models/{E}/metadata")
    assert code == 200
    assert body["model_spec"] == {"name": E, "signature_name": "", "version": "1"}
    sigs = body["metadata"]["signature_def"]["signature_def"]
    assert sigs["classify"]["method_name"] == "tensorflow/serving/classify"
    assert sigs["regress"]["method_name"] == "tensorflow/serving/regress"
    default = sigs["serving_default"]
    assert default["inputs"][INPUT_EXAMPLES]["dtype"] == "DT_STRING"
    assert set(REQUIRED_OUTPUTS) <= set(default["outputs"])
    code, body = http(model_server, "GET", f"/v1/models/{testing.LABELS}/labels/canary/metadata")
    assert code == 200 and body["model_spec"]["version"] == "2"


def test_metadata_errors(stub, model_server):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = T
    assert rpc_error(stub.GetModelMetadata, request).code() == grpc.StatusCode.INVALID_ARGUMENT  # no field
    request.metadata_field.append("signature_def")
    request.model_spec.name = "no_such_model"
    error = rpc_error(stub.GetModelMetadata, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Servable not found for request: Latest(no_such_model)"
    code, body = http(model_server, "GET", "/v1/models/no_such_model/metadata")
    assert code == 404 and "error" in body


# ---------------------------------------------------------------------------------------------
# Predict over gRPC


def test_predict_tensor_inputs_of_several_dtypes(stub):
    x = np.array([[1, 2, 3], [-4, -5, -6]], dtype=np.float32)
    k = np.array([7, 8], dtype=np.int64)
    response = stub.Predict(predict_request(T, x=x, k=k), timeout=30)
    out = outputs(response)
    np.testing.assert_allclose(out["total"], [13.0, -7.0])
    np.testing.assert_allclose(out["doubled"], x * 2)
    assert out["k_plus_one"].tolist() == [8, 9] and out["k_plus_one"].dtype == np.int64
    assert out["positive"].tolist() == [True, False]
    assert out["tag_bytes"].tolist() == [b"k=7", b"k=8"]
    assert response.model_spec.name == T
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"


def test_predict_accepts_typed_value_fields_and_broadcast_of_one_value(stub):
    x = tf.make_tensor_proto(np.zeros((2, 3), np.float32))
    x.ClearField("tensor_content")
    x.float_val.extend([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    k = tf.make_tensor_proto(np.zeros(2, np.int64))
    k.ClearField("tensor_content")
    k.int64_val.append(10)  # one value fills the tensor, as Tensor::FromProto does
    out = outputs(stub.Predict(predict_request(T, x=x, k=k), timeout=30))
    np.testing.assert_allclose(out["total"], [16.0, 25.0])


def test_predict_output_filter_and_string_inputs(stub):
    request = predict_request(T, signature="echo", text=np.array([b"fraud", b"ok"], dtype=object))
    request.output_filter.append("upper")
    out = outputs(stub.Predict(request, timeout=30))
    assert set(out) == {"upper"}
    assert out["upper"].tolist() == [b"FRAUD", b"OK"]


def test_predict_by_version_and_by_label(stub):
    x = np.array([[1.0, 1.0, 1.0]], np.float32)
    k = np.array([0], np.int64)
    for version in (1, 2):
        response = stub.Predict(predict_request(testing.LABELS, version=version, x=x, k=k), timeout=30)
        assert response.model_spec.version.value == version
        assert outputs(response)["version"].tolist() == [version]
    for label, version in (("stable", 1), ("canary", 2)):
        response = stub.Predict(predict_request(testing.LABELS, label=label, x=x, k=k), timeout=30)
        assert response.model_spec.version.value == version
    latest = stub.Predict(predict_request(testing.LABELS, x=x, k=k), timeout=30)
    assert latest.model_spec.version.value == 2


@pytest.mark.parametrize("batch", [5, 300])  # 300 rows take the large-tensor decoding path
def test_predict_project_signature_on_serialized_examples(stub, batch):
    rows = [testing.example(seed=i) for i in range(batch)]
    request = predict_request(E, **{INPUT_EXAMPLES: np.array(rows, dtype=object)})
    out = outputs(stub.Predict(request, timeout=30))
    expected = [testing.expected_score(r) for r in rows]
    np.testing.assert_allclose(out[SCORE], [e[0] for e in expected], rtol=1e-4, atol=1e-6)
    assert out[DECISION].tolist() == [e[1] for e in expected]
    np.testing.assert_allclose(out[THRESHOLD], [0.1] * batch)
    assert out[FEATURE_CONTRIBUTIONS].shape == (batch, 30)


# ---------------------------------------------------------------------------------------------
# Classify / Regress over gRPC


def _examples_input(request, rows: list[bytes], context: bytes | None = None) -> None:
    if context is None:
        for row in rows:
            request.input.example_list.examples.add().ParseFromString(row)
    else:
        for row in rows:
            request.input.example_list_with_context.examples.add().ParseFromString(row)
        request.input.example_list_with_context.context.ParseFromString(context)


def test_classify_and_regress(stub):
    rows = [testing.example(seed=i) for i in range(3)]
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = E
    request.model_spec.signature_name = "classify"
    _examples_input(request, rows)
    response = stub.Classify(request, timeout=30)
    assert response.model_spec.signature_name == "classify" and response.model_spec.version.value == 1
    assert len(response.result.classifications) == 3
    for classes, row in zip(response.result.classifications, rows, strict=True):
        assert [c.label for c in classes.classes] == ["legit", "fraud"]
        assert classes.classes[1].score == pytest.approx(testing.expected_score(row)[0], rel=1e-4, abs=1e-6)
        assert classes.classes[0].score + classes.classes[1].score == pytest.approx(1.0, rel=1e-5)
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = E
    request.model_spec.signature_name = "regress"
    _examples_input(request, rows)
    response = stub.Regress(request, timeout=30)
    assert [r.value for r in response.result.regressions] == pytest.approx(
        [testing.expected_score(r)[0] for r in rows], rel=1e-4, abs=1e-6)


def test_classify_merges_context_into_each_example(stub):
    context = example_pb2.Example()
    context.features.feature["V1"].float_list.value.append(3.0)
    row = example_pb2.Example()
    row.features.feature["V2"].float_list.value.append(1.0)
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = E
    request.model_spec.signature_name = "regress"
    _examples_input(request, [row.SerializeToString()], context.SerializeToString())
    merged = example_pb2.Example()
    merged.MergeFrom(context)
    merged.MergeFrom(row)
    value = stub.Regress(request, timeout=30).result.regressions[0].value
    assert value == pytest.approx(testing.expected_score(merged.SerializeToString())[0], rel=1e-4, abs=1e-6)


def test_classify_errors(stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = E
    request.model_spec.signature_name = "classify"
    error = rpc_error(stub.Classify, request)  # no examples
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == "Input is empty."
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = T  # serving_default there has two inputs: not classifiable
    _examples_input(request, [testing.example()])
    error = rpc_error(stub.Classify, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == "Expected one input Tensor."
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = E
    request.model_spec.signature_name = "no_such_signature"
    _examples_input(request, [testing.example()])
    error = rpc_error(stub.Regress, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "No signature was found with the name: no_such_signature"


# ---------------------------------------------------------------------------------------------
# Predict errors over gRPC


def test_unknown_model_version_and_label(stub):
    x, k = np.ones((1, 3), np.float32), np.ones(1, np.int64)
    error = rpc_error(stub.Predict, predict_request("no_such_model", x=x, k=k))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Servable not found for request: Latest(no_such_model)"
    error = rpc_error(stub.Predict, predict_request(T, version=42, x=x, k=k))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == f"Servable not found for request: Specific({T}, 42)"
    error = rpc_error(stub.Predict, predict_request(testing.LABELS, label="no_such_label", x=x, k=k))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Unrecognized servable version label: no_such_label"


def test_bad_inputs_are_invalid_argument_naming_the_tensor(stub, model_server):
    x, k = np.ones((2, 3), np.float32), np.ones(2, np.int64)
    missing = rpc_error(stub.Predict, predict_request(T, x=x))
    assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT and "Missing but required: {k}" in missing.details()
    extra = rpc_error(stub.Predict, predict_request(T, x=x, k=k, z=k))
    assert extra.code() == grpc.StatusCode.INVALID_ARGUMENT and "Sent extra: {z}" in extra.details()
    wrong_dtype = rpc_error(stub.Predict, predict_request(T, x=x.astype(np.int32), k=k))
    assert wrong_dtype.code() == grpc.StatusCode.INVALID_ARGUMENT
    wrong_rank = rpc_error(stub.Predict, predict_request(T, x=np.ones(3, np.float32), k=k))
    assert wrong_rank.code() == grpc.StatusCode.INVALID_ARGUMENT
    request = predict_request(T, x=x, k=k)
    request.output_filter.append("no_such_output")
    bad_filter = rpc_error(stub.Predict, request)
    assert bad_filter.code() == grpc.StatusCode.INVALID_ARGUMENT and "no_such_output" in bad_filter.details()
    if not model_server.external:  # this server's own messages name the tensor for dtype and shape too
        assert "'x'" in wrong_dtype.details() and "float" in wrong_dtype.details()
        assert "'x'" in wrong_rank.details()


def test_unknown_signature_and_missing_model_spec(stub):
    x, k = np.ones((1, 3), np.float32), np.ones(1, np.int64)
    error = rpc_error(stub.Predict, predict_request(T, signature="no_such_signature", x=x, k=k))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == 'Serving signature key "no_such_signature" not found.'
    error = rpc_error(stub.Predict, predict_pb2.PredictRequest())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_client_deadline_is_deadline_exceeded_and_server_keeps_serving(stub):
    slow = predict_request(T, signature="spin", iterations=np.array(1_000_000, dtype=np.int64))
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(slow, timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    quick = stub.Predict(predict_request(T, signature="half_plus_two", x=np.array([2.0], np.float32)), timeout=30)
    assert outputs(quick)["y"].tolist() == [3.0]


# ---------------------------------------------------------------------------------------------
# REST


def test_rest_predict_row_format(model_server):
    code, body = http(model_server, "POST", f"/v1/models/{T}:predict",
                      {"signature_name": "half_plus_two", "instances": [1.0, 2.0, 5.0]})
    assert code == 200 and body == {"predictions": [2.5, 3.0, 4.5]}
    code, body = http(model_server, "POST", f"/v1/models/{T}:predict",
                      {"instances": [{"x": [1, 2, 3], "k": 4}, {"x": [0.5, 0.5, 0.5], "k": -1}]})
    assert code == 200
    first, second = body["predictions"]
    assert first["total"] == 10.0 and first["k_plus_one"] == 5 and first["positive"] is True
    assert first["doubled"] == [2.0, 4.0, 6.0]
    assert first["tag_bytes"] == {"b64": base64.b64encode(b"k=4").decode()}  # *_bytes outputs are base64
    assert second["total"] == 0.5 and second["positive"] is True


def test_rest_predict_columnar_format(model_server):
    code, body = http(model_server, "POST", f"/v1/models/{T}:predict",
                      {"inputs": {"x": [[1, 2, 3], [4, 5, 6]], "k": [0, 1]}})
    assert code == 200
    assert body["outputs"]["total"] == [6.0, 16.0]
    assert body["outputs"]["doubled"] == [[2.0, 4.0, 6.0], [8.0, 10.0, 12.0]]
    code, body = http(model_server, "POST", f"/v1/models/{T}/versions/1:predict",
                      {"signature_name": "half_plus_two", "inputs": [4.0]})
    assert code == 200 and body == {"outputs": [4.0]}


def test_rest_predict_b64_and_labels_in_path(model_server):
    code, body = http(model_server, "POST", f"/v1/models/{T}:predict",
                      {"signature_name": "echo", "instances": [{"b64": base64.b64encode(b"abc").decode()}, "xyz"]})
    assert code == 200
    assert body["predictions"] == [{"length": 3, "upper": "ABC"}, {"length": 3, "upper": "XYZ"}]
    code, body = http(model_server, "POST", f"/v1/models/{testing.LABELS}/labels/stable:predict",
                      {"instances": [{"x": [1, 1, 1], "k": 0}]})
    assert code == 200 and body["predictions"][0]["version"] == 1


def test_rest_predict_project_signature_with_b64_examples(model_server):
    rows = [testing.example(seed=i) for i in range(2)]
    code, body = http(model_server, "POST", f"/v1/models/{E}:predict",
                      {"instances": [{"b64": base64.b64encode(r).decode()} for r in rows]})
    assert code == 200
    for prediction, row in zip(body["predictions"], rows, strict=True):
        score, decision, threshold = testing.expected_score(row)
        assert prediction[SCORE] == pytest.approx(score, rel=1e-4, abs=1e-6)
        assert prediction[DECISION] == decision
        assert prediction[THRESHOLD] == pytest.approx(threshold)


def test_rest_classify_and_regress(model_server):
    code, body = http(model_server, "POST", f"/v1/models/{E}:classify",
                      {"signature_name": "classify", "context": {"V2": 0.5}, "examples": [{"V1": 1.0}, {"V1": -2.0}]})
    assert code == 200
    assert [[pair[0] for pair in row] for row in body["results"]] == [["legit", "fraud"]] * 2
    fraud_scores = [row[1][1] for row in body["results"]]
    code, body = http(model_server, "POST", f"/v1/models/{E}:regress",
                      {"signature_name": "regress", "examples": [{"V1": 1.0, "V2": 0.5}, {"V1": -2.0, "V2": 0.5}]})
    assert code == 200
    assert body["results"] == pytest.approx(fraud_scores, rel=1e-4, abs=1e-6)


def test_rest_errors_have_tf_serving_codes(model_server):
    def post(path, body):
        return http(model_server, "POST", path, body)

    code, body = post("/v1/models/no_such_model:predict", {"instances": [1.0]})
    assert code == 404 and body == {"error": "Servable not found for request: Latest(no_such_model)"}
    code, body = post(f"/v1/models/{T}/versions/42:predict", {"instances": [1.0]})
    assert code == 404 and body == {"error": f"Servable not found for request: Specific({T}, 42)"}
    code, body = post(f"/v1/models/{testing.LABELS}/labels/nope:predict", {"instances": [1.0]})
    assert code == 400 and body == {"error": "Unrecognized servable version label: nope"}
    code, body = post(f"/v1/models/{T}:predict", b"{not json")
    assert code == 400 and body["error"].startswith("JSON Parse error")
    code, body = post(f"/v1/models/{T}:predict", {"signature_name": "half_plus_two", "instances": ["a"]})
    assert code == 400 and "is not of expected type: float" in body["error"]
    code, body = post(f"/v1/models/{T}:predict", {"signature_name": "half_plus_two"})
    assert code == 400 and body == {"error": "Missing 'inputs' or 'instances' key"}
    code, body = post(f"/v1/models/{T}:predict", {"inputs": {"x": [[1, 2, 3]]}})
    assert code == 400 and body == {"error": "Missing named input: k in 'inputs' object."}
    code, body = post(f"/v1/models/{T}:predict", {"signature_name": "no_such_signature", "instances": [1.0]})
    assert code == 400 and "no_such_signature" in body["error"]
    code, body = post(f"/v1/models/{E}:classify", {"signature_name": "classify", "examples": []})
    assert code == 400 and "error" in body
    code, body = http(model_server, "GET", "/v1/models")
    assert code == 400 and body == {"error": "Missing model name in request."}
    code, body = http(model_server, "GET", "/v1/other")
    assert code == 400 and body["error"].startswith("Malformed request")
    code, _ = http(model_server, "GET", "/v2/models/x")
    assert code == 404


def test_prometheus_metrics_count_requests(model_server, stub):
    stub.Predict(predict_request(T, signature="half_plus_two", x=np.array([1.0], np.float32)), timeout=30)
    code, text = http(model_server, "GET", "/monitoring/prometheus/metrics")
    assert code == 200
    assert f':tensorflow:serving:request_count{{model_name="{T}",status="OK"}}' in text
    assert ":tensorflow:serving:request_latency_bucket" in text
