"""The serving API behind both front ends: resolve the model version, run the call, account for it.

gRPC and REST decode their wire format into `serving.requests` objects, call these methods, and
encode what comes back; so NOT_FOUND, INVALID_ARGUMENT and friends are decided in one place. Every
Predict/Classify/Regress is counted once in the metrics, with its model, version, signature and status.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from serving.errors import Code, ServingError
from serving.manager import Handle, ModelManager, VersionStatus
from serving.metrics import ServingMetrics
from serving.requests import ExamplesCall, ModelSpec, MultiInferenceCall, PredictCall
from serving.servable import ClassifyResult, PredictResult, RegressResult


class RequestRecord:
    """Collects what is known about one request, and reports it when the request ends."""

    __slots__ = ("api", "entrypoint", "model", "version", "signature", "code", "examples", "started")

    def __init__(self, api: str, entrypoint: str) -> None:
        self.api = api
        self.entrypoint = entrypoint
        self.model = ""
        self.version: int | None = None
        self.signature = ""
        self.code = Code.OK
        self.examples: int | None = None
        self.started = time.perf_counter()


class ServingApi:
    def __init__(self, manager: ModelManager, metrics: ServingMetrics) -> None:
        self.manager = manager
        self.metrics = metrics

    # -----------------------------------------------------------------------------------------
    # Accounting

    def begin(self, api: str, entrypoint: str) -> RequestRecord:
        return RequestRecord(api, entrypoint)

    def end(self, record: RequestRecord, error: BaseException | None = None) -> None:
        if error is not None:
            record.code = error.code if isinstance(error, ServingError) else Code.INTERNAL
        self.metrics.request(model=record.model, version=record.version, signature=record.signature,
                             api=record.api, entrypoint=record.entrypoint, code=record.code,
                             latency_s=time.perf_counter() - record.started, examples=record.examples)

    # -----------------------------------------------------------------------------------------
    # Calls (the handle is acquired by the caller, who may need the signature before decoding)

    def acquire(self, spec: ModelSpec, record: RequestRecord | None = None) -> Handle:
        if record is not None:
            record.model = spec.name
        handle = self.manager.acquire(spec)
        if record is not None:
            record.version = handle.version
        return handle

    def _timed(self, record: RequestRecord, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = fn()
        self.metrics.runtime(model=record.model, api=record.api, latency_s=time.perf_counter() - started)
        return result

    def predict(self, handle: Handle, call: PredictCall, record: RequestRecord,
                deadline: float | None = None) -> PredictResult:
        record.signature = call.model_spec.signature_name or "serving_default"
        result = self._timed(record, lambda: handle.servable.predict(call, deadline=deadline))
        record.signature = result.signature_name
        return result

    def classify(self, handle: Handle, call: ExamplesCall, record: RequestRecord,
                 deadline: float | None = None) -> ClassifyResult:
        record.signature = call.model_spec.signature_name or "serving_default"
        record.examples = len(call.examples)
        result = self._timed(record, lambda: handle.servable.classify(call, deadline=deadline))
        record.signature = result.signature_name
        return result

    def regress(self, handle: Handle, call: ExamplesCall, record: RequestRecord,
                deadline: float | None = None) -> RegressResult:
        record.signature = call.model_spec.signature_name or "serving_default"
        record.examples = len(call.examples)
        result = self._timed(record, lambda: handle.servable.regress(call, deadline=deadline))
        record.signature = result.signature_name
        return result

    def multi_inference(self, handle: Handle, call: MultiInferenceCall, record: RequestRecord,
                        deadline: float | None = None) -> list[ClassifyResult | RegressResult]:
        record.signature = ",".join(t.model_spec.signature_name or "serving_default" for t in call.tasks)
        record.examples = len(call.examples)
        return self._timed(record, lambda: handle.servable.multi_inference(call, deadline=deadline))

    def status(self, spec: ModelSpec) -> list[VersionStatus]:
        """GetModelStatus; like TF Serving it ignores a version label and reports every version."""
        return self.manager.status(spec.name, spec.version)
