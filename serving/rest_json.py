"""TF Serving's REST JSON mapping (tensorflow_serving/util/json_tensor.cc), straight to and from numpy.

Requests: `instances` (row format: one item per example, or one object of named inputs per example)
or `inputs` (columnar: one value, or an object of named inputs); `{"b64": ...}` for binary strings;
`NaN`/`Infinity` accepted. Classify/Regress requests: `examples` (+ optional `context`) as tf.Example
features. Responses: `predictions` (row) / `outputs` (columnar), `results` for classify/regress; outputs
whose name ends in `_bytes` are base64 objects; floats printed in their shortest round-tripping form
with `.0` on whole numbers. Error messages are TF Serving's.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from fraud import dtypes
from fraud import wire as codec
from serving.errors import Code, ServingError
from serving.servable import TensorInfo


class Format(enum.Enum):
    ROW = "row"
    COLUMNAR = "columnar"


def _invalid(message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, message)


def _debug(value: Any) -> str:
    """Compact JSON of a value, cut at 256 bytes like JsonValueToDebugString."""
    try:
        text = orjson.dumps(value).decode("utf-8")
    except TypeError:
        text = json.dumps(value, separators=(",", ":"))
    return text[:256]


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


_JSON_WS = re.compile(r"[ \t\n\r]*")
# A \\u escape of a UTF-16 surrogate that is not a high one followed by a low one (rapidjson refuses
# these: "The surrogate pair in string is invalid"). Escaped backslashes are consumed first.
_ESCAPES = re.compile(r"\\\\|\\u([dD][89abAB][0-9a-fA-F]{2})(?:\\u([dD][c-fC-F][0-9a-fA-F]{2}))?|\\u([dD][c-fC-F][0-9a-fA-F]{2})")
_UINT64_MAX = 2**64 - 1


class _NumberTooBig(ValueError):
    pass


def _parse_int(text: str) -> int | float:
    # rapidjson keeps integers that fit in int64/uint64 and reads larger ones as doubles
    value = int(text)
    if -(2**63) <= value <= _UINT64_MAX:
        return value
    return _parse_float(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NumberTooBig(text)
    return value


def _lone_surrogate(text: str) -> bool:
    for m in _ESCAPES.finditer(text):
        if m.group(3) or (m.group(1) and not m.group(2)):
            return True
    return False


def loads(body: bytes) -> dict:
    """Parse a request body as TF Serving's rapidjson does (ParseJson in json_tensor.cc): NaN and
    Infinity accepted; parsing stops after the first complete value (kParseStopWhenDoneFlag), so what
    follows it is ignored; strings are not checked for valid UTF-8 (their bytes reach string tensors
    as sent); a lone UTF-16 surrogate escape and a number beyond a double are parse errors.

    orjson takes every ordinary body; the standard library's decoder handles the rest (undecodable
    bytes carried as surrogate escapes, turned back into the same bytes where strings become bytes).
    """
    if not body.strip(b" \t\n\r"):
        raise _invalid("JSON Parse error: The document is empty")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", errors="surrogateescape")
        if "\\u" in text and _lone_surrogate(text):
            raise _invalid("JSON Parse error: The surrogate pair in string is invalid.") from None
        decoder = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float)
        try:
            doc, _ = decoder.raw_decode(text, _JSON_WS.match(text).end())
        except _NumberTooBig:
            raise _invalid("JSON Parse error: Number too big to be stored in double.") from None
        except RecursionError:
            raise _invalid("JSON Parse error: the document nests too deeply") from None
        except ValueError as exc:
            raise _invalid(f"JSON Parse error: {exc}") from None
    if not isinstance(doc, dict):
        raise _invalid(f"JSON Value: {_debug(doc)} Is not object")
    return doc


def to_bytes(text: str) -> bytes:
    """A JSON string's bytes as the client sent them (undecodable ones came in as surrogate escapes)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="surrogateescape")


def signature_name(doc: dict) -> str:
    value = doc.get("signature_name", "")
    if not isinstance(value, str):
        raise _invalid(f"JSON Value: {_debug(doc)} not formatted correctly. "
                       "'signature_name' key must be a string value.")
    return value


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_ASCII_SPACE = b" \t\n\v\f\r"


def base64_unescape(text: str) -> bytes | None:
    """Decode base64 as absl::Base64Unescape (what TF Serving uses) accepts it, None when it does not:
    standard alphabet, ASCII whitespace anywhere ignored, padding ('=' or '.') optional but, when
    present, exactly as much as the length needs, nothing but padding and whitespace after it."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        return None
    raw = raw.translate(None, _ASCII_SPACE)
    cut = len(raw)
    for i, ch in enumerate(raw):
        if ch in b"=.":
            cut = i
            break
        if ch not in _B64_ALPHABET:
            return None
    data, padding = raw[:cut], raw[cut:]
    if padding.strip(b"=."):
        return None
    rest = len(data) % 4
    if rest == 1:
        return None
    if padding and len(padding) != {0: -1, 2: 2, 3: 1}[rest]:
        return None
    try:
        return base64.b64decode(data + b"=" * (-len(data) % 4))
    except (binascii.Error, ValueError):
        return None


def _b64decode(value: Any) -> bytes:
    if not _is_b64(value):
        raise _invalid(f"JSON Value: {_debug(value)} not formatted correctly for base64 data")
    decoded = base64_unescape(value["b64"])
    if decoded is None:
        raise _invalid("Unable to base64 decode")
    return decoded


# ---------------------------------------------------------------------------------------------
# JSON value -> numpy


_INT32 = (-(2**31), 2**31 - 1)
_INT_RANGES = {
    dtypes.DT_INT32: _INT32, dtypes.DT_INT16: _INT32, dtypes.DT_INT8: _INT32, dtypes.DT_UINT8: _INT32,
    dtypes.DT_INT64: (-(2**63), 2**63 - 1), dtypes.DT_UINT32: (0, 2**32 - 1), dtypes.DT_UINT64: (0, 2**64 - 1),
}
_JSON_DTYPES = set(_INT_RANGES) | {dtypes.DT_FLOAT, dtypes.DT_DOUBLE, dtypes.DT_STRING, dtypes.DT_BOOL}


def _type_error(value: Any, dtype: int) -> ServingError:
    return _invalid(f"JSON Value: {_debug(value)} Type: {_json_type(value)} is not of expected type: "
                    f"{dtypes.name(dtype)}")


def _leaf(value: Any, dtype: int) -> Any:
    if isinstance(value, dict):
        if dtype == dtypes.DT_STRING:
            return _b64decode(value)
        raise _type_error(value, dtype)
    if dtype in (dtypes.DT_FLOAT, dtypes.DT_DOUBLE):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(value, dtype)
        return float(value)
    if dtype == dtypes.DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return to_bytes(value)
    if dtype == dtypes.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    low, high = _INT_RANGES[dtype]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _type_error(value, dtype)
    return value


def to_array(value: Any, dtype: int, fast: bool = True) -> np.ndarray:
    """A JSON value (scalar or nested lists) as an array of `dtype`, with TF Serving's checks."""
    try:
        return _to_array(value, dtype, fast)
    except RecursionError:
        raise _invalid(f"JSON Value: {_debug(value)[:64]}... nests too deeply for a tensor") from None


def _to_array(value: Any, dtype: int, fast: bool = True) -> np.ndarray:
    if dtype not in _JSON_DTYPES:
        raise ServingError(Code.UNIMPLEMENTED, f"Conversion of JSON Value: {_debug(value)} to type: {dtypes.name(dtype)}")
    np_dtype = dtypes.to_numpy(dtype)
    if fast and dtype not in (dtypes.DT_STRING, dtypes.DT_BOOL):
        arr = _fast_numeric(value, dtype)
        if arr is not None:
            return arr.astype(np_dtype)
    shape: list[int] = []
    probe = value
    while isinstance(probe, list):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    flat: list[Any] = []
    rank = len(shape)

    def fill(v: Any, level: int) -> None:
        if not isinstance(v, list):
            if level != rank:
                raise _invalid(f"JSON Value: {_debug(v)} found at incorrect level: {level + 1} in the JSON DOM. "
                               f"Expected at level: {rank}")
            flat.append(_leaf(v, dtype))
            return
        if level >= rank:
            raise _invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
        if len(v) != shape[level]:
            raise _invalid(f"Encountered list at unexpected size: {len(v)} at level: {level} "
                           f"expected size: {shape[level]}")
        for item in v:
            fill(item, level + 1)

    fill(value, 0)
    if dtype == dtypes.DT_STRING:
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
    else:
        arr = np.array(flat, dtype=np.int64 if np_dtype.kind in "iu" and dtype != dtypes.DT_UINT64 else None)
        arr = arr.astype(np_dtype) if arr.size else np.zeros(0, dtype=np_dtype)
    return arr.reshape(shape)


def _fast_numeric(value: Any, dtype: int) -> np.ndarray | None:
    """Convert nested lists of numbers in one numpy call; None means: take the checked path."""
    try:
        arr = np.array(value)
    except (ValueError, TypeError):
        return None
    kind = arr.dtype.kind
    if kind == "f":
        return arr if dtype in (dtypes.DT_FLOAT, dtypes.DT_DOUBLE) else None
    if kind in "iu":
        low, high = _INT_RANGES.get(dtype, (-math.inf, math.inf))
        if arr.size and (int(arr.min()) < low or int(arr.max()) > high):
            return None
        return arr
    return None


def _rows(items: Sequence[Any], dtype: int, fast: bool, name: str, object_rows: bool) -> np.ndarray:
    """Stack per-instance values of one input into one tensor with a leading batch dimension."""
    if fast:
        try:
            whole = to_array(list(items), dtype, fast=True)
            if whole.ndim >= 1 and whole.shape[0] == len(items):
                return whole
        except ServingError:
            pass
    arrays = []
    first_shape: tuple[int, ...] | None = None
    for i, item in enumerate(items):
        try:
            arr = to_array(item, dtype, fast=False)
            if first_shape is None:
                first_shape = arr.shape
            elif arr.size != int(np.prod(first_shape)):
                raise _invalid(f"Expecting tensor size: {int(np.prod(first_shape))} but got: {arr.size}")
            elif arr.shape != first_shape:
                raise _invalid(f"Expecting shape [{','.join(map(str, first_shape))}] but got: "
                               f"[{','.join(map(str, arr.shape))}]")
        except ServingError as exc:
            where = f"key: {name} " if object_rows else ""
            raise _invalid(f"Failed to process element: {i} {where}of 'instances' list. Error: "
                           f"INVALID_ARGUMENT: {exc.message}") from None
        arrays.append(arr)
    return np.stack(arrays) if arrays else np.zeros((0,), dtype=dtypes.to_numpy(dtype))


def parse_predict(doc: dict, inputs_of: Callable[[str], Mapping[str, TensorInfo]],
                  may_contain_bools: bool = True) -> tuple[str, dict[str, np.ndarray], Format]:
    """A :predict body -> (signature name, named input arrays, request format)."""
    sig_name = signature_name(doc)
    infos = inputs_of(sig_name)
    if not infos:
        raise _invalid(f"Failed to get input map for signature: {sig_name or 'DEFAULT'}")
    fast = not may_contain_bools
    if "instances" in doc:
        if "inputs" in doc:
            raise _invalid(f"JSON Value: {_debug(doc)} Not formatted correctly expecting only one of 'inputs' or "
                           "'instances' keys to exist ")
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise _invalid(f"JSON Value: {_debug(doc)} Expecting 'instances' to be an list/array")
        if not instances:
            raise _invalid(f"JSON Value: {_debug(doc)} No values in 'instances' array")
        return sig_name, _from_instances(instances, infos, fast), Format.ROW
    if "inputs" in doc:
        return sig_name, _from_inputs(doc["inputs"], infos, fast), Format.COLUMNAR
    raise _invalid("Missing 'inputs' or 'instances' key")


def _from_instances(instances: list, infos: Mapping[str, TensorInfo], fast: bool) -> dict[str, np.ndarray]:
    def is_object(v: Any) -> bool:
        return isinstance(v, dict) and not _is_b64(v)

    if not isinstance(instances[0], dict) and len(infos) > 1:
        raise _invalid("instances is a plain list, but expecting list of objects as multiple input tensors "
                       "required as per tensorinfo_map")
    if not is_object(instances[0]):
        name, info = next(iter(infos.items()))
        for i, item in enumerate(instances):
            if is_object(item):
                raise _invalid(f"Expecting value/list but got object at item {i} of input list")
        return {name: _rows(instances, info.dtype, fast, name, object_rows=False)}
    names = set(infos)
    columns: dict[str, list] = {n: [] for n in infos}
    for i, item in enumerate(instances):
        if not is_object(item):
            raise _invalid(f"Expecting object but got list at item {i} of input list")
        for key, value in item.items():
            if key not in infos:
                raise _invalid(f"Failed to process element: {i} key: {key} of 'instances' list. Error: "
                               f"INVALID_ARGUMENT: JSON object: does not have named input: {key}")
            columns[key].append(value)
        if set(item) != names:
            raise _invalid(f"Failed to process element: {i} of 'instances' list. JSON object: {_debug(item)} "
                           f"keys must be equal to: {','.join(sorted(names))}")
    return {n: _rows(columns[n], infos[n].dtype, fast, n, object_rows=True) for n in infos}


def _from_inputs(value: Any, infos: Mapping[str, TensorInfo], fast: bool) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or _is_b64(value):
        if len(infos) > 1:
            raise _invalid("inputs is a plain value/list, but expecting an object as multiple input tensors "
                           "required as per tensorinfo_map")
        name, info = next(iter(infos.items()))
        return {name: to_array(value, info.dtype, fast)}
    out = {}
    for name, info in infos.items():
        if name not in value:
            raise _invalid(f"Missing named input: {name} in 'inputs' object.")
        out[name] = to_array(value[name], info.dtype, fast)
    return out


# ---------------------------------------------------------------------------------------------
# Classify / Regress requests


def _feature(name: str, content: Any) -> tuple[str, list]:
    values = content if isinstance(content, list) else [content]
    kind = ""
    out: list = []

    def want(k: str) -> None:
        nonlocal kind
        if kind and kind != k:
            raise _invalid(f"Unexpected element type in feature: {name} expecting type: {kind}")
        kind = k

    for v in values:
        if v is None or isinstance(v, list) or (isinstance(v, dict) and not _is_b64(v)):
            raise _invalid(f"Feature: {name} has element with unexpected JSON type: {_json_type(v)}")
        if isinstance(v, bool):
            want("int64")
            out.append(1 if v else 0)
        elif isinstance(v, dict):
            want("bytes")
            out.append(_b64decode(v))
        elif isinstance(v, str):
            want("bytes")
            out.append(to_bytes(v))
        elif isinstance(v, float):
            want("float")
            out.append(v)
        else:
            if v >= 2**63:
                raise _invalid(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
            want("int64")
            out.append(v)
    return kind, out


def _example(value: Any) -> bytes:
    if not isinstance(value, dict):
        raise _invalid(f"Example must be JSON object but got JSON {_json_type(value)}")
    return codec.encode_example({name: _feature(name, content) for name, content in value.items()})


def parse_examples(doc: dict) -> tuple[str, list[bytes]]:
    """A :classify / :regress body -> (signature name, serialized tf.Examples, context merged in)."""
    sig_name = signature_name(doc)
    context = _example(doc["context"]) if "context" in doc else b""
    if "examples" not in doc:
        raise _invalid(f"JSON Value: {_debug(doc)} When method is classify, key 'examples' is expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise _invalid(f"JSON Value: {_debug(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise _invalid(f"JSON Value: {_debug(doc)} 'examples' value is an empty array")
    return sig_name, [context + _example(e) for e in examples]


# ---------------------------------------------------------------------------------------------
# numpy -> JSON text


def _string_token(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return orjson.dumps(str(value)).decode("utf-8")


def float_tokens(arr: np.ndarray) -> np.ndarray:
    """Shortest round-tripping decimal of each value, `.0` on whole numbers, NaN/Infinity tokens."""
    text = arr.astype(str)
    flat = text.ravel()
    for i, token in enumerate(flat.tolist()):
        if token in ("nan", "-nan"):
            flat[i] = "NaN"
        elif token == "inf":
            flat[i] = "Infinity"
        elif token == "-inf":
            flat[i] = "-Infinity"
        elif "." not in token and "e" not in token:
            flat[i] = token + ".0"
    return flat.reshape(arr.shape)


def _tokens(name: str, arr: np.ndarray, dtype: int) -> np.ndarray:
    if dtype in (dtypes.DT_FLOAT, dtypes.DT_DOUBLE):
        return float_tokens(arr)
    if dtype == dtypes.DT_STRING:
        as_bytes = name.endswith("_bytes")
        out = np.empty(arr.shape, dtype=object)
        flat = out.reshape(-1)
        for i, v in enumerate(arr.reshape(-1).tolist()):
            if as_bytes:
                raw = v if isinstance(v, bytes) else str(v).encode("utf-8")
                flat[i] = '{"b64": "' + base64.b64encode(raw).decode("ascii") + '"}'
            else:
                flat[i] = _string_token(v)
        return out
    if dtype == dtypes.DT_BOOL:
        return np.where(arr, "true", "false")
    if dtype in _INT_RANGES:
        return arr.astype(np.int64 if dtype != dtypes.DT_UINT64 else np.uint64).astype(str)
    raise _invalid(f"Failed to write JSON value for tensor type: {dtypes.name(dtype)}")


def _nest(tokens: np.ndarray | str) -> str:
    if isinstance(tokens, str):
        return tokens
    if tokens.ndim == 0:
        return str(tokens.item())
    if tokens.ndim == 1:
        return "[" + ", ".join(tokens.tolist()) + "]"
    return "[" + ", ".join(_nest(t) for t in tokens) + "]"


def predict_response(outputs: Mapping[str, np.ndarray], output_dtypes: Mapping[str, int], fmt: Format) -> bytes:
    if not outputs:
        raise _invalid("Cannot convert empty tensor map to JSON")
    tokens = {name: _tokens(name, arr, output_dtypes.get(name, dtypes.from_numpy(arr.dtype)))
              for name, arr in outputs.items()}
    single = len(tokens) == 1
    if fmt == Format.COLUMNAR:
        if single:
            body = _nest(next(iter(tokens.values())))
        else:
            body = "{" + ", ".join(f"{_string_token(n)}: {_nest(t)}" for n, t in tokens.items()) + "}"
        return ('{"outputs": ' + body + "}").encode("utf-8")
    batch = None
    for name, t in tokens.items():
        if t.ndim == 0:
            raise _invalid(f"Tensor name: {name} has no shape information ")
        if batch is not None and t.shape[0] != batch:
            raise _invalid(f"Tensor name: {name} has inconsistent batch size: {t.shape[0]} expecting: {batch}")
        batch = t.shape[0]
    if single:
        t = next(iter(tokens.values()))
        rows = t.tolist() if t.ndim == 1 else [_nest(r) for r in t]
    else:
        keys = [(_string_token(n), t) for n, t in tokens.items()]
        rows = ["{" + ", ".join(f"{k}: {_nest(t[i])}" for k, t in keys) + "}" for i in range(batch or 0)]
    return ('{"predictions": [' + ", ".join(rows) + "]}").encode("utf-8")


def classify_response(labels: np.ndarray | None, scores: np.ndarray | None) -> bytes:
    source = labels if labels is not None else scores
    if source is None or source.shape[0] == 0:
        raise _invalid("Cannot convert empty ClassificationResults to JSON")
    score_tokens = float_tokens(scores.astype(np.float32)) if scores is not None else None
    rows = []
    for i in range(source.shape[0]):
        pairs = []
        for c in range(source.shape[1]):
            label = _string_token(labels[i, c]) if labels is not None else '""'
            score = score_tokens[i, c] if score_tokens is not None else "0.0"
            pairs.append(f"[{label}, {score}]")
        rows.append("[" + ", ".join(pairs) + "]")
    return ('{"results": [' + ", ".join(rows) + "]}").encode("utf-8")


def regress_response(values: np.ndarray) -> bytes:
    if values.size == 0:
        raise _invalid("Cannot convert empty RegressionResults to JSON")
    return ('{"results": [' + ", ".join(float_tokens(values.astype(np.float32)).tolist()) + "]}").encode("utf-8")


def error_body(message: str) -> bytes:
    # Messages may quote request strings that carried undecodable bytes (surrogate escapes).
    safe = message.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    return orjson.dumps({"error": safe})
