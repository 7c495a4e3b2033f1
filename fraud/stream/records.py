"""The records a stream job sees and emits, and the errors its process function may raise.

A process function takes a batch of `Record`s (consumed, in offset order per partition) and returns a
`ProcessResult`: the `Output`s to produce and the `DeadLetter`s for records it could not handle. The
processor produces both and commits the input offsets according to the delivery mode; the process
function never talks to Kafka itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fraud.contract import DeadLetter

#: (topic, partition): client-neutral name of a topic partition.
TopicPartition = tuple[str, int]
#: A rebalance callback: the partitions assigned, revoked or lost.
PartitionsCallback = Callable[[list[TopicPartition]], None]


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed Kafka record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def tp(self) -> TopicPartition:
        return (self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class Output:
    """One record to produce. `partition` None means the producer's partitioner (by key)."""

    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int | None = None


@dataclass
class ProcessResult:
    """What a process function made of one batch: every input record ends up in one of the two lists
    (or deliberately in neither, e.g. a filter), never lost silently."""

    outputs: list[Output] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


#: The user function plugged into the processor.
ProcessFn = Callable[[Sequence[Record]], ProcessResult]


class RetriableError(Exception):
    """A transient failure (a server or broker unavailable, a timeout): the batch is retried after a
    backoff and nothing is committed meanwhile, so no record is lost or skipped."""


class ProducerNeedsReset(RetriableError):
    """The producer hit an error it cannot recover from (fenced, its transaction expired, an idempotence
    sequence broke): the processor makes a new producer and retries the batch."""


class FatalError(Exception):
    """A failure retrying cannot fix (e.g. the producer was fenced by another instance): the job stops."""


def next_offsets(records: Sequence[Record]) -> dict[TopicPartition, int]:
    """The offsets to commit after `records`: per partition, the last offset seen plus one."""
    out: dict[TopicPartition, int] = {}
    for r in records:
        tp = (r.topic, r.partition)
        if r.offset >= out.get(tp, -1):
            out[tp] = r.offset + 1
    return out


def first_offsets(records: Sequence[Record]) -> dict[TopicPartition, int]:
    """Per partition, the first offset of `records` (where to rewind to redo the batch)."""
    out: dict[TopicPartition, int] = {}
    for r in records:
        tp = (r.topic, r.partition)
        if tp not in out or r.offset < out[tp]:
            out[tp] = r.offset
    return out
