"""The server side of the request hot path: Predict, Classify and Regress request decoders (with TF
Serving's error statuses) and response encoders, on the shared codec fraud.wire.

Decoding a 256-example request here takes 73 us against 24 us for FromString + make_ndarray on the
pinned protobuf 4.25 (upb), because the string tensor goes to tf.io.parse_tensor, which releases the
GIL but costs an eager op dispatch; that is ~50 us of a ~2 ms call. `Input` follows TF Serving (context
bytes prepended to each example). Everything else (metadata, status, config) uses the generated
classes. The unit tests check every codec here against those classes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fraud import dtypes
from fraud.wire import (
    WireError,
    decode_model_spec,
    decode_tensor,
    encode_tensor,
    encode_varint,
    iter_fields,
    len_field,
    read_varint,
    text,
)
from serving.errors import Code, ServingError
from serving.requests import ExamplesCall, ModelSpec, PredictCall

# ---------------------------------------------------------------------------------------------
# Requests


def _bad_request(exc: WireError) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, f"Failed to parse request: {exc}")


#: String TensorProtos at least this large go to the `bulk` decoder of decode_predict_request when given.
BULK_STRING_BYTES = 8192


def _peek_dtype(buf: bytes, pos: int, end: int) -> int:
    """The dtype field of a TensorProto, reading no further than needed (serializers write it first)."""
    while pos < end:
        key, pos = read_varint(buf, pos)
        wire_type = key & 7
        if key == 0x08:
            return read_varint(buf, pos)[0]
        if wire_type == 0:
            pos = read_varint(buf, pos)[1]
        elif wire_type == 2:
            length, pos = read_varint(buf, pos)
            pos += length
        elif wire_type == 5:
            pos += 4
        elif wire_type == 1:
            pos += 8
        else:
            raise WireError(f"unsupported wire type {wire_type}")
    return dtypes.DT_INVALID


def decode_predict_request(data: bytes, bulk: Callable[[bytes], Any] | None = None) -> PredictCall:
    """PredictRequest bytes -> PredictCall. Tensor errors name the input (TF: 'tensor parsing error: x').

    `bulk`, when given, decodes large string tensors from their TensorProto bytes in one call (the
    server passes tf.io.parse_tensor: C++, no Python loop over the strings, no GIL held); its result
    is used as the input value instead of a numpy array.
    """
    spec: ModelSpec | None = None
    raw_inputs: dict[str, tuple[int, int]] = {}
    output_filter: list[str] = []
    try:
        for field, wire_type, a, b in iter_fields(data, 0, len(data)):
            if wire_type != 2:
                continue
            if field == 1:
                spec = ModelSpec(*decode_model_spec(data, a, b))
            elif field == 2:  # map<string, TensorProto> entry
                key, value = "", (b, b)
                for f2, wt2, a2, b2 in iter_fields(data, a, b):
                    if wt2 != 2:
                        continue
                    if f2 == 1:
                        key = text(data, a2, b2, "inputs key")
                    elif f2 == 2:
                        value = (a2, b2)
                raw_inputs[key] = value
            elif field == 3:
                output_filter.append(text(data, a, b, "output_filter"))
    except WireError as exc:
        raise _bad_request(exc) from None
    if spec is None:
        raise ServingError(Code.INVALID_ARGUMENT, "Missing ModelSpec")
    inputs: dict[str, np.ndarray] = {}
    for key, (a, b) in raw_inputs.items():
        try:
            if bulk is not None and b - a >= BULK_STRING_BYTES and _peek_dtype(data, a, b) == dtypes.DT_STRING:
                inputs[key] = bulk(data[a:b])
            else:
                inputs[key] = decode_tensor(data, a, b)
        except Exception:  # WireError, or the bulk decoder's own error: the same answer as TF Serving's
            raise ServingError(Code.INVALID_ARGUMENT, f"tensor parsing error: {key}") from None
    return PredictCall(model_spec=spec, inputs=inputs, output_filter=tuple(output_filter))


def _decode_input(buf: bytes, pos: int, end: int) -> list[bytes]:
    examples: list[bytes] = []
    for field, wire_type, a, b in iter_fields(buf, pos, end):
        if wire_type != 2:
            continue
        if field == 1:  # ExampleList
            examples = [buf[a2:b2] for f2, wt2, a2, b2 in iter_fields(buf, a, b) if f2 == 1 and wt2 == 2]
        elif field == 2:  # ExampleListWithContext: context bytes first, so example fields win on merge
            items: list[bytes] = []
            context = b""
            for f2, wt2, a2, b2 in iter_fields(buf, a, b):
                if wt2 != 2:
                    continue
                if f2 == 1:
                    items.append(buf[a2:b2])
                elif f2 == 2:
                    context = buf[a2:b2]
            examples = [context + item for item in items] if context else items
    return examples


def decode_examples_request(data: bytes) -> ExamplesCall:
    """ClassificationRequest / RegressionRequest bytes (same layout) -> ExamplesCall."""
    spec: ModelSpec | None = None
    examples: list[bytes] = []
    try:
        for field, wire_type, a, b in iter_fields(data, 0, len(data)):
            if wire_type != 2:
                continue
            if field == 1:
                spec = ModelSpec(*decode_model_spec(data, a, b))
            elif field == 2:
                examples = _decode_input(data, a, b)
    except WireError as exc:
        raise _bad_request(exc) from None
    if spec is None:
        raise ServingError(Code.INVALID_ARGUMENT, "Missing ModelSpec")
    return ExamplesCall(model_spec=spec, examples=tuple(examples))


# ---------------------------------------------------------------------------------------------
# Responses


def encode_predict_response(outputs: Mapping[str, np.ndarray], model_spec: bytes,
                            output_dtypes: Mapping[str, int] | None = None, as_content: bool = False) -> bytes:
    parts = []
    for key, arr in outputs.items():
        dtype = output_dtypes.get(key) if output_dtypes else None
        entry = len_field(1, key.encode("utf-8")) + len_field(2, encode_tensor(arr, dtype, as_content))
        parts.append(len_field(1, entry))
    parts.append(len_field(2, model_spec))
    return b"".join(parts)


def encode_classification_response(labels: np.ndarray | None, scores: np.ndarray | None, model_spec: bytes) -> bytes:
    """ClassificationResponse from a [batch, classes] labels (bytes) and/or scores (float32) array."""
    source = labels if labels is not None else scores
    assert source is not None
    rows, columns = source.shape
    label_rows = labels.tolist() if labels is not None else None
    score_bytes = np.ascontiguousarray(scores, dtype="<f4").tobytes() if scores is not None else None
    result = bytearray()
    for i in range(rows):
        classifications = bytearray()
        for c in range(columns):
            cls = b""
            if label_rows is not None:
                label = label_rows[i][c]
                if isinstance(label, str):
                    label = label.encode("utf-8")
                if label:
                    cls += b"\x0a" + encode_varint(len(label)) + label
            if score_bytes is not None:
                k = (i * columns + c) * 4
                cls += b"\x15" + score_bytes[k:k + 4]
            classifications += b"\x0a" + encode_varint(len(cls)) + cls
        result += b"\x0a" + encode_varint(len(classifications)) + classifications
    return len_field(1, bytes(result)) + len_field(2, model_spec)


def encode_regression_response(values: np.ndarray, model_spec: bytes) -> bytes:
    """RegressionResponse: one `Regression{value}` per example, built in one numpy pass."""
    flat = np.ascontiguousarray(values, dtype="<f4").ravel()
    rows = np.empty((flat.size, 7), dtype=np.uint8)
    rows[:, 0] = 0x0A  # regressions, length-delimited
    rows[:, 1] = 5
    rows[:, 2] = 0x0D  # value, fixed32
    rows[:, 3:] = flat.view(np.uint8).reshape(-1, 4)
    return len_field(1, rows.tobytes()) + len_field(2, model_spec)


