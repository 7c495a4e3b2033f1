"""One loaded version of a SavedModel: its SignatureDefs, validated Predict/Classify/Regress calls, and
the warm-up replay TF Serving does before a version becomes available.

Any SavedModel works, as with TF Serving: inputs and outputs are whatever the SignatureDefs say (any
dtype, any shape, several of each); Classify and Regress follow TF Serving's rules (one `inputs` tensor of
serialized tf.Examples; `classes`/`scores`, resp. `outputs`). Validation messages follow TF Serving's
(predict_util.cc, classifier.cc, regressor.cc) and name the tensor at fault.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from fraud import dtypes
from fraud.model_info import load_custom_ops_for, meta_graph_ops
from serving import wire
from serving.errors import Code, ServingError
from serving.requests import DEFAULT_SIGNATURE, ExamplesCall, InferenceTask, MultiInferenceCall, PredictCall

if TYPE_CHECKING:
    from serving.batching import BatchScheduler

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
CLASSIFY_INPUTS = "inputs"
CLASSIFY_CLASSES = "classes"
CLASSIFY_SCORES = "scores"
REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"

#: Where TFX InfraValidator writes, and TF Serving reads, warm-up requests (relative to the version dir).
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
#: TF Serving refuses warm-up files with more records than this (WarmupConsts::kMaxNumRecords).
MAX_WARMUP_RECORDS = 1000
#: Requests of at most this many rows run their graph in the calling thread (SessionBundle.runner).
#: Measured on the shipped model, one caller sending one row: p50 1.2-2.0 ms against 1.6-2.6 ms and ~25%
#: less server CPU per call; at 256 rows (4 callers) running inline made no difference.
INLINE_MAX_ROWS = 16


@dataclass(frozen=True)
class TensorInfo:
    """A signature input or output: key, DataType enum, shape (None = unknown rank, -1 = any size)."""

    key: str
    name: str
    dtype: int
    shape: tuple[int, ...] | None

    def describe_shape(self) -> str:
        if self.shape is None:
            return "[?]"
        return "[" + ",".join("?" if d < 0 else str(d) for d in self.shape) + "]"


@dataclass(frozen=True)
class Signature:
    key: str
    method_name: str
    inputs: Mapping[str, TensorInfo]
    outputs: Mapping[str, TensorInfo]
    debug_string: str  # SignatureDef in text format, for TF Serving-style messages


@dataclass(frozen=True)
class PredictResult:
    signature_name: str
    outputs: Mapping[str, np.ndarray]
    output_dtypes: Mapping[str, int]


@dataclass(frozen=True)
class ClassifyResult:
    signature_name: str
    labels: np.ndarray | None  # [batch, classes] of bytes
    scores: np.ndarray | None  # [batch, classes] float32


@dataclass(frozen=True)
class RegressResult:
    signature_name: str
    values: np.ndarray  # [batch] float32


def _tensor_info(key: str, proto: Any) -> TensorInfo:
    shape = None if proto.tensor_shape.unknown_rank else tuple(int(d.size) for d in proto.tensor_shape.dim)
    return TensorInfo(key=key, name=proto.name, dtype=int(proto.dtype), shape=shape)


def read_meta_graph(path: str, tags: Sequence[str]) -> Any:
    """The MetaGraphDef of the SavedModel at `path` whose tag set equals `tags` (as TF Serving selects)."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    pb = os.path.join(path, "saved_model.pb")
    pbtxt = os.path.join(path, "saved_model.pbtxt")
    if os.path.isfile(pb):
        with open(pb, "rb") as f:
            saved_model.ParseFromString(f.read())
    elif os.path.isfile(pbtxt):
        with open(pbtxt, encoding="utf-8") as f:
            text_format.Parse(f.read(), saved_model)
    else:
        raise ServingError(Code.NOT_FOUND, "Could not find SavedModel .pb or .pbtxt at supplied export directory "
                                           f"path: {path}")
    wanted = set(tags)
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == wanted:
            return meta_graph
    available = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise ServingError(Code.NOT_FOUND, f"Could not find meta graph def matching supplied tags: {{ {' '.join(sorted(wanted))} }}. "
                                       f"Tag sets in the SavedModel: {available}")


def _tf_error(exc: Exception) -> ServingError:
    code = getattr(exc, "error_code", None)
    message = getattr(exc, "message", None) or str(exc)
    if isinstance(code, int) and 0 < code <= 16:
        return ServingError(Code(code), message)
    return ServingError(Code.INTERNAL, f"{type(exc).__name__}: {message}")


def _undecodable_tf_error(exc: UnicodeDecodeError) -> ServingError:
    """A TF op failed with a message that is not UTF-8, and TF's Python binding could not build the
    exception (it raises UnicodeDecodeError, the status code lost).

    Such messages quote the request's own bytes: ParseExample's "Could not parse example input, value:
    '<bytes>'" for a serialized tf.Example that is not one (e.g. b'\\xff\\x00garbage'), ParseTensor,
    DecodeJSONExample, StringToNumber. Every op that quotes its input does so while rejecting it with
    INVALID_ARGUMENT, which is what TF Serving answers (its C++ keeps the status intact); the message is
    TF's, non-UTF-8 bytes escaped.
    """
    raw = exc.object if isinstance(exc.object, (bytes, bytearray)) else b""
    message = bytes(raw).decode("utf-8", errors="backslashreplace") or "Could not parse example input"
    return ServingError(Code.INVALID_ARGUMENT, message)


class SessionBundle:
    """A SavedModel loaded the way TF Serving loads it (`LoadSavedModel`): the MetaGraphDef imported into
    one graph, variables restored and the main op run in one session. A signature runs by the tensor
    names of its SignatureDef through a callable made once per (signature, outputs)
    (`Session::MakeCallable`: feeds go straight to TF_SessionRunCallable in C++). Thread-safe.

    Measured on the shipped model (the model of bench/bench_serving.py), CPU per call, best of
    interleaved runs on a busy machine: batch 1, 250 us against ~700 us for
    `tf.saved_model.load(...).signatures[k](...)` (whose Python path binds and flattens arguments and
    resolves ~80 captured variable handles per call) and 410 us for `Session.run`; batch 256, 1.4 ms
    against 2.0 ms and 1.8 ms.
    """

    def __init__(self, path: str, tags: Sequence[str], intra_op: int = 0, inter_op: int = 0) -> None:
        import tensorflow as tf
        from tensorflow.python.saved_model import loader_impl

        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=intra_op,
                                          inter_op_parallelism_threads=inter_op)
        config.experimental.disable_thread_spinning = True  # see serving.server.configure_tensorflow
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph, config=config)
        try:
            with self._graph.as_default():
                loader_impl.SavedModelLoader(path).load(self._session, list(tags))
        except BaseException:
            self._session.close()
            raise
        self._callables: dict[tuple, Callable[..., list]] = {}
        self._lock = threading.Lock()

    def runner(self, sig: Signature, output_keys: tuple[str, ...], inline: bool = False) -> Callable[..., list]:
        """A callable taking the inputs in `sig.inputs` order, returning the `output_keys` values.

        `inline`: run the graph's ops in the calling thread (RunOptions.inter_op_thread_pool = -1, no
        hand-off to the inter-op pool; TensorFlow's advice for small graphs whose run is not much longer
        than a context switch). Used for small requests; large ones keep the inter-op pool.
        """
        key = (sig.key, output_keys, inline)
        fn = self._callables.get(key)
        if fn is None:
            with self._lock:
                fn = self._callables.get(key)
                if fn is None:
                    from tensorflow.core.protobuf import config_pb2

                    options = config_pb2.CallableOptions(feed=[info.name for info in sig.inputs.values()],
                                                         fetch=[sig.outputs[k].name for k in output_keys])
                    if inline:
                        options.run_options.inter_op_thread_pool = -1
                    # Session.make_callable with feeds falls back to Session.run (Python feed/fetch
                    # handling per call); a callable made from CallableOptions is C++ Session::MakeCallable.
                    fn = self._session._make_callable_from_options(options)
                    self._callables[key] = fn
        return fn

    def close(self) -> None:
        self._callables.clear()
        self._session.close()


class Servable:
    """A SavedModel version loaded in this process. Thread-safe; `run` may be called concurrently."""

    def __init__(self, name: str, version: int, path: str, meta_graph: Any, bundle: SessionBundle | None,
                 batching: BatchScheduler | None = None, method_name_check: bool = False) -> None:
        self.name = name
        self.version = version
        self.path = path
        self._meta_graph = meta_graph
        self._bundle = bundle
        self._method_name_check = method_name_check
        signatures = {}
        for key, sig in meta_graph.signature_def.items():
            signatures[key] = Signature(
                key=key,
                method_name=sig.method_name,
                inputs=MappingProxyType({k: _tensor_info(k, v) for k, v in sorted(sig.inputs.items())}),
                outputs=MappingProxyType({k: _tensor_info(k, v) for k, v in sorted(sig.outputs.items())}),
                debug_string=str(sig),
            )
        self.signatures: Mapping[str, Signature] = MappingProxyType(signatures)
        self._batching = batching
        self._metadata_lock = threading.Lock()
        self._metadata_any: Any = None
        self._metadata_json: dict | None = None

    # -----------------------------------------------------------------------------------------
    # Loading

    @classmethod
    def load(cls, name: str, version: int, path: str, *, tags: Sequence[str] = ("serve",),
             batching: BatchScheduler | None = None, method_name_check: bool = False,
             intra_op: int = 0, inter_op: int = 0) -> Servable:
        """Load the SavedModel at `path`. Raises ServingError (with TF's status code) on failure."""
        meta_graph = read_meta_graph(path, tags)
        try:
            # Custom ops the graph needs (TF-DF's SimpleML* for tree models) before TF parses it.
            load_custom_ops_for(meta_graph_ops(meta_graph), path)
            bundle = SessionBundle(path, tags, intra_op, inter_op)
        except Exception as exc:  # any loader failure is reported in the version's status
            raise _tf_error(exc) from exc
        return cls(name, version, path, meta_graph, bundle, batching=batching, method_name_check=method_name_check)

    def warmup(self, iterations: int = 1) -> int:
        """Replay `assets.extra/tf_serving_warmup_requests` (PredictionLog TFRecords) against this version.

        Returns the number of records replayed (0 when there is no warm-up file). Any failing record
        fails the load, as in TF Serving.
        """
        path = os.path.join(self.path, WARMUP_FILE)
        if not os.path.isfile(path):
            return 0
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        records = 0
        try:
            dataset = tf.data.TFRecordDataset(path)
            for raw in dataset:
                records += 1
                if records > MAX_WARMUP_RECORDS:
                    raise ServingError(Code.INVALID_ARGUMENT, "Number of warmup records exceeds the maximum "
                                                              f"({MAX_WARMUP_RECORDS}) at {path}")
                entry = prediction_log_pb2.PredictionLog()
                try:
                    entry.ParseFromString(raw.numpy())
                except Exception:
                    raise ServingError(Code.INVALID_ARGUMENT, f"Failed to parse warmup record from {path}") from None
                kind = entry.WhichOneof("log_type")
                for _ in range(max(1, iterations)):
                    if kind == "predict_log":
                        self.predict(wire.decode_predict_request(entry.predict_log.request.SerializeToString()),
                                     use_batching=False)
                    elif kind == "classify_log":
                        self.classify(wire.decode_examples_request(entry.classify_log.request.SerializeToString()),
                                      use_batching=False)
                    elif kind == "regress_log":
                        self.regress(wire.decode_examples_request(entry.regress_log.request.SerializeToString()),
                                     use_batching=False)
                    else:
                        raise ServingError(Code.UNIMPLEMENTED, f"Unsupported log_type for warmup: {kind}")
        except tf.errors.OpError as exc:
            raise ServingError(Code.DATA_LOSS, f"Failed to read warmup file {path}: {exc.message}") from None
        return records

    def close(self) -> None:
        """Release the batch queues and the loaded model (after in-flight requests have finished)."""
        if self._batching is not None:
            self._batching.remove_queues(owner=self)
        bundle, self._bundle = self._bundle, None
        if bundle is not None:
            bundle.close()

    # -----------------------------------------------------------------------------------------
    # Metadata

    def metadata_any(self) -> Any:
        """The `signature_def` entry of GetModelMetadataResponse.metadata: an Any holding SignatureDefMap."""
        with self._metadata_lock:
            if self._metadata_any is None:
                from google.protobuf import any_pb2
                from tensorflow_serving.apis import get_model_metadata_pb2

                sig_map = get_model_metadata_pb2.SignatureDefMap()
                for key, sig in self._meta_graph.signature_def.items():
                    sig_map.signature_def[key].CopyFrom(sig)
                packed = any_pb2.Any()
                packed.Pack(sig_map)
                self._metadata_any = packed
            return self._metadata_any

    def metadata_json(self) -> dict:
        """SignatureDefMap as TF Serving's REST metadata prints it (proto field names, defaults included)."""
        with self._metadata_lock:
            cached = self._metadata_json
        if cached is None:
            from google.protobuf import json_format
            from tensorflow_serving.apis import get_model_metadata_pb2

            sig_map = get_model_metadata_pb2.SignatureDefMap()
            self.metadata_any().Unpack(sig_map)
            cached = json_format.MessageToDict(sig_map, preserving_proto_field_name=True,
                                               including_default_value_fields=True)
            with self._metadata_lock:
                self._metadata_json = cached
        return cached

    # -----------------------------------------------------------------------------------------
    # Calls

    def signature(self, key: str) -> Signature:
        sig = self.signatures.get(key or DEFAULT_SIGNATURE)
        if sig is None:
            raise ServingError(Code.FAILED_PRECONDITION, f'Serving signature key "{key or DEFAULT_SIGNATURE}" not found.')
        return sig

    def predict(self, call: PredictCall, *, deadline: float | None = None, use_batching: bool = True) -> PredictResult:
        sig = self.signature(call.model_spec.signature_name)
        if self._method_name_check and sig.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
            raise ServingError(Code.INTERNAL, "Expected prediction signature method_name to be one of "
                                              f"{{{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. "
                                              f"Was: {sig.method_name}")
        self._check_input_names(sig, call.inputs)
        for index, (key, info) in enumerate(sig.inputs.items()):
            self._check_tensor(info, call.inputs[key], index)
        outputs = self._output_keys(sig, call.output_filter)
        result = self._execute(sig, call.inputs, deadline, use_batching, tuple(outputs))
        return PredictResult(
            signature_name=sig.key,
            outputs={k: result[k] for k in outputs},
            output_dtypes={k: sig.outputs[k].dtype for k in outputs},
        )

    def classify(self, call: ExamplesCall, *, deadline: float | None = None,
                 use_batching: bool = True) -> ClassifyResult:
        sig = self._examples_signature(call, CLASSIFY_METHOD, "classification")
        _check_classify_signature(sig)
        n = self._require_examples(call)
        result = self._execute(sig, {CLASSIFY_INPUTS: _examples_array(call.examples)}, deadline, use_batching)
        return _classify_result(sig, result, n)

    def regress(self, call: ExamplesCall, *, deadline: float | None = None,
                use_batching: bool = True) -> RegressResult:
        sig = self._examples_signature(call, REGRESS_METHOD, "regression")
        _check_regress_signature(sig)
        n = self._require_examples(call)
        result = self._execute(sig, {REGRESS_INPUTS: _examples_array(call.examples)}, deadline, use_batching)
        return _regress_result(sig, result, n)

    def multi_inference(self, call: MultiInferenceCall, *, deadline: float | None = None,
                        use_batching: bool = True) -> list[ClassifyResult | RegressResult]:
        """MultiInference as TF Serving's TensorFlowMultiInferenceRunner::Infer runs it: every task names
        the same model and a distinct Classify or Regress signature; all are checked before anything
        runs, then each signature runs on the same examples, and the results come back in task order.

        TF Serving fetches every task's outputs in one Session::Run; a TF2 SavedModel's signatures are
        separate functions, so here each runs once (same results, one graph call per task).
        """
        model_name = ""
        seen: set[str] = set()
        checked: list[tuple[InferenceTask, Signature]] = []
        for task in call.tasks:
            if not task.model_spec.name:
                raise ServingError(Code.INVALID_ARGUMENT, "Found ModelSpec with an empty model name.")
            if not model_name:
                model_name = task.model_spec.name
            elif model_name != task.model_spec.name:
                raise ServingError(Code.INVALID_ARGUMENT,
                                   "All ModelSpecs in a MultiInferenceRequest must access the same model name.")
            key = task.model_spec.signature_name or DEFAULT_SIGNATURE
            if key in seen:
                raise ServingError(Code.INVALID_ARGUMENT, f"Duplicate evaluation of signature: {key}")
            seen.add(key)
            sig = self.signatures.get(key)
            if sig is None:
                raise ServingError(Code.INVALID_ARGUMENT, f"Requested signature not found in model graph: {key}")
            if task.method_name == CLASSIFY_METHOD:
                self._check_method(sig, CLASSIFY_METHOD, "classification")
                _check_classify_signature(sig)
            elif task.method_name == REGRESS_METHOD:
                self._check_method(sig, REGRESS_METHOD, "regression")
                _check_regress_signature(sig)
            else:
                raise ServingError(Code.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}")
            checked.append((task, sig))
        if not call.examples:
            raise ServingError(Code.INVALID_ARGUMENT, "Input is empty.")
        n = len(call.examples)
        examples = _examples_array(call.examples)
        results: list[ClassifyResult | RegressResult] = []
        for task, sig in checked:
            name = CLASSIFY_INPUTS if task.method_name == CLASSIFY_METHOD else REGRESS_INPUTS
            outputs = self._execute(sig, {name: examples}, deadline, use_batching)
            if task.method_name == CLASSIFY_METHOD:
                results.append(_classify_result(sig, outputs, n))
            else:
                results.append(_regress_result(sig, outputs, n))
        return results

    # -----------------------------------------------------------------------------------------
    # Validation helpers

    def _examples_signature(self, call: ExamplesCall, method: str, kind: str) -> Signature:
        key = call.model_spec.signature_name or DEFAULT_SIGNATURE
        sig = self.signatures.get(key)
        if sig is None:
            raise ServingError(Code.INVALID_ARGUMENT, f"No signature was found with the name: {key}")
        self._check_method(sig, method, kind)
        return sig

    def _check_method(self, sig: Signature, method: str, kind: str) -> None:
        if self._method_name_check and sig.method_name != method:
            raise ServingError(Code.INVALID_ARGUMENT,
                               f"Expected {kind} signature method_name to be {method}. Was: {sig.method_name}")

    @staticmethod
    def _require_examples(call: ExamplesCall) -> int:
        if not call.examples:
            raise ServingError(Code.INVALID_ARGUMENT, "Input is empty.")
        return len(call.examples)

    @staticmethod
    def _check_input_names(sig: Signature, inputs: Mapping[str, np.ndarray]) -> None:
        sent = set(inputs)
        expected = set(sig.inputs)
        if sent == expected:
            return
        if len(sent) != len(expected):
            extra = ",".join(sorted(sent - expected))
            missing = ",".join(sorted(expected - sent))
            raise ServingError(Code.INVALID_ARGUMENT,
                               f"input size does not match signature: {len(sent)}!={len(expected)} "
                               f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
                               f"Sent extra: {{{extra}}}. Missing but required: {{{missing}}}.")
        alias = sorted(sent - expected)[0]
        raise ServingError(Code.INVALID_ARGUMENT, f"input tensor alias not found in signature: {alias}. "
                                                  f"Inputs expected to be in the set {{{','.join(sorted(expected))}}}.")

    @staticmethod
    def _check_tensor(info: TensorInfo, value: Any, index: int) -> None:
        got, shape = dtypes.from_numpy(value.dtype), value.shape
        if got != info.dtype:
            raise ServingError(Code.INVALID_ARGUMENT,
                               f"Expects arg[{index}] ('{info.key}') to be {dtypes.name(info.dtype)} "
                               f"but {dtypes.name(got)} is provided")
        if info.shape is None:
            return
        if len(info.shape) != len(shape) or any(e >= 0 and e != g for e, g in zip(info.shape, shape, strict=True)):
            raise ServingError(Code.INVALID_ARGUMENT,
                               f"input '{info.key}' has shape [{','.join(map(str, shape))}], which is not "
                               f"compatible with the signature's {info.describe_shape()}")

    @staticmethod
    def _output_keys(sig: Signature, output_filter: Sequence[str]) -> list[str]:
        if not output_filter:
            return list(sig.outputs)
        seen: set[str] = set()
        for alias in output_filter:
            if alias not in sig.outputs:
                raise ServingError(Code.INVALID_ARGUMENT,
                                   f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                                   f"the set {{{','.join(sig.outputs)}}}.")
            if alias in seen:
                raise ServingError(Code.INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}")
            seen.add(alias)
        return list(output_filter)

    # -----------------------------------------------------------------------------------------
    # Execution

    def _execute(self, sig: Signature, inputs: Mapping[str, np.ndarray], deadline: float | None,
                 use_batching: bool, output_keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        if deadline is not None and time.monotonic() >= deadline:
            raise ServingError(Code.DEADLINE_EXCEEDED, "Deadline Exceeded")
        if use_batching and self._batching is not None:
            key = _batch_key(sig.key, inputs)
            if key is not None:  # a batch serves requests with different output filters: fetch them all
                return self._batching.submit(self, key, lambda batch: self.run(sig.key, batch), inputs, deadline)
        return self.run(sig.key, inputs, output_keys)

    def run(self, signature_key: str, inputs: Mapping[str, Any],
            output_keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Run the signature once (as TF Serving does: Session::Run on its tensor names); the outputs
        named by `output_keys` (default: all) as numpy arrays."""
        bundle = self._bundle
        if bundle is None:
            raise ServingError(Code.UNAVAILABLE, f"Servable {self.name} version {self.version} has been unloaded")
        sig = self.signatures.get(signature_key)
        if sig is None:
            raise ServingError(Code.FAILED_PRECONDITION, f'Serving signature key "{signature_key}" not found.')
        keys = tuple(sig.outputs) if output_keys is None else output_keys
        try:
            args = [inputs[k] for k in sig.inputs]
            rows = args[0].shape[0] if args and args[0].ndim else 0
            values = bundle.runner(sig, keys, INLINE_MAX_ROWS > 0 and rows <= INLINE_MAX_ROWS)(*args)
        except ServingError:
            raise
        except UnicodeDecodeError as exc:
            raise _undecodable_tf_error(exc) from None
        except Exception as exc:  # TF errors carry a canonical code; anything else is internal
            raise _tf_error(exc) from None
        return {k: np.asarray(v) if not isinstance(v, np.ndarray) else v for k, v in zip(keys, values, strict=True)}


def _batch_key(signature_key: str, inputs: Mapping[str, Any]) -> tuple | None:
    """Requests sharing a key can be concatenated along dimension 0; None when the inputs can't be batched."""
    batch = None
    parts = []
    for key in sorted(inputs):
        value = inputs[key]
        dtype, shape = dtypes.from_numpy(value.dtype), value.shape
        if not shape:
            return None
        if batch is None:
            batch = shape[0]
        elif shape[0] != batch:
            return None
        parts.append((key, dtype, shape[1:]))
    if not batch:
        return None
    return (signature_key, tuple(parts))


def _examples_array(examples: Sequence[bytes]) -> np.ndarray:
    arr = np.empty(len(examples), dtype=object)
    arr[:] = list(examples)
    return arr


def _check_classify_signature(sig: Signature) -> None:
    """TF Serving's PreProcessClassification (classifier.cc), after the method-name check."""
    if len(sig.inputs) != 1:
        raise ServingError(Code.INVALID_ARGUMENT, "Expected one input Tensor.")
    if len(sig.outputs) not in (1, 2):
        raise ServingError(Code.INVALID_ARGUMENT, f"Expected one or two output Tensors, found {len(sig.outputs)}")
    if CLASSIFY_INPUTS not in sig.inputs:
        raise ServingError(Code.INVALID_ARGUMENT, f"No classification inputs found in SignatureDef: {sig.debug_string}")
    if CLASSIFY_CLASSES not in sig.outputs and CLASSIFY_SCORES not in sig.outputs:
        raise ServingError(Code.INVALID_ARGUMENT, "Expected classification signature outputs to contain at least "
                                                  f'one of "{CLASSIFY_CLASSES}" or "{CLASSIFY_SCORES}". '
                                                  f"Signature was: {sig.debug_string}")


def _classify_result(sig: Signature, result: Mapping[str, np.ndarray], n: int) -> ClassifyResult:
    """TF Serving's PostProcessClassificationResult checks on the graph's outputs."""
    classes = result.get(CLASSIFY_CLASSES)
    scores = result.get(CLASSIFY_SCORES)
    if classes is not None:
        _check_classify_output(classes, "classes", dtypes.DT_STRING, n)
    if scores is not None:
        _check_classify_output(scores, "scores", dtypes.DT_FLOAT, n)
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise ServingError(Code.INVALID_ARGUMENT, "Tensors class and score should match in dim_size(1). "
                                                  f"Got {classes.shape[1]} vs. {scores.shape[1]}")
    return ClassifyResult(sig.key, classes, scores)


def _check_regress_signature(sig: Signature) -> None:
    """TF Serving's PreProcessRegression (regressor.cc), after the method-name check."""
    if len(sig.inputs) != 1:
        raise ServingError(Code.INVALID_ARGUMENT, "Expected one input Tensor.")
    if len(sig.outputs) != 1:
        raise ServingError(Code.INVALID_ARGUMENT, "Expected one output Tensor.")
    if REGRESS_INPUTS not in sig.inputs:
        raise ServingError(Code.INVALID_ARGUMENT, f"No regression inputs found in SignatureDef: {sig.debug_string}")
    if REGRESS_OUTPUTS not in sig.outputs:
        raise ServingError(Code.INVALID_ARGUMENT, f"No regression outputs found in SignatureDef: {sig.debug_string}")


def _regress_result(sig: Signature, result: Mapping[str, np.ndarray], n: int) -> RegressResult:
    """TF Serving's PostProcessRegressionResult checks on the graph's output."""
    values = result[REGRESS_OUTPUTS]
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise ServingError(Code.INVALID_ARGUMENT, "Expected output Tensor shape to be either [batch_size] or "
                                                  f"[batch_size, 1] but got {list(values.shape)}")
    if values.shape[0] != n:
        raise ServingError(Code.INVALID_ARGUMENT,
                           f"Input batch size did not match output batch size: {n} vs. {values.shape[0]}")
    if values.dtype != np.float32:
        raise ServingError(Code.INVALID_ARGUMENT,
                           f"Expected output Tensor of DT_FLOAT.  Got: {dtypes.name(dtypes.from_numpy(values.dtype))}")
    return RegressResult(sig.key, values.reshape(-1))


def _check_classify_output(value: np.ndarray, what: str, dtype: int, n: int) -> None:
    if value.ndim != 2:
        raise ServingError(Code.INVALID_ARGUMENT,
                           f"Expected Tensor shape: [batch_size num_classes] but got {list(value.shape)}")
    got = dtypes.from_numpy(value.dtype)
    if got != dtype:
        raise ServingError(Code.INVALID_ARGUMENT, f"Expected {what} Tensor of DT_{dtypes.name(dtype).upper()}. "
                                                  f"Got: DT_{dtypes.name(got).upper()}")
    if value.shape[0] != n:
        raise ServingError(Code.INVALID_ARGUMENT, f"Expected {what} output batch size of {n}. Got: {value.shape[0]}")
