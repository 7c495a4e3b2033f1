"""The gRPC Predict client: one reused channel, a deadline per call, TLS when configured.

Calls go through the raw method path with bytes in and out (see fraud.wire), so the bridge
speaks to TensorFlow Serving or the project's serving/ without importing TensorFlow. gRPC status codes
are sorted into what the bridge does with them: `ModelRejected` (INVALID_ARGUMENT, OUT_OF_RANGE: this
batch's content is refused: find the record at fault) and `RetriableError` (everything else: the server
is down, loading, overloaded or misconfigured; retry, commit nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from fraud.errors import FraudError
from fraud.stream.records import RetriableError
from fraud.wire import WireError, decode_predict_response, encode_predict_request

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
REJECTED_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE)
_MAX_MESSAGE = 64 * 1024 * 1024


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


class PredictClient:
    def __init__(self, target: str, *, model_name: str, signature_name: str, input_key: str,
                 version: int | None = None, version_label: str | None = None, deadline_s: float = 5.0,
                 tls: GrpcTls | None = None) -> None:
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
        self._request = dict(model_name=model_name, signature_name=signature_name, input_key=input_key,
                             version=version, version_label=version_label)
        self.deadline_s = deadline_s
        self.target = target

    def predict(self, examples: Sequence[bytes]) -> Prediction:
        request = encode_predict_request(examples, **self._request)
        try:
            data = self._predict(request, timeout=self.deadline_s)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = (exc.details() if hasattr(exc, "details") else str(exc)) or ""
            if code in REJECTED_CODES:
                raise ModelRejected(code.name, details) from None
            raise PredictUnavailable(code.name, details) from None
        try:
            name, version, outputs = decode_predict_response(data)
        except WireError as exc:
            raise PredictUnavailable("BAD_RESPONSE", str(exc)) from None
        return Prediction(name, version, outputs)

    def close(self) -> None:
        self._channel.close()
