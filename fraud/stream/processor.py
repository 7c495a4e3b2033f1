"""The consume-process-produce loop: micro-batches in, outputs and dead letters out, offsets committed
by the delivery mode (fraud.stream.delivery), with retries that never skip a record.

Each turn of the loop, on one thread:

1. let the delivery mode confirm and commit what is due (acknowledgements, an interval, an idle loop);
2. collect a micro-batch: what the client has ready now, up to `batch_max_size` records. Nothing is waited
   for while anything is in flight; when the loop is idle it blocks until the first record arrives (or a
   commit is due) and takes it at once, so batches grow only under load (`batch_max_wait_ms` > 0 waits to
   fill one instead);
3. submit it to the process function. A staged one (`StagedProcess`, the scoring bridge) starts its work
   (a Predict call) and returns; the batch before it is finished and delivered while that is in flight
   (`pipeline_depth` batches in flight). A plain function runs to completion here;
4. deliver finished batches in order: the delivery mode produces their outputs and dead letters (at-least-
   once: committed once acknowledged; exactly-once: into a transaction spanning the batches of up to
   `commit_interval_ms`, committed with the input offsets).

Any transient failure (`RetriableError` from the process function or the client) drops every batch in
flight, makes the delivery mode abandon what it has not committed (aborting an open transaction), marks
their partitions for a rewind and backs off; before the next poll the loop seeks them back to their
committed offsets, so the batches are redone from exactly where the last commit left them: nothing is
committed past a record that was not delivered, and nothing committed is redone in exactly-once mode.
Rebalance callbacks run inside poll: on revoke the batches in flight are dropped (their records are read
again from the committed offset by whoever owns the partition), and what was delivered is committed (the
open transaction, or the acknowledged offsets) before the partitions move; on loss nothing more of those
partitions is committed. A signal handler only sets a flag: the loop finishes and commits the batches at
hand, then closes the clients. A job's entry point also calls `settle_heap` (`gc_threshold`): Python's
garbage collector tuned for a loop whose objects live one batch.
"""

from __future__ import annotations

import gc
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

from fraud.contract import DeadLetter
from fraud.logs import log_event
from fraud.stream import metrics as m
from fraud.stream.clients import StreamClient, make_client
from fraud.stream.config import StreamConfig
from fraud.stream.delivery import AtLeastOnce, Delivered, DeliveryMode, make_delivery
from fraud.stream.health import HealthServer, Lifecycle
from fraud.stream.metrics import Metrics, PrometheusMetrics
from fraud.stream.records import (
    Completed,
    FatalError,
    Output,
    PendingResult,
    ProcessFn,
    ProcessResult,
    ProducerNeedsReset,
    Record,
    RetriableError,
    StagedProcess,
    TopicPartition,
    first_offsets,
    merge_earliest,
)
from fraud.stream.signals import install_stop_handlers
from fraud.stream.watchdog import FetchWatch, exit_wedged

log = logging.getLogger("fraud.stream")

#: Producer resets (fenced, expired transaction) tolerated within FENCE_WINDOW_S before giving up: more
#: means another live instance shares this transactional id.
MAX_RESETS = 5
FENCE_WINDOW_S = 120.0
#: Longest a poll blocks while idle (the loop turns to serve the health endpoint, the stop flag and lag).
_IDLE_POLL_S = 0.2


class StreamProcessor:
    """Runs `process` over the input topics until `request_stop()` (or SIGTERM/SIGINT when installed)."""

    def __init__(self, config: StreamConfig, process: ProcessFn | StagedProcess, *,
                 client: StreamClient | None = None, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] | None = None,
                 on_committed: Callable[[Sequence[Record], ProcessResult], None] | None = None,
                 wedged: Callable[[str], None] = exit_wedged) -> None:
        """`process` is a function (records -> ProcessResult) or a `StagedProcess` (pipelined).
        `on_committed(batch, result)`, if given, runs after each batch is delivered and committed (once per
        committed batch, never for a failed attempt): for a job's own counts, e.g. what it filtered.
        `wedged(reason)` is called when the Kafka client stopped working without an error (a commit that
        never returns, a consumer that never fetches); by default it ends the process (`exit_wedged`)."""
        self.config = config
        self._staged: StagedProcess | None = process if isinstance(process, StagedProcess) else None
        self._process = process
        self._on_committed = on_committed
        self._client = client
        self.metrics: Metrics = metrics if metrics is not None else PrometheusMetrics("fraud_stream")
        self._clock = clock
        self._stop = threading.Event()
        self._sleep = sleep or (lambda s: self._stop.wait(s))
        self._assigned: set[TopicPartition] = set()
        self._pending: list[Record] = []  # the batch being collected (rebalance callbacks filter it)
        self._rebalanced = False
        self._needs_rewind: dict[TopicPartition, int] = {}
        #: revoked or lost partitions whose fetched records were dropped unprocessed, and where those began: if
        #: one is assigned back to this member it is rewound too (kafka-python keeps the fetch position of a
        #: partition that stays assigned across a rebalance; librdkafka restarts it from the committed offset)
        self._dropped_from: dict[TopicPartition, int] = {}
        self._producer_ready = not config.exactly_once
        self._resets: deque[float] = deque()
        self._attempt = 0
        self._retry_stage: str | None = None  # the step being retried (while _attempt > 0)
        self._committed_next: dict[TopicPartition, int] = {}
        #: submitted batches not yet delivered, oldest first: (records, pending result, submitted at)
        self._inflight: deque[tuple[list[Record], PendingResult, float]] = deque()
        self._mode: DeliveryMode | None = None
        self._last_lag = 0.0
        self._last_commit: float | None = None
        self.life = Lifecycle("stream", log, config.stall_timeout_s, clock)
        self.batches_committed = 0
        self._single_topic = config.input_topics[0] if len(config.input_topics) == 1 else None
        self._wedged = wedged
        self._fetch_watch = FetchWatch(config.fetch_stall_s, wedged)

    # -- control -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT only set the stop flag (call from the main thread)."""
        install_stop_handlers(self._stop, logger=log)

    def health(self) -> tuple[bool, bool, dict[str, Any]]:
        life = self.life
        healthy = life.alive()
        return healthy, life.ready() and self._attempt == 0, {
            "state": life.state,
            "instance_id": self.config.instance_id,
            "delivery": self.config.delivery.value,
            "assigned_partitions": len(self._assigned),
            "retry_attempt": self._attempt,
            "seconds_since_loop": round(life.since_beat(), 3),
            "seconds_since_commit": None if self._last_commit is None else round(self._clock() - self._last_commit, 3),
        }

    # -- the loop ------------------------------------------------------------------------------

    @property
    def http(self) -> HealthServer | None:
        """/healthz, /readyz and /metrics while the job runs (with an `http_port`)."""
        return self.life.http

    def run(self) -> None:
        """Subscribe and process until stopped; closes the clients on the way out, however it ends."""
        c = self.config
        with self.life.lifetime():
            self.life.serve(c.http_host, c.http_port, self.health, getattr(self.metrics, "exposition", None))
            if self._client is None:
                self._client = make_client(c)
            client = self._client
            self._mode = make_delivery(client, c, self._clock, self._confirmed,
                                       lambda exc: self._reset_producer(None), self._wedged)
            log_event(log, logging.INFO, "stream_starting", component=c.component, topics=list(c.input_topics),
                      group_id=c.group_id, instance_id=c.instance_id, delivery=c.delivery.value,
                      client=c.client.value, transactional_id=c.transactional_id if c.exactly_once else None,
                      commit_interval_ms=c.commit_interval_ms, gc_threshold=c.gc_threshold,
                      pipelined=self._staged is not None and c.pipeline_depth > 0)
            try:
                client.subscribe(c.input_topics, self._on_assign, self._on_revoke, self._on_lost)
                self.life.state = "running"
                while not self._stop.is_set():
                    self._loop_once(client)
                self.life.state = "stopping"
                self._drain()
                log_event(log, logging.INFO, "stream_stopping", batches_committed=self.batches_committed)
            except BaseException:
                for _, pending, _ in self._inflight:
                    pending.cancel()
                raise
            finally:
                try:
                    if self._mode is not None:
                        self._mode.close()
                finally:
                    client.close(c.operation_timeout_s)

    def _drain(self) -> None:
        """On stop: finish and deliver the batches in flight, then commit everything delivered."""
        assert self._mode is not None
        while self._inflight:
            if not self._finish():
                break  # failed: not committed, redone after a restart
        try:
            if self._mode.uncommitted:
                self._mode.commit_all()
            elif isinstance(self._mode, AtLeastOnce):
                self._mode.commit_sync(list(self._mode.async_offsets))
        except RetriableError as exc:
            self._mode.abandon()  # not committed: delivered again after a restart
            log_event(log, logging.WARNING, "final_delivery_failed", error=str(exc))

    def _loop_once(self, client: StreamClient) -> None:
        now = self.life.beat()
        mode = self._mode
        assert mode is not None
        if not self._producer_ready:
            try:
                client.init_transactions(self.config.operation_timeout_s)
                self._producer_ready = True
                log_event(log, logging.INFO, "transactions_initialized", transactional_id=self.config.transactional_id)
                self._recovered()
            except ProducerNeedsReset as exc:
                self._reset_producer(exc)
                return
            except RetriableError as exc:
                self._retry_later("init_transactions", exc)
                return
        if mode.uncommitted and not self._service(now, idle=False):
            return
        if self._needs_rewind:
            try:
                self._rewind(client)
            except RetriableError as exc:
                self._retry_later("rewind", exc)
                return
            if self._retry_stage == "rewind":  # a rewind after another step's failure does not end its retries
                self._recovered()
        if self._inflight:
            timeout = 0.0
        else:
            timeout = _IDLE_POLL_S
            due = mode.until_due(now)
            if due is not None:
                timeout = min(timeout, due)
        batch = self._collect(client, timeout)
        if batch:
            self._fetch_watch.fetched(now)
        else:
            self._fetch_watch.check(now, bool(self._assigned), lambda: self._backlog(client))
        self._report_lag(client)
        if batch:
            self._inflight.append((batch, self._submit(batch), self._clock()))
        depth = self.config.pipeline_depth if self._staged is not None else 0
        while self._inflight and (not batch or len(self._inflight) > depth or self._inflight[0][1].done()):
            if not self._finish():
                return
        if not batch and not self._inflight and mode.uncommitted:
            self._service(self._clock(), idle=True)  # nothing else to do: commit now rather than later

    def _service(self, now: float, idle: bool) -> bool:
        assert self._mode is not None
        try:
            self._mode.service(now, idle)
        except ProducerNeedsReset as exc:
            self._fail([], "commit", exc, reset=True)
            return False
        except RetriableError as exc:
            self._fail([], "commit", exc)
            return False
        return True

    def _submit(self, batch: list[Record]) -> PendingResult:
        try:
            if self._staged is not None:
                return self._staged.submit(batch)
            return Completed(self._process(batch))  # type: ignore[operator]
        except RetriableError as exc:
            return Completed(error=exc)

    def _collect(self, client: StreamClient, timeout: float) -> list[Record]:
        c = self.config
        self._rebalanced = False
        records = client.poll(c.batch_max_size, timeout)
        if records and c.batch_max_wait_ms > 0:  # asked to wait for a fuller batch
            self._pending = records
            deadline = self._clock() + c.batch_max_wait_ms / 1000.0
            while len(self._pending) < c.batch_max_size and not self._stop.is_set():
                left = deadline - self._clock()
                if left <= 0:
                    break
                more = client.poll(c.batch_max_size - len(self._pending), left)
                if not more:
                    break
                self._pending.extend(more)
            records, self._pending = self._pending, []
        if self._rebalanced and records:  # records of partitions revoked, lost or to be rewound during this poll
            records = [r for r in records if (r[0], r[1]) in self._assigned and (r[0], r[1]) not in self._needs_rewind]
        if records:
            if self._single_topic is not None:
                self.metrics.increment(m.CONSUMED, len(records), topic=self._single_topic)
            else:
                for topic, n in Counter(r.topic for r in records).items():
                    self.metrics.increment(m.CONSUMED, n, topic=topic)
        return records

    def _finish(self) -> bool:
        """Wait for the oldest batch in flight and deliver it; False if that failed (already handled)."""
        assert self._mode is not None
        batch, pending, t0 = self._inflight.popleft()
        try:
            result = pending.result()
        except RetriableError as exc:
            self._fail(batch, "process", exc)
            return False
        t1 = self._clock()
        outputs = result.outputs
        if result.dead_letters:
            outputs = outputs + [self._dead_letter_output(d) for d in result.dead_letters]
        try:
            self._mode.deliver(batch, result, outputs)
        except ProducerNeedsReset as exc:
            self._fail(batch, "deliver", exc, reset=True)
            return False
        except RetriableError as exc:
            self._fail(batch, "deliver", exc)
            return False
        t2 = self._clock()
        self._recovered()
        met = self.metrics
        met.observe(m.BATCH_SIZE, len(batch))
        met.observe(m.PROCESS_SECONDS, t1 - t0)
        met.observe(m.DELIVER_SECONDS, t2 - t1)
        return True

    def _confirmed(self, delivered: list[Delivered], offsets: dict[TopicPartition, int], now: float) -> None:
        """Book-keeping for batches whose outputs are delivered and whose offsets are committed (at-least-once:
        the commit is issued), once per batch, never for a failed attempt."""
        self._last_commit = now
        self._committed_next.update(offsets)
        met = self.metrics
        wall_ms = time.time() * 1000.0
        for d in delivered:
            self.batches_committed += 1
            batch, result = d.batch, d.result
            met.increment(m.COMMITS)
            met.observe(m.COMMIT_SECONDS, max(0.0, now - d.at))
            outputs = result.outputs
            if outputs:
                first = outputs[0].topic
                if all(o.topic == first for o in outputs):
                    met.increment(m.PRODUCED, len(outputs), topic=first)
                else:
                    for topic, n in Counter(o.topic for o in outputs).items():
                        met.increment(m.PRODUCED, n, topic=topic)
            if result.dead_letters:
                for reason, n in Counter(dl.reason for dl in result.dead_letters).items():
                    met.increment(m.DEAD_LETTERED, n, reason=reason)
                met.increment(m.PRODUCED, len(result.dead_letters), topic=self.config.dlq_topic)
                for dl in result.dead_letters:
                    log_event(log, logging.WARNING, "dead_letter", key=_text(dl.key), reason=dl.reason,
                              field=dl.field, message=dl.message, topic=dl.source_topic,
                              partition=dl.source_partition, offset=dl.source_offset)
            if batch:
                met.observe(m.RECORD_AGE_SECONDS, max(0.0, (wall_ms - min(r.timestamp_ms for r in batch)) / 1000.0))
            if self._on_committed is not None:
                self._on_committed(batch, result)

    def _dead_letter_output(self, d: DeadLetter) -> Output:
        return Output(self.config.dlq_topic, d.value, d.key, tuple(d.headers()))

    # -- failures ------------------------------------------------------------------------------

    def _reset_producer(self, exc: Exception | None) -> None:
        now = self._clock()
        if exc is not None:
            self._resets.append(now)
            while self._resets and now - self._resets[0] > FENCE_WINDOW_S:
                self._resets.popleft()
            if len(self._resets) > MAX_RESETS:
                raise FatalError(f"producer reset {len(self._resets)} times in {FENCE_WINDOW_S:g} s (is another "
                                 f"instance using transactional id {self.config.transactional_id}?): {exc}")
        log_event(log, logging.WARNING, "producer_reset", error=None if exc is None else str(exc))
        assert self._client is not None
        self._client.reset_producer()
        self._producer_ready = not self.config.exactly_once

    def _abandon(self, batch: Sequence[Record], keep_delivered: bool) -> None:
        """Mark `batch` and every batch in flight for a redo, and what the delivery mode has not committed:
        with `keep_delivered` (the failure was not the delivery's) that is committed first if it can be,
        else it is redone too (nothing is committed past a batch that is redone)."""
        rewind = first_offsets(batch) if batch else {}
        merge_earliest(rewind, self._drop_inflight())
        mode = self._mode
        if mode is not None and mode.uncommitted:
            committed = False
            if keep_delivered:
                try:
                    mode.commit_all()
                    committed = True
                except RetriableError as exc:
                    log_event(log, logging.WARNING, "commit_before_retry_failed", error=str(exc))
            if not committed:
                merge_earliest(rewind, mode.abandon())
        merge_earliest(self._needs_rewind, rewind)

    def _fail(self, batch: Sequence[Record], stage: str, exc: Exception, reset: bool = False) -> None:
        aborts = getattr(self._mode, "aborts", 0)
        self._abandon(batch, keep_delivered=stage == "process" and not reset)
        if getattr(self._mode, "aborts", 0) > aborts:
            self.metrics.increment(m.ABORTS)
        if reset:
            self._reset_producer(exc)
        self._retry_later(stage, exc, records=len(batch))

    def _recovered(self) -> None:
        """A step that was being retried succeeded: ready again (/readyz), even with no record to process
        (e.g. init_transactions refused once by a broker whose transaction coordinator was still loading)."""
        if self._attempt:
            log_event(log, logging.INFO, "recovered", attempts=self._attempt)
        self._attempt = 0

    def _retry_later(self, stage: str, exc: Exception, **fields: Any) -> None:
        c = self.config
        delay_ms = min(c.retry_backoff_max_ms, c.retry_backoff_initial_ms * (2 ** min(self._attempt, 20)))
        delay_s = delay_ms / 1000.0 * random.uniform(0.8, 1.0)
        self._attempt += 1
        self._retry_stage = stage
        self.metrics.increment(m.RETRIES, stage=stage)
        log_event(log, logging.WARNING, "retrying", stage=stage, error=str(exc), attempt=self._attempt,
                  backoff_s=round(delay_s, 3), **fields)
        self._sleep(delay_s)

    def _rewind(self, client: StreamClient) -> None:
        """Seek the partitions of failed batches back to their committed offsets (or the batch start)."""
        assigned = client.assignment()
        targets = {tp: off for tp, off in self._needs_rewind.items() if tp in assigned}
        if targets:
            committed = client.committed(list(targets), self.config.operation_timeout_s)
            seek = {tp: committed.get(tp) if committed.get(tp) is not None else off for tp, off in targets.items()}
            client.seek(seek)
            log_event(log, logging.INFO, "rewound", partitions={f"{t}[{p}]": o for (t, p), o in seek.items()})
        self._needs_rewind.clear()

    def _report_lag(self, client: StreamClient) -> None:
        now = self._clock()
        if now - self._last_lag < self.config.lag_interval_s:
            return
        self._last_lag = now
        for tp, high in client.high_watermarks().items():
            pos = self._committed_next.get(tp)
            if pos is not None:
                self.metrics.gauge(m.LAG, max(0, high - pos), topic=tp[0], partition=str(tp[1]))

    def _backlog(self, client: StreamClient) -> dict[TopicPartition, int] | None:
        try:
            return client.backlog(self.config.operation_timeout_s)
        except RetriableError as exc:
            log_event(log, logging.WARNING, "backlog_unknown", error=str(exc))
            return None

    # -- rebalance callbacks (run inside client.poll) -------------------------------------------

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        self._rebalanced = True
        self._assigned |= set(partitions)
        # back to this member after records of theirs were dropped: read again from the committed offset, not
        # from wherever the client's fetch position stayed
        merge_earliest(self._needs_rewind, {tp: self._dropped_from[tp] for tp in partitions if tp in self._dropped_from})
        self._dropped_from.clear()
        self.metrics.increment(m.REBALANCES, event="assigned")
        self.metrics.gauge(m.ASSIGNED, len(self._assigned))
        log_event(log, logging.INFO, "partitions_assigned", partitions=_names(partitions),
                  total=len(self._assigned))

    def _drop_inflight(self) -> dict[TopicPartition, int]:
        rewind: dict[TopicPartition, int] = {}
        for records, pending, _ in self._inflight:
            pending.cancel()
            merge_earliest(rewind, first_offsets(records))
        self._inflight.clear()
        return rewind

    def _drop(self, partitions: list[TopicPartition], event: str, rewind: dict[TopicPartition, int]) -> None:
        """Forget partitions revoked or lost; `rewind`: where the records of theirs dropped unprocessed began."""
        self._rebalanced = True
        gone = set(partitions)
        self._assigned -= gone
        before = len(self._pending)
        merge_earliest(rewind, first_offsets([r for r in self._pending if (r.topic, r.partition) in gone]))
        self._pending = [r for r in self._pending if (r.topic, r.partition) not in gone]
        merge_earliest(self._dropped_from, {tp: off for tp, off in rewind.items() if tp in gone})
        for tp in gone:
            self._needs_rewind.pop(tp, None)
            self._committed_next.pop(tp, None)
        self.metrics.increment(m.REBALANCES, event=event)
        self.metrics.gauge(m.ASSIGNED, len(self._assigned))
        log_event(log, logging.INFO, f"partitions_{event}", partitions=_names(partitions),
                  dropped_uncommitted=before - len(self._pending), total=len(self._assigned))

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        # Batches in flight are dropped (not delivered): their records are read again from the committed
        # offset, by this member for the partitions it keeps (a rewind), by the new owner for the others.
        rewind = self._drop_inflight()
        mode = self._mode
        if mode is not None:
            try:
                mode.commit_all()  # what was delivered is committed before the partitions move
            except RetriableError as exc:
                log_event(log, logging.WARNING, "delivery_failed_on_revoke", error=str(exc))
                merge_earliest(rewind, mode.abandon())
                if isinstance(exc, ProducerNeedsReset):
                    self._reset_producer(exc)
        merge_earliest(self._needs_rewind, rewind)
        self._drop(partitions, "revoked", rewind)

    def _on_lost(self, partitions: list[TopicPartition]) -> None:
        rewind = self._drop_inflight()
        mode = self._mode
        if mode is not None:
            mode.forget(partitions)  # no longer ours: committing them would be refused
            if mode.uncommitted:
                merge_earliest(rewind, mode.abandon())
        merge_earliest(self._needs_rewind, rewind)
        self._drop(partitions, "lost", rewind)


def settle_heap(threshold: int) -> None:
    """Once, before the loop, in a job that owns its process (like signal handlers: the bridge's and the
    preprocessor's entry points call it; a test or a host embedding the processor does not): what start-up
    built (modules, configuration, the Predict client) is never garbage, so `gc.freeze()` takes it out of
    every later collection, and a young collection waits until `threshold` more tracked objects were made
    than freed (0: the interpreter's settings, left as they are).

    Why: each batch lives as thousands of tuples (records, outputs) for a few tens of ms, so Python's
    default of 700 ran ~250 young collections a second in the bridge under load, each walking the batches
    in flight, and a full one (20-70 ms, start-up's heap included) about twice a second: ~10% of the loop's
    CPU (measured with gc.callbacks in bench/bench_bridge.py's throughput stages). With 100,000 the steady
    state makes none: a batch's objects are freed by reference counting before the count gets there. Cycles
    made after start-up are still collected; start-up's objects never are, even if a later cycle frees them."""
    if threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(threshold, older, oldest)


def _names(partitions: Sequence[TopicPartition]) -> list[str]:
    return [f"{t}[{p}]" for t, p in sorted(partitions)]


def _text(key: bytes | None) -> str | None:
    if key is None:
        return None
    return key.decode("utf-8", "replace")[:200]
