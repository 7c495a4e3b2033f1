"""The records a stream job sees and emits, and the errors its process function may raise.

A process function takes a batch of `Record`s (consumed, in offset order per partition) and returns a
`ProcessResult`: the `Output`s to produce and the `DeadLetter`s for records it could not handle. The
processor produces both and commits the input offsets according to the delivery mode; the process
function never talks to Kafka itself. A `StagedProcess` (the scoring bridge) splits that in two, submit
now and result later, so the processor can keep a batch in flight while it collects and delivers others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

from fraud.contract import DeadLetter

#: (topic, partition): client-neutral name of a topic partition.
TopicPartition = tuple[str, int]
#: A rebalance callback: the partitions assigned, revoked or lost.
PartitionsCallback = Callable[[list[TopicPartition]], None]


class Record(NamedTuple):
    """One consumed Kafka record. A named tuple, not a dataclass: the hot path makes one per event, and a
    tuple is built in a third of the time of a frozen dataclass."""

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


class Output(NamedTuple):
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


class PendingResult(Protocol):
    """A batch handed to a staged process function, whose result is not needed yet (e.g. a Predict call in
    flight). `result()` blocks until it is there; it may raise RetriableError like a process function."""

    def done(self) -> bool: ...

    def result(self) -> ProcessResult: ...

    def cancel(self) -> None:
        """The batch is abandoned (a failure before it, a rebalance): drop what is in flight."""


@runtime_checkable
class StagedProcess(Protocol):
    """A process function in two steps, so the processor can pipeline batches: `submit(batch)` starts the
    work (decode, send a request) and returns at once; the processor collects and submits the next batch,
    and delivers the one before, while this one is in flight."""

    def submit(self, records: Sequence[Record]) -> PendingResult: ...


class Completed:
    """The PendingResult of work already done (a plain process function, or a result known at submit)."""

    __slots__ = ("_result", "_error")

    def __init__(self, result: ProcessResult | None = None, error: BaseException | None = None) -> None:
        self._result = result
        self._error = error

    def done(self) -> bool:
        return True

    def result(self) -> ProcessResult:
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        pass


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


def merge_earliest(into: dict[TopicPartition, int], offsets: dict[TopicPartition, int]) -> None:
    """Fold `offsets` into `into`, keeping the earlier offset per partition (where a rewind must start)."""
    for tp, offset in offsets.items():
        if tp not in into or offset < into[tp]:
            into[tp] = offset
