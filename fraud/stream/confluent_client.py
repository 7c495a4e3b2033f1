"""StreamClient on confluent-kafka (librdkafka): the fast path.

Consumer: manual commits only (auto commit and auto offset store off), read_committed, rebalance callbacks
forwarded to the processor. Producer: idempotent, acks=all; transactional (transactional.id = the
instance's) in exactly-once mode, with the consumer's group metadata sent to each transaction so the
group coordinator fences a member that lost its partitions (KIP-447).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fraud.logs import log_event
from fraud.stream.config import StreamConfig
from fraud.stream.records import (
    FatalError,
    Output,
    PartitionsCallback,
    ProducerNeedsReset,
    Record,
    RetriableError,
    TopicPartition,
)

log = logging.getLogger("fraud.stream.confluent")
#: librdkafka's own log lines (connection failures, session timeouts) go through Python logging, so they are
#: JSON like the rest; the same line is passed on at most every 10 s (a broker restart repeats it 20 times/s).
rdkafka_log = logging.getLogger("fraud.stream.librdkafka")


def records_from_messages(msgs: list, fatal: Callable[[str], Exception]) -> list[Record]:
    """confluent_kafka Messages as Records: partition-EOF events skipped, other consumer errors logged and
    skipped, a fatal one raised as `fatal(message)`."""
    out: list[Record] = []
    append = out.append
    new = tuple.__new__  # Record is a named tuple: skip its Python-level __new__ on the hot path
    for m in msgs:
        err = m.error()
        if err is not None:
            from confluent_kafka import KafkaError

            if err.code() == KafkaError._PARTITION_EOF:
                continue
            # A fatal consumer error (e.g. a static member fenced by one with its group.instance.id after a
            # coordinator move) comes as a _FATAL error event whose fatal() flag is not always set; the
            # consumer is dead either way, so the job stops and its restart rejoins the group.
            if err.fatal() or err.code() == KafkaError._FATAL:
                raise fatal(err.str())
            log_event(log, logging.WARNING, "consume_error", error=err.str(), topic=m.topic(),
                      partition=m.partition())
            continue
        hs = m.headers()
        append(new(Record, (m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1],
                            tuple(hs) if hs else ())))
    return out


class _Throttle(logging.Filter):
    def __init__(self, every_s: float = 10.0) -> None:
        super().__init__()
        self._every = every_s
        self._seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = record.getMessage()[:120]
        now = time.monotonic()
        if now - self._seen.get(key, -1e9) < self._every:
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = now
        return True


rdkafka_log.addFilter(_Throttle())


def _raise(exc: Exception, what: str) -> None:
    from confluent_kafka import KafkaError, KafkaException

    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        err: KafkaError = exc.args[0]
        detail = f"{what}: {err.str()} ({err.name()})"
        if err.fatal():
            raise ProducerNeedsReset(detail) from exc
        if err.code() in (KafkaError._INVALID_ARG, KafkaError.TOPIC_AUTHORIZATION_FAILED,
                          KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                          KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._UNKNOWN_TOPIC):
            raise FatalError(detail) from exc
        raise RetriableError(detail) from exc
    raise RetriableError(f"{what}: {exc}") from exc


#: Client settings chosen for latency (and why), before `client_overrides`. See kafka_bridge/README.md.
CONSUMER_LATENCY_SETTINGS: dict[str, Any] = {
    # Small requests on loopback and LAN: Nagle's algorithm would hold a fetch request or a commit back
    # until the previous segment is acknowledged (up to a delayed-ACK timeout, 40 ms on Linux).
    "socket.nagle.disable": True,
    # The broker answers a fetch as soon as fetch.min.bytes (1) are there, and also when an upstream
    # transaction's commit markers make parked records readable (measured: commit -> visible to a
    # read_committed consumer p50 2.8 / max 6.8 ms with a 500 ms wait, 3.7 / 39 ms with 10 ms). The wait only
    # bounds how long an idle fetch is parked, and each idle fetch costs the broker CPU: with 10 ms, three
    # idle consumers took 0.48 of this machine's 2 cores from the broker (0.09 at 100 ms, 0.04 at 500 ms).
    # So librdkafka's default, stated.
    "fetch.min.bytes": 1,
    "fetch.wait.max.ms": 500,
    # Pre-fetch at most ~16 MB / 20,000 records per consumer (a backlog is not worth gigabytes of heap), and
    # when that queue was full, fetch again 10 ms after it drained instead of librdkafka's default second.
    "queued.max.messages.kbytes": 16_384,
    "queued.min.messages": 20_000,
    "fetch.queue.backoff.ms": 10,
    "fetch.error.backoff.ms": 100,
}
PRODUCER_LATENCY_SETTINGS: dict[str, Any] = {
    "socket.nagle.disable": True,
    # The processor produces a batch's outputs in one burst (~1 us per record): 1 ms of linger sends a
    # burst as a few requests (one per partition), not one request per record, and costs at most 1 ms.
    "linger.ms": 1,
    # One produce request per broker connection at a time: what is produced while it is in flight goes in
    # the next one. With librdkafka's 5, a slow broker (one sharing the cores, a GC pause) had the producer's
    # broker thread busy-waiting on its in-flight limit (0.25-0.68 of a core at 4,000-11,000 records/s with the
    # broker's core saturated; 0.13-0.16 with 1), and many small requests cost the broker CPU of its own: on
    # this 2-core machine, 3 alternating runs each, latency at 10,700 events/s p50 29-53 ms against 202-421
    # with 5 (see kafka_bridge/README.md). Ordering and idempotence are the same at 1 and 5.
    "max.in.flight.requests.per.connection": 1,
    # A Python call per acknowledgement costs as much as the produce itself: only failures are reported
    # (to the producer-wide callback); success is counted (`len(producer)` = records not yet acknowledged).
    "delivery.report.only.error": True,
    # Exactly-once: right after a transaction commits, the coordinator answers the next transaction's first
    # AddPartitionsToTxn / AddOffsetsToTxn with CONCURRENT_TRANSACTIONS until its markers are written, a few
    # ms. librdkafka retries after retry.backoff.ms, 100 ms by default: that fixed wait was most of each
    # transaction's cost (send_offsets_to_transaction took ~120 ms; 10 ms with this). Failures that last
    # still back off exponentially up to retry.backoff.max.ms.
    "retry.backoff.ms": 10,
    # Bound the local queue (the processor waits for acknowledgements when it is full).
    "queue.buffering.max.messages": 200_000,
    "queue.buffering.max.kbytes": 262_144,
    "compression.type": "none",  # CPU is the scarce resource on the bridge's host, not bandwidth
}


class ConfluentClient:
    #: commit_transaction may run on another thread while this one polls (librdkafka is thread-safe)
    background_commit = True

    def __init__(self, config: StreamConfig) -> None:
        from confluent_kafka import Consumer

        self._config = config
        consumer_conf = config.kafka.confluent(**{
            "client.id": config.client_id,
            "group.id": config.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": config.auto_offset_reset,
            # Also in at-least-once mode: never process records of an aborted upstream transaction.
            "isolation.level": "read_committed",
            "session.timeout.ms": config.session_timeout_ms,
            "heartbeat.interval.ms": max(100, config.session_timeout_ms // 3),
            "max.poll.interval.ms": config.max_poll_interval_ms,
            **CONSUMER_LATENCY_SETTINGS,
            "error_cb": self._on_error,
            "logger": rdkafka_log,
            "on_commit": self._on_commit,
        })
        if config.static_membership:
            consumer_conf["group.instance.id"] = config.instance_id
        consumer_conf.update(config.client_overrides.get("consumer", {}))
        self._consumer = Consumer(consumer_conf)
        self._producer: Any = None
        self._failures: list[str] = []
        self._last_error: tuple[str, float] = ("", 0.0)
        self._make_producer()

    def _make_producer(self) -> None:
        from confluent_kafka import Producer

        c = self._config
        conf = c.kafka.confluent(**{
            "client.id": c.client_id,
            "acks": "all",
            "enable.idempotence": True,
            **PRODUCER_LATENCY_SETTINGS,
            "on_delivery": self._delivered,
            "error_cb": self._on_error,
            "logger": rdkafka_log,
        })
        if c.exactly_once:
            conf["transactional.id"] = c.transactional_id
            conf["transaction.timeout.ms"] = c.transaction_timeout_ms
        conf.update(c.client_overrides.get("producer", {}))
        self._producer = Producer(conf)

    def _on_error(self, err: Any) -> None:
        # librdkafka reports every failed reconnect; log each distinct message at most every 10 s
        text = f"{err.name()}: {err.str()}"
        now = time.monotonic()
        if text != self._last_error[0] or now - self._last_error[1] > 10:
            self._last_error = (text, now)
            log_event(log, logging.WARNING, "kafka_client_error", error=text, fatal=bool(err.fatal()))

    def _on_commit(self, err: Any, partitions: list) -> None:
        failed = [f"{p.topic}[{p.partition}]" for p in partitions if p.error is not None]
        if err is not None or failed:
            log_event(log, logging.WARNING, "commit_failed", error=str(err) if err else None, partitions=failed)

    # -- consumer ------------------------------------------------------------------------------

    def subscribe(self, topics: Sequence[str], on_assign: PartitionsCallback, on_revoke: PartitionsCallback,
                  on_lost: PartitionsCallback) -> None:
        def conv(parts: list) -> list[TopicPartition]:
            return [(p.topic, p.partition) for p in parts]

        self._consumer.subscribe(
            list(topics),
            on_assign=lambda _c, parts: on_assign(conv(parts)),
            on_revoke=lambda _c, parts: on_revoke(conv(parts)),
            on_lost=lambda _c, parts: on_lost(conv(parts)),
        )

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        # consume(n, timeout) waits until n messages or the timeout; a micro-batch must start as soon as
        # one record is there (the processor decides how long to wait for more), so: what is already
        # fetched, else block for one, then take whatever else is already fetched.
        msgs = self._consumer.consume(num_messages=max_records, timeout=0)
        if not msgs:
            first = self._consumer.poll(timeout_s)
            if first is None:
                return []
            msgs = [first]
            if max_records > 1:
                msgs += self._consumer.consume(num_messages=max_records - 1, timeout=0)
        return records_from_messages(msgs, lambda text: FatalError(f"consumer: {text}"))

    def commit(self, offsets: Mapping[TopicPartition, int], timeout_s: float, asynchronous: bool = False) -> None:
        from confluent_kafka import TopicPartition as TP

        try:
            result = self._consumer.commit(offsets=[TP(t, p, o) for (t, p), o in offsets.items()],
                                           asynchronous=asynchronous)
        except Exception as exc:  # noqa: BLE001 (classified below)
            _raise(exc, "commit offsets")
        for tp in result or ():
            if tp.error is not None:
                raise RetriableError(f"commit offsets: {tp.topic}[{tp.partition}]: {tp.error}")

    def committed(self, partitions: Sequence[TopicPartition], timeout_s: float) -> dict[TopicPartition, int | None]:
        from confluent_kafka import TopicPartition as TP

        try:
            result = self._consumer.committed([TP(t, p) for t, p in partitions], timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001
            _raise(exc, "read committed offsets")
        return {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None) for tp in result}

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        from confluent_kafka import TopicPartition as TP

        for (t, p), o in offsets.items():
            try:
                self._consumer.seek(TP(t, p, o))
            except Exception as exc:  # noqa: BLE001
                _raise(exc, f"seek {t}[{p}] to {o}")

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        from confluent_kafka import TopicPartition as TP

        if partitions:
            self._consumer.pause([TP(t, p) for t, p in partitions])

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        from confluent_kafka import TopicPartition as TP

        if partitions:
            self._consumer.resume([TP(t, p) for t, p in partitions])

    def assignment(self) -> set[TopicPartition]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def high_watermarks(self) -> dict[TopicPartition, int]:
        from confluent_kafka import TopicPartition as TP

        out = {}
        for tp in self._consumer.assignment():
            try:
                _low, high = self._consumer.get_watermark_offsets(TP(tp.topic, tp.partition), cached=True)
            except Exception:  # noqa: BLE001 (no fetch yet: nothing known)
                continue
            if high >= 0:
                out[(tp.topic, tp.partition)] = high
        return out

    def backlog(self, timeout_s: float) -> dict[TopicPartition, int]:
        try:
            assigned = self._consumer.assignment()
            if not assigned:
                return {}
            positions = {(tp.topic, tp.partition): tp.offset for tp in self._consumer.position(assigned)}
            unknown = [tp for tp in assigned if positions[(tp.topic, tp.partition)] < 0]
            if unknown:  # never fetched: where the next fetch would start
                for tp in self._consumer.committed(unknown, timeout=timeout_s):
                    positions[(tp.topic, tp.partition)] = tp.offset
            out = {}
            for tp in assigned:
                low, high = self._consumer.get_watermark_offsets(tp, timeout=timeout_s, cached=False)
                pos = positions[(tp.topic, tp.partition)]
                if pos < 0:
                    pos = low if self._config.auto_offset_reset == "earliest" else high
                out[(tp.topic, tp.partition)] = max(0, high - pos)
            return out
        except Exception as exc:  # noqa: BLE001 (classified)
            _raise(exc, "measure the backlog")
        raise AssertionError("unreachable")

    # -- producer ------------------------------------------------------------------------------

    def _delivered(self, err: Any, msg: Any) -> None:
        # producer-wide, failures only (delivery.report.only.error)
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err.str()}")

    def _produce(self, topic: str, value: bytes | None, key: bytes | None, headers: Any = None,
                 partition: int | None = None) -> None:
        produce = self._producer.produce
        while True:
            try:
                if headers is None and partition is None:
                    produce(topic, value, key)
                else:
                    produce(topic, value, key, -1 if partition is None else partition, headers=headers)
                return
            except BufferError:  # local queue full: let librdkafka send, then retry
                self._producer.poll(0.05)
            except Exception as exc:  # noqa: BLE001
                _raise(exc, f"produce to {topic}")

    def produce(self, out: Output) -> None:
        self._produce(out.topic, out.value, out.key, list(out.headers) if out.headers else None, out.partition)

    def produce_many(self, outs: Sequence[Output]) -> None:
        produce = self._producer.produce
        try:
            for topic, value, key, headers, partition in outs:
                if headers or partition is not None:
                    self._produce(topic, value, key, list(headers) if headers else None, partition)
                    continue
                try:
                    produce(topic, value, key)
                except BufferError:
                    self._produce(topic, value, key)
        except (FatalError, RetriableError):
            raise
        except Exception as exc:  # noqa: BLE001
            _raise(exc, "produce")
        self._producer.poll(0)  # serve failure reports (and error callbacks) without waiting

    def _check_failures(self) -> None:
        if self._failures:
            failures, self._failures = self._failures, []
            raise RetriableError(f"{len(failures)} records not acknowledged, e.g. {failures[0]}")

    def acknowledged(self) -> bool:
        # len(producer): records queued or in flight, plus reports and callbacks not yet served
        if len(self._producer) == 0:
            self._check_failures()
            return True
        self._producer.poll(0)
        self._check_failures()
        return len(self._producer) == 0

    def flush(self, timeout_s: float) -> None:
        left = self._producer.flush(timeout_s)
        self._check_failures()
        if left:
            raise RetriableError(f"{left} records not acknowledged after {timeout_s:g} s")

    def init_transactions(self, timeout_s: float) -> None:
        try:
            self._producer.init_transactions(timeout_s)
        except Exception as exc:  # noqa: BLE001
            _raise(exc, "init transactions")

    def begin_transaction(self) -> None:
        self._failures = []
        try:
            self._producer.begin_transaction()
        except Exception as exc:  # noqa: BLE001
            _raise(exc, "begin transaction")

    def group_metadata(self) -> Any:
        return self._consumer.consumer_group_metadata()

    def send_offsets_to_transaction(self, offsets: Mapping[TopicPartition, int], timeout_s: float,
                                    group_metadata: Any = None) -> None:
        from confluent_kafka import TopicPartition as TP

        meta = group_metadata if group_metadata is not None else self._consumer.consumer_group_metadata()
        try:
            self._producer.send_offsets_to_transaction([TP(t, p, o) for (t, p), o in offsets.items()], meta, timeout_s)
        except Exception as exc:  # noqa: BLE001
            _raise(exc, "send offsets to transaction")

    def commit_transaction(self, timeout_s: float) -> None:
        try:
            self._producer.commit_transaction(timeout_s)
        except Exception as exc:  # noqa: BLE001
            _raise(exc, "commit transaction")
        failures, self._failures = self._failures, []
        if failures:  # cannot happen after a successful commit; guard the invariant anyway
            raise FatalError(f"transaction committed with {len(failures)} failed records: {failures[0]}")

    def abort_transaction(self, timeout_s: float) -> None:
        try:
            self._producer.abort_transaction(timeout_s)
        except Exception as exc:  # noqa: BLE001
            _raise(exc, "abort transaction")
        self._failures = []

    def reset_producer(self) -> None:
        old, self._producer = self._producer, None
        try:
            if not self._config.exactly_once:
                old.flush(1.0)
        finally:
            del old
            self._failures = []
            self._make_producer()

    def close(self, timeout_s: float) -> None:
        try:
            if self._producer is not None:
                self._producer.flush(timeout_s)
        finally:
            self._consumer.close()
