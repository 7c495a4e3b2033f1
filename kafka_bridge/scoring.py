"""The bridge's process function: transaction records in, score events and dead letters out, a batch at a
time, in two steps so the processor can pipeline batches (fraud.stream.records.StagedProcess):

`submit(batch)`: decode and validate the whole batch into columns (fraud.columnar: the contract's rules
applied column-wise; a bad record becomes a dead letter with the contract's reason and field), and send one
gRPC Predict with the valid rows' 30 raw features as a float32 [N, 30] matrix (never the label), without
waiting for the answer.

`result()`: wait for the answer and encode one ScoreEvent per transaction in bulk (fraud.columnar.
encode_score_events), keyed by its id, with the model name and version the server reports in its response.

A batch the model refuses (INVALID_ARGUMENT / OUT_OF_RANGE) is first checked against a known-good example:
if the model refuses that too, the fault is the bridge's configuration or the model, not the records, so the
batch is retried instead (nothing is dead-lettered for a misconfiguration, and the model's signatures are
read again). Otherwise it is split in halves until the refused records are alone; each of those becomes a
`model_rejected` dead letter and the rest is scored. Any other failure raises RetriableError: the processor
retries the batch and commits nothing meanwhile.

A server with request batching refuses a request of more rows than its `max_batch_size` ("Task size N is
larger than maximum input batch size M", TF Serving's words): the bridge then sends M rows per Predict from
there on (the calls of one batch go out together) and says so in its log; five minutes later it sends a whole
batch again, so a limit raised meanwhile is used (one refused call per five minutes while it is not).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from fraud.columnar import TransactionColumns, decode_transactions, encode_score_events
from fraud.contract import (
    BAD_ENCODING,
    MALFORMED_JSON,
    NOT_AN_OBJECT,
    OVERSIZE,
    ContractError,
    DeadLetter,
)
from fraud.features import FEATURE_NAMES
from fraud.logs import log_event
from fraud.signature import DECISION, FEATURE_CONTRIBUTIONS, RECONSTRUCTION_ERROR, SCORE, THRESHOLD
from fraud.stream import metrics as sm
from fraud.stream.metrics import Kind, MetricDef, Metrics
from fraud.stream.records import Completed, Output, PendingResult, ProcessResult, Record, RetriableError
from kafka_bridge.predict import ModelRejected, Prediction

log = logging.getLogger("kafka_bridge")

COMPONENT = "kafka_bridge"
#: The bridge's own dead-letter reasons (next to fraud.contract.REASONS).
MODEL_REJECTED = "model_rejected"
MODEL_OUTPUT_INVALID = "model_output_invalid"
STAGE_CONVERT, STAGE_VALIDATE, STAGE_SCORE = "VALUE_CONVERTER", "TRANSFORMATION", "TASK_PUT"
_DECODE_REASONS = (MALFORMED_JSON, BAD_ENCODING, OVERSIZE, NOT_AN_OBJECT)
_CANARY_TTL_S = 60.0
#: How long a learned server batch limit holds before a whole batch is tried again (the server's
#: max_batch_size may have been raised since: one refused call per period while it was not)
_ROWS_LIMIT_TTL_S = 300.0
_N_FEATURES = len(FEATURE_NAMES)
_FEATURE_NAMES = np.array(FEATURE_NAMES, dtype=object)
#: How TF Serving's batch scheduler refuses a request above its `max_batch_size` (serving.batching too).
_SERVER_BATCH_LIMIT = re.compile(r"larger than maximum input batch size (\d+)")

PREDICT_SECONDS = MetricDef("predict_seconds", Kind.HISTOGRAM, "gRPC Predict round trip per call",
                            buckets=sm.LATENCY_BUCKETS)
PREDICT_BATCH = MetricDef("predict_batch_size", Kind.HISTOGRAM, "Examples per Predict call", buckets=sm.SIZE_BUCKETS)
PREDICT_ERRORS = MetricDef("predict_errors_total", Kind.COUNTER, "Failed Predict calls", ("code",))
SCORED = MetricDef("scored_total", Kind.COUNTER, "Transactions scored (score events built)", ("decision",))
SCORE_LATENCY = MetricDef("score_latency_seconds", Kind.HISTOGRAM,
                          "Per Predict call: the oldest transaction's record timestamp to its score built",
                          buckets=sm.LATENCY_BUCKETS)
BRIDGE_CPU = MetricDef("bridge_cpu_seconds_total", Kind.COUNTER,
                       "CPU time of the bridge's own work (decode, validate, encode request, decode response, "
                       "encode scores), per stage", ("stage",))
BRIDGE_METRICS: tuple[MetricDef, ...] = (PREDICT_SECONDS, PREDICT_BATCH, PREDICT_ERRORS, SCORED, SCORE_LATENCY,
                                         BRIDGE_CPU)


class Call(Protocol):
    """One Predict in flight (kafka_bridge.predict.PredictCall, or a test's fake)."""

    def done(self) -> bool: ...

    def result(self) -> Prediction: ...

    def cancel(self) -> None: ...


#: Starts one Predict for a float32 [N, 30] feature matrix.
StartFn = Callable[[np.ndarray], Call]


class Scorer:
    """The bridge's `StagedProcess` for fraud.stream.StreamProcessor (also callable: submit + result)."""

    def __init__(self, start: StartFn, *, output_topic: str, metrics: Metrics, model_name: str,
                 explain_top_k: int = 5, clock: Callable[[], float] = time.monotonic,
                 on_invalid_model: Callable[[], None] | None = None, trace_file: Path | None = None) -> None:
        """`start(features)` sends a Predict; `on_invalid_model()` runs when the model refuses a known-good
        row (the client reads its signatures again); `trace_file` gets one JSON line of stage timestamps per
        batch (a diagnostic: bench/bench_bridge.py's latency budget)."""
        self._start = start
        self._topic = output_topic
        self._metrics = metrics
        self._model_name = model_name
        self._top_k = max(0, min(explain_top_k, _N_FEATURES))
        self._clock = clock
        self._on_invalid_model = on_invalid_model
        self._canary = np.zeros((1, _N_FEATURES), dtype=np.float32)
        self._canary_ok_until = -math.inf
        #: the model server's largest request, once it refused a larger one (None: no limit seen, or forgotten
        #: `_ROWS_LIMIT_TTL_S` after it was learned, so that a raised limit is found)
        self.max_rows: int | None = None
        self._max_rows_until = -math.inf
        # unbuffered: one write per batch, complete lines even if the process is killed
        self._trace = open(trace_file, "ab", buffering=0) if trace_file is not None else None  # noqa: SIM115

    def __call__(self, records: Sequence[Record]) -> ProcessResult:
        return self.submit(records).result()

    def submit(self, records: Sequence[Record]) -> PendingResult:
        polled = time.time()
        c0 = time.thread_time()
        cols = decode_transactions([r.value for r in records])
        result = ProcessResult()
        for i, err in cols.refused:
            result.dead_letters.append(_dead_letter(records[i], err))
        if not len(cols):
            self._cpu("decode", c0)
            return Completed(result)
        with np.errstate(over="ignore"):  # beyond float32: inf, which the model refuses or scores as invalid
            features = cols.features.astype(np.float32)
        c1 = time.thread_time()
        self._metrics.increment(BRIDGE_CPU, c1 - c0, stage="decode")
        calls = self._calls(features)
        self._cpu("request", c1)
        return _PendingScore(self, records, cols, features, calls, result, polled, time.time())

    def _cpu(self, stage: str, since: float) -> None:
        self._metrics.increment(BRIDGE_CPU, time.thread_time() - since, stage=stage)

    # -- Predict ------------------------------------------------------------------------------------

    def _call(self, features: np.ndarray) -> Call | Exception:
        """Start a Predict; a failure to start it (e.g. the model's metadata is unavailable) is kept for result()."""
        self._metrics.observe(PREDICT_BATCH, len(features))
        try:
            return self._start(features)
        except (ModelRejected, RetriableError) as exc:
            self._metrics.increment(PREDICT_ERRORS, code=getattr(exc, "code", "UNKNOWN"))
            return exc

    def _calls(self, features: np.ndarray) -> list[tuple[slice, Call | Exception]]:
        """Start the batch's Predict: one call, or one per `max_rows` rows once the server set a limit."""
        n, cap = len(features), self.max_rows
        if cap is not None and n > cap and self._clock() >= self._max_rows_until:
            cap = self.max_rows = None  # try a whole batch again: refused, the limit is learned anew
        if cap is None or n <= cap:
            return [(slice(0, n), self._call(features))]
        return [(slice(i, i + cap), self._call(features[i:i + cap])) for i in range(0, n, cap)]

    def _wait(self, call: Call | Exception, started: float) -> Prediction:
        if isinstance(call, Exception):
            raise call
        try:
            return call.result()
        except (ModelRejected, RetriableError) as exc:
            self._metrics.increment(PREDICT_ERRORS, code=getattr(exc, "code", "UNKNOWN"))
            raise
        finally:
            answered = getattr(call, "answered_at", None)
            self._metrics.observe(PREDICT_SECONDS, (answered - started) if answered else time.time() - started)

    def predict(self, features: np.ndarray) -> Prediction:
        """One Predict, waited for (bisection, the canary)."""
        return self._wait(self._call(features), time.time())

    def _score(self, rows: np.ndarray, features: np.ndarray, call: Call | Exception | None, started: float,
               records: Sequence[Record], cols: TransactionColumns, result: ProcessResult,
               parts: list[tuple[np.ndarray, Prediction]]) -> None:
        """Score `rows` (indices into cols); refused rows alone become dead letters."""
        try:
            prediction = self._wait(call, started) if call is not None else self.predict(features)
        except ModelRejected as exc:
            limit = _server_batch_limit(exc)
            if limit is not None and len(rows) > limit:  # too many rows for the server, not bad ones
                self._limit_rows(limit)
                for i in range(0, len(rows), limit):
                    self._score(rows[i:i + limit], features[i:i + limit], None, 0.0, records, cols, result, parts)
                return
            self._check_canary(exc)
            if len(rows) > 1:
                mid = len(rows) // 2
                self._score(rows[:mid], features[:mid], None, 0.0, records, cols, result, parts)
                self._score(rows[mid:], features[mid:], None, 0.0, records, cols, result, parts)
                return
            k = int(rows[0])
            r = records[cols.rows[k]]
            result.dead_letters.append(DeadLetter(
                key=r.key, value=r.value, source_topic=r.topic, source_partition=r.partition, source_offset=r.offset,
                reason=MODEL_REJECTED, message=f"the model refused transaction {cols.transaction_ids[k]}: {exc}",
                component=COMPONENT, stage=STAGE_SCORE, exception_class=f"grpc.StatusCode.{exc.code}"))
            return
        parts.append((rows, prediction))

    def _limit_rows(self, limit: int) -> None:
        if self.max_rows is None or limit < self.max_rows:
            self.max_rows = limit
            self._max_rows_until = self._clock() + _ROWS_LIMIT_TTL_S
            log_event(log, logging.WARNING, "predict_rows_limited", max_rows=limit,
                      advice=f"the model server takes at most {limit} rows per request (its batching's max_batch_size): "
                             f"each batch is sent as calls of at most {limit} rows; raise max_batch_size (or enable "
                             f"large batch splitting) or lower --batch-max-size to send one call per batch")

    def _check_canary(self, exc: ModelRejected) -> None:
        now = self._clock()
        if now < self._canary_ok_until:
            return
        try:
            self.predict(self._canary)
        except ModelRejected as canary_exc:
            if self._on_invalid_model is not None:
                self._on_invalid_model()
            raise RetriableError(f"the model refuses even a valid all-zero example ({canary_exc}); check the "
                                 f"model name, signature and served model; first refusal: {exc}") from None
        self._canary_ok_until = now + _CANARY_TTL_S

    # -- score events -------------------------------------------------------------------------------

    def _emit(self, records: Sequence[Record], cols: TransactionColumns, rows: np.ndarray, p: Prediction,
              result: ProcessResult, now_ms: int) -> None:
        n = len(rows)

        def column(name: str, required: bool) -> np.ndarray | None:
            arr = p.outputs.get(name)
            if arr is None:
                if required:
                    raise RetriableError(f"model {p.model_name} returned no '{name}' output (has {sorted(p.outputs)})")
                return None
            if arr.ndim == 0 or arr.shape[0] != n or arr.size != n:
                raise RetriableError(f"model output '{name}' has shape {arr.shape} for {n} examples")
            return arr.reshape(n)

        scores = column(SCORE, True).astype(np.float64)  # type: ignore[union-attr]
        decisions = column(DECISION, True)
        thresholds = column(THRESHOLD, True).astype(np.float64)  # type: ignore[union-attr]
        errors = column(RECONSTRUCTION_ERROR, False)
        errors64 = errors.astype(np.float64) if errors is not None else None
        valid = (scores >= 0.0) & (scores <= 1.0) & np.isfinite(thresholds)
        if errors64 is not None:
            valid &= np.isfinite(errors64)
        explanations: list[dict[str, float]] | None = None
        contrib = p.outputs.get(FEATURE_CONTRIBUTIONS)
        if self._top_k and contrib is not None and contrib.size == n * _N_FEATURES:
            c = contrib.reshape(n, _N_FEATURES)
            top = top_k_by_magnitude(c, self._top_k)
            names = _FEATURE_NAMES[top].tolist()
            values = np.take_along_axis(c, top, axis=1).astype(np.float64).tolist()
            explanations = [dict(zip(a, b, strict=True)) for a, b in zip(names, values, strict=True)]
        model_name = p.model_name or self._model_name
        version = p.model_version if p.model_version is not None else 0
        idx = rows.tolist()
        ok = valid.tolist()
        if not all(ok):
            for j in (j for j, good in enumerate(ok) if not good):
                k = idx[j]
                r = records[cols.rows[k]]
                err = errors64[j] if errors64 is not None else None
                result.dead_letters.append(DeadLetter(
                    key=r.key, value=r.value, source_topic=r.topic, source_partition=r.partition,
                    source_offset=r.offset, reason=MODEL_OUTPUT_INVALID,
                    message=f"model {model_name} v{version} returned score={scores[j]} threshold={thresholds[j]} "
                            f"reconstruction_error={err} for transaction {cols.transaction_ids[k]}",
                    component=COMPONENT, stage=STAGE_SCORE, exception_class="kafka_bridge.InvalidModelOutput"))
            keep = [j for j, good in enumerate(ok) if good]
        else:
            keep = list(range(n))
        if not keep:
            return
        ks = [idx[j] for j in keep]
        ids = [cols.transaction_ids[k] for k in ks]
        dec = decisions[keep].astype(bool) if len(keep) != n else decisions.astype(bool)
        values = encode_score_events(
            transaction_ids=ids,
            event_times_ms=[cols.event_times_ms[k] for k in ks],
            card_ids=[cols.card_ids[k] for k in ks],
            scores=scores[keep].tolist() if len(keep) != n else scores.tolist(),
            decisions=dec.tolist(),
            thresholds=thresholds[keep].tolist() if len(keep) != n else thresholds.tolist(),
            model_name=model_name, model_version=version,
            source_timestamps_ms=[records[cols.rows[k]].timestamp_ms for k in ks],
            scored_at_ms=now_ms,
            reconstruction_errors=(None if errors64 is None else
                                   (errors64[keep].tolist() if len(keep) != n else errors64.tolist())),
            explanations=None if explanations is None else [explanations[j] for j in keep])
        topic, new = self._topic, tuple.__new__  # Output is a named tuple: skip its Python-level __new__
        result.outputs.extend([new(Output, (topic, v, k.encode(), (), None)) for v, k in zip(values, ids, strict=True)])
        positives = int(dec.sum())
        if positives:
            self._metrics.increment(SCORED, positives, decision="fraud")
        if len(keep) - positives:
            self._metrics.increment(SCORED, len(keep) - positives, decision="legit")

    def _trace_line(self, fields: dict[str, Any]) -> None:
        if self._trace is not None:
            self._trace.write(orjson.dumps(fields) + b"\n")

    def close(self) -> None:
        if self._trace is not None:
            self._trace.close()
            self._trace = None


class _PendingScore:
    """A batch whose Predict is in flight (fraud.stream.records.PendingResult)."""

    __slots__ = ("_scorer", "_records", "_cols", "_features", "_calls", "_result", "_polled", "_sent")

    def __init__(self, scorer: Scorer, records: Sequence[Record], cols: TransactionColumns, features: np.ndarray,
                 calls: list[tuple[slice, Call | Exception]], result: ProcessResult, polled: float,
                 sent: float) -> None:
        self._scorer, self._records, self._cols, self._features = scorer, records, cols, features
        self._calls, self._result, self._polled, self._sent = calls, result, polled, sent

    def done(self) -> bool:
        return all(isinstance(call, Exception) or call.done() for _, call in self._calls)

    def cancel(self) -> None:
        for _, call in self._calls:
            if not isinstance(call, Exception):
                call.cancel()

    def result(self) -> ProcessResult:
        s = self._scorer
        cols, records, result = self._cols, self._records, self._result
        parts: list[tuple[np.ndarray, Prediction]] = []
        rows = np.arange(len(cols))
        try:
            for part, call in self._calls:
                s._score(rows[part], self._features[part], call, self._sent, records, cols, result, parts)
        except BaseException:
            self.cancel()  # the batch is redone: the calls behind the failed one are not waited for
            raise
        waited = time.time()
        c0 = time.thread_time()
        now_ms = int(waited * 1000)
        for part_rows, prediction in parts:  # in row order (bisection keeps it): outputs in input order
            s._emit(records, cols, part_rows, prediction, result, now_ms)
        oldest = min(records[i].timestamp_ms for i in cols.rows)
        s._metrics.observe(SCORE_LATENCY, max(0.0, (now_ms - oldest) / 1000.0))
        s._cpu("encode", c0)
        if s._trace is not None:
            times = [t for _, call in self._calls if (t := getattr(call, "answered_at", None)) is not None]
            answered = max(times) if times else None  # the last of the batch's calls
            s._trace_line({"polled": self._polled, "sent": self._sent, "answered": answered, "emitted": time.time(),
                           "keys": [o.key.decode() for o in result.outputs]})
        return result


_COLUMN_RANK = np.arange(_N_FEATURES - 1, -1, -1, dtype=np.int64)  # earlier feature ranks higher on a tie


def top_k_by_magnitude(values: np.ndarray, k: int) -> np.ndarray:
    """Per row, the column indices of the `k` largest |values|, largest first, ties to the earlier column and
    NaN last: what `np.argsort(-np.abs(values), axis=1, kind="stable")[:, :k]` gives, without sorting whole
    rows (a partition on unique integer keys, then a sort of k per row)."""
    n, width = values.shape
    k = min(k, width)
    magnitude = np.abs(values.astype(np.float32, copy=False))
    # the bits of a non-negative float32 order like its value; the column rank breaks ties
    key = magnitude.view(np.int32).astype(np.int64) * width + _COLUMN_RANK[-width:]
    nan = np.isnan(magnitude)
    if nan.any():
        key[nan] = np.broadcast_to(_COLUMN_RANK[-width:] - width, key.shape)[nan]
    if k < width:
        part = np.argpartition(-key, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(width), (n, width))
    order = np.argsort(-np.take_along_axis(key, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def _server_batch_limit(exc: ModelRejected) -> int | None:
    """The row limit a refusal names, if it is the server's batch size limit."""
    match = _SERVER_BATCH_LIMIT.search(exc.message)
    return int(match.group(1)) if match and int(match.group(1)) > 0 else None


def _dead_letter(r: Record, err: Exception) -> DeadLetter:
    if isinstance(err, ContractError):
        stage = STAGE_CONVERT if err.reason in _DECODE_REASONS else STAGE_VALIDATE
        return DeadLetter.from_error(err, key=r.key, value=r.value, topic=r.topic, partition=r.partition,
                                     offset=r.offset, component=COMPONENT, stage=stage)
    # a parser bug must not make one record stall the partition
    return DeadLetter(key=r.key, value=r.value, source_topic=r.topic, source_partition=r.partition,
                      source_offset=r.offset, reason=MALFORMED_JSON, message=f"{type(err).__name__}: {err}"[:500],
                      component=COMPONENT, stage=STAGE_CONVERT, exception_class=type(err).__qualname__)
