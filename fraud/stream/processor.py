"""The consume-process-produce loop: micro-batches in, outputs and dead letters out, offsets committed
per the delivery mode, with retries that never skip a record.

One batch at a time, on one thread:

1. collect up to `batch_max_size` records, waiting at most `batch_max_wait_ms` after the first one;
2. call the job's process function (records in -> outputs + dead letters out);
3. deliver: at-least-once = produce everything, and commit the batch's offsets once every record of it
   is acknowledged; meanwhile the next batch is already being processed (at most
   `MAX_INFLIGHT_BATCHES` batches await their acknowledgements; offsets commit in batch order, in the
   background, confirmed by a synchronous commit on revoke and close);
   exactly-once = one transaction holding the outputs, the dead letters and the input offsets
   (sent with the consumer's group metadata, so a member that lost its partitions is fenced).

Any transient failure (`RetriableError` from the process function or the client) aborts the open
transaction, marks the batch's partitions for a rewind and backs off; before the next poll the loop seeks
them back to their committed offsets, so the batch is redone from exactly where the last commit left it:
nothing is committed past a record that was not delivered, and nothing committed is redone in
exactly-once mode. Rebalance callbacks only run inside poll, when no transaction is open; records of a
revoked or lost partition are dropped from the batch being collected (their new owner reads them from the
committed offset). A signal handler only sets a flag: the loop finishes (and commits) the batch at hand,
then closes the clients.
"""

from __future__ import annotations

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
from fraud.stream.health import HealthServer
from fraud.stream.metrics import Metrics, PrometheusMetrics
from fraud.stream.records import (
    FatalError,
    Output,
    ProcessFn,
    ProcessResult,
    ProducerNeedsReset,
    Record,
    RetriableError,
    TopicPartition,
    first_offsets,
    next_offsets,
)
from fraud.stream.signals import install_stop_handlers

log = logging.getLogger("fraud.stream")

#: Producer resets (fenced, expired transaction) tolerated within FENCE_WINDOW_S before giving up: more
#: means another live instance shares this transactional id.
MAX_RESETS = 5
#: At-least-once: batches whose records may still await acknowledgement while the next one is processed.
MAX_INFLIGHT_BATCHES = 1
FENCE_WINDOW_S = 120.0
_IDLE_POLL_S = 0.2


class StreamProcessor:
    """Runs `process` over the input topics until `request_stop()` (or SIGTERM/SIGINT when installed)."""

    def __init__(self, config: StreamConfig, process: ProcessFn, *, client: StreamClient | None = None,
                 metrics: Metrics | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] | None = None,
                 on_committed: Callable[[Sequence[Record], ProcessResult], None] | None = None) -> None:
        """`on_committed(batch, result)`, if given, runs after each batch is delivered and committed (once per
        committed batch, never for a failed attempt): for a job's own counts, e.g. what it filtered."""
        self.config = config
        self._process = process
        self._on_committed = on_committed
        self._client = client
        self.metrics: Metrics = metrics if metrics is not None else PrometheusMetrics("fraud_stream")
        self._clock = clock
        self._stop = threading.Event()
        self._sleep = sleep or (lambda s: self._stop.wait(s))
        self._assigned: set[TopicPartition] = set()
        self._pending: list[Record] = []
        self._needs_rewind: dict[TopicPartition, int] = {}
        self._producer_ready = not config.exactly_once
        self._resets: deque[float] = deque()
        self._attempt = 0
        self._committed_next: dict[TopicPartition, int] = {}
        self._async_offsets: dict[TopicPartition, int] = {}  # at-least-once: committed in the background
        # at-least-once: (offsets to commit, delivery, first offsets, batch, result) of the batches awaiting
        # their acknowledgements, oldest first
        self._inflight: deque[tuple[dict[TopicPartition, int], Any, dict[TopicPartition, int], Sequence[Record],
                                    ProcessResult]] = deque()
        self._last_lag = 0.0
        self._heartbeat = clock()
        self._last_commit: float | None = None
        self._state = "starting"
        self.http: HealthServer | None = None
        self.batches_committed = 0

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
        now = self._clock()
        stalled = now - self._heartbeat > self.config.stall_timeout_s
        healthy = not stalled and self._state not in ("failed", "stopped")
        ready = healthy and self._state == "running" and self._attempt == 0
        return healthy, ready, {
            "state": self._state,
            "instance_id": self.config.instance_id,
            "delivery": self.config.delivery.value,
            "assigned_partitions": len(self._assigned),
            "retry_attempt": self._attempt,
            "seconds_since_loop": round(now - self._heartbeat, 3),
            "seconds_since_commit": None if self._last_commit is None else round(now - self._last_commit, 3),
        }

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        """Subscribe and process until stopped; closes the clients on the way out, however it ends."""
        c = self.config
        if c.http_port is not None and self.http is None:
            exposition = getattr(self.metrics, "exposition", None)
            self.http = HealthServer(c.http_host, c.http_port, self.health, exposition).start()
            log_event(log, logging.INFO, "http_listening", host=c.http_host, port=self.http.port)
        if self._client is None:
            self._client = make_client(c)
        client = self._client
        log_event(log, logging.INFO, "stream_starting", component=c.component, topics=list(c.input_topics),
                  group_id=c.group_id, instance_id=c.instance_id, delivery=c.delivery.value, client=c.client.value,
                  transactional_id=c.transactional_id if c.exactly_once else None)
        try:
            client.subscribe(c.input_topics, self._on_assign, self._on_revoke, self._on_lost)
            self._state = "running"
            while not self._stop.is_set():
                self._loop_once(client)
            self._state = "stopping"
            try:
                self._settle(client, keep=0)
            except RetriableError as exc:
                self._inflight.clear()  # not committed: delivered again after a restart
                log_event(log, logging.WARNING, "final_delivery_failed", error=str(exc))
            self._commit_sync(client, list(self._async_offsets))
            log_event(log, logging.INFO, "stream_stopping", batches_committed=self.batches_committed)
        except BaseException:
            self._state = "failed"
            raise
        finally:
            try:
                client.close(c.operation_timeout_s)
            finally:
                if self._state != "failed":
                    self._state = "stopped"
                if self.http is not None:
                    self.http.close()
                log_event(log, logging.INFO, "stream_stopped", state=self._state)

    def _loop_once(self, client: StreamClient) -> None:
        self._heartbeat = self._clock()
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
        if self._inflight:
            try:
                self._settle(client, keep=MAX_INFLIGHT_BATCHES)
            except RetriableError as exc:
                self._fail([], "deliver", exc)
                return
        if self._needs_rewind:
            try:
                self._rewind(client)
            except RetriableError as exc:
                self._retry_later("rewind", exc)
                return
            self._recovered()
        batch = self._collect(client)
        self._report_lag(client)
        if batch:
            self._run_batch(client, batch)

    def _collect(self, client: StreamClient) -> list[Record]:
        c = self.config
        self._pending = []
        deadline: float | None = None
        while len(self._pending) < c.batch_max_size and not self._stop.is_set():
            if deadline is None:
                timeout = _IDLE_POLL_S
            else:
                timeout = deadline - self._clock()
                if timeout <= 0:
                    break
            records = client.poll(c.batch_max_size - len(self._pending), timeout)
            if records:
                if deadline is None:
                    deadline = self._clock() + c.batch_max_wait_ms / 1000.0
                self._pending.extend(records)
                for topic, n in Counter(r.topic for r in records).items():
                    self.metrics.increment(m.CONSUMED, n, topic=topic)
            elif deadline is None:
                break
        batch, self._pending = self._pending, []
        return batch

    def _run_batch(self, client: StreamClient, batch: list[Record]) -> None:
        t0 = self._clock()
        try:
            result = self._process(batch)
        except RetriableError as exc:
            self._fail(batch, "process", exc)
            return
        t1 = self._clock()
        try:
            self._deliver(client, batch, result)
        except ProducerNeedsReset as exc:
            self._fail(batch, "deliver", exc, reset=True)
            return
        except RetriableError as exc:
            self._fail(batch, "deliver", exc)
            return
        t2 = self._clock()
        self._recovered()
        met = self.metrics
        met.observe(m.BATCH_SIZE, len(batch))
        met.observe(m.PROCESS_SECONDS, t1 - t0)
        met.observe(m.DELIVER_SECONDS, t2 - t1)
        met.observe(m.RECORD_AGE_SECONDS, max(0.0, time.time() - min(r.timestamp_ms for r in batch) / 1000.0))
        if self.config.exactly_once:
            self._committed(next_offsets(batch), t2, batch, result)

    def _committed(self, offsets: dict[TopicPartition, int], now: float, batch: Sequence[Record],
                   result: ProcessResult) -> None:
        """Book-keeping for a batch whose outputs are delivered and whose offsets are committed (at-least-once:
        the commit is issued), once per batch, never for a failed attempt."""
        self._last_commit = now
        self.batches_committed += 1
        self._committed_next.update(offsets)
        met = self.metrics
        met.increment(m.COMMITS)
        for topic, n in Counter(o.topic for o in result.outputs).items():
            met.increment(m.PRODUCED, n, topic=topic)
        for reason, n in Counter(d.reason for d in result.dead_letters).items():
            met.increment(m.DEAD_LETTERED, n, reason=reason)
        if result.dead_letters:
            met.increment(m.PRODUCED, len(result.dead_letters), topic=self.config.dlq_topic)
        for d in result.dead_letters:
            log_event(log, logging.WARNING, "dead_letter", key=_text(d.key), reason=d.reason, field=d.field,
                      message=d.message, topic=d.source_topic, partition=d.source_partition, offset=d.source_offset)
        if self._on_committed is not None:
            self._on_committed(batch, result)

    def _dead_letter_output(self, d: DeadLetter) -> Output:
        return Output(self.config.dlq_topic, d.value, d.key, tuple(d.headers()))

    def _deliver(self, client: StreamClient, batch: Sequence[Record], result: ProcessResult) -> None:
        c = self.config
        offsets = next_offsets(batch)
        dead = [self._dead_letter_output(d) for d in result.dead_letters]
        if not c.exactly_once:
            delivery = client.produce_batch(result.outputs + dead)
            self._inflight.append((offsets, delivery, first_offsets(batch), batch, result))
            self._settle(client, keep=MAX_INFLIGHT_BATCHES)
            return
        client.begin_transaction()
        try:
            for out in result.outputs:
                client.produce(out)
            for out in dead:
                client.produce(out)
            client.send_offsets_to_transaction(offsets, c.operation_timeout_s)
            client.commit_transaction(c.operation_timeout_s)
        except RetriableError:
            self._abort(client)
            raise

    def _settle(self, client: StreamClient, keep: int) -> None:
        """At-least-once: commit the offsets of in-flight batches whose records are all acknowledged, in
        batch order, waiting for the oldest ones until at most `keep` remain. A failed delivery raises
        RetriableError; the caller rewinds every in-flight batch (none of them gets committed)."""
        while self._inflight:
            offsets, delivery, _, batch, result = self._inflight[0]
            if len(self._inflight) <= keep and not delivery.done():
                return
            client.wait(delivery, self.config.operation_timeout_s)
            self._inflight.popleft()
            # Acknowledged: the commit can go in the background (a lost commit only means those records
            # are delivered again); a synchronous commit follows on revoke and close.
            client.commit(offsets, self.config.operation_timeout_s, asynchronous=True)
            self._async_offsets.update(offsets)
            self._committed(offsets, self._clock(), batch, result)

    def _abort(self, client: StreamClient) -> None:
        try:
            client.abort_transaction(self.config.operation_timeout_s)
            self.metrics.increment(m.ABORTS)
        except RetriableError as exc:
            # The outcome of the transaction is unknown (e.g. the broker went away mid-commit). A new
            # producer's init_transactions completes or aborts it; the rewind then reads the committed offsets.
            log_event(log, logging.WARNING, "abort_failed", error=str(exc))
            self._reset_producer(None)

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

    def _abandon_inflight(self, batch: Sequence[Record]) -> None:
        """Mark `batch` and every batch awaiting acknowledgements for a redo (none of them is committed:
        committing a later batch would skip an earlier one)."""
        firsts = [first_offsets(batch)] + [entry[2] for entry in self._inflight]
        self._inflight.clear()
        for starts in firsts:
            for tp, offset in starts.items():
                if tp not in self._needs_rewind or offset < self._needs_rewind[tp]:
                    self._needs_rewind[tp] = offset

    def _fail(self, batch: Sequence[Record], stage: str, exc: Exception, reset: bool = False) -> None:
        self._abandon_inflight(batch)
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

    # -- rebalance callbacks (run inside client.poll) -------------------------------------------

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        self._assigned |= set(partitions)
        self.metrics.increment(m.REBALANCES, event="assigned")
        self.metrics.gauge(m.ASSIGNED, len(self._assigned))
        log_event(log, logging.INFO, "partitions_assigned", partitions=_names(partitions),
                  total=len(self._assigned))

    def _commit_sync(self, client: StreamClient, partitions: list[TopicPartition]) -> None:
        """Confirm background commits (at-least-once) before partitions move or the job stops."""
        offsets = {tp: self._async_offsets.pop(tp) for tp in partitions if tp in self._async_offsets}
        if not offsets:
            return
        try:
            client.commit(offsets, self.config.operation_timeout_s)
        except RetriableError as exc:  # their records will be delivered again: allowed in at-least-once
            log_event(log, logging.WARNING, "final_commit_failed", error=str(exc), partitions=_names(list(offsets)))

    def _drop(self, partitions: list[TopicPartition], event: str) -> None:
        gone = set(partitions)
        self._assigned -= gone
        before = len(self._pending)
        self._pending = [r for r in self._pending if (r.topic, r.partition) not in gone]
        for tp in gone:
            self._needs_rewind.pop(tp, None)
            self._committed_next.pop(tp, None)
        self.metrics.increment(m.REBALANCES, event=event)
        self.metrics.gauge(m.ASSIGNED, len(self._assigned))
        log_event(log, logging.INFO, f"partitions_{event}", partitions=_names(partitions),
                  dropped_uncommitted=before - len(self._pending), total=len(self._assigned))

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        if self._client is not None:
            try:
                self._settle(self._client, keep=0)
            except RetriableError as exc:
                log_event(log, logging.WARNING, "delivery_failed_on_revoke", error=str(exc))
                self._abandon_inflight([])
            self._commit_sync(self._client, partitions)
        self._drop(partitions, "revoked")

    def _on_lost(self, partitions: list[TopicPartition]) -> None:
        if any(tp in entry[0] for entry in self._inflight for tp in partitions):
            self._abandon_inflight([])
        for tp in partitions:  # no longer ours: committing them would be refused
            self._async_offsets.pop(tp, None)
        self._drop(partitions, "lost")


def _names(partitions: Sequence[TopicPartition]) -> list[str]:
    return [f"{t}[{p}]" for t, p in sorted(partitions)]


def _text(key: bytes | None) -> str | None:
    if key is None:
        return None
    return key.decode("utf-8", "replace")[:200]
