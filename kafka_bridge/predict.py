"""The gRPC Predict client: one reused channel, a deadline per call, TLS when configured, calls in flight.

`start(features)` sends one Predict for a float32 [N, 30] feature matrix and returns at once (a gRPC
future); `PredictCall.result()` waits for the answer. Which signature the matrix goes to is read from the
served model's metadata (GetModelMetadata), at the first call and again whenever a response comes from
another model version:

- `serving_features` (fraud.signature.FEATURES_SIGNATURE_NAME) when the model has it: the matrix as one
  DT_FLOAT `tensor_content` block (no per-event encoding on either side);
- else `serving_default` (tf.Example): the rows written as raw tf.Examples in one byte matrix
  (fraud.wire.ExampleBatchEncoder), as every TF Serving client of the pipeline's model can.

`--model-input features|examples` pins one. Calls go through the raw method paths with bytes in and out
(see fraud.wire), so the bridge speaks to TensorFlow Serving or the project's serving/ without importing
TensorFlow. gRPC status codes are sorted into what the bridge does with them: `ModelRejected`
(INVALID_ARGUMENT, OUT_OF_RANGE: this batch's content is refused: find the record at fault) and
`RetriableError` (everything else: the server is down, loading, overloaded or misconfigured; retry, commit
nothing).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fraud import dtypes
from fraud.errors import FraudError
from fraud.features import FEATURE_NAMES
from fraud.logs import log_event
from fraud.signature import FEATURES_SIGNATURE_NAME, INPUT_EXAMPLES, INPUT_FEATURES, SIGNATURE_NAME
from fraud.stream.records import RetriableError
from fraud.wire import (
    ExampleBatchEncoder,
    SignatureInfo,
    WireError,
    decode_model_metadata,
    decode_predict_response,
    encode_float_matrix,
    encode_metadata_request,
    encode_predict_request_inputs,
)

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
METADATA_METHOD = "/tensorflow.serving.PredictionService/GetModelMetadata"
REJECTED_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE)
_MAX_MESSAGE = 64 * 1024 * 1024

log = logging.getLogger("kafka_bridge")


class ModelInput(str, enum.Enum):
    """Which signature the bridge sends its feature matrix to."""

    AUTO = "auto"  # serving_features when the served model has it, else serving_default (tf.Example)
    FEATURES = "features"
    EXAMPLES = "examples"


class ModelRejected(Exception):
    """The server refused the request's content (not the server's state): `code` and `message` say why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class PredictUnavailable(RetriableError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"Predict failed with {code}: {message}")
        self.code = code


@dataclass(frozen=True)
class GrpcTls:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None  # overrides the name checked against the server's certificate

    def credentials(self) -> grpc.ChannelCredentials:
        def read(p: Path | None) -> bytes | None:
            if p is None:
                return None
            try:
                return Path(p).read_bytes()
            except OSError as exc:
                raise FraudError(f"cannot read gRPC TLS file {p}: {exc.strerror}") from None

        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))


@dataclass(frozen=True)
class Prediction:
    model_name: str
    model_version: int | None
    outputs: dict[str, np.ndarray]


def _rpc_error(exc: grpc.RpcError) -> Exception:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else str(exc)) or ""
    if code in REJECTED_CODES:
        return ModelRejected(code.name, details)
    return PredictUnavailable(code.name, details)


def features_signature_fits(sig: SignatureInfo | None) -> bool:
    """A `serving_features` signature the bridge can feed: a float32 [batch, 30] input named `features`."""
    if sig is None or INPUT_FEATURES not in sig.inputs:
        return False
    info = sig.inputs[INPUT_FEATURES]
    return info.dtype == dtypes.DT_FLOAT and (info.shape is None or (
        len(info.shape) == 2 and info.shape[1] in (-1, len(FEATURE_NAMES))))


class PredictCall:
    """One Predict in flight. `result()` returns the Prediction or raises ModelRejected / PredictUnavailable."""

    __slots__ = ("_future", "_client", "rows", "signature", "sent_at", "answered_at")

    def __init__(self, future: Any, client: PredictClient, rows: int, signature: str) -> None:
        self._future = future
        self._client = client
        self.rows = rows
        self.signature = signature
        self.sent_at = time.time()
        self.answered_at: float | None = None
        future.add_done_callback(self._answered)

    def _answered(self, _future: Any) -> None:  # on a gRPC thread: one timestamp, nothing else
        self.answered_at = time.time()

    def done(self) -> bool:
        return self._future.done()

    def cancel(self) -> None:
        self._future.cancel()

    def result(self) -> Prediction:
        try:
            data = self._future.result()
        except grpc.RpcError as exc:
            raise _rpc_error(exc) from None
        except CancelledError:
            raise PredictUnavailable("CANCELLED", "the call was cancelled") from None
        try:
            name, version, outputs = decode_predict_response(data)
        except WireError as exc:
            raise PredictUnavailable("BAD_RESPONSE", str(exc)) from None
        self._client.seen_version(version)
        return Prediction(name, version, outputs)


class PredictClient:
    def __init__(self, target: str, *, model_name: str, signature_name: str = SIGNATURE_NAME,
                 model_input: ModelInput = ModelInput.AUTO, version: int | None = None,
                 version_label: str | None = None, deadline_s: float = 5.0, tls: GrpcTls | None = None) -> None:
        options = [("grpc.max_receive_message_length", _MAX_MESSAGE), ("grpc.max_send_message_length", _MAX_MESSAGE),
                   ("grpc.keepalive_time_ms", 30_000), ("grpc.enable_retries", 0)]
        if tls is not None:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.secure_channel(target, tls.credentials(), options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        # bytes in, bytes out: no (de)serializer
        self._predict = self._channel.unary_unary(PREDICT_METHOD)
        self._metadata = self._channel.unary_unary(METADATA_METHOD)
        self.model_name = model_name
        self.examples_signature = signature_name
        self.model_input = ModelInput(model_input)
        self._spec = dict(model_name=model_name, version=version, version_label=version_label)
        self.deadline_s = deadline_s
        self.target = target
        self._examples = ExampleBatchEncoder()
        self._lock = threading.Lock()
        # Blocking calls on threads of our own: grpc's `future()` starts a channel-polling thread whenever no
        # call is in flight, i.e. on nearly every call at the bridge's pace, which costs more than the call.
        # Two: one call in flight while the next batch's is sent (fraud.stream's pipeline depth 1).
        self._callers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="predict")
        #: the signature in use (None: read the model's metadata first) and the version it was read for
        self.signature: str | None = None if self.model_input is ModelInput.AUTO else (
            FEATURES_SIGNATURE_NAME if self.model_input is ModelInput.FEATURES else signature_name)
        self.checked_version: int | None = None

    # -- which signature -----------------------------------------------------------------------

    def seen_version(self, version: int | None) -> None:
        """A response came from `version`: read the metadata again before the next call if it is new."""
        if self.model_input is ModelInput.AUTO and version is not None and version != self.checked_version:
            with self._lock:
                if version != self.checked_version:
                    self.signature = None

    def invalidate(self) -> None:
        """Read the model's signatures again before the next call (e.g. the model refused a valid row)."""
        if self.model_input is ModelInput.AUTO:
            self.signature = None

    def signatures(self) -> tuple[int | None, dict[str, SignatureInfo]]:
        """(version, signatures) of the served model, from GetModelMetadata."""
        request = encode_metadata_request(self.model_name, version=self._spec["version"],
                                          version_label=self._spec["version_label"])
        try:
            data = self._metadata(request, timeout=self.deadline_s)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = (exc.details() if hasattr(exc, "details") else str(exc)) or ""
            raise PredictUnavailable(code.name, f"GetModelMetadata: {details}") from None
        try:
            _, version, signatures = decode_model_metadata(data)
        except WireError as exc:
            raise PredictUnavailable("BAD_RESPONSE", f"model metadata: {exc}") from None
        return version, signatures

    def choose_signature(self) -> str:
        version, signatures = self.signatures()
        if features_signature_fits(signatures.get(FEATURES_SIGNATURE_NAME)):
            chosen = FEATURES_SIGNATURE_NAME
        elif INPUT_EXAMPLES in getattr(signatures.get(self.examples_signature), "inputs", {}):
            chosen = self.examples_signature
        else:
            raise PredictUnavailable("FAILED_PRECONDITION", (
                f"model {self.model_name} v{version} has neither a {FEATURES_SIGNATURE_NAME} signature taking "
                f"float32 [N, {len(FEATURE_NAMES)}] '{INPUT_FEATURES}' nor a {self.examples_signature} signature "
                f"taking '{INPUT_EXAMPLES}' (has {sorted(signatures)})"))
        if chosen != self.signature or version != self.checked_version:
            log_event(log, logging.INFO, "model_signature", model=self.model_name, version=version, signature=chosen,
                      signatures=sorted(signatures))
        self.signature, self.checked_version = chosen, version
        return chosen

    # -- calls ---------------------------------------------------------------------------------

    def start(self, features: np.ndarray) -> PredictCall:
        """Send one Predict for `features` (float32 [N, 30]) and return without waiting."""
        signature = self.signature or self.choose_signature()
        if signature == FEATURES_SIGNATURE_NAME:
            inputs = {INPUT_FEATURES: encode_float_matrix(features)}
        else:
            inputs = {INPUT_EXAMPLES: self._examples.tensor(features)}
        request = encode_predict_request_inputs(inputs, signature_name=signature, **self._spec)
        future = self._callers.submit(self._predict, request, timeout=self.deadline_s)
        return PredictCall(future, self, len(features), signature)

    def predict(self, features: np.ndarray) -> Prediction:
        return self.start(features).result()

    def close(self) -> None:
        self._callers.shutdown(wait=False, cancel_futures=True)
        self._channel.close()
