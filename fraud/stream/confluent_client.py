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
    from confluent_kafka import KafkaError

    out = []
    for m in msgs:
        err = m.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                continue
            if err.fatal():
                raise fatal(err.str())
            log_event(log, logging.WARNING, "consume_error", error=err.str(), topic=m.topic(),
                      partition=m.partition())
            continue
        hs = m.headers()
        out.append(Record(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1],
                          tuple(hs) if hs else ()))
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


class _Delivery:
    __slots__ = ("pending", "errors", "_producer")

    def __init__(self, n: int, producer: Any) -> None:
        self.pending = n
        self.errors: list[str] = []
        self._producer = producer

    def callback(self, err: Any, msg: Any) -> None:
        self.pending -= 1
        if err is not None:
            self.errors.append(f"{msg.topic()}: {err.str()}")

    def done(self) -> bool:
        if self.pending > 0:
            self._producer.poll(0)  # delivery callbacks only run inside poll
        return self.pending <= 0


class ConfluentClient:
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
            "fetch.wait.max.ms": 100,
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
            "linger.ms": 2,
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

    # -- producer ------------------------------------------------------------------------------

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err.str()}")

    def produce(self, out: Output) -> None:
        kwargs: dict[str, Any] = {"key": out.key, "on_delivery": self._delivered}
        if out.headers:
            kwargs["headers"] = list(out.headers)
        if out.partition is not None:
            kwargs["partition"] = out.partition
        while True:
            try:
                self._producer.produce(out.topic, out.value, **kwargs)
                return
            except BufferError:  # local queue full: let librdkafka send, then retry
                self._producer.poll(0.05)
            except Exception as exc:  # noqa: BLE001
                _raise(exc, f"produce to {out.topic}")

    def produce_batch(self, outs: Sequence[Output]) -> _Delivery:
        delivery = _Delivery(len(outs), self._producer)
        produce = self._producer.produce
        for out in outs:
            kwargs: dict[str, Any] = {"key": out.key, "on_delivery": delivery.callback}
            if out.headers:
                kwargs["headers"] = list(out.headers)
            if out.partition is not None:
                kwargs["partition"] = out.partition
            while True:
                try:
                    produce(out.topic, out.value, **kwargs)
                    break
                except BufferError:
                    self._producer.poll(0.05)
                except Exception as exc:  # noqa: BLE001
                    _raise(exc, f"produce to {out.topic}")
        self._producer.poll(0)
        return delivery

    def wait(self, delivery: _Delivery, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not delivery.done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise RetriableError(f"{delivery.pending} records not acknowledged after {timeout_s:g} s")
            self._producer.poll(min(left, 0.05))
        if delivery.errors:
            raise RetriableError(f"{len(delivery.errors)} records not acknowledged, e.g. {delivery.errors[0]}")

    def flush(self, timeout_s: float) -> None:
        left = self._producer.flush(timeout_s)
        failures, self._failures = self._failures, []
        if failures:
            raise RetriableError(f"{len(failures)} records not acknowledged, e.g. {failures[0]}")
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

    def send_offsets_to_transaction(self, offsets: Mapping[TopicPartition, int], timeout_s: float) -> None:
        from confluent_kafka import TopicPartition as TP

        try:
            self._producer.send_offsets_to_transaction(
                [TP(t, p, o) for (t, p), o in offsets.items()], self._consumer.consumer_group_metadata(), timeout_s)
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
