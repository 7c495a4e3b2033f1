"""Kafka plumbing of the sink and the monitor: readers that start where *we* say (offsets stored with the
job's own state, or a time), and small producers for dead letters, alerts and checkpoints.

Two readers, both confluent-kafka with isolation.level=read_committed (in exactly-once mode the bridge
writes scores in transactions, and an aborted score must never be read):

- `PartitionReader` owns every partition of its topics (manual assignment) and seeks to explicit start
  offsets before the first fetch: the monitor, which keeps its progress in its checkpoint.
- `GroupReader` is a member of a consumer group: the group decides which partitions this instance owns
  (so several sinks share the partitions), and a `claim` callback says where each assigned partition
  starts (the sink asks its warehouse, which also fences the partition's previous owner).

Offsets are still committed to the group afterwards, only so that lag tools (kafka-consumer-groups,
Burrow) can see how far behind a job is; nothing reads them back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from fraud.contract import DeadLetter
from fraud.errors import FraudError
from fraud.kafka_config import KafkaClientConfig
from fraud.logs import log_event
from fraud.stream.admin import KafkaAdmin
from fraud.stream.confluent_client import rdkafka_log, records_from_messages
from fraud.stream.records import PartitionsCallback, Record, RetriableError, TopicPartition
from fraud.stream.watchdog import FetchWatch

log = logging.getLogger("fraud.stream.reader")

#: How often the reader looks for partitions added to its topics.
PARTITION_REFRESH_S = 30.0


def _check(err: Any, what: str) -> None:
    if err is not None:
        raise RetriableError(f"{what}: {err}")


class _Reader:
    """What both readers share: one confluent-kafka consumer, read_committed, manual commits."""

    def __init__(self, kafka: KafkaClientConfig, topics: Sequence[str], *, group_id: str, timeout_s: float,
                 settings: Mapping[str, Any] | None = None, read_committed: bool = True,
                 fetch_stall_s: float = 0.0) -> None:
        from confluent_kafka import Consumer

        self.topics = tuple(topics)
        self._timeout_s = timeout_s
        self._consumer = Consumer(kafka.confluent(**{
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            "fetch.wait.max.ms": 100,
            "error_cb": self._on_error,
            "logger": rdkafka_log,
            **dict(settings or {}),
        }))
        self._assigned: set[TopicPartition] = set()
        self._first: dict[TopicPartition, int] = {}  # where each partition started (an offset or a logical one)
        self._position: dict[TopicPartition, int] = {}
        self._last_error = ("", 0.0)
        self._bootstrap = kafka.bootstrap
        #: a service's reader (fetch_stall_s > 0) exits to be restarted when it stops fetching (see watchdog)
        self._fetch_watch = FetchWatch(fetch_stall_s)

    def _on_error(self, err: Any) -> None:
        text = f"{err.name()}: {err.str()}"
        now = time.monotonic()
        if text != self._last_error[0] or now - self._last_error[1] > 10:
            self._last_error = (text, now)
            log_event(log, logging.WARNING, "kafka_client_error", error=text)

    def _partitions(self) -> list[TopicPartition]:
        try:
            meta = self._consumer.list_topics(timeout=self._timeout_s)
        except Exception as exc:  # noqa: BLE001
            raise FraudError(f"cannot reach Kafka at {self._bootstrap}: {exc}") from None
        out: list[TopicPartition] = []
        for topic in self.topics:
            t = meta.topics.get(topic)
            if t is None or t.error is not None or not t.partitions:
                raise FraudError(f"topic {topic} does not exist on {self._bootstrap} (create it with `fraudctl topics`)")
            out += [(topic, p) for p in sorted(t.partitions)]
        return out

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        msgs = self._consumer.consume(num_messages=max_records, timeout=timeout_s)
        out = records_from_messages(msgs, lambda text: FraudError(f"Kafka consumer failed: {text}"))
        for rec in out:
            self._position[rec.tp] = rec.offset + 1
        if out:
            self._fetch_watch.fetched(time.monotonic())
        else:
            self._fetch_watch.check(time.monotonic(), bool(self._assigned), self.backlog)
        return out

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Go back to `offsets` (e.g. a batch that failed to write is read again)."""
        from confluent_kafka import TopicPartition as TP

        for (t, p), o in offsets.items():
            if (t, p) not in self._assigned:
                continue  # revoked meanwhile: its next owner starts from the stored offset
            self._consumer.seek(TP(t, p, o))
            self._position[(t, p)] = o

    def positions(self) -> dict[TopicPartition, int]:
        """Next offset to read per assigned partition whose position is known: past the last record handed
        out, or past transaction markers the consumer has skipped (which no record reports)."""
        from confluent_kafka import TopicPartition as TP

        out = {tp: o for tp, o in self._position.items() if tp in self._assigned}
        try:
            for tp in self._consumer.position([TP(t, p) for t, p in sorted(self._assigned)]):
                if tp.offset >= 0:
                    key = (tp.topic, tp.partition)
                    out[key] = max(out.get(key, tp.offset), tp.offset)
        except Exception as exc:  # noqa: BLE001 (the tracked positions are still right, only maybe behind)
            log_event(log, logging.DEBUG, "position_failed", error=str(exc))
        return out

    def commit_advisory(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Tell the group how far we are, for lag tools only; failures are logged, never fatal."""
        from confluent_kafka import TopicPartition as TP

        owned = {tp: o for tp, o in offsets.items() if tp in self._assigned}
        if not owned:
            return
        try:
            self._consumer.commit(offsets=[TP(t, p, o) for (t, p), o in owned.items()], asynchronous=True)
        except Exception as exc:  # noqa: BLE001
            log_event(log, logging.DEBUG, "advisory_commit_failed", error=str(exc))

    def lag(self) -> dict[TopicPartition, int]:
        """High watermark minus the next offset to read, per partition with a known position (cached, no call)."""
        from confluent_kafka import TopicPartition as TP

        out = {}
        for t, p in list(self._assigned):
            try:
                _low, high = self._consumer.get_watermark_offsets(TP(t, p), cached=True)
            except Exception:  # noqa: BLE001
                continue
            pos = self._position.get((t, p))
            if high >= 0 and pos is not None:
                out[(t, p)] = max(0, high - pos)
        return out

    def backlog(self) -> dict[TopicPartition, int] | None:
        """Records past the position of each assigned partition, asking the broker (the consumer's position
        also moves past transaction markers and aborted records, which no record reports); None when the
        broker does not answer."""
        from confluent_kafka import TopicPartition as TP

        tps = [TP(t, p) for t, p in sorted(self._assigned)]
        out = {}
        try:
            for tp in self._consumer.position(tps):
                low, high = self._consumer.get_watermark_offsets(TP(tp.topic, tp.partition), timeout=self._timeout_s,
                                                                 cached=False)
                pos = tp.offset
                if pos < 0:  # nothing fetched yet: where it starts (an offset, or the beginning)
                    first = self._first.get((tp.topic, tp.partition), -1)
                    pos = first if first >= 0 else low
                out[(tp.topic, tp.partition)] = max(0, high - pos)
        except Exception as exc:  # noqa: BLE001 (broker unreachable right now)
            log_event(log, logging.DEBUG, "backlog_failed", error=str(exc))
            return None
        return out

    def caught_up(self) -> bool:
        """True when every partition's position has reached its end, asking the broker; for
        `--stop-when-idle-s`, which must not stop a job that merely waited on a slow fetch."""
        backlog = self.backlog()
        return backlog is not None and not any(backlog.values())

    @property
    def assigned(self) -> set[TopicPartition]:
        return set(self._assigned)

    def close(self) -> None:
        self._consumer.close()


class PartitionReader(_Reader):
    """Reads every partition of `topics` from explicit start offsets (confluent-kafka, manual assignment).

    `start`: next offset per partition; a partition without one starts at `default_start`, which is
    "earliest", "latest", or a Kafka timestamp in ms (the first record at or after it). `read_committed`
    False also reads records of open and aborted transactions (e.g. to scan everything in the log). `only`
    restricts it to some partitions of the topics.
    """

    def __init__(self, kafka: KafkaClientConfig, topics: Sequence[str], *, group_id: str,
                 start: Mapping[TopicPartition, int] | None = None, default_start: str | int = "earliest",
                 timeout_s: float = 30.0, read_committed: bool = True,
                 only: Iterable[TopicPartition] | None = None, fetch_stall_s: float = 0.0) -> None:
        super().__init__(kafka, topics, group_id=group_id, timeout_s=timeout_s, read_committed=read_committed,
                         fetch_stall_s=fetch_stall_s)
        self._only = None if only is None else set(only)
        self._start = dict(start or {})
        self._default_start = default_start
        self._last_refresh = 0.0
        self.refresh_partitions(force=True)

    def refresh_partitions(self, force: bool = False) -> list[TopicPartition]:
        """Assign partitions not assigned yet (new topics' partitions appear here); returns the new ones."""
        from confluent_kafka import OFFSET_BEGINNING
        from confluent_kafka import TopicPartition as TP

        now = time.monotonic()
        if not force and now - self._last_refresh < PARTITION_REFRESH_S:
            return []
        self._last_refresh = now
        new = [tp for tp in self._partitions() if tp not in self._assigned and (self._only is None or tp in self._only)]
        if not new:
            return []
        targets = []
        by_time = []
        at_end = []
        for t, p in new:
            if (t, p) in self._start:
                targets.append(TP(t, p, self._start[(t, p)]))
            elif isinstance(self._default_start, int):
                by_time.append(TP(t, p, self._default_start))
            elif self._default_start == "earliest":
                targets.append(TP(t, p, OFFSET_BEGINNING))
            else:
                at_end.append((t, p))
        # A partition's end is a concrete offset asked now, never the logical OFFSET_END: librdkafka resolves
        # that when it starts fetching, a moment later, and records appended in between would be skipped (the
        # monitor missed the first labels of a partition that was empty when it started). For a start time,
        # the end is asked *before* offsets_for_times: a partition with nothing at or after the time (-1)
        # starts there, and a record appended after that question is newer than the time anyway.
        ends = {tp: self._end_offset(tp) for tp in [*at_end, *((x.topic, x.partition) for x in by_time)]}
        targets += [TP(t, p, ends[(t, p)]) for t, p in at_end]
        if by_time:
            for tp in self._consumer.offsets_for_times(by_time, timeout=self._timeout_s):
                targets.append(TP(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else ends[(tp.topic, tp.partition)]))
        self._consumer.incremental_assign(targets)
        self._assigned |= set(new)
        self._first.update({(tp.topic, tp.partition): tp.offset for tp in targets})
        for tp in targets:
            if tp.offset >= 0:
                self._position[(tp.topic, tp.partition)] = tp.offset
        log_event(log, logging.INFO, "partitions_assigned",
                  partitions={f"{tp.topic}[{tp.partition}]": tp.offset for tp in targets})
        return new

    def _end_offset(self, tp: TopicPartition) -> int:
        from confluent_kafka import TopicPartition as TP

        try:
            return self._consumer.get_watermark_offsets(TP(*tp), timeout=self._timeout_s, cached=False)[1]
        except Exception as exc:  # noqa: BLE001
            raise FraudError(f"cannot read the end of {tp[0]}[{tp[1]}] on {self._bootstrap}: {exc}") from None

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        self.refresh_partitions()
        return super().poll(max_records, timeout_s)


#: `claim(partitions)`: where each newly assigned partition starts (next offset); raise to fail the reader.
ClaimFn = Callable[[list[TopicPartition]], Mapping[TopicPartition, int]]


class GroupReader(_Reader):
    """Reads `topics` as a member of consumer group `group_id`: the group decides which partitions this
    instance owns (cooperative-sticky, so a rebalance moves only the partitions that must move).

    When partitions are assigned, `claim(partitions)` gives their start offsets (a partition it leaves
    out starts at the beginning); when they are revoked or lost, `on_revoke(partitions)` is called. Both
    run inside `poll`. `generation` counts assignment changes, so a caller can tell that records it holds
    may belong to partitions it no longer owns. `group_instance_id` makes the member static (a restart
    within the session timeout gets its partitions back without a rebalance).
    """

    def __init__(self, kafka: KafkaClientConfig, topics: Sequence[str], *, group_id: str, claim: ClaimFn,
                 on_revoke: PartitionsCallback | None = None, group_instance_id: str | None = None,
                 session_timeout_ms: int = 10_000, max_poll_interval_ms: int = 300_000,
                 timeout_s: float = 30.0, fetch_stall_s: float = 0.0) -> None:
        settings: dict[str, Any] = {"partition.assignment.strategy": "cooperative-sticky",
                                    "session.timeout.ms": session_timeout_ms,
                                    "heartbeat.interval.ms": max(100, session_timeout_ms // 5),
                                    "max.poll.interval.ms": max(max_poll_interval_ms, session_timeout_ms)}
        if group_instance_id:
            settings["group.instance.id"] = group_instance_id
        super().__init__(kafka, topics, group_id=group_id, timeout_s=timeout_s, settings=settings,
                         fetch_stall_s=fetch_stall_s)
        self._partitions()  # a missing topic is a one-line error here, not an empty assignment forever
        self._claim = claim
        self._on_revoke = on_revoke
        self.generation = 0
        self.assignment_known = False  # the group has answered at least once (possibly: nothing for us)
        self._consumer.subscribe(list(self.topics), on_assign=self._assign_cb, on_revoke=self._revoke_cb,
                                 on_lost=self._lost_cb)

    def _assign_cb(self, consumer: Any, partitions: list) -> None:
        from confluent_kafka import OFFSET_BEGINNING
        from confluent_kafka import TopicPartition as TP

        tps = [(p.topic, p.partition) for p in partitions]
        starts = dict(self._claim(tps)) if tps else {}
        targets = [TP(t, p, starts.get((t, p), OFFSET_BEGINNING)) for t, p in tps]
        consumer.incremental_assign(targets)
        self._assigned |= set(tps)
        self._first.update({(tp.topic, tp.partition): tp.offset for tp in targets})
        for tp in targets:
            if tp.offset >= 0:
                self._position[(tp.topic, tp.partition)] = tp.offset
        self.generation += 1
        self.assignment_known = True
        log_event(log, logging.INFO, "partitions_assigned",
                  partitions={f"{tp.topic}[{tp.partition}]": tp.offset for tp in targets})

    def _drop(self, consumer: Any, partitions: list, event: str) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        if tps:
            try:
                consumer.incremental_unassign(partitions)
            except Exception as exc:  # noqa: BLE001 (closing: the consumer drops them anyway)
                log_event(log, logging.DEBUG, "unassign_failed", error=str(exc))
        self._assigned -= set(tps)
        for tp in tps:
            self._position.pop(tp, None)
        self.generation += 1
        self.assignment_known = True
        log_event(log, logging.INFO, event, partitions=[f"{t}[{p}]" for t, p in tps])
        if self._on_revoke is not None and tps:
            self._on_revoke(tps)

    def _revoke_cb(self, consumer: Any, partitions: list) -> None:
        self._drop(consumer, partitions, "partitions_revoked")

    def _lost_cb(self, consumer: Any, partitions: list) -> None:
        self._drop(consumer, partitions, "partitions_lost")

    def caught_up(self) -> bool:
        return self.assignment_known and super().caught_up()


class EventProducer:
    """Idempotent acks=all producer (dead letters, alerts, and every job that writes records outside the
    stream loop: replay, the users table, test data); `flush` raises RetriableError on failure."""

    def __init__(self, kafka: KafkaClientConfig, **settings: Any) -> None:
        from confluent_kafka import Producer

        self._producer = Producer(kafka.confluent(**{"acks": "all", "enable.idempotence": True, "linger.ms": 5,
                                                     "logger": rdkafka_log, **settings}))
        self._failures: list[str] = []

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err.str()}")

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: Iterable[tuple[str, bytes]] | None = None, timestamp_ms: int | None = None) -> None:
        """Queue one record (waiting while the local queue is full); delivery is checked at `flush`."""
        extra = {} if timestamp_ms is None else {"timestamp": timestamp_ms}
        while True:
            try:
                self._producer.produce(topic, value, key=key, headers=list(headers) if headers else None,
                                       on_delivery=self._delivered, **extra)
                return
            except BufferError:
                self._producer.poll(0.1)

    def poll(self) -> None:
        """Serve delivery callbacks (a long sending loop calls this now and then)."""
        self._producer.poll(0)

    def send_dead_letter(self, topic: str, dead: DeadLetter) -> None:
        self.send(topic, dead.value, dead.key, dead.headers())

    def flush(self, timeout_s: float = 30.0) -> None:
        remaining = self._producer.flush(timeout_s)
        failures, self._failures = self._failures, []
        if remaining:
            raise RetriableError(f"{remaining} records not acknowledged within {timeout_s:g} s")
        if failures:
            raise RetriableError(f"{len(failures)} records failed, e.g. {failures[0]}")

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout_s)


class TransactionalProducer:
    """A producer whose records become visible together, at `commit()`: the monitor's dead letters, alerts
    and checkpoint of one interval are one Kafka transaction. A transaction is always open (the next begins
    when one commits or aborts); `close()` aborts what is open. One `transactional_id` per job: a new
    instance fences the old one (whose open transaction the broker then aborts).

    `commit` raises RetriableError when the transaction could not be committed; it was aborted then (or
    will be, by the broker), and the caller must go back to the state of its last commit.
    """

    def __init__(self, kafka: KafkaClientConfig, transactional_id: str, *, timeout_s: float = 30.0,
                 transaction_timeout_ms: int = 60_000) -> None:
        self._kafka = kafka
        self._transactional_id = transactional_id
        self._timeout_s = timeout_s
        self._transaction_timeout_ms = transaction_timeout_ms
        self._failures: list[str] = []
        self._producer: Any = None
        self._start()

    def _start(self) -> None:
        from confluent_kafka import KafkaException, Producer

        self._producer = Producer(self._kafka.confluent(**{
            "transactional.id": self._transactional_id, "transaction.timeout.ms": self._transaction_timeout_ms,
            "acks": "all", "enable.idempotence": True, "linger.ms": 5, "logger": rdkafka_log}))
        deadline = time.monotonic() + self._timeout_s * 4
        while True:
            try:
                self._producer.init_transactions(self._timeout_s)
                break
            except KafkaException as exc:  # a broker bounce while the coordinator moves: try again
                if time.monotonic() > deadline or not _retriable(exc):
                    raise FraudError(f"cannot start a Kafka transaction as {self._transactional_id}: {exc}") from None
                time.sleep(0.5)
        self._producer.begin_transaction()

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err.str()}")

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: Iterable[tuple[str, bytes]] | None = None) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key=key, headers=list(headers) if headers else None,
                                       on_delivery=self._delivered)
                return
            except BufferError:
                self._producer.poll(0.1)

    def send_dead_letter(self, topic: str, dead: DeadLetter) -> None:
        self.send(topic, dead.value, dead.key, dead.headers())

    def flush(self, timeout_s: float = 30.0) -> None:
        """Nothing to do: records are delivered with the transaction, at `commit`."""

    def commit(self) -> None:
        """Commit what was sent since the last commit; then a new transaction is open."""
        from confluent_kafka import KafkaException

        try:
            remaining = self._producer.flush(self._timeout_s)
            failures, self._failures = self._failures, []
            if remaining or failures:
                raise RetriableError(f"{remaining} records unacknowledged, {len(failures)} failed "
                                     f"{failures[:1]}")
            self._producer.commit_transaction(self._timeout_s)
        except (KafkaException, RetriableError) as exc:
            self._recover(exc)
            raise RetriableError(f"transaction not committed: {exc}") from None
        self._producer.begin_transaction()

    def abort(self) -> None:
        """Drop what was sent since the last commit."""
        from confluent_kafka import KafkaException

        try:
            self._producer.abort_transaction(self._timeout_s)
            self._failures = []
            self._producer.begin_transaction()
        except KafkaException as exc:
            self._recover(exc)

    def _recover(self, exc: BaseException) -> None:
        """After a failed commit: abort if the library allows, else start over with a new producer (its
        init_transactions fences and aborts what the old one left open)."""
        from confluent_kafka import KafkaException

        log_event(log, logging.WARNING, "transaction_failed", error=str(exc))
        self._failures = []
        err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
        if err is not None and not err.fatal():
            try:
                self._producer.abort_transaction(self._timeout_s)
                self._producer.begin_transaction()
                return
            except KafkaException as again:
                log_event(log, logging.WARNING, "transaction_abort_failed", error=str(again))
        self._producer = None
        self._start()

    def close(self, timeout_s: float = 10.0) -> None:
        if self._producer is None:
            return
        try:
            self._producer.abort_transaction(timeout_s)
        except Exception as exc:  # noqa: BLE001 (closing anyway: the broker aborts it on timeout)
            log_event(log, logging.DEBUG, "transaction_abort_on_close_failed", error=str(exc))
        self._producer.flush(timeout_s)
        self._producer = None


def _retriable(exc: Any) -> bool:
    err = exc.args[0] if getattr(exc, "args", None) else None
    return bool(err is not None and hasattr(err, "retriable") and (err.retriable() or not err.fatal()))


def read_to_end(kafka: KafkaClientConfig, topics: Sequence[str], *, group_id: str,
                start: Mapping[TopicPartition, int] | None = None, read_committed: bool = True,
                timeout_s: float = 60.0) -> Iterator[Record]:
    """Every record of `topics` from `start` (default: the log start) up to the end offsets of when it was
    called (the last stable offset when `read_committed`), in order per partition; FraudError if that
    takes longer than `timeout_s`. Ends by position, not by record count: transaction markers and
    compacted-away records take offsets no record reports."""
    ends = {tp: o for tp, o in KafkaAdmin(kafka, timeout_s=timeout_s).end_offsets(
        topics, committed=read_committed).items()}
    begin = dict(start or {})
    todo = {tp: end for tp, end in ends.items() if begin.get(tp, 0) < end}
    if not todo:
        return
    reader = PartitionReader(kafka, sorted({t for t, _ in todo}), group_id=group_id, start=begin,
                             default_start="earliest", timeout_s=timeout_s, read_committed=read_committed,
                             only=todo)
    deadline = time.monotonic() + timeout_s
    try:
        while todo:
            for rec in reader.poll(5000, 0.5):
                end = ends.get(rec.tp)
                if end is not None and rec.offset < end:
                    yield rec
            positions = reader.positions()
            todo = {tp: end for tp, end in todo.items() if positions.get(tp, -1) < end}
            if todo and time.monotonic() > deadline:
                left = {f"{t}[{p}]": (positions.get((t, p)), end) for (t, p), end in sorted(todo.items())}
                raise FraudError(f"{', '.join(topics)}: not read to the end in {timeout_s:g} s "
                                 f"(position, end: {left})")
    finally:
        reader.close()


def read_all(kafka: KafkaClientConfig, topic: str, *, group_id: str, idle_s: float = 2.0,
             timeout_s: float = 60.0, since_ms: int | None = None) -> list[Record]:
    """Every committed record of `topic` (from `since_ms` if given) until nothing new arrives for `idle_s`."""
    reader = PartitionReader(kafka, [topic], group_id=group_id,
                             default_start=since_ms if since_ms is not None else "earliest")
    out: list[Record] = []
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            got = reader.poll(1000, 0.2)
            if got:
                out += got
                last = time.monotonic()
            elif time.monotonic() - last > idle_s:
                break
    finally:
        reader.close()
    return out
