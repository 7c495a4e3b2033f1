"""The warehouse sink: score and label events from Kafka into warehouse tables, exactly once.

Sinks share the partitions of the scores and labels topics through a consumer group (`--group-id`): the
group decides which sink owns which partition. When a sink is given partitions it *claims* them in the
warehouse (`Warehouse.claim`: their epoch is bumped and their stored offset read, in one transaction) and
starts reading each at its stored offset. Its progress never lives in the group: offsets are committed
with the rows, as before.

Loop, one batch at a time:

1. read up to `batch_max_size` records (waiting at most `batch_max_wait_ms`) from the partitions it owns;
2. parse them with fraud.contract; a record that breaks the contract becomes a DeadLetter;
3. produce the dead letters and wait for their acks (a crash later re-sends them: at least once);
4. write rows and next offsets in one warehouse transaction (`Warehouse.write`), which first checks that
   the batch's partitions still carry this sink's epochs: a sink that lost a partition in a rebalance
   and does not know it yet (paused past its session timeout, stuck in a long write) is refused there
   (`Fenced`), so two sinks never both write one partition's records;
5. tell the consumer group the offsets (advisory: lag tools read them, the sink never does).

A crash anywhere before 4 commits redoes the batch from the stored offsets; a crash after 4 starts after
it. Either way every score row is in the warehouse exactly once. A transient warehouse failure
(`RetriableError`, e.g. BigQuery answering 503, or two sinks' transactions colliding) retries the same
batch with backoff, reading nothing new. A fenced batch is dropped, and the records of partitions the sink
still owns are read again. SIGTERM/SIGINT only set a flag: the batch at hand is finished, then everything
is closed (leaving the group hands the partitions to the other sinks at once).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fraud.contract import MALFORMED_JSON, ContractError, DeadLetter, LabelEvent, ScoreEvent
from fraud.logs import log_event
from fraud.stream.health import Lifecycle
from fraud.stream.metrics import Metrics, PrometheusMetrics
from fraud.stream.reader import EventProducer, GroupReader
from fraud.stream.records import Record, RetriableError, TopicPartition, first_offsets, next_offsets
from fraud.stream.signals import install_stop_handlers
from warehouse import metrics as m
from warehouse.config import SinkConfig
from warehouse.store import Fenced, LabelRecord, Located, ScoreRecord, Warehouse, WarehouseBatch

log = logging.getLogger("warehouse.sink")
COMPONENT = "warehouse_sink"


def parse_batch(records: Sequence[Record], scores_topic: str, labels_topic: str,
                component: str = COMPONENT) -> tuple[WarehouseBatch, list[DeadLetter]]:
    """Records -> rows to write and dead letters; the batch's offsets cover every record, parsed or not."""
    batch = WarehouseBatch(offsets=next_offsets(records))
    dead: list[DeadLetter] = []
    for r in records:
        at = Located(r.topic, r.partition, r.offset)
        try:
            if r.value is None:
                raise ContractError(MALFORMED_JSON, "record has no value (a tombstone?)")
            if r.topic == scores_topic:
                batch.scores.append(ScoreRecord(ScoreEvent.from_json(r.value), at))
            elif r.topic == labels_topic:
                batch.labels.append(LabelRecord(LabelEvent.from_json(r.value), at))
            else:  # the reader only reads the two topics; anything else is a wiring bug
                raise AssertionError(f"record from unexpected topic {r.topic}")
        except ContractError as exc:
            dead.append(DeadLetter.from_error(exc, key=r.key, value=r.value, topic=r.topic, partition=r.partition,
                                              offset=r.offset, component=component, stage="VALUE_CONVERTER"))
    return batch, dead


@dataclass
class SinkStats:
    batches: int = 0
    records: int = 0
    scores_inserted: int = 0
    scores_ignored: int = 0
    labels_written: int = 0
    dead_letters: int = 0
    claims: int = 0  # partitions claimed (assigned by the group)
    fenced: int = 0  # batches refused because another sink had claimed a partition since

    def summary(self) -> str:
        return (f"{self.batches} batches, {self.records} records: {self.scores_inserted} scores inserted "
                f"({self.scores_ignored} already there), {self.labels_written} labels written, "
                f"{self.dead_letters} dead letters")


class SinkJob:
    def __init__(self, config: SinkConfig, warehouse: Warehouse, *, metrics: Metrics | None = None,
                 reader_factory: Callable[..., Any] | None = None, producer: Any = None,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.config = config
        self.warehouse = warehouse
        self.metrics: Metrics = metrics if metrics is not None else PrometheusMetrics(m.SINK_NAMESPACE, m.SINK_METRICS)
        self._reader_factory = reader_factory or GroupReader
        self._producer = producer
        self._stop = threading.Event()
        self._sleep = sleep or (lambda s: self._stop.wait(s))
        self.stats = SinkStats()
        self.life = Lifecycle("sink", log)
        self._attempt = 0
        self._epochs: dict[TopicPartition, int] = {}  # partitions this sink owns -> the epoch it claimed

    def request_stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT only set the stop flag (call from the main thread)."""
        install_stop_handlers(self._stop, logger=log)

    def health(self) -> tuple[bool, bool, dict[str, Any]]:
        life = self.life
        return life.alive(), life.ready() and self._attempt == 0, {
            "state": life.state, "warehouse": self.warehouse.description, "retry_attempt": self._attempt,
            **{k: v for k, v in vars(self.stats).items()},
        }

    def run(self) -> SinkStats:
        c = self.config
        with self.life.lifetime(lambda: vars(self.stats)):
            self.life.serve(c.http_host, c.http_port, self.health, getattr(self.metrics, "exposition", None))
            self.warehouse.open()
            reader = None
            producer = self._producer
            try:
                log_event(log, logging.INFO, "sink_starting", warehouse=self.warehouse.description,
                          group_id=c.group_id, instance_id=c.instance_id)
                reader = self._reader_factory(c.kafka, [c.scores_topic, c.labels_topic], group_id=c.group_id,
                                              claim=self._claim, on_revoke=self._revoked,
                                              group_instance_id=c.instance_id if c.static_membership else None,
                                              session_timeout_ms=c.session_timeout_ms,
                                              max_poll_interval_ms=c.max_poll_interval_ms,
                                              fetch_stall_s=c.fetch_stall_s)
                if producer is None:
                    producer = EventProducer(c.kafka)
                self.life.state = "running"
                last_record = time.monotonic()
                last_lag = 0.0
                while not self._stop.is_set():
                    self.life.beat()
                    records = self._collect(reader)
                    now = time.monotonic()
                    if now - last_lag > 5:
                        last_lag = now
                        for (t, p), lag in reader.lag().items():
                            self.metrics.gauge(m.SINK_LAG, lag, topic=t, partition=str(p))
                    if not records:
                        if c.stop_when_idle_s and now - last_record >= c.stop_when_idle_s and _caught_up(reader):
                            log_event(log, logging.INFO, "idle_stop", idle_s=c.stop_when_idle_s)
                            break
                        continue
                    last_record = now
                    self._handle(records, reader, producer)
                self.life.state = "stopping"
            finally:
                try:
                    if reader is not None:
                        reader.close()
                    if producer is not None and self._producer is None:
                        producer.close()
                finally:
                    self.warehouse.close()
        return self.stats

    @property
    def http_port(self) -> int | None:
        """The bound port of /healthz and /metrics, once it listened."""
        return self.life.port

    # -- partition ownership (called by the reader inside poll) --------------------------------

    def _claim(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The group gave us `partitions`: claim them in the warehouse; start each at its stored offset."""
        attempt = 0
        while True:
            try:
                claims = self.warehouse.claim(partitions, self.config.instance_id)
                break
            except RetriableError as exc:
                attempt += 1
                delay = min(self.config.retry_backoff_max_ms, 100 * 2 ** min(attempt, 16)) / 1000
                log_event(log, logging.WARNING, "claim_retry", error=str(exc), attempt=attempt, backoff_s=delay)
                self._sleep(delay)
                if self._stop.is_set():
                    return {}  # not claimed: nothing of them is written, the next owner claims them
        self._epochs.update({tp: cl.epoch for tp, cl in claims.items()})
        self.stats.claims += len(claims)
        self.metrics.gauge(m.SINK_CLAIMED, len(self._epochs))
        log_event(log, logging.INFO, "partitions_claimed",
                  partitions={f"{t}[{p}]": {"offset": cl.next_offset, "epoch": cl.epoch}
                              for (t, p), cl in sorted(claims.items())})
        return {tp: cl.next_offset for tp, cl in claims.items()}

    def _revoked(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._epochs.pop(tp, None)
        self.metrics.gauge(m.SINK_CLAIMED, len(self._epochs))

    @property
    def owned(self) -> dict[TopicPartition, int]:
        """The partitions this sink owns, with the epoch it claimed each at."""
        return dict(self._epochs)

    # -- the loop ------------------------------------------------------------------------------

    def _collect(self, reader: Any) -> list[Record]:
        c = self.config
        out: list[Record] = []
        deadline: float | None = None
        while len(out) < c.batch_max_size and not self._stop.is_set():
            timeout = 0.2 if deadline is None else deadline - time.monotonic()
            if timeout <= 0:
                break
            before = dict(self._epochs)
            got = reader.poll(c.batch_max_size - len(out), timeout)
            if self._epochs != before:  # a rebalance inside poll: keep only what is still ours, as claimed
                out = [r for r in out if r.tp in self._epochs and self._epochs[r.tp] == before.get(r.tp)]
            got = [r for r in got if r.tp in self._epochs]
            if got:
                if deadline is None:
                    deadline = time.monotonic() + c.batch_max_wait_ms / 1000.0
                out += got
            elif deadline is None:
                break
        for topic, n in Counter(r.topic for r in out).items():
            self.metrics.increment(m.SINK_CONSUMED, n, topic=topic)
        return out

    def _handle(self, records: list[Record], reader: Any, producer: Any) -> None:
        c = self.config
        batch, dead = parse_batch(records, c.scores_topic, c.labels_topic)
        epochs = {tp: self._epochs.get(tp, -1) for tp in batch.offsets}
        while True:
            try:
                if dead:
                    for d in dead:
                        producer.send_dead_letter(c.dlq_topic, d)
                    producer.flush()
                t0 = time.monotonic()
                result = self.warehouse.write(batch, epochs)
                break
            except Fenced as exc:
                self._fenced(exc, records, reader)
                return
            except RetriableError as exc:
                # The same batch again (writes are idempotent); never move on past rows not written.
                self._attempt += 1
                self.metrics.increment(m.SINK_RETRIES)
                delay = min(c.retry_backoff_max_ms, 100 * 2 ** min(self._attempt, 16)) / 1000 * random.uniform(0.8, 1)
                log_event(log, logging.WARNING, "write_retry", error=str(exc), attempt=self._attempt,
                          backoff_s=round(delay, 3), records=len(records))
                self._sleep(delay)
                if self._stop.is_set():
                    return  # nothing was committed: the next start redoes this batch
        self._attempt = 0
        self.metrics.observe(m.SINK_WRITE_SECONDS, time.monotonic() - t0)
        self.metrics.observe(m.SINK_BATCH_SIZE, len(records))
        self.metrics.increment(m.SINK_ROWS_WRITTEN, result.scores_inserted, table="scores")
        self.metrics.increment(m.SINK_ROWS_IGNORED, result.scores_ignored, table="scores")
        self.metrics.increment(m.SINK_ROWS_WRITTEN, result.labels_written, table="labels")
        self.metrics.increment(m.SINK_ROWS_IGNORED, result.labels_ignored, table="labels")
        self.metrics.gauge(m.SINK_LAST_COMMIT, time.time())
        for reason, n in Counter(d.reason for d in dead).items():
            self.metrics.increment(m.SINK_DEAD_LETTERS, n, reason=reason)
        for d in dead:
            log_event(log, logging.WARNING, "dead_letter", key=None if d.key is None else d.key.decode("utf-8", "replace"),
                      reason=d.reason, field=d.field, topic=d.source_topic, partition=d.source_partition,
                      offset=d.source_offset)
        reader.commit_advisory(batch.offsets)
        s = self.stats
        s.batches += 1
        s.records += len(records)
        s.scores_inserted += result.scores_inserted
        s.scores_ignored += result.scores_ignored
        s.labels_written += result.labels_written
        s.dead_letters += len(dead)
        log_event(log, logging.DEBUG, "batch_committed", records=len(records), scores=result.scores_inserted,
                  labels=result.labels_written, dead_letters=len(dead))


    def _fenced(self, exc: Fenced, records: list[Record], reader: Any) -> None:
        """Another sink claimed some of the batch's partitions: they are no longer ours (the group will say
        so at the next poll); the rest of the batch is read again from where it started."""
        for tp in exc.partitions:
            self._epochs.pop(tp, None)
        again = {tp: o for tp, o in first_offsets(records).items() if tp in self._epochs}
        if again:
            reader.seek(again)
        self.stats.fenced += 1
        self.metrics.increment(m.SINK_FENCED)
        log_event(log, logging.WARNING, "batch_fenced", partitions=[f"{t}[{p}]" for t, p in exc.partitions],
                  records=len(records), reread={f"{t}[{p}]": o for (t, p), o in sorted(again.items())})


def _caught_up(reader: Any) -> bool:
    check = getattr(reader, "caught_up", None)
    return True if check is None else bool(check())


def make_warehouse(config: SinkConfig) -> Warehouse:
    if config.warehouse == "bigquery":
        from warehouse.bigquery import BigQueryWarehouse

        assert config.bigquery is not None
        return BigQueryWarehouse(config.bigquery)
    from warehouse.store import DuckDBWarehouse

    assert config.duckdb_path is not None
    return DuckDBWarehouse(config.duckdb_path)
