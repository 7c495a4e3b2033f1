"""StreamClient on kafka-python (pure Python): the client the design first named; slower, no C library.

Same semantics as the confluent-kafka client: manual commits, read_committed, idempotent acks=all
producer, transactional producer with the consumer's group metadata (KIP-447) in exactly-once mode.
kafka-python's transactional calls wait for the broker's answer without a timeout of their own; a broker
that is away makes them wait until it is back (which is the safe outcome for exactly-once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

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

log = logging.getLogger("fraud.stream.kafka_python")


def _raise(exc: Exception, what: str) -> None:
    from kafka import errors as E  # noqa: N812

    detail = f"{what}: {type(exc).__name__}: {exc}"
    if isinstance(exc, (E.ProducerFencedError, E.InvalidProducerEpochError, E.IllegalStateError)):
        raise ProducerNeedsReset(detail) from exc
    if isinstance(exc, (E.AuthorizationError, E.SaslAuthenticationFailedError, E.KafkaConfigurationError)):
        raise FatalError(detail) from exc
    raise RetriableError(detail) from exc


#: How often the rebalance listener, parked on kafka-python's IO loop, looks whether its callback finished.
LISTENER_CHECK_S = 0.005
#: Pause between metadata requests while a topic's partitions are not known yet (subscribe).
METADATA_RETRY_S = 0.1


def _rebalance_listener(on_assign: PartitionsCallback, on_revoke: PartitionsCallback,
                        on_lost: PartitionsCallback) -> Any:
    """The rebalance listener for kafka-python's consumer.

    kafka-python 3 runs rebalance listeners on its IO thread, where a blocking consumer call (the commit an
    at-least-once revoke makes) is refused: "Cannot block on net.run() from the IO thread". So its async
    listener runs each callback on a thread of its own and awaits it by sleeping on the IO loop, which meanwhile
    serves that commit's requests and the heartbeats. The thread that polls is blocked in `poll` until the
    rebalance completes, so the callbacks still run while the processor's loop is inside poll, as with
    confluent-kafka. kafka-python 2 calls the listener on the polling thread itself: a plain listener (also
    the fallback if a 3.x release lacks the loop's sleep)."""
    import kafka

    def conv(parts: Any) -> list[TopicPartition]:
        return [(p.topic, p.partition) for p in parts]

    async_base = getattr(kafka, "AsyncConsumerRebalanceListener", None)
    try:  # the IO loop's sleep (kafka-python 3's own event loop, not asyncio)
        from kafka.net.selector import KernelEvent
    except ImportError:
        async_base = None
    if async_base is None:
        class Listener(kafka.ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                on_revoke(conv(revoked))

            def on_partitions_assigned(self, assigned: Any) -> None:
                on_assign(conv(assigned))

            def on_partitions_lost(self, lost: Any) -> None:
                on_lost(conv(lost))

        return Listener()

    async def off_the_io_thread(callback: PartitionsCallback, parts: Any) -> None:
        done = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                callback(conv(parts))
            except BaseException as exc:  # noqa: BLE001 - raised again on the IO loop, as a sync listener's would be
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=run, name="rebalance-listener", daemon=True).start()
        while not done.is_set():
            await KernelEvent("_sleep", LISTENER_CHECK_S)
        if failure:
            raise failure[0]

    class AsyncListener(async_base):
        async def on_partitions_revoked(self, revoked: Any) -> None:
            await off_the_io_thread(on_revoke, revoked)

        async def on_partitions_assigned(self, assigned: Any) -> None:
            await off_the_io_thread(on_assign, assigned)

        async def on_partitions_lost(self, lost: Any) -> None:
            await off_the_io_thread(on_lost, lost)

    return AsyncListener()


class KafkaPythonClient:
    #: kafka-python's consumer is not thread-safe (send_offsets_to_transaction reads its group metadata)
    background_commit = False

    def __init__(self, config: StreamConfig) -> None:
        from kafka import KafkaConsumer

        self._config = config
        kwargs = config.kafka.consumer_kwargs(
            config.group_id,
            client_id=config.client_id,
            auto_offset_reset=config.auto_offset_reset,
            isolation_level="read_committed",
            max_poll_records=config.batch_max_size,
            session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=max(100, config.session_timeout_ms // 3),
            max_poll_interval_ms=config.max_poll_interval_ms,
            fetch_max_wait_ms=500,  # as librdkafka's fetch.wait.max.ms (confluent_client): see there
        )
        if config.static_membership:
            kwargs["group_instance_id"] = config.instance_id
        kwargs.update(config.client_overrides.get("consumer", {}))
        self._consumer = KafkaConsumer(**kwargs)
        self._producer: Any = None
        self._futures: list[Any] = []
        self._make_producer()

    def _make_producer(self) -> None:
        from kafka import KafkaProducer

        c = self._config
        kwargs = c.kafka.producer_kwargs(
            client_id=c.client_id, acks="all", enable_idempotence=True, linger_ms=1,
            max_block_ms=int(c.operation_timeout_s * 1000),
        )
        if c.exactly_once:
            kwargs.update(transactional_id=c.transactional_id, transaction_timeout_ms=c.transaction_timeout_ms)
        kwargs.update(c.client_overrides.get("producer", {}))
        self._producer = KafkaProducer(**kwargs)

    @staticmethod
    def _tp(tp: TopicPartition) -> Any:
        from kafka import TopicPartition as TP

        return TP(tp[0], tp[1])

    # -- consumer ------------------------------------------------------------------------------

    def subscribe(self, topics: Sequence[str], on_assign: PartitionsCallback, on_revoke: PartitionsCallback,
                  on_lost: PartitionsCallback) -> None:
        # kafka-python's range assignor gives out nothing for a topic it has no partition metadata for ("No
        # partition metadata for topic"), and its next refresh may be minutes away: a freshly created topic
        # was not consumed for the 60 s of a test. So the topics' partitions are known before joining.
        # Best effort: brokers that do not answer leave it to the group's own metadata refreshes.
        deadline = time.monotonic() + self._config.operation_timeout_s
        try:
            for topic in topics:
                while not self._consumer.partitions_for_topic(topic) and time.monotonic() < deadline:
                    time.sleep(METADATA_RETRY_S)
        except Exception as exc:  # noqa: BLE001
            log.warning("topic_metadata_unavailable", extra={"fields": {"topics": list(topics), "error": repr(exc)}})
        self._consumer.subscribe(list(topics), listener=_rebalance_listener(on_assign, on_revoke, on_lost))

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except Exception as exc:  # noqa: BLE001
            _raise(exc, "poll")
        out = []
        for recs in batches.values():
            for r in recs:
                out.append(Record(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp,
                                  tuple(r.headers) if r.headers else ()))
        return out

    def commit(self, offsets: Mapping[TopicPartition, int], timeout_s: float, asynchronous: bool = False) -> None:
        from kafka.structs import OffsetAndMetadata

        request = {self._tp(tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
        try:
            if asynchronous:
                self._consumer.commit_async(request, callback=self._on_commit)
            else:
                self._consumer.commit(request, timeout_ms=int(timeout_s * 1000))
        except Exception as exc:  # noqa: BLE001
            _raise(exc, "commit offsets")

    @staticmethod
    def _on_commit(offsets: Any, response: Any) -> None:
        if isinstance(response, Exception):
            log.warning("commit_failed", extra={"fields": {"error": repr(response)}})

    def committed(self, partitions: Sequence[TopicPartition], timeout_s: float) -> dict[TopicPartition, int | None]:
        try:
            return {tp: self._consumer.committed(self._tp(tp), timeout_ms=int(timeout_s * 1000)) for tp in partitions}
        except Exception as exc:  # noqa: BLE001
            _raise(exc, "read committed offsets")
        raise AssertionError("unreachable")

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, o in offsets.items():
            try:
                self._consumer.seek(self._tp(tp), o)
            except Exception as exc:  # noqa: BLE001
                _raise(exc, f"seek {tp} to {o}")

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        if partitions:
            self._consumer.pause(*[self._tp(tp) for tp in partitions])

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        if partitions:
            self._consumer.resume(*[self._tp(tp) for tp in partitions])

    def assignment(self) -> set[TopicPartition]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def high_watermarks(self) -> dict[TopicPartition, int]:
        out = {}
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is not None:
                out[(tp.topic, tp.partition)] = high
        return out

    def backlog(self, timeout_s: float) -> dict[TopicPartition, int]:
        timeout_ms = int(timeout_s * 1000)
        try:
            assigned = list(self._consumer.assignment())
            if not assigned:
                return {}
            ends = self._consumer.end_offsets(assigned, timeout_ms=timeout_ms)
            return {(tp.topic, tp.partition): max(0, ends[tp] - self._consumer.position(tp, timeout_ms=timeout_ms))
                    for tp in assigned}
        except Exception as exc:  # noqa: BLE001
            _raise(exc, "measure the backlog")
        raise AssertionError("unreachable")

    # -- producer ------------------------------------------------------------------------------

    def produce(self, out: Output) -> None:
        try:
            fut = self._producer.send(out.topic, value=out.value, key=out.key,
                                      headers=list(out.headers) if out.headers else None, partition=out.partition)
        except Exception as exc:  # noqa: BLE001
            _raise(exc, f"produce to {out.topic}")
        self._futures.append(fut)

    def produce_many(self, outs: Sequence[Output]) -> None:
        for out in outs:
            self.produce(out)

    def acknowledged(self) -> bool:
        futures = self._futures
        if any(not f.is_done for f in futures):
            failed = [f for f in futures if f.is_done and f.exception is not None]
            if failed:
                self._futures = []
                raise RetriableError(f"{len(failed)} records not acknowledged, e.g. {failed[0].exception!r}")
            return False
        self._check_futures()
        return True

    def _check_futures(self) -> None:
        futures, self._futures = self._futures, []
        failed = [f for f in futures if f.is_done and f.exception is not None]
        if failed:
            raise RetriableError(f"{len(failed)} records not acknowledged, e.g. {failed[0].exception!r}")
        if any(not f.is_done for f in futures):
            raise RetriableError("records not acknowledged in time")

    def flush(self, timeout_s: float) -> None:
        try:
            self._producer.flush(timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001
            self._futures = []
            _raise(exc, "flush")
        self._check_futures()

    def init_transactions(self, timeout_s: float) -> None:
        if not all(hasattr(self._producer, a) for a in ("_transaction_manager", "_sender")):
            raise FatalError("this kafka-python has no KafkaProducer._transaction_manager/_sender, which bounded "
                             "transaction waits use: install the pinned kafka-python (requirements.lock)")
        try:
            self._producer.init_transactions()
        except Exception as exc:  # noqa: BLE001
            _raise(exc, "init transactions")

    def begin_transaction(self) -> None:
        self._futures = []
        try:
            self._producer.begin_transaction()
        except Exception as exc:  # noqa: BLE001
            _raise(exc, "begin transaction")

    def group_metadata(self) -> Any:
        return self._consumer.group_metadata()

    def send_offsets_to_transaction(self, offsets: Mapping[TopicPartition, int], timeout_s: float,
                                    group_metadata: Any = None) -> None:
        from kafka.structs import OffsetAndMetadata

        meta = group_metadata if group_metadata is not None else self._consumer.group_metadata()
        try:
            self._await(self._producer._transaction_manager.send_offsets_to_transaction(
                {self._tp(tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}, meta),
                timeout_s, "send offsets to transaction")
        except ProducerNeedsReset:
            raise
        except Exception as exc:  # noqa: BLE001
            _raise(exc, "send offsets to transaction")

    def _await(self, result: Any, timeout_s: float, what: str) -> None:
        """Wait for a transaction step at most `timeout_s`. kafka-python's own commit_transaction,
        abort_transaction and send_offsets_to_transaction wait forever (a broker that went away would hang
        the job), so these start the step on its transaction manager and wait here. A step that does not
        finish in time leaves the producer in an unknown transaction state: it is replaced, and the new
        one's init_transactions completes or aborts what the old one left."""
        self._producer._sender.wakeup()
        if not result.wait(timeout_ms=timeout_s * 1000):
            raise ProducerNeedsReset(f"{what}: no answer from the transaction coordinator in {timeout_s:g} s")

    def commit_transaction(self, timeout_s: float) -> None:
        try:
            self._await(self._producer._transaction_manager.begin_commit(), timeout_s, "commit transaction")
        except ProducerNeedsReset:
            raise
        except Exception as exc:  # noqa: BLE001
            _raise(exc, "commit transaction")
        futures, self._futures = self._futures, []
        if any(f.is_done and f.exception is not None for f in futures):
            raise FatalError("transaction committed although records failed")

    def abort_transaction(self, timeout_s: float) -> None:
        self._futures = []
        try:
            self._await(self._producer._transaction_manager.begin_abort(), timeout_s, "abort transaction")
        except ProducerNeedsReset:
            raise
        except Exception as exc:  # noqa: BLE001
            _raise(exc, "abort transaction")

    def reset_producer(self) -> None:
        old, self._producer = self._producer, None
        try:
            old.close(timeout=0 if self._config.exactly_once else 1)
        except Exception:  # noqa: BLE001 (a broken producer may fail to close; it is dropped anyway)
            log.debug("closing the old producer failed", exc_info=True)
        self._futures = []
        self._make_producer()

    def close(self, timeout_s: float) -> None:
        try:
            if self._producer is not None:
                self._producer.close(timeout=timeout_s)
        finally:
            self._consumer.close(autocommit=False)
