"""The gRPC front end: tensorflow.serving.PredictionService and ModelService, as TF Serving serves them.

Predict, Classify, Regress and MultiInference take and return raw bytes (see serving.wire for why);
GetModelMetadata, GetModelStatus and HandleReloadConfigRequest parse the generated protos from
tensorflow-serving-api inside the handler. Errors become gRPC status codes with TF Serving's messages
(truncated at 1024 characters like grpc_status_util.cc). The client's deadline bounds queueing and is
checked before the graph runs.

Two deliberate differences from TF Serving:
- Bytes that are not a valid request message answer INVALID_ARGUMENT ("Failed to parse request: ...").
  TF Serving never sees them: gRPC C++'s deserializer answers INTERNAL with an empty message (grpc's
  GenericDeserialize), as grpcio's generated handlers answer INTERNAL "Exception deserializing
  request!". A client's malformed bytes are the client's fault, and every method here says so alike.
- HandleReloadConfigRequest replaces the whole model list for anyone who can reach the port; TF Serving
  always serves it. Here it answers UNIMPLEMENTED unless the operator turns it on
  (`--enable_reload_config_request`): the code gRPC and TF Serving use for an operation "not
  supported/enabled in this service" (google.rpc.Code), rather than PERMISSION_DENIED, which is about
  who the caller is, and this server does not authenticate callers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

from fraud import wire as codec
from serving import wire
from serving.api import ServingApi
from serving.config import parse_model_server_config
from serving.errors import Code, ServingError
from serving.requests import InferenceTask, ModelSpec, MultiInferenceCall

log = logging.getLogger("serving.grpc")

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
_GRPC_CODES = {c.value[0]: c for c in grpc.StatusCode}


def _identity(data: bytes) -> bytes:
    return data


def _deadline(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def spec_from_proto(proto: Any) -> ModelSpec:
    choice = proto.WhichOneof("version_choice")
    return ModelSpec(
        name=proto.name,
        version=proto.version.value if choice == "version" else None,
        version_label=proto.version_label if choice == "version_label" else None,
        signature_name=proto.signature_name,
    )


class PredictionServicer:
    """Handlers for both services; each returns the response or aborts the call with a status."""

    def __init__(self, api: ServingApi, tensor_content: bool = False,
                 reload_config: Callable[[tuple], None] | None = None) -> None:
        self._api = api
        self._tensor_content = tensor_content
        self._reload_config = reload_config

    # -----------------------------------------------------------------------------------------
    # Hot path: raw bytes in, raw bytes out

    def predict(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        record = self._api.begin("Predict", "GRPC")
        error: ServingError | None = None
        try:
            try:
                call = wire.decode_predict_request(data)
            except ServingError as exc:
                self._check_model_first(data, exc, record)
                raise
            with self._api.acquire(call.model_spec, record) as handle:
                result = self._api.predict(handle, call, record, _deadline(context))
            spec = codec.encode_model_spec(call.model_spec.name, handle.version, result.signature_name)
            return wire.encode_predict_response(result.outputs, spec, result.output_dtypes, self._tensor_content)
        except ServingError as exc:
            error = exc
        except Exception as exc:  # never let a bug escape as a crash or a hang
            log.exception("Predict failed")
            error = ServingError(Code.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            self._api.end(record, error)
        return self._abort(context, error)

    def _check_model_first(self, data: bytes, error: ServingError, record: Any) -> None:
        """A tensor that does not parse is reported as TF Serving orders its checks: the model version
        (NOT_FOUND, a bad label) and the signature (FAILED_PRECONDITION) come first, the tensor's
        INVALID_ARGUMENT after. Raises the earlier error when there is one; returns otherwise."""
        if not error.message.startswith("tensor parsing error"):
            return
        spec: ModelSpec | None = None
        try:
            for field, wire_type, a, b in codec.iter_fields(data, 0, len(data)):
                if field == 1 and wire_type == 2:
                    spec = ModelSpec(*codec.decode_model_spec(data, a, b))
        except codec.WireError:
            return
        if spec is None:
            return
        with self._api.acquire(spec, record) as handle:
            handle.servable.signature(spec.signature_name)

    def classify(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        return self._examples(data, context, "Classify")

    def regress(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        return self._examples(data, context, "Regress")

    def multi_inference(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        record = self._api.begin("MultiInference", "GRPC")
        error: ServingError | None = None
        try:
            call = decode_multi_inference_request(data)
            with self._api.acquire(call.model_spec, record) as handle:
                results = self._api.multi_inference(handle, call, record, _deadline(context))
                return encode_multi_inference_response(call, results, handle.version)
        except ServingError as exc:
            error = exc
        except Exception as exc:
            log.exception("MultiInference failed")
            error = ServingError(Code.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            self._api.end(record, error)
        return self._abort(context, error)

    def _examples(self, data: bytes, context: grpc.ServicerContext, api: str) -> bytes:
        record = self._api.begin(api, "GRPC")
        error: ServingError | None = None
        try:
            call = wire.decode_examples_request(data)
            with self._api.acquire(call.model_spec, record) as handle:
                if api == "Classify":
                    result = self._api.classify(handle, call, record, _deadline(context))
                    spec = codec.encode_model_spec(call.model_spec.name, handle.version, result.signature_name)
                    return wire.encode_classification_response(result.labels, result.scores, spec)
                regression = self._api.regress(handle, call, record, _deadline(context))
                spec = codec.encode_model_spec(call.model_spec.name, handle.version, regression.signature_name)
                return wire.encode_regression_response(regression.values, spec)
        except ServingError as exc:
            error = exc
        except Exception as exc:
            log.exception("%s failed", api)
            error = ServingError(Code.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            self._api.end(record, error)
        return self._abort(context, error)

    # -----------------------------------------------------------------------------------------
    # Metadata, status, config

    def get_model_metadata(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        from tensorflow_serving.apis import get_model_metadata_pb2

        try:
            request = _parse(get_model_metadata_pb2.GetModelMetadataRequest, data)
            if not request.HasField("model_spec"):
                raise ServingError(Code.INVALID_ARGUMENT, "Missing ModelSpec")
            if not request.metadata_field:
                raise ServingError(Code.INVALID_ARGUMENT,
                                   "GetModelMetadataRequest must specify at least one metadata_field")
            for name in request.metadata_field:
                if name != "signature_def":
                    raise ServingError(Code.INVALID_ARGUMENT, f"Metadata field {name} is not supported")
            with self._api.acquire(spec_from_proto(request.model_spec)) as handle:
                response = get_model_metadata_pb2.GetModelMetadataResponse()
                response.model_spec.name = handle.model_name
                response.model_spec.version.value = handle.version
                response.metadata["signature_def"].CopyFrom(handle.servable.metadata_any())
                return response.SerializeToString()
        except ServingError as exc:
            return self._abort(context, exc)

    def get_model_status(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        from tensorflow_serving.apis import get_model_status_pb2

        try:
            request = _parse(get_model_status_pb2.GetModelStatusRequest, data)
            if not request.HasField("model_spec"):
                raise ServingError(Code.INVALID_ARGUMENT, "Missing ModelSpec")
            statuses = self._api.status(spec_from_proto(request.model_spec))
            return status_response(statuses, get_model_status_pb2).SerializeToString()
        except ServingError as exc:
            return self._abort(context, exc)

    def handle_reload_config_request(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        from google.protobuf import text_format
        from tensorflow_serving.apis import model_management_pb2

        response = model_management_pb2.ReloadConfigResponse()
        try:
            if self._reload_config is None:
                raise ServingError(Code.UNIMPLEMENTED, "HandleReloadConfigRequest is disabled on this server; the "
                                                       "operator enables it with --enable_reload_config_request")
            request = _parse(model_management_pb2.ReloadConfigRequest, data)
            if request.config.WhichOneof("config") != "model_config_list":
                raise ServingError(Code.INVALID_ARGUMENT, "ServerModelConfig type not supported by "
                                                          "HandleReloadConfigRequest. Only ModelConfigList is currently supported")
            try:
                models = parse_model_server_config(text_format.MessageToString(request.config), "ReloadConfigRequest")
            except Exception as exc:
                raise ServingError(Code.INVALID_ARGUMENT, str(exc)) from None
            self._reload_config(models)
            response.status.error_code = 0
            return response.SerializeToString()
        except ServingError as exc:
            response.status.error_code = int(exc.code)
            response.status.error_message = exc.message
            return self._abort(context, exc)

    @staticmethod
    def _abort(context: grpc.ServicerContext, error: ServingError | None) -> Any:
        assert error is not None
        context.abort(_GRPC_CODES.get(int(error.code), grpc.StatusCode.UNKNOWN), error.grpc_message())


def _parse(message_class: Any, data: bytes) -> Any:
    """A generated request message from the call's bytes; INVALID_ARGUMENT when they are not one."""
    from google.protobuf.message import DecodeError

    try:
        return message_class.FromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ServingError(Code.INVALID_ARGUMENT, f"Failed to parse request: {exc}") from None


_CLASSIFY_METHOD = "tensorflow/serving/classify"


def decode_multi_inference_request(data: bytes) -> MultiInferenceCall:
    """MultiInferenceRequest bytes (tasks = 1, input = 2) -> MultiInferenceCall.

    The examples are kept as the bytes the client sent, as for Classify (TF Serving's Input fields are
    lazily parsed and reach the graph as serialized strings): a malformed tf.Example is the graph's
    ParseExample error, INVALID_ARGUMENT, not a request that cannot be parsed.
    """
    tasks: list[InferenceTask] = []
    input_bytes = b""
    try:
        for field, wire_type, a, b in codec.iter_fields(data, 0, len(data)):
            if wire_type != 2:
                continue
            if field == 1:  # InferenceTask: model_spec = 1, method_name = 2
                spec = ModelSpec(name="")
                method = ""
                for f2, wt2, a2, b2 in codec.iter_fields(data, a, b):
                    if wt2 != 2:
                        continue
                    if f2 == 1:
                        spec = ModelSpec(*codec.decode_model_spec(data, a2, b2))
                    elif f2 == 2:
                        try:
                            method = bytes(data[a2:b2]).decode("utf-8")
                        except UnicodeDecodeError:
                            raise codec.WireError("method_name is not valid UTF-8") from None
                tasks.append(InferenceTask(spec, method))
            elif field == 2:
                input_bytes = data[a:b]
        # Input is field 2 of a ClassificationRequest too: its decoder merges the context the same way.
        wrapped = b"\x12" + codec.encode_varint(len(input_bytes)) + input_bytes + b"\x0a\x00"
        examples = wire.decode_examples_request(wrapped).examples
    except codec.WireError as exc:
        raise ServingError(Code.INVALID_ARGUMENT, f"Failed to parse request: {exc}") from None
    return MultiInferenceCall(tasks=tuple(tasks), examples=tuple(examples))


def encode_multi_inference_response(call: MultiInferenceCall, results: list, version: int) -> bytes:
    """MultiInferenceResponse: one InferenceResult per task, in task order, each with the task's model
    spec (signature name defaulted, the served version), as TF Serving's MakeModelSpec fills it."""
    from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2

    response = inference_pb2.MultiInferenceResponse()
    for task, result in zip(call.tasks, results, strict=True):
        entry = response.results.add()
        if task.method_name == _CLASSIFY_METHOD:
            encoded = wire.encode_classification_response(result.labels, result.scores, b"")
            entry.classification_result.CopyFrom(classification_pb2.ClassificationResponse.FromString(encoded).result)
        else:
            encoded = wire.encode_regression_response(result.values, b"")
            entry.regression_result.CopyFrom(regression_pb2.RegressionResponse.FromString(encoded).result)
        entry.model_spec.name = task.model_spec.name
        entry.model_spec.version.value = version
        entry.model_spec.signature_name = task.model_spec.signature_name or "serving_default"
    return response.SerializeToString()


def status_response(statuses: list, pb2: Any) -> Any:
    """A GetModelStatusResponse from manager VersionStatus entries."""
    response = pb2.GetModelStatusResponse()
    for s in statuses:
        entry = response.model_version_status.add()
        entry.version = s.version
        entry.state = pb2.ModelVersionStatus.State.Value(s.state.value)
        entry.status.error_code = int(s.code)
        entry.status.error_message = s.message
    return response


class GrpcServer:
    """A grpc.Server and the worker pool it runs handlers on (grpc never shuts that pool down itself)."""

    def __init__(self, server: grpc.Server, pool: futures.ThreadPoolExecutor, port: int) -> None:
        self._server = server
        self._pool = pool
        self.port = port

    def start(self) -> None:
        self._server.start()

    def stop(self, deadline: float) -> bool:
        """Refuse new calls, let running ones finish until `deadline` (time.monotonic()), join the worker
        threads. False when a handler is still busy at the deadline (a graph call cannot be interrupted)."""
        self._server.stop(max(0.0, deadline - time.monotonic())).wait()
        self._pool.shutdown(wait=False, cancel_futures=True)
        return join_threads(list(getattr(self._pool, "_threads", ())), deadline)


def join_threads(threads: list, deadline: float) -> bool:
    """Join threads until `deadline`; True when all of them ended."""
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return not any(t.is_alive() for t in threads)


def make_server(servicer: PredictionServicer, host: str, port: int, max_workers: int) -> GrpcServer:
    """A grpc server (not yet started) with both services bound to host:port."""
    pool = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc-worker")
    server = grpc.server(
        pool,
        options=[
            ("grpc.max_receive_message_length", -1),  # TF Serving allows messages up to INT_MAX
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),  # a taken port must fail, not be silently shared
        ],
    )
    raw = {"request_deserializer": _identity, "response_serializer": _identity}
    # Every method takes the call's bytes and parses them itself, so bytes that are not a request
    # answer INVALID_ARGUMENT from the handler rather than grpcio's INTERNAL "Exception deserializing".
    prediction = {
        "Predict": grpc.unary_unary_rpc_method_handler(servicer.predict, **raw),
        "Classify": grpc.unary_unary_rpc_method_handler(servicer.classify, **raw),
        "Regress": grpc.unary_unary_rpc_method_handler(servicer.regress, **raw),
        "MultiInference": grpc.unary_unary_rpc_method_handler(servicer.multi_inference, **raw),
        "GetModelMetadata": grpc.unary_unary_rpc_method_handler(servicer.get_model_metadata, **raw),
    }
    model = {
        "GetModelStatus": grpc.unary_unary_rpc_method_handler(servicer.get_model_status, **raw),
        "HandleReloadConfigRequest": grpc.unary_unary_rpc_method_handler(servicer.handle_reload_config_request, **raw),
    }
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler(PREDICTION_SERVICE, prediction),
        grpc.method_handlers_generic_handler(MODEL_SERVICE, model),
    ))
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        server.stop(None)
        pool.shutdown(wait=True)
        raise ServingError(Code.UNAVAILABLE, f"cannot listen for gRPC on {host}:{port} (port taken?)")
    return GrpcServer(server, pool, bound)
