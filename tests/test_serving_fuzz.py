"""Property-based fuzzing of the model server's gRPC and REST API (hypothesis): every answer is the status
TF Serving would give, never INTERNAL for a client's fault, and the server keeps serving.

Each hypothesis example is a batch of requests followed by a healthy request on both transports. The
expected status of every request comes from an oracle written here from TF Serving's sources, not from
the server's code:

- protobuf framing: the generated classes (upb) parse the bytes; bytes they refuse answer
  INVALID_ARGUMENT (TF Serving's gRPC C++ answers INTERNAL before TF Serving runs: a documented
  difference, see serving/grpc_service.py);
- the order and codes of TF Serving's checks (predict_util.cc, classifier.cc, regressor.cc,
  multi_inference.cc, get_model_metadata_impl.cc, get_model_status_impl.cc, server_core.cc);
- tensors: TensorFlow's own Tensor::FromProto (tf.io.parse_tensor) decides whether a TensorProto is
  one; tf.Examples: TensorFlow's ParseExample op on the model's feature spec decides whether they parse;
- REST: http_rest_api_util.cc's path expressions, json_tensor.cc's JSON rules, absl's base64, and
  TF Serving's HTTP status per code (http_server.cc); bodies over the server's limit are 413.

One documented difference is part of the oracle: shapes are checked against the SignatureDef before
the graph runs (TF Serving leaves that to the graph; serving/README.md). The run is deterministic
(`derandomize=True`), bounded (`max_examples`), and the number of requests per API and code is printed
at the end of the module (and recorded as the test's `fuzz_requests` property).
"""

from __future__ import annotations

import base64
import collections
import http.client
import json
import math
import re
import time
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest

pytestmark = pytest.mark.integration

hypothesis = pytest.importorskip("hypothesis")
tf = pytest.importorskip("tensorflow")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from tensorflow.core.example import example_pb2, feature_pb2  # noqa: E402
from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)

from fraud.features import FEATURE_NAMES  # noqa: E402
from serving import testing  # noqa: E402

T = testing.TENSORS
E = testing.EXAMPLES
BODY_LIMIT = 64 * 1024
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
GARBAGE = b"\xff\x00garbage"
#: Hypothesis examples per test; each is a batch of 1-6 requests plus two healthy ones.
EXAMPLES_PER_TEST = 90

OK, INVALID, NOT_FOUND, PRECONDITION, UNIMPLEMENTED = "OK", "INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "UNIMPLEMENTED"
HTTP = {OK: 200, INVALID: 400, NOT_FOUND: 404, PRECONDITION: 400, UNIMPLEMENTED: 501}
FUZZ = settings(max_examples=EXAMPLES_PER_TEST, deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])

# ---------------------------------------------------------------------------------------------
# The server under test and what it serves


@dataclass
class Sig:
    method: str
    inputs: dict[str, tuple[int, tuple[int, ...] | None]]  # alias -> (dtype, shape or None)
    outputs: tuple[str, ...]


@dataclass
class World:
    grpc: str
    rest: str
    versions: dict[str, set[int]]
    labels: dict[str, dict[str, int]]
    sigs: dict[str, dict[str, Sig]]
    tried: collections.Counter = field(default_factory=collections.Counter)
    channel: grpc.Channel | None = None
    conn: http.client.HTTPConnection | None = None


@pytest.fixture(scope="module")
def world(tmp_path_factory, request):
    """This server (in process) on `tensors` (label stable -> 1) and `examples`, REST body limit 64 KiB."""
    from serving.config import ModelConfig, ServerConfig
    from serving.server import ModelServer

    root = tmp_path_factory.mktemp("fuzz-models")
    testing.save_tensor_model(root / T, 1)
    testing.save_examples_model(root / E, 1)
    from types import MappingProxyType

    config = ServerConfig(models=(ModelConfig(T, str(root / T), labels=MappingProxyType({"stable": 1})),
                                  ModelConfig(E, str(root / E))),
                          port=0, rest_api_port=0, file_system_poll_wait_seconds=0, max_num_load_retries=0,
                          allow_version_labels_for_unavailable_models=True, rest_api_max_body_bytes=BODY_LIMIT)
    server = ModelServer(config).start()
    w = World(grpc=f"127.0.0.1:{server.grpc_port}", rest=f"127.0.0.1:{server.rest_port}",
              versions={T: {1}, E: {1}}, labels={T: {"stable": 1}}, sigs={})
    w.channel = grpc.insecure_channel(w.grpc, options=[("grpc.max_send_message_length", -1),
                                                       ("grpc.max_receive_message_length", -1)])
    for model in (T, E):
        meta = get_model_metadata_pb2.GetModelMetadataRequest()
        meta.model_spec.name = model
        meta.metadata_field.append("signature_def")
        raw = w.channel.unary_unary("/tensorflow.serving.PredictionService/GetModelMetadata")(meta.SerializeToString())
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        get_model_metadata_pb2.GetModelMetadataResponse.FromString(raw).metadata["signature_def"].Unpack(sig_map)
        w.sigs[model] = {
            key: Sig(sig.method_name,
                     {k: (v.dtype, None if v.tensor_shape.unknown_rank else tuple(d.size for d in v.tensor_shape.dim))
                      for k, v in sig.inputs.items()},
                     tuple(sorted(sig.outputs)))
            for key, sig in sig_map.signature_def.items() if key != "spin"  # spin runs as long as asked
        }
    started = time.monotonic()
    yield w
    elapsed = time.monotonic() - started
    total = sum(w.tried.values())
    by_api = collections.Counter()
    for (transport, api, _code), n in w.tried.items():
        by_api[f"{transport} {api}"] += n
    codes = collections.Counter()
    for (_transport, _api, code), n in w.tried.items():
        codes[code] += n
    line = (f"serving fuzz: {total} requests in {elapsed:.0f} s; by API {dict(sorted(by_api.items()))}; "
            f"by answer {dict(sorted(codes.items()))}")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capture is not None and reporter is not None:
        with capture.global_and_fixture_disabled():  # shown in every run, not only with -s
            reporter.write_line(line)
    else:
        print(line)
    w.channel.close()
    if w.conn is not None:
        w.conn.close()
    server.stop()


@pytest.fixture
def tried(world, record_property):
    before = sum(world.tried.values())
    yield world
    record_property("fuzz_requests", sum(world.tried.values()) - before)


def call_grpc(w: World, api: str, payload: bytes) -> tuple[str, bytes | str]:
    service = "ModelService" if api == "GetModelStatus" else "PredictionService"
    method = w.channel.unary_unary(f"/tensorflow.serving.{service}/{api}")
    try:
        answer = method(payload, timeout=60)
        code: str = OK
        body: bytes | str = answer
    except grpc.RpcError as exc:
        code, body = exc.code().name, exc.details() or ""
    w.tried[("grpc", api, code)] += 1
    return code, body


def call_rest(w: World, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict]:
    for attempt in range(2):
        if w.conn is None:
            host, port = w.rest.split(":")
            w.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            w.conn.request(method, path, body=body, headers=headers or {})
            response = w.conn.getresponse()
            raw = response.read()
            if response.getheader("Connection", "").lower() == "close":
                w.conn.close()
                w.conn = None
            break
        except (http.client.HTTPException, OSError):
            w.conn.close()
            w.conn = None
            if attempt:
                raise
    verb = path.rsplit(":", 1)[-1] if ":" in path.rsplit("/", 1)[-1] else method
    w.tried[("rest", verb, str(response.status))] += 1
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, {"raw": raw.decode("utf-8", "replace")}


def healthy(w: World) -> None:
    """A good request on each transport: the server still serves, with the right answers."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = T
    request.model_spec.signature_name = "echo"
    request.inputs["text"].CopyFrom(tf.make_tensor_proto([b"ok", b"\xff"], dtype=tf.string))
    code, body = call_grpc(w, "Predict", request.SerializeToString())
    assert code == OK, body
    out = predict_pb2.PredictResponse.FromString(body).outputs
    assert tf.make_ndarray(out["length"]).tolist() == [2, 1]
    status, doc = call_rest(w, "POST", f"/v1/models/{T}:predict",
                            json.dumps({"signature_name": "half_plus_two", "instances": [2.0, -4.0]}).encode())
    assert (status, doc) == (200, {"predictions": [3.0, 0.0]})


# ---------------------------------------------------------------------------------------------
# Oracle: model resolution and signatures (server_core.cc, predict_util.cc)


def resolve(w: World, spec) -> str | None:
    """The error code ServerCore::GetServableHandle gives for a ModelSpec, or None when it resolves."""
    if not spec.name:
        return INVALID
    choice = spec.WhichOneof("version_choice")
    if choice == "version_label":
        version = w.labels.get(spec.name, {}).get(spec.version_label)
        if version is None:
            return INVALID
    else:
        version = spec.version.value if choice == "version" else None
    if spec.name not in w.versions:
        return NOT_FOUND
    if version is not None and version not in w.versions[spec.name]:
        return NOT_FOUND
    return None


def tensor_of(proto: tensor_pb2.TensorProto, dtype: int) -> np.ndarray | None:
    """What Tensor::FromProto makes of `proto` (TensorFlow's own parser), None when it fails."""
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims) or len(dims) > 254:
        return None
    n = math.prod(dims)
    if n >= 1 << 63:
        return None
    try:
        return np.asarray(tf.io.parse_tensor(proto.SerializeToString(), tf.dtypes.as_dtype(dtype)).numpy())
    except (tf.errors.OpError, TypeError, ValueError):
        return None


def compatible(shape: tuple[int, ...], declared: tuple[int, ...] | None) -> bool:
    return declared is None or (len(shape) == len(declared) and all(d < 0 or d == s for d, s in zip(declared, shape, strict=True)))


def expect_predict(w: World, req: predict_pb2.PredictRequest) -> str:
    if not req.HasField("model_spec"):
        return INVALID
    code = resolve(w, req.model_spec)
    if code:
        return code
    sig = w.sigs[req.model_spec.name].get(req.model_spec.signature_name or "serving_default")
    if sig is None:
        return PRECONDITION
    if set(req.inputs) != set(sig.inputs):
        return INVALID
    values = {}
    for alias, proto in req.inputs.items():
        dtype, declared = sig.inputs[alias]
        if proto.dtype != dtype:
            return INVALID  # a TensorProto of another dtype fails parsing or the graph's dtype check
        value = tensor_of(proto, dtype)
        if value is None or not compatible(value.shape, declared):
            return INVALID
        values[alias] = value
    seen: set[str] = set()
    for alias in req.output_filter:
        if alias not in sig.outputs or alias in seen:
            return INVALID
        seen.add(alias)
    return INVALID if graph_refuses(req.model_spec.name, req.model_spec.signature_name or "serving_default",
                                    values) else OK


def graph_refuses(model: str, signature: str, values: dict[str, np.ndarray]) -> bool:
    """Whether the model's own graph fails on these inputs (TF's InvalidArgumentError, in TF Serving as
    here): the test models' only such cases are a batch mismatch in tensors/serving_default (total =
    sum(x, 1) + k broadcasts) and serialized examples ParseExample refuses."""
    if model == T and signature == "serving_default":
        n, m = values["x"].shape[0], values["k"].shape[0]
        return n != m and 1 not in (n, m)
    if model == E and signature == "serving_default":
        return len(values["examples"]) > 0 and parse_examples(list(values["examples"])) is None
    return False


_SPEC = {name: tf.io.FixedLenFeature([], tf.float32, default_value=0.0) for name in FEATURE_NAMES}


def parse_examples(serialized: list[bytes]) -> np.ndarray | None:
    """The examples model's features as TensorFlow's ParseExample reads them, None when it refuses."""
    try:
        parsed = tf.io.parse_example(tf.constant(serialized, dtype=tf.string), _SPEC)
    except (tf.errors.OpError, UnicodeDecodeError):  # UnicodeDecodeError: TF's message quotes the bytes
        return None
    return np.stack([parsed[n].numpy() for n in FEATURE_NAMES], axis=1)


def scores_of(features: np.ndarray) -> np.ndarray:
    logits = features.astype(np.float64) @ testing.WEIGHTS.astype(np.float64) + float(testing.BIAS)
    with np.errstate(over="ignore"):  # inf features: the sigmoid saturates, as in the graph
        return 1.0 / (1.0 + np.exp(-logits))


def signature_error(sig: Sig | None, method: str) -> str | None:
    """PreProcessClassification / PreProcessRegression on a SignatureDef."""
    if sig is None:
        return INVALID
    if len(sig.inputs) != 1:
        return INVALID
    if method == CLASSIFY:
        if len(sig.outputs) not in (1, 2) or "inputs" not in sig.inputs:
            return INVALID
        return None if {"classes", "scores"} & set(sig.outputs) else INVALID
    if len(sig.outputs) != 1 or "inputs" not in sig.inputs or "outputs" not in sig.outputs:
        return INVALID
    return None


def expect_examples(w: World, method: str, spec, has_spec: bool, examples: list[bytes]) -> str:
    if not has_spec:
        return INVALID
    code = resolve(w, spec)
    if code:
        return code
    key = spec.signature_name or "serving_default"
    code = signature_error(w.sigs[spec.name].get(key), method)
    if code:
        return code
    if not examples:
        return INVALID
    return OK if parse_examples(examples) is not None else INVALID


def expect_multi(w: World, tasks: list[tuple[str, str, str]], examples: list[bytes]) -> str:
    first = inference_pb2.InferenceTask()
    if tasks:
        first.model_spec.name = tasks[0][0]
    code = resolve(w, first.model_spec)
    if code:
        return code
    model, seen = tasks[0][0], set()
    for name, signature, method in tasks:
        if not name or name != model:
            return INVALID
        key = signature or "serving_default"
        if key in seen:
            return INVALID
        seen.add(key)
        sig = w.sigs[model].get(key)
        if sig is None:
            return INVALID
        if method not in (CLASSIFY, REGRESS):
            return UNIMPLEMENTED
        if signature_error(sig, method):
            return INVALID
    if not examples:
        return INVALID
    return OK if parse_examples(examples) is not None else INVALID


# ---------------------------------------------------------------------------------------------
# Strategies: names, tensors, examples

DTYPES = [types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_INT32, types_pb2.DT_INT64, types_pb2.DT_STRING,
          types_pb2.DT_BOOL, types_pb2.DT_HALF, types_pb2.DT_UINT8, types_pb2.DT_INT8, types_pb2.DT_INT16,
          types_pb2.DT_UINT16, types_pb2.DT_UINT32, types_pb2.DT_UINT64, types_pb2.DT_COMPLEX64,
          types_pb2.DT_COMPLEX128, types_pb2.DT_BFLOAT16]
ODD_DTYPES = [0, types_pb2.DT_QINT8, types_pb2.DT_RESOURCE, types_pb2.DT_VARIANT, 99, 1000]

texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
model_names = st.one_of(st.sampled_from([T, T, T, T, T, T, E, "", "no_such_model"]), texts)


@st.composite
def model_specs(draw, names=model_names, signatures=None):
    spec = predict_pb2.PredictRequest().model_spec
    spec.name = draw(names)
    choice = draw(st.sampled_from(["none", "none", "none", "version", "label"]))
    if choice == "version":
        spec.version.value = draw(st.one_of(st.just(1), st.just(1), st.integers(-(2**63), 2**63 - 1)))
    elif choice == "label":
        spec.version_label = draw(st.one_of(st.just("stable"), texts))
    if signatures is not None:
        signature = draw(signatures)
        if signature:
            spec.signature_name = signature
    return spec


finite = st.floats(allow_nan=True, allow_infinity=True, width=32)


@st.composite
def tensors(draw, dtype: int, declared: tuple[int, ...] | None):
    """A TensorProto near what the signature wants: right or wrong dtype, shape, encoding and count."""
    mutation = draw(st.sampled_from(["ok", "ok", "ok", "dtype", "odd_dtype", "shape", "content_length",
                                     "negative_dim", "few_values", "many_values", "no_values", "huge_shape", "bulk"]))
    if mutation == "bulk" and dtype == types_pb2.DT_STRING:
        # strings past 8 KiB in all take the server's bulk decoder (tf.io.parse_tensor): big ones, some
        # as tensor_content (TensorFlow's string list encoding), some with a wrong count
        sizes = draw(st.lists(st.integers(1, 40_000), min_size=1, max_size=3))
        values = [bytes([65 + i]) * size + draw(st.binary(max_size=4)) for i, size in enumerate(sizes)]
        proto = tensor_pb2.TensorProto(dtype=dtype)
        proto.tensor_shape.dim.add().size = len(values) + draw(st.sampled_from([0, 0, 0, 1, -1]))
        if draw(st.booleans()):
            from fraud.wire import encode_varint

            lengths = b"".join(encode_varint(len(v)) for v in values)
            proto.tensor_content = lengths + b"".join(values) + draw(st.sampled_from([b"", b"", b"x"]))
        else:
            proto.string_val.extend(values)
        return proto
    batch = draw(st.integers(0, 6))
    shape = [batch if d < 0 else d for d in (declared or (-1,))]
    if mutation == "shape":
        shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
    if mutation == "dtype":
        dtype = draw(st.sampled_from([d for d in DTYPES if d != dtype]))
    n = math.prod(shape)
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for d in shape:
        proto.tensor_shape.dim.add().size = d
    if mutation == "odd_dtype":
        proto.dtype = draw(st.sampled_from(ODD_DTYPES))
        return proto
    if mutation == "negative_dim":
        proto.tensor_shape.dim.add().size = draw(st.integers(-(2**63), -1))
        return proto
    if mutation == "huge_shape":  # more elements than an int64 counts: refused before any allocation
        proto.tensor_shape.dim.add().size = 2**62
        proto.tensor_shape.dim.add().size = draw(st.integers(2, 2**62))
        return proto
    count = {"few_values": max(0, n - draw(st.integers(1, 3))), "many_values": n + draw(st.integers(1, 3)),
             "no_values": 0}.get(mutation, n)
    np_dtype = tf.dtypes.as_dtype(dtype).as_numpy_dtype
    if dtype == types_pb2.DT_STRING:
        values = draw(st.lists(st.binary(max_size=16), min_size=count, max_size=count))
        proto.string_val.extend(values)
        return proto
    if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_HALF, types_pb2.DT_BFLOAT16,
                 types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128):
        raw = np.array(draw(st.lists(finite, min_size=count, max_size=count)), dtype=np.float32)
    elif dtype == types_pb2.DT_BOOL:
        raw = np.array(draw(st.lists(st.booleans(), min_size=count, max_size=count)))
    else:
        info = np.iinfo(np_dtype)
        raw = np.array(draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=count, max_size=count)),
                       dtype=np_dtype)
    arr = raw.astype(np_dtype)
    if mutation in ("ok", "dtype") and draw(st.booleans()) and n == count:
        proto.tensor_content = arr.tobytes()
    elif mutation == "content_length":
        proto.tensor_content = arr.tobytes() + b"\x00" * draw(st.integers(1, 7))
    else:
        flat = arr.reshape(-1)
        typed = {types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val", types_pb2.DT_INT64: "int64_val",
                 types_pb2.DT_BOOL: "bool_val", types_pb2.DT_UINT32: "uint32_val", types_pb2.DT_UINT64: "uint64_val"}
        if dtype in typed:
            getattr(proto, typed[dtype]).extend(flat.tolist())
        elif dtype in (types_pb2.DT_HALF, types_pb2.DT_BFLOAT16):
            proto.half_val.extend(flat.view(np.uint16).tolist())
        elif dtype in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128):
            name = "scomplex_val" if dtype == types_pb2.DT_COMPLEX64 else "dcomplex_val"
            getattr(proto, name).extend(np.stack([flat.real, flat.imag], -1).reshape(-1).tolist())
        else:  # int32, int16, int8, uint8, uint16 travel in int_val
            proto.int_val.extend(flat.astype(np.int64).tolist())
    return proto


@st.composite
def predict_requests(draw, w: World):
    request = predict_pb2.PredictRequest()
    if draw(st.integers(0, 19)):
        request.model_spec.CopyFrom(draw(model_specs(signatures=st.sampled_from(
            ["", "half_plus_two", "half_plus_two", "echo", "echo", "serving_default", "classify", "nope"]))))
    model = request.model_spec.name if request.model_spec.name in w.sigs else T
    sig = w.sigs[model].get(request.model_spec.signature_name or "serving_default") or w.sigs[T]["half_plus_two"]
    inputs = dict(sig.inputs)
    shape_change = draw(st.sampled_from(["same", "same", "same", "same", "drop", "extra", "rename"]))
    if shape_change == "drop" and inputs:
        inputs.pop(sorted(inputs)[0])
    for alias, (dtype, declared) in inputs.items():
        request.inputs[alias].CopyFrom(draw(tensors(dtype, declared)))
    if shape_change == "extra":
        request.inputs[draw(texts)].CopyFrom(draw(tensors(types_pb2.DT_FLOAT, (-1,))))
    if shape_change == "rename" and request.inputs:
        alias = sorted(request.inputs)[0]
        request.inputs[alias + "_"].CopyFrom(request.inputs[alias])
        del request.inputs[alias]
    if draw(st.integers(0, 4)) == 0:
        request.output_filter.extend(draw(st.lists(st.sampled_from(list(sig.outputs) + ["nope"]), max_size=3)))
    return request


feature_values = st.one_of(
    finite.map(lambda v: ("float", [v])),
    st.lists(finite, min_size=2, max_size=3).map(lambda v: ("float", v)),
    st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=2).map(lambda v: ("int64", v)),
    st.lists(st.binary(max_size=8), min_size=1, max_size=2).map(lambda v: ("bytes", v)),
    st.just(("none", [])),
)


@st.composite
def examples(draw) -> bytes:
    """A serialized tf.Example for the examples model: mostly right, sometimes a feature of the wrong
    kind or count, sometimes not an Example at all."""
    kind = draw(st.sampled_from(["good", "good", "good", "odd_feature", "extra", "garbage", "empty"]))
    if kind == "garbage":
        return draw(st.one_of(st.just(GARBAGE), st.binary(min_size=1, max_size=24)))
    if kind == "empty":
        return b""
    proto = example_pb2.Example()
    for name in draw(st.lists(st.sampled_from(FEATURE_NAMES), max_size=6, unique=True)):
        proto.features.feature[name].float_list.value.append(draw(finite))
    if kind in ("odd_feature", "extra"):
        name = draw(st.sampled_from(FEATURE_NAMES)) if kind == "odd_feature" else draw(texts)
        what, values = draw(feature_values)
        feature = proto.features.feature[name]
        feature.Clear()
        if what == "float":
            feature.float_list.value.extend(values)
        elif what == "int64":
            feature.int64_list.value.extend(values)
        elif what == "bytes":
            feature.bytes_list.value.extend(values)
    return proto.SerializeToString()


def ld(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (examples are embedded as raw bytes: they may not be Examples)."""
    from fraud.wire import encode_varint

    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


@st.composite
def example_inputs(draw) -> tuple[bytes, list[bytes]]:
    """(Input bytes, the serialized examples the graph gets) with example_list or example_list_with_context."""
    items = draw(st.lists(examples(), max_size=4))
    if draw(st.booleans()):
        return ld(1, b"".join(ld(1, x) for x in items)), items
    context = draw(examples().filter(lambda b: b != b"" and parse_examples([b]) is not None))
    return ld(2, b"".join(ld(1, x) for x in items) + ld(2, context)), [context + x for x in items]


@st.composite
def mutated(draw, data: bytes) -> bytes:
    return mutate(data, draw)


def mutate(data: bytes, draw) -> bytes:
    """Truncate, flip, insert or delete bytes of a request."""
    if not data:
        return draw(st.binary(max_size=16))
    how = draw(st.sampled_from(["truncate", "truncate", "flip", "insert", "delete"]))
    at = draw(st.integers(0, len(data) - 1))
    if how == "truncate":
        return data[:at]
    if how == "flip":
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    if how == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
    return data[:at] + data[at + draw(st.integers(1, 4)):]


# ---------------------------------------------------------------------------------------------
# gRPC


def _check_predict_ok(w: World, req: predict_pb2.PredictRequest, body: bytes) -> None:
    response = predict_pb2.PredictResponse.FromString(body)
    sig_name = req.model_spec.signature_name or "serving_default"
    sig = w.sigs[req.model_spec.name][sig_name]
    assert set(response.outputs) == set(req.output_filter or sig.outputs)
    assert response.model_spec.signature_name == sig_name and response.model_spec.version.value == 1
    if sig_name == "half_plus_two" and "y" in response.outputs:
        x = tensor_of(req.inputs["x"], types_pb2.DT_FLOAT)
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), 0.5 * x + 2.0, rtol=1e-6)
    if sig_name == "echo" and "length" in response.outputs:
        text = tensor_of(req.inputs["text"], types_pb2.DT_STRING)
        assert tf.make_ndarray(response.outputs["length"]).tolist() == [len(t) for t in text.tolist()]


@FUZZ
@given(data=st.data())
def test_grpc_predict_answers_as_tf_serving(tried, data):
    w = tried
    for _ in range(data.draw(st.integers(1, 6), label="batch")):
        request = data.draw(predict_requests(w), label="request")
        payload = request.SerializeToString()
        if data.draw(st.integers(0, 3), label="mutate?") == 0:
            payload = data.draw(mutated(payload), label="mutated")
            try:
                request = predict_pb2.PredictRequest.FromString(payload)
            except Exception:  # noqa: BLE001 - DecodeError: not a PredictRequest
                request = None
            if request is not None and any(
                    math.prod(max(d.size, 0) for d in t.tensor_shape.dim) > 1 << 16 for t in request.inputs.values()):
                continue  # a flipped dimension can ask for gigabytes; TF Serving would try to allocate them too
        expected = INVALID if request is None else expect_predict(w, request)
        code, body = call_grpc(w, "Predict", payload)
        assert code == expected, (code, expected, body, request)
        if code == OK:
            _check_predict_ok(w, request, body)
    healthy(w)


@FUZZ
@given(data=st.data())
def test_grpc_classify_regress_and_multi_inference_answer_as_tf_serving(tried, data):
    w = tried
    signatures = st.sampled_from(["", "classify", "classify", "regress", "regress", "serving_default", "nope"])
    for _ in range(data.draw(st.integers(1, 5), label="batch")):
        api = data.draw(st.sampled_from(["Classify", "Regress", "MultiInference"]), label="api")
        input_bytes, graph_examples = data.draw(example_inputs(), label="input")
        if api == "MultiInference":
            tasks = data.draw(st.lists(st.tuples(st.sampled_from([E, E, E, T, ""]), signatures,
                                                 st.sampled_from([CLASSIFY, REGRESS, CLASSIFY, REGRESS,
                                                                  "tensorflow/serving/predict", ""])),
                                       max_size=3), label="tasks")
            payload = b""
            for name, signature, method in tasks:
                task = inference_pb2.InferenceTask(method_name=method)
                task.model_spec.name = name
                if signature:
                    task.model_spec.signature_name = signature
                payload += ld(1, task.SerializeToString())
            payload += ld(2, input_bytes)
            expected = expect_multi(w, tasks, graph_examples)
        else:
            has_spec = data.draw(st.integers(0, 15), label="has spec") > 0
            spec = data.draw(model_specs(names=st.sampled_from([E, E, E, T, "no_such_model", ""]),
                                         signatures=signatures), label="spec")
            payload = (ld(1, spec.SerializeToString()) if has_spec else b"") + ld(2, input_bytes)
            method = CLASSIFY if api == "Classify" else REGRESS
            expected = expect_examples(w, method, spec, has_spec, graph_examples)
            if data.draw(st.integers(0, 5), label="truncate?") == 0 and payload:
                payload = payload[:data.draw(st.integers(0, len(payload) - 1), label="cut")]
                cls = classification_pb2.ClassificationRequest if api == "Classify" else regression_pb2.RegressionRequest
                try:
                    parsed = cls.FromString(payload)
                except Exception:  # noqa: BLE001 - not a request any more
                    expected = INVALID
                else:
                    inner = parsed.input
                    kind = inner.WhichOneof("kind")
                    items = [] if kind is None else [x.SerializeToString() for x in getattr(inner, kind).examples]
                    if kind == "example_list_with_context":
                        items = [inner.example_list_with_context.context.SerializeToString() + x for x in items]
                    if items != graph_examples[:len(items)]:
                        continue  # re-serialized examples differ from the bytes sent: the graph would see others
                    expected = expect_examples(w, method, parsed.model_spec, parsed.HasField("model_spec"), items)
                    graph_examples = items
        code, body = call_grpc(w, api, payload)
        assert code == expected, (api, code, expected, body)
        if code == OK and api == "Regress":
            values = [r.value for r in regression_pb2.RegressionResponse.FromString(body).result.regressions]
            np.testing.assert_allclose(values, scores_of(parse_examples(graph_examples)), rtol=1e-4, atol=1e-6)
        if code == OK and api == "Classify":
            result = classification_pb2.ClassificationResponse.FromString(body).result
            assert len(result.classifications) == len(graph_examples)
        if code == OK and api == "MultiInference":
            assert len(inference_pb2.MultiInferenceResponse.FromString(body).results) == len(tasks)
    healthy(w)


@FUZZ
@given(data=st.data())
def test_grpc_metadata_status_and_garbage_answer_as_tf_serving(tried, data):
    w = tried
    for _ in range(data.draw(st.integers(1, 6), label="batch")):
        api = data.draw(st.sampled_from(["GetModelMetadata", "GetModelStatus", "Predict", "Classify", "Regress",
                                         "MultiInference"]), label="api")
        if api == "GetModelMetadata":
            request = get_model_metadata_pb2.GetModelMetadataRequest()
            if data.draw(st.integers(0, 9), label="has spec"):
                request.model_spec.CopyFrom(data.draw(model_specs(), label="spec"))
            request.metadata_field.extend(data.draw(st.lists(st.sampled_from(["signature_def", "signature_def", "x", ""]),
                                                             max_size=2), label="fields"))
        elif api == "GetModelStatus":
            request = get_model_status_pb2.GetModelStatusRequest()
            if data.draw(st.integers(0, 9), label="has spec"):
                request.model_spec.CopyFrom(data.draw(model_specs(), label="spec"))
        else:
            request = None
        if request is None or data.draw(st.booleans(), label="garbage?"):
            payload = data.draw(st.one_of(st.binary(max_size=48), st.just(GARBAGE)), label="garbage")
            if request is not None:
                payload = data.draw(mutated(request.SerializeToString()), label="mutated")
        else:
            payload = request.SerializeToString()
        cls = {"GetModelMetadata": get_model_metadata_pb2.GetModelMetadataRequest,
               "GetModelStatus": get_model_status_pb2.GetModelStatusRequest,
               "Predict": predict_pb2.PredictRequest, "Classify": classification_pb2.ClassificationRequest,
               "Regress": regression_pb2.RegressionRequest, "MultiInference": inference_pb2.MultiInferenceRequest}[api]
        try:
            parsed = cls.FromString(payload)
        except Exception:  # noqa: BLE001 - not a request
            parsed = None
        if parsed is None:
            expected = {INVALID}
        elif api == "GetModelMetadata":
            expected = {expect_metadata(w, parsed)}
        elif api == "GetModelStatus":
            expected = {expect_status(w, parsed)}
        elif api == "Predict":
            if any(math.prod(max(d.size, 0) for d in t.tensor_shape.dim) > 1 << 16 for t in parsed.inputs.values()):
                continue
            expected = {expect_predict(w, parsed)}
        else:  # random bytes that parse as an examples request: refused, or a garbage example run through TF
            expected = {INVALID, NOT_FOUND, UNIMPLEMENTED, OK}
        code, body = call_grpc(w, api, payload)
        assert code in expected, (api, code, expected, body, payload)
    healthy(w)


def expect_metadata(w: World, req) -> str:
    if not req.HasField("model_spec"):
        return INVALID
    if not req.metadata_field or any(f != "signature_def" for f in req.metadata_field):
        return INVALID
    return resolve(w, req.model_spec) or OK


def expect_status(w: World, req) -> str:
    if not req.HasField("model_spec"):
        return INVALID
    spec = req.model_spec
    versions = w.versions.get(spec.name, set())  # a label is ignored: every version is reported
    if spec.WhichOneof("version_choice") == "version":
        return OK if spec.version.value in versions else NOT_FOUND
    return OK if versions else NOT_FOUND


# ---------------------------------------------------------------------------------------------
# REST

_PREDICTION = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
                         re.IGNORECASE)


def rest_spec(w: World, model: str, version: str | None, label: str | None) -> str | None:
    if version is not None and int(version) >= 2**63:
        return INVALID  # "Failed to convert version"
    spec = predict_pb2.PredictRequest().model_spec
    spec.name = model
    if version is not None:
        spec.version.value = int(version)
    if label is not None:
        spec.version_label = label
    return resolve(w, spec)


def json_leaf(value, dtype: int) -> bool:
    """json_tensor.cc's FillTensorProto rules for one JSON value of `dtype`."""
    if dtype == types_pb2.DT_STRING:
        if isinstance(value, dict):
            return list(value) == ["b64"] and isinstance(value["b64"], str) and _absl_b64(value["b64"])
        return isinstance(value, str)
    if dtype == types_pb2.DT_FLOAT:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if dtype == types_pb2.DT_INT64:
        return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    raise AssertionError(dtype)


def _absl_b64(text: str) -> bool:
    """absl::Base64Unescape's acceptance, written from its documentation (whitespace ignored, padding
    optional but exact when present)."""
    stripped = re.sub(r"[ \t\n\v\f\r]", "", text)
    m = re.fullmatch(r"([A-Za-z0-9+/]*)([=.]*)", stripped)
    if not m:
        return False
    data, pad = m.groups()
    rest = len(data) % 4
    return rest != 1 and (not pad or len(pad) == {2: 2, 3: 1}.get(rest, -1))


def json_tensor(value, dtype: int) -> tuple[int, ...] | None:
    """The shape of a JSON value as a tensor of `dtype` (dense lists, all leaves valid), None if refused."""
    shape = []
    probe = value
    while isinstance(probe, list):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]

    def ok(v, level: int) -> bool:
        if isinstance(v, list):
            return level < len(shape) and len(v) == shape[level] and all(ok(x, level + 1) for x in v)
        return level == len(shape) and json_leaf(v, dtype)

    return tuple(shape) if ok(value, 0) else None


def expect_rest_predict(w: World, model: str, version, label, doc) -> int:
    if not isinstance(doc, dict):
        return 400
    if "signature_name" in doc and not isinstance(doc["signature_name"], str):
        return 400
    code = rest_spec(w, model, version, label)
    if code:
        return HTTP[code]
    sig = w.sigs[model].get(doc.get("signature_name") or "serving_default")
    if sig is None:
        return 400
    inputs = sig.inputs
    if "instances" in doc:
        if "inputs" in doc or not isinstance(doc["instances"], list) or not doc["instances"]:
            return 400
        rows = doc["instances"]
        is_obj = [isinstance(r, dict) and not (list(r) == ["b64"] and isinstance(r["b64"], str)) for r in rows]
        if not isinstance(rows[0], dict) and len(inputs) > 1:
            return 400
        if is_obj[0]:
            if not all(is_obj) or any(set(r) != set(inputs) for r in rows):
                return 400
            columns = {n: [r[n] for r in rows] for n in inputs}
        else:
            if any(is_obj):
                return 400
            columns = {next(iter(inputs)): rows}
        for name, items in columns.items():
            shapes = [json_tensor(x, inputs[name][0]) for x in items]
            if any(s is None for s in shapes) or len(set(shapes)) != 1:
                return 400
            if not compatible((len(items), *shapes[0]), inputs[name][1]):
                return 400
        return 200
    if "inputs" in doc:
        value = doc["inputs"]
        plain = not isinstance(value, dict) or (list(value) == ["b64"] and isinstance(value["b64"], str))
        if plain:
            if len(inputs) > 1:
                return 400
            value = {next(iter(inputs)): value}
        for name, (dtype, declared) in inputs.items():
            if name not in value:
                return 400
            shape = json_tensor(value[name], dtype)
            if shape is None or not compatible(shape, declared):
                return 400
        return 200
    return 400


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), finite.map(float),
                         st.text(max_size=6), st.just({"b64": "YWJj"}), st.just({"b64": "YW Jj\n"}),
                         st.just({"b64": "YWJ"}), st.just({"b64": "Y"}), st.just({"b64": "YQ="}),
                         st.just({"b64": "not base64!"}))


@st.composite
def predict_docs(draw, w: World):
    """A :predict body near a valid one for one of the tensors model's signatures."""
    signature = draw(st.sampled_from(["half_plus_two", "echo", "serving_default", "", "nope", 7]))
    sig = w.sigs[T].get(signature or "serving_default") if isinstance(signature, str) else None
    sig = sig or w.sigs[T]["half_plus_two"]
    n = draw(st.integers(1, 4))

    def value(dtype: int, declared):
        inner = [3] * (len(declared or (-1,)) - 1)
        leaf = {types_pb2.DT_FLOAT: finite.map(float) | st.integers(-10, 10),
                types_pb2.DT_INT64: st.integers(-(2**63), 2**63 - 1),
                types_pb2.DT_STRING: st.text(max_size=8) | st.binary(max_size=8).map(
                    lambda b: {"b64": base64.b64encode(b).decode()})}[dtype]
        if draw(st.integers(0, 6)) == 0:
            leaf = json_scalars
        strategy = leaf
        for size in reversed(inner):
            strategy = st.lists(strategy, min_size=size, max_size=size)
        if draw(st.integers(0, 9)) == 0:
            strategy = st.lists(st.one_of(strategy, json_scalars), max_size=3)  # ragged or mis-nested
        return draw(strategy)

    doc: dict = {}
    if signature != "":
        doc["signature_name"] = signature
    if draw(st.booleans()):
        if len(sig.inputs) == 1 and draw(st.booleans()):
            (dtype, declared), = sig.inputs.values()
            doc["instances"] = [value(dtype, declared) for _ in range(n)]
        else:
            doc["instances"] = [{k: value(*v) for k, v in sig.inputs.items()} for _ in range(n)]
    else:
        columns = {k: [value(*v) for _ in range(n)] for k, v in sig.inputs.items()}
        doc["inputs"] = next(iter(columns.values())) if len(columns) == 1 and draw(st.booleans()) else columns
    fault = draw(st.sampled_from(["none"] * 5 + ["both", "empty_instances", "no_key", "instances_not_list",
                                                  "drop_input"]))
    if fault == "both":
        doc["inputs"] = doc.get("instances", [1.0])
        doc["instances"] = doc["inputs"]
    elif fault == "empty_instances":
        doc.pop("inputs", None)
        doc["instances"] = []
    elif fault == "no_key":
        doc.pop("inputs", None)
        doc.pop("instances", None)
    elif fault == "instances_not_list":
        doc.pop("inputs", None)
        doc["instances"] = {"x": 1.0}
    elif fault == "drop_input" and isinstance(doc.get("inputs"), dict) and doc["inputs"]:
        doc["inputs"].pop(next(iter(doc["inputs"])))
    return doc


@st.composite
def valid_docs(draw) -> dict:
    """A valid :predict body for half_plus_two or echo, row or columnar."""
    if draw(st.booleans()):
        values = draw(st.lists(finite.map(float), min_size=1, max_size=4))
        signature = "half_plus_two"
    else:
        values = draw(st.lists(st.text(max_size=6), min_size=1, max_size=4))
        signature = "echo"
    return {"signature_name": signature, draw(st.sampled_from(["instances", "inputs"])): values}


def _path(model: str, version: str | None, label: str | None, verb: str, encoded: bool = False) -> str:
    """The REST path; `encoded`: the model name is already percent-encoded as it should appear."""
    from urllib.parse import quote

    path = f"/v1/models/{model if encoded else quote(model, safe='')}"
    if version is not None:
        path += f"/versions/{version}"
    elif label is not None:
        path += f"/labels/{quote(label, safe='')}"
    return path + f":{verb}"


rest_models = st.sampled_from([T, T, T, T, E, "no_such_model"])
rest_versions = st.one_of(st.none(), st.none(), st.just("1"), st.just("2"), st.just("99999999999999999999"))


@FUZZ
@given(data=st.data())
def test_rest_predict_answers_as_tf_serving(tried, data):
    w = tried
    for _ in range(data.draw(st.integers(1, 6), label="batch")):
        model = data.draw(rest_models, label="model")
        version = data.draw(rest_versions, label="version")
        label = data.draw(st.one_of(st.none(), st.just("stable"), texts.filter(bool)), label="label") if version is None else None
        form = data.draw(st.sampled_from(["doc"] * 5 + ["truncated", "trailing", "junk", "lone_surrogate",
                                                          "raw_utf8", "oversize", "whitespace", "base64", "base64"]),
                         label="form")
        # "doc": any document near a valid one; the other forms start from a valid one and change its bytes,
        # mostly on the plain path (the paths' variety is the "doc" form's)
        doc = data.draw(predict_docs(w) if form == "doc" else valid_docs(), label="doc")
        if form != "doc" and data.draw(st.integers(0, 4), label="plain path?"):
            model, version, label = T, None, None
        body = json.dumps(doc, allow_nan=True).encode()
        expected = expect_rest_predict(w, model, version, label, doc)
        if form == "truncated":
            body = body[:data.draw(st.integers(0, len(body) - 1), label="cut")]
            expected = 400  # an object cut anywhere is never complete
        elif form == "trailing":
            body += data.draw(st.binary(max_size=12), label="tail")  # rapidjson stops after the first value
        elif form == "junk":
            body = data.draw(st.binary(max_size=40), label="junk")
            try:
                parsed = json.loads(body.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                parsed = None
            expected = 400 if not isinstance(parsed, dict) else {200, 400, 404}
        elif form == "lone_surrogate":  # rapidjson refuses it: the JSON fails before the model is looked up
            body = json.dumps({"signature_name": "echo", "instances": ["a\ud800b"]}).encode()
            expected = 400
        elif form == "raw_utf8":
            text = data.draw(st.binary(min_size=1, max_size=8), label="bytes")
            raw = text.replace(b"\\", b"").replace(b'"', b"")
            body = b'{"signature_name": "echo", "instances": ["' + raw + b'"]}'
            code = rest_spec(w, model, version, label)
            if any(c < 0x20 for c in raw):
                expected = 400  # rapidjson refuses unescaped control characters
            else:  # bytes that are not UTF-8 pass through to the string tensor, as in rapidjson
                expected = HTTP[code] if code else (200 if model == T else 400)
        elif form == "oversize":
            body = body + b" " * (BODY_LIMIT + 1 - len(body) + data.draw(st.integers(0, 1000), label="more"))
            expected = 413
        elif form == "whitespace":
            body = b" \n\t" + body + b"\r\n"
        elif form == "base64":
            text = data.draw(st.one_of(st.binary(max_size=7).map(lambda b: base64.b64encode(b).decode()),
                                       st.binary(min_size=1, max_size=7).map(lambda b: base64.b64encode(b).decode()
                                                                             .rstrip("=")),
                                       st.text(alphabet="AQWYgabcjz09+/=. \n\t", min_size=1, max_size=9)),
                             label="b64")
            doc = {"signature_name": "echo", "instances": [{"b64": text}]}
            body = json.dumps(doc).encode()
            expected = expect_rest_predict(w, model, version, label, doc)
        status, answer = call_rest(w, "POST", _path(model, version, label, "predict"), body)
        if isinstance(expected, set):
            assert status in expected, (status, expected, answer, body)
        else:
            assert status == expected, (status, expected, answer, body, doc)
        assert status < 500 or status == 501
        if status == 200 and form in ("doc", "trailing", "whitespace"):
            key = "predictions" if "instances" in doc else "outputs"
            assert key in answer, answer
    healthy(w)


def json_example(value) -> example_pb2.Example | None:
    """MakeExampleFromJsonObject (json_tensor.cc), written independently of the server."""
    if not isinstance(value, dict):
        return None
    proto = example_pb2.Example()
    for name, content in value.items():
        items = content if isinstance(content, list) else [content]
        kind = None
        feature = feature_pb2.Feature()
        for v in items:
            if v is None or isinstance(v, list):
                return None
            if isinstance(v, dict):
                if not (list(v) == ["b64"] and isinstance(v["b64"], str) and _absl_b64(v["b64"])):
                    return None
                this, val = "bytes", base64.b64decode(re.sub(r"[\s.=]", "", v["b64"]) + "==")
            elif isinstance(v, bool):
                this, val = "int64", int(v)
            elif isinstance(v, str):
                this, val = "bytes", v.encode("utf-8")
            elif isinstance(v, float):
                this, val = "float", v
            elif v >= 2**63:
                return None
            else:
                this, val = "int64", v
            if kind not in (None, this):
                return None
            kind = this
            getattr(feature, {"bytes": "bytes_list", "int64": "int64_list", "float": "float_list"}[this]).value.append(val)
        proto.features.feature[name].CopyFrom(feature)
    return proto


@st.composite
def example_docs(draw):
    def feature_value():
        return draw(st.one_of(finite.map(float), finite.map(float), st.integers(-5, 5), st.booleans(),
                              st.text(max_size=4), st.lists(finite.map(float), max_size=2), st.none(),
                              st.just({"b64": "YWJj"}), st.just({"b64": "YQ="}), st.lists(st.integers(), max_size=2)))

    def example():
        names = draw(st.lists(st.sampled_from([*FEATURE_NAMES, "extra"]), max_size=5, unique=True))
        value = {n: feature_value() for n in names}
        return value if draw(st.integers(0, 15)) else draw(json_scalars)

    doc = {}
    if draw(st.integers(0, 3)) == 0:
        doc["context"] = example()
    fault = draw(st.sampled_from(["none"] * 6 + ["no_examples", "empty", "not_list", "signature"]))
    if fault != "no_examples":
        doc["examples"] = [] if fault == "empty" else ({} if fault == "not_list" else
                                                        [example() for _ in range(draw(st.integers(1, 3)))])
    sig = draw(st.sampled_from(["", "classify", "regress", "serving_default", "nope"]))
    if fault == "signature":
        doc["signature_name"] = 5
    elif sig:
        doc["signature_name"] = sig
    return doc


def expect_rest_examples(w: World, verb: str, model: str, version, label, doc) -> tuple[int, list[bytes]]:
    if "signature_name" in doc and not isinstance(doc["signature_name"], str):
        return 400, []
    context = b""
    if "context" in doc:
        proto = json_example(doc["context"])
        if proto is None:
            return 400, []
        context = proto.SerializeToString()
    items = doc.get("examples")
    if not isinstance(items, list) or not items:
        return 400, []
    made = [json_example(x) for x in items]
    if any(m is None for m in made):
        return 400, []
    serialized = [context + m.SerializeToString() for m in made]
    spec = predict_pb2.PredictRequest().model_spec
    code = rest_spec(w, model, version, label)
    if code:
        return HTTP[code], []
    spec.name = model
    spec.signature_name = doc.get("signature_name", "")
    code = expect_examples(w, CLASSIFY if verb == "classify" else REGRESS, spec, True, serialized)
    return HTTP[code], serialized


@FUZZ
@given(data=st.data())
def test_rest_classify_regress_status_and_metadata_answer_as_tf_serving(tried, data):
    w = tried
    for _ in range(data.draw(st.integers(1, 6), label="batch")):
        verb = data.draw(st.sampled_from(["classify", "regress", "status", "metadata", "other"]), label="verb")
        model = data.draw(st.sampled_from([E, E, E, T, "no_such_model", "n%C3%A9", "%ff"]), label="model")
        version = data.draw(rest_versions, label="version")
        label = data.draw(st.one_of(st.none(), st.just("stable")), label="label") if version is None else None
        from urllib.parse import unquote_to_bytes

        name = unquote_to_bytes(model).decode("utf-8", "replace")
        if verb in ("classify", "regress"):
            doc = data.draw(example_docs(), label="doc")
            expected, serialized = expect_rest_examples(w, verb, name, version, label, doc)
            status, answer = call_rest(w, "POST", _path(model, version, label, verb, encoded=True),
                                       json.dumps(doc).encode())
            assert status == expected, (status, expected, answer, doc)
            if status == 200 and verb == "regress":
                np.testing.assert_allclose(answer["results"], scores_of(parse_examples(serialized)), rtol=1e-4, atol=1e-6)
            continue
        if verb == "other":
            method, path = data.draw(st.sampled_from([
                ("PUT", f"/v1/models/{T}:predict"), ("DELETE", f"/v1/models/{T}"), ("POST", f"/v1/models/{T}:explain"),
                ("POST", f"/v1/models/{T}/versions/x:predict"), ("GET", "/v1/models"), ("GET", "/v2/models/x"),
                ("POST", f"/v1/models/{T}"), ("GET", f"/v1/models/{T}/versions/1/metadata/extra")]), label="odd")
            status, answer = call_rest(w, method, path, b"{}")
            expected = 404 if not path.startswith("/v1/") else 400
            assert status == expected, (method, path, status, answer)
            continue
        path = _path(model, version, label, "x", encoded=True).rsplit(":", 1)[0] + ("/metadata" if verb == "metadata" else "")
        status, answer = call_rest(w, "GET", path)
        if verb == "status":
            known = name in w.versions
            expected = 200 if known and (version is None or version == "1") else 404
            if version is not None and int(version) >= 2**63:
                expected = 400
        else:
            expected = HTTP[rest_spec(w, name, version, label) or OK]
        assert status == expected, (verb, path, status, expected, answer)
    healthy(w)
