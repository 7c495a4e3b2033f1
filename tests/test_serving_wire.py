"""fraud.wire and serving.wire against the generated protobuf classes: every hand-written codec must read what the
official protos write, and write what they read, with TensorFlow's tensor semantics."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
from tensorflow.core.example import example_pb2  # noqa: E402
from tensorflow.core.framework import tensor_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
)

from fraud import dtypes  # noqa: E402
from fraud import wire as codec  # noqa: E402
from serving import wire  # noqa: E402
from serving.errors import Code, ServingError  # noqa: E402

ARRAYS = [
    np.array([[1.5, -2.25, 3.0], [0.0, 1e-8, -1e30]], dtype=np.float32),
    np.array([1.0, -2.0, np.pi], dtype=np.float64),
    np.array([0, -1, 2**31 - 1, -(2**31)], dtype=np.int32),
    np.array([[0, -1], [2**62, -(2**63)]], dtype=np.int64),
    np.array([0, 1, 255], dtype=np.uint8),
    np.array([-128, 0, 127], dtype=np.int8),
    np.array([-300, 300], dtype=np.int16),
    np.array([0, 65535], dtype=np.uint16),
    np.array([0, 2**32 - 1], dtype=np.uint32),
    np.array([0, 2**64 - 1], dtype=np.uint64),
    np.array([True, False, True], dtype=np.bool_),
    np.array([1.5, -0.25], dtype=np.float16),
    np.array([1 + 2j, -3.5j], dtype=np.complex64),
    np.array([1 + 2j], dtype=np.complex128),
    np.array([b"", b"abc", "ünï".encode(), bytes(range(256))], dtype=object),
    np.array(7.5, dtype=np.float32),  # a scalar
    np.zeros((0, 3), dtype=np.float32),  # an empty batch
]


def _decode(proto: tensor_pb2.TensorProto) -> np.ndarray:
    data = proto.SerializeToString()
    return codec.decode_tensor(data, 0, len(data))


@pytest.mark.parametrize("arr", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_decode_reads_make_tensor_proto(arr):
    got = _decode(tf.make_tensor_proto(arr))
    assert got.shape == arr.shape and got.dtype == arr.dtype
    assert got.tolist() == arr.tolist()


@pytest.mark.parametrize("as_content", [False, True], ids=["typed-field", "tensor-content"])
@pytest.mark.parametrize("arr", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_encode_is_read_by_make_ndarray(arr, as_content):
    proto = tensor_pb2.TensorProto.FromString(codec.encode_tensor(arr, as_content=as_content))
    assert proto.dtype == dtypes.from_numpy(arr.dtype)
    got = tf.make_ndarray(proto)
    assert got.shape == arr.shape
    assert got.tolist() == arr.tolist()
    if not as_content and arr.size and arr.dtype == np.float32:
        assert proto.float_val and not proto.tensor_content  # TF Serving's default response encoding


def test_typed_fields_packed_and_unpacked_and_fill_rules():
    proto = tensor_pb2.TensorProto(dtype=tf.float32.as_datatype_enum)
    proto.tensor_shape.dim.add().size = 4
    proto.float_val.extend([1.0, 2.0])  # fewer values than elements: the last one repeats
    assert _decode(proto).tolist() == [1.0, 2.0, 2.0, 2.0]
    proto.ClearField("float_val")
    assert _decode(proto).tolist() == [0.0] * 4  # no values: zeros
    proto.float_val.extend([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert _decode(proto).tolist() == [1.0, 2.0, 3.0, 4.0]  # values beyond the shape: ignored, as TF does
    proto.ClearField("float_val")
    unpacked = b"".join(b"\x2d" + np.float32(v).tobytes() for v in (5.0, 6.0, 7.0, 8.0))  # field 5, fixed32
    data = proto.SerializeToString() + unpacked
    assert codec.decode_tensor(data, 0, len(data)).tolist() == [5.0, 6.0, 7.0, 8.0]
    ints = tensor_pb2.TensorProto(dtype=tf.int64.as_datatype_enum)
    ints.tensor_shape.dim.add().size = 3
    data = ints.SerializeToString() + b"".join(b"\x50" + codec.encode_varint(v) for v in (1, -1, 300))  # unpacked
    assert codec.decode_tensor(data, 0, len(data)).tolist() == [1, -1, 300]


@pytest.mark.parametrize("mutate", [
    lambda p: setattr(p, "tensor_content", b"\x00" * 5),  # content of the wrong size
    lambda p: setattr(p, "dtype", 20),  # DT_RESOURCE
    lambda p: p.tensor_shape.dim.add().__setattr__("size", -1),  # unknown dimension
    lambda p: [p.tensor_shape.dim.add() for _ in range(254)],  # 255 dimensions
    lambda p: p.tensor_shape.dim.add().__setattr__("size", 2**62),  # 2^63 elements
    lambda p: (setattr(p, "dtype", 7), setattr(p, "tensor_content", b"\x01\x02ab")),  # string lengths != bytes
])
def test_invalid_tensors_are_refused(mutate):
    proto = tensor_pb2.TensorProto(dtype=tf.float32.as_datatype_enum)
    proto.tensor_shape.dim.add().size = 2
    mutate(proto)
    with pytest.raises(codec.WireError):
        _decode(proto)


@pytest.mark.parametrize("name, mutate, dtype", [
    ("unknown_rank is ignored", lambda p: setattr(p.tensor_shape, "unknown_rank", True), tf.float32),
    ("an empty tensor ignores its content", lambda p: (p.tensor_shape.dim[0].__setattr__("size", 0),
                                                       setattr(p, "tensor_content", b"\x00" * 5)), tf.float32),
    ("string tensor_content", lambda p: (setattr(p, "dtype", 7), p.ClearField("float_val"),
                                          setattr(p, "tensor_content", b"\x01\x02a\xffb")), tf.string),
    ("an unpaired complex value", lambda p: (setattr(p, "dtype", 8), p.ClearField("float_val"),
                                             p.scomplex_val.extend([1, 2, 3])), tf.complex64),
    ("more values than the shape", lambda p: p.float_val.extend([7, 8, 9]), tf.float32),
])
def test_tensors_decode_as_tensorflow_parses_them(name, mutate, dtype):
    """Tensor::FromProto is the reference (tf.io.parse_tensor runs it): same values, or both refuse."""
    proto = tensor_pb2.TensorProto(dtype=tf.float32.as_datatype_enum)
    proto.tensor_shape.dim.add().size = 2
    proto.float_val.extend([1.5, 2.5])
    mutate(proto)
    expected = tf.io.parse_tensor(proto.SerializeToString(), dtype).numpy()
    got = _decode(proto)
    assert got.shape == expected.shape and got.tolist() == expected.tolist(), name


def test_groups_and_repeated_messages_parse_as_protobuf_does():
    """Unknown groups are skipped; a singular message field sent twice merges (model spec, tensor shape,
    an input's TensorProto), as the generated classes (and TF Serving's C++) parse them."""
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.model_spec.version.value = 3
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0, 2.0]], np.float32)))
    data = request.SerializeToString()
    group = b"\xa3\x01" + b"\x08\x05" + b"\xa4\x01"  # field 20 as a group, with a varint inside
    extra_spec = b"\x0a\x05\x1a\x03sig"  # model_spec again: only signature_name
    more = tensor_pb2.TensorProto()
    more.tensor_shape.dim.add().size = 1

    def field(number: int, payload: bytes) -> bytes:
        return codec.encode_varint(number << 3 | 2) + codec.encode_varint(len(payload)) + payload

    tensor = tf.make_tensor_proto(np.array([[1.0, 2.0]], np.float32)).SerializeToString()
    # one inputs entry whose value comes twice: the second adds a dimension (a later entry with the
    # same key would replace the first instead)
    extra_shape = field(2, field(1, b"x") + field(2, tensor) + field(2, more.SerializeToString()))
    crafted = group + data + extra_spec + extra_shape
    reference = predict_pb2.PredictRequest.FromString(crafted)
    call = wire.decode_predict_request(crafted)
    assert (call.model_spec.name, call.model_spec.version, call.model_spec.signature_name) == (
        reference.model_spec.name, reference.model_spec.version.value, reference.model_spec.signature_name)
    assert call.inputs["x"].shape == tuple(d.size for d in reference.inputs["x"].tensor_shape.dim) == (1, 2, 1)
    for bad in (b"\xa4\x01", b"\xa3\x01\xac\x01", b"\x00\x00", b"\x80\x80\x80\x80\x10\x00"):
        with pytest.raises(ServingError, match="Failed to parse request"):
            wire.decode_predict_request(bad + data)
        with pytest.raises(Exception):  # noqa: B017 - the reference refuses them too
            predict_pb2.PredictRequest.FromString(bad + data)


def test_packed_varints_roundtrip_vectorized():
    values = np.array([0, 1, 127, 128, 300, 2**32, 2**63 - 1, 2**64 - 1], dtype=np.uint64)
    encoded = codec.encode_packed_varints(values)
    assert encoded == b"".join(codec.encode_varint(int(v)) for v in values)
    assert codec.decode_packed_varints(encoded).tolist() == values.tolist()
    with pytest.raises(codec.WireError):
        codec.decode_packed_varints(b"\x80\x80")  # truncated


def test_predict_request_with_model_spec_choices_and_output_filter():
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.model_spec.signature_name = "sig"
    request.model_spec.version.value = 0  # version 0 is a real choice, distinct from "latest"
    request.inputs["a"].CopyFrom(tf.make_tensor_proto(np.ones((2, 2), np.float32)))
    request.inputs["b"].CopyFrom(tf.make_tensor_proto([b"x", b"y"]))
    request.output_filter.extend(["o1", "o2"])
    call = wire.decode_predict_request(request.SerializeToString())
    assert (call.model_spec.name, call.model_spec.version, call.model_spec.signature_name) == ("m", 0, "sig")
    assert call.model_spec.version_label is None
    assert call.inputs["a"].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert call.inputs["b"].tolist() == [b"x", b"y"]
    assert list(call.output_filter) == ["o1", "o2"]
    request.model_spec.version_label = "canary"  # oneof: replaces the version
    call = wire.decode_predict_request(request.SerializeToString())
    assert call.model_spec.version is None and call.model_spec.version_label == "canary"


def test_predict_request_errors_are_invalid_argument():
    with pytest.raises(ServingError) as info:
        wire.decode_predict_request(predict_pb2.PredictRequest().SerializeToString())
    assert info.value.code == Code.INVALID_ARGUMENT and info.value.message == "Missing ModelSpec"
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["bad"].CopyFrom(tf.make_tensor_proto(np.ones(2, np.float32)))
    request.inputs["bad"].tensor_content = b"123"
    with pytest.raises(ServingError) as info:
        wire.decode_predict_request(request.SerializeToString())
    assert info.value.code == Code.INVALID_ARGUMENT and info.value.message == "tensor parsing error: bad"
    with pytest.raises(ServingError) as info:
        wire.decode_predict_request(b"\x0a\xff")
    assert info.value.code == Code.INVALID_ARGUMENT


def test_predict_response_is_read_by_official_proto():
    outputs = {"score": np.array([0.25, 0.5], np.float32), "decision": np.array([0, 1], np.int64),
               "label": np.array([b"a", b"b"], dtype=object)}
    for as_content in (False, True):
        data = wire.encode_predict_response(outputs, codec.encode_model_spec("m", 3, "serving_default"),
                                            as_content=as_content)
        response = predict_pb2.PredictResponse.FromString(data)
        assert response.model_spec.name == "m" and response.model_spec.version.value == 3
        assert response.model_spec.signature_name == "serving_default"
        assert {k: tf.make_ndarray(v).tolist() for k, v in response.outputs.items()} == {
            k: v.tolist() for k, v in outputs.items()}
    spec = model_pb2.ModelSpec.FromString(codec.encode_model_spec("m", 0, None))
    assert spec.HasField("version") and spec.version.value == 0


def test_examples_requests_with_and_without_context():
    rows = []
    for i in range(3):
        ex = example_pb2.Example()
        ex.features.feature["x"].float_list.value.append(i)
        rows.append(ex)
    context = example_pb2.Example()
    context.features.feature["c"].int64_list.value.append(7)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "m"
    request.input.example_list.examples.extend(rows)
    call = wire.decode_examples_request(request.SerializeToString())
    assert [example_pb2.Example.FromString(e) for e in call.examples] == rows
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "m"
    request.input.example_list_with_context.examples.extend(rows)
    request.input.example_list_with_context.context.CopyFrom(context)
    call = wire.decode_examples_request(request.SerializeToString())
    merged = [example_pb2.Example.FromString(e) for e in call.examples]
    assert all(m.features.feature["c"].int64_list.value == [7] for m in merged)
    assert [m.features.feature["x"].float_list.value[0] for m in merged] == [0, 1, 2]


def test_classification_and_regression_responses_are_read_by_official_protos():
    labels = np.array([[b"legit", b"fraud"], [b"legit", b"fraud"]], dtype=object)
    scores = np.array([[0.75, 0.25], [0.0, 1.0]], np.float32)
    spec = codec.encode_model_spec("m", 1, "classify")
    response = classification_pb2.ClassificationResponse.FromString(
        wire.encode_classification_response(labels, scores, spec))
    got = [[(c.label, c.score) for c in row.classes] for row in response.result.classifications]
    assert got == [[("legit", 0.75), ("fraud", 0.25)], [("legit", 0.0), ("fraud", 1.0)]]
    scores_only = classification_pb2.ClassificationResponse.FromString(
        wire.encode_classification_response(None, scores, spec))
    assert [c.label for c in scores_only.result.classifications[0].classes] == ["", ""]
    response = regression_pb2.RegressionResponse.FromString(
        wire.encode_regression_response(np.array([0.5, -1.25, 0.0], np.float32), spec))
    assert [r.value for r in response.result.regressions] == [0.5, -1.25, 0.0]
    assert response.model_spec.signature_name == "classify"


def test_encode_example_matches_official_example():
    data = codec.encode_example({"f": ("float", [1.5, 2.0]), "i": ("int64", [-1, 300]), "b": ("bytes", [b"x"]),
                                "e": ("", [])})
    ex = example_pb2.Example.FromString(data)
    assert list(ex.features.feature["f"].float_list.value) == [1.5, 2.0]
    assert list(ex.features.feature["i"].int64_list.value) == [-1, 300]
    assert list(ex.features.feature["b"].bytes_list.value) == [b"x"]
    assert ex.features.feature["e"].WhichOneof("kind") is None


def _request(spec=None, output_filter=(), **inputs) -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    for k, v in (spec or {}).items():
        if k == "version":
            request.model_spec.version.value = v
        else:
            setattr(request.model_spec, k, v)
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value))
    request.output_filter.extend(output_filter)
    return request.SerializeToString()


def _typed(values, dtype, shape) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for d in shape:
        proto.tensor_shape.dim.add(size=d)
    field = {dtypes.DT_FLOAT: "float_val", dtypes.DT_INT64: "int64_val", dtypes.DT_INT32: "int_val",
             dtypes.DT_DOUBLE: "double_val"}[dtype]
    getattr(proto, field).extend(values)
    return proto


@pytest.mark.parametrize("data", [
    _request(examples=np.array([b"a", b"", bytes(range(256))], dtype=object)),
    _request(features=np.arange(12, dtype=np.float32).reshape(4, 3)),  # tensor_content
    _request(x=_typed([1.5, -2.0, 3.25, 0.0], dtypes.DT_FLOAT, [2, 2]), k=_typed([1, -2], dtypes.DT_INT64, [2])),
    _request(x=_typed([1, 2], dtypes.DT_INT32, [2]), y=_typed([0.5], dtypes.DT_DOUBLE, [1])),
    _request({"version": 3, "signature_name": "s"}, ("b", "a"), x=np.zeros((0, 3), dtype=np.float32)),
    _request({"version_label": "stable"}, x=np.array(7.5, dtype=np.float32)),
    _request(x=_typed([2.0], dtypes.DT_FLOAT, [3])),  # one value broadcast: the hand lane
    _request(x=np.array([1, 2], dtype=np.uint16)),  # a dtype the fast lane leaves to the codec
    _request(),
], ids=["strings", "content", "typed", "int32-double", "spec-filter-empty", "label-scalar", "broadcast", "uint16",
        "no-inputs"])
def test_generated_lane_and_codec_lane_decode_alike(data):
    fast = wire._decode_predict_request_fast(data)
    codec_call = wire.decode_predict_request_by_codec(data)
    call = wire.decode_predict_request(data)
    assert call.model_spec == codec_call.model_spec and call.output_filter == codec_call.output_filter
    assert set(call.inputs) == set(codec_call.inputs)
    for key, value in codec_call.inputs.items():
        assert call.inputs[key].dtype == value.dtype and call.inputs[key].shape == value.shape
        assert call.inputs[key].tolist() == value.tolist()
    if fast is not None:
        assert fast.inputs.keys() == codec_call.inputs.keys()


def test_common_forms_take_the_generated_lane_and_malformed_ones_the_codec():
    examples = _request(examples=np.array([b"x"] * 256, dtype=object))
    assert wire._decode_predict_request_fast(examples) is not None
    assert wire._decode_predict_request_fast(_request(f=np.ones((256, 30), dtype=np.float32))) is not None
    assert wire._decode_predict_request_fast(_request(x=_typed([2.0], dtypes.DT_FLOAT, [3]))) is None
    request = predict_pb2.PredictRequest.FromString(examples)
    request.inputs["examples"].tensor_content = b"\x00"  # tensor_content on a string tensor: not a tensor
    with pytest.raises(ServingError) as info:
        wire.decode_predict_request(request.SerializeToString())
    assert info.value.code == Code.INVALID_ARGUMENT and info.value.message == "tensor parsing error: examples"
    short = _request(f=np.ones((2, 3), dtype=np.float32))
    bad = predict_pb2.PredictRequest.FromString(short)
    bad.inputs["f"].tensor_content = bad.inputs["f"].tensor_content[:-4]  # one float short
    with pytest.raises(ServingError) as info:
        wire.decode_predict_request(bad.SerializeToString())
    assert info.value.message == "tensor parsing error: f"
    name = b"\x0a\x04\x0a\x02\xff\xfe"  # model_spec.name not UTF-8: upb refuses it, the codec names it
    with pytest.raises(ServingError) as info:
        wire.decode_predict_request(name)
    assert info.value.code == Code.INVALID_ARGUMENT and "model_spec.name" in info.value.message
