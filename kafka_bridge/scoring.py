"""The bridge's process function: transaction records in, score events and dead letters out.

Per micro-batch: parse and validate each record with fraud.contract (a bad one becomes a dead letter
with the contract's reason and field), encode the valid ones as raw tf.Examples (features only, never the
label), score them with one gRPC Predict, and build one ScoreEvent per transaction keyed by its id, with
the model name and version the server reports in its response.

A batch the model refuses (INVALID_ARGUMENT / OUT_OF_RANGE) is split in halves until the refused
records are alone; each of those becomes a `model_rejected` dead letter and the rest is scored. Before
dead-lettering, a known-good example is sent: if the model refuses that too, the fault is the bridge's
configuration or the model, not the record, so the batch is retried instead (nothing is dead-lettered
for a misconfiguration). Any other failure raises RetriableError: the processor retries the batch and
commits nothing meanwhile.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from fraud.contract import (
    BAD_ENCODING,
    MALFORMED_JSON,
    NOT_AN_OBJECT,
    OVERSIZE,
    ContractError,
    DeadLetter,
    ScoreEvent,
    TransactionEvent,
)
from fraud.features import FEATURE_NAMES
from fraud.signature import DECISION, FEATURE_CONTRIBUTIONS, RECONSTRUCTION_ERROR, SCORE, THRESHOLD
from fraud.stream import metrics as sm
from fraud.stream.metrics import Kind, MetricDef, Metrics
from fraud.stream.records import Output, ProcessResult, Record, RetriableError
from fraud.wire import ExampleEncoder
from kafka_bridge.predict import ModelRejected, Prediction

COMPONENT = "kafka_bridge"
#: The bridge's own dead-letter reasons (next to fraud.contract.REASONS).
MODEL_REJECTED = "model_rejected"
MODEL_OUTPUT_INVALID = "model_output_invalid"
STAGE_CONVERT, STAGE_VALIDATE, STAGE_SCORE = "VALUE_CONVERTER", "TRANSFORMATION", "TASK_PUT"
_DECODE_REASONS = (MALFORMED_JSON, BAD_ENCODING, OVERSIZE, NOT_AN_OBJECT)
_CANARY_TTL_S = 60.0

PREDICT_SECONDS = MetricDef("predict_seconds", Kind.HISTOGRAM, "gRPC Predict round trip per call",
                            buckets=sm.LATENCY_BUCKETS)
PREDICT_BATCH = MetricDef("predict_batch_size", Kind.HISTOGRAM, "Examples per Predict call", buckets=sm.SIZE_BUCKETS)
PREDICT_ERRORS = MetricDef("predict_errors_total", Kind.COUNTER, "Failed Predict calls", ("code",))
SCORED = MetricDef("scored_total", Kind.COUNTER, "Transactions scored (score events built)", ("decision",))
SCORE_LATENCY = MetricDef("score_latency_seconds", Kind.HISTOGRAM,
                          "Per Predict call: the oldest transaction's record timestamp to its score built",
                          buckets=sm.LATENCY_BUCKETS)
BRIDGE_METRICS: tuple[MetricDef, ...] = (PREDICT_SECONDS, PREDICT_BATCH, PREDICT_ERRORS, SCORED, SCORE_LATENCY)

PredictFn = Callable[[Sequence[bytes]], Prediction]


class Scorer:
    """Callable process function for fraud.stream.StreamProcessor."""

    def __init__(self, predict: PredictFn, *, output_topic: str, metrics: Metrics, model_name: str,
                 explain_top_k: int = 5, clock: Callable[[], float] = time.monotonic) -> None:
        self._predict = predict
        self._topic = output_topic
        self._metrics = metrics
        self._model_name = model_name
        self._top_k = max(0, min(explain_top_k, len(FEATURE_NAMES)))
        self._clock = clock
        self._encoder = ExampleEncoder()
        self._canary = self._encoder.encode([0.0] * len(FEATURE_NAMES))
        self._canary_ok_until = -math.inf

    def __call__(self, records: Sequence[Record]) -> ProcessResult:
        result = ProcessResult()
        good: list[tuple[Record, TransactionEvent]] = []
        for r in records:
            try:
                if r.value is None:
                    raise ContractError(NOT_AN_OBJECT, "record has no value (a tombstone)")
                good.append((r, TransactionEvent.from_json(r.value)))
            except ContractError as err:
                stage = STAGE_CONVERT if err.reason in _DECODE_REASONS else STAGE_VALIDATE
                result.dead_letters.append(DeadLetter.from_error(
                    err, key=r.key, value=r.value, topic=r.topic, partition=r.partition, offset=r.offset,
                    component=COMPONENT, stage=stage))
            except Exception as exc:  # noqa: BLE001 (a parser bug must not make one record stall the partition)
                result.dead_letters.append(DeadLetter(
                    key=r.key, value=r.value, source_topic=r.topic, source_partition=r.partition,
                    source_offset=r.offset, reason=MALFORMED_JSON, message=f"{type(exc).__name__}: {exc}"[:500],
                    component=COMPONENT, stage=STAGE_CONVERT, exception_class=type(exc).__qualname__))
        if good:
            encode = self._encoder.encode
            examples = [encode(ev.feature_vector()) for _, ev in good]
            self._score(good, examples, result)
        return result

    def _call(self, examples: Sequence[bytes]) -> Prediction:
        t0 = self._clock()
        try:
            return self._predict(examples)
        except ModelRejected as exc:
            self._metrics.increment(PREDICT_ERRORS, code=exc.code)
            raise
        except RetriableError as exc:
            self._metrics.increment(PREDICT_ERRORS, code=getattr(exc, "code", "UNKNOWN"))
            raise
        finally:
            self._metrics.observe(PREDICT_SECONDS, self._clock() - t0)
            self._metrics.observe(PREDICT_BATCH, len(examples))

    def _score(self, good: list[tuple[Record, TransactionEvent]], examples: list[bytes],
               result: ProcessResult) -> None:
        try:
            prediction = self._call(examples)
        except ModelRejected as exc:
            if len(examples) > 1:
                mid = len(examples) // 2
                self._score(good[:mid], examples[:mid], result)
                self._score(good[mid:], examples[mid:], result)
                return
            self._check_canary(exc)
            r, ev = good[0]
            result.dead_letters.append(DeadLetter(
                key=r.key, value=r.value, source_topic=r.topic, source_partition=r.partition, source_offset=r.offset,
                reason=MODEL_REJECTED, message=f"the model refused transaction {ev.transaction_id}: {exc}",
                component=COMPONENT, stage=STAGE_SCORE, exception_class=f"grpc.StatusCode.{exc.code}"))
            return
        self._emit(good, prediction, result)

    def _check_canary(self, exc: ModelRejected) -> None:
        now = self._clock()
        if now < self._canary_ok_until:
            return
        try:
            self._call([self._canary])
        except ModelRejected as canary_exc:
            raise RetriableError(f"the model refuses even a valid all-zero example ({canary_exc}); check the "
                                 f"model name, signature and served model; first refusal: {exc}") from None
        self._canary_ok_until = now + _CANARY_TTL_S

    def _emit(self, good: list[tuple[Record, TransactionEvent]], p: Prediction, result: ProcessResult) -> None:
        n = len(good)

        def column(name: str, required: bool) -> list | None:
            arr = p.outputs.get(name)
            if arr is None:
                if required:
                    raise RetriableError(f"model {p.model_name} returned no '{name}' output (has {sorted(p.outputs)})")
                return None
            if arr.ndim == 0 or arr.shape[0] != n or arr.size != n:
                raise RetriableError(f"model output '{name}' has shape {arr.shape} for {n} examples")
            return arr.reshape(n).tolist()

        scores = column(SCORE, True)
        decisions = column(DECISION, True)
        thresholds = column(THRESHOLD, True)
        errors = column(RECONSTRUCTION_ERROR, False)
        explain: list[dict[str, float]] | None = None
        contrib = p.outputs.get(FEATURE_CONTRIBUTIONS)
        if self._top_k and contrib is not None and contrib.size == n * len(FEATURE_NAMES):
            c = contrib.reshape(n, len(FEATURE_NAMES)).astype(np.float64)
            top = np.argsort(-np.abs(c), axis=1, kind="stable")[:, : self._top_k].tolist()
            values = c.tolist()
            explain = [{FEATURE_NAMES[j]: values[i][j] for j in top[i]} for i in range(n)]
        model_name = p.model_name or self._model_name
        version = p.model_version if p.model_version is not None else 0
        now_ms = int(time.time() * 1000)
        positives = emitted = 0
        outputs = result.outputs
        for i, (r, ev) in enumerate(good):
            score = scores[i]
            err = errors[i] if errors is not None else None
            if not (0.0 <= score <= 1.0) or not math.isfinite(thresholds[i]) or (err is not None and not math.isfinite(err)):
                result.dead_letters.append(DeadLetter(
                    key=r.key, value=r.value, source_topic=r.topic, source_partition=r.partition,
                    source_offset=r.offset, reason=MODEL_OUTPUT_INVALID,
                    message=f"model {model_name} v{version} returned score={score} threshold={thresholds[i]} "
                            f"reconstruction_error={err} for transaction {ev.transaction_id}",
                    component=COMPONENT, stage=STAGE_SCORE, exception_class="kafka_bridge.InvalidModelOutput"))
                continue
            decision = bool(decisions[i])
            positives += decision
            emitted += 1
            event = ScoreEvent(
                transaction_id=ev.transaction_id, event_time_ms=ev.event_time_ms, card_id=ev.card_id,
                score=score, decision=decision, threshold=thresholds[i], model_name=model_name,
                model_version=version, source_timestamp_ms=r.timestamp_ms, scored_at_ms=now_ms,
                reconstruction_error=err, explanation=explain[i] if explain is not None else {})
            outputs.append(Output(self._topic, event.to_json(), ev.transaction_id.encode()))
        # one observation per call: a histogram observation per event would cost more than the scoring
        oldest = min(r.timestamp_ms for r, _ in good)
        self._metrics.observe(SCORE_LATENCY, max(0.0, (now_ms - oldest) / 1000.0))
        if positives:
            self._metrics.increment(SCORED, positives, decision="fraud")
        if emitted - positives:
            self._metrics.increment(SCORED, emitted - positives, decision="legit")
