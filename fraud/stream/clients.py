"""The small Kafka client interface the processor needs, and `make_client` to pick an implementation.

Two implementations: fraud.stream.kafka_python_client (kafka-python, pure Python) and
fraud.stream.confluent_client (confluent-kafka, librdkafka). Both raise only `RetriableError` (transient:
broker away, timeouts, a commit refused by a rebalance, an abortable transaction error) or `FatalError`
(configuration, authorization, a producer fenced for good) out of these methods.

Rebalance callbacks run inside `poll` (never during produce/commit). A transaction may be open then (one
transaction spans several batches): the processor commits or aborts it inside the revoke callback, before
the partitions move.

Producing is tracked by count, not per record: `produce_many` queues records with no per-record callback
(a Python call per acknowledgement costs as much as the produce itself), `acknowledged()` says whether
everything queued so far is acknowledged, and any failed record is reported (RetriableError) by the next
`acknowledged`, `flush` or `commit_transaction`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from fraud.stream.config import ClientKind, StreamConfig
from fraud.stream.records import Output, PartitionsCallback, Record, TopicPartition


class StreamClient(Protocol):
    #: send_offsets_to_transaction + commit_transaction may run on another thread than poll
    background_commit: bool

    def subscribe(self, topics: Sequence[str], on_assign: PartitionsCallback, on_revoke: PartitionsCallback,
                  on_lost: PartitionsCallback) -> None: ...

    def poll(self, max_records: int, timeout_s: float) -> list[Record]: ...

    def produce(self, out: Output) -> None:
        """Queue one record; failures surface in `acknowledged`, `flush` or `commit_transaction`."""

    def produce_many(self, outs: Sequence[Output]) -> None:
        """Queue records without waiting (and without a callback per record)."""

    def acknowledged(self) -> bool:
        """True when every record queued so far is acknowledged, False while some are not yet; RetriableError
        if any failed since the last check (the failed records are not attributed: redo all unconfirmed)."""

    def flush(self, timeout_s: float) -> None:
        """Wait until every queued record is acknowledged; RetriableError if any failed or timed out."""

    def commit(self, offsets: Mapping[TopicPartition, int], timeout_s: float, asynchronous: bool = False) -> None:
        """Commit offsets; `asynchronous` returns at once (a failure is logged, the records are redelivered)."""

    def committed(self, partitions: Sequence[TopicPartition], timeout_s: float) -> dict[TopicPartition, int | None]: ...

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None: ...

    def pause(self, partitions: Sequence[TopicPartition]) -> None: ...

    def resume(self, partitions: Sequence[TopicPartition]) -> None: ...

    def assignment(self) -> set[TopicPartition]: ...

    def high_watermarks(self) -> dict[TopicPartition, int]:
        """Last known high watermark of each assigned partition (from fetch responses; no broker call)."""

    def backlog(self, timeout_s: float) -> dict[TopicPartition, int]:
        """Records each assigned partition holds past this consumer's position (its committed offset, or
        where `auto_offset_reset` starts it, when it has no position yet), asked of the brokers; for the
        fetch watchdog. RetriableError when they do not answer."""

    # transactions (exactly-once)
    def init_transactions(self, timeout_s: float) -> None: ...

    def begin_transaction(self) -> None: ...

    def group_metadata(self) -> Any:
        """The consumer's group metadata (generation, member id), for send_offsets_to_transaction."""

    def send_offsets_to_transaction(self, offsets: Mapping[TopicPartition, int], timeout_s: float,
                                    group_metadata: Any = None) -> None:
        """Add `offsets` to the open transaction, with `group_metadata` (read on the polling thread when this
        runs on another) or the consumer's current one."""

    def commit_transaction(self, timeout_s: float) -> None: ...

    def abort_transaction(self, timeout_s: float) -> None: ...

    def reset_producer(self) -> None:
        """Throw the producer away and make a new one (a new one must `init_transactions` again)."""

    def close(self, timeout_s: float) -> None: ...


def make_client(config: StreamConfig) -> StreamClient:
    if config.client is ClientKind.CONFLUENT:
        from fraud.stream.confluent_client import ConfluentClient

        return ConfluentClient(config)
    from fraud.stream.kafka_python_client import KafkaPythonClient

    return KafkaPythonClient(config)
