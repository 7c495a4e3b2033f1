"""Delivery modes: the object that owns produce-then-commit, so the processor is only the loop.

The processor hands each processed batch to `deliver(batch, outputs)` and calls `service(now, idle)` on
every turn of its loop; the mode decides when outputs are confirmed and offsets committed:

- `AtLeastOnce`: outputs are produced at once (no callback per record); once every record produced so
  far is acknowledged, the batches before it are confirmed and their offsets committed in the background,
  at most every `commit_interval_ms` (and at once when the loop is idle). A crash replays what was not
  committed: duplicates are possible, losses are not.
- `Transactional` (exactly-once): the first batch opens a Kafka transaction; the outputs of the following
  batches join it; once it is `commit_interval_ms` old, or the loop is idle, the input offsets are added
  (`send_offsets_to_transaction` with the consumer's group metadata: KIP-447 fencing) and it is committed.
  One transaction per interval instead of per batch is what makes exactly-once cheap; the price is latency
  for read_committed consumers: an output becomes visible when its transaction commits, at most
  `commit_interval_ms` plus one commit after it was produced. With confluent-kafka the commit runs on a
  thread of its own while the loop goes on: batches finished meanwhile are held (a producer has one
  transaction at a time) and produced into the next transaction as soon as the commit returns.

Both keep what they have not committed (`uncommitted`), and `abandon()` after a failure returns where each
partition must be rewound (the first offset of every unconfirmed batch), aborting an open transaction.
`commit_all()` confirms everything delivered (a revoke, a shutdown). `confirmed(batches, offsets)` is the
processor's book-keeping hook, called once per batch when its offsets are committed (never for a failed
attempt).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from fraud.logs import log_event
from fraud.stream.clients import StreamClient
from fraud.stream.config import StreamConfig
from fraud.stream.records import (
    Output,
    ProcessResult,
    Record,
    RetriableError,
    TopicPartition,
    first_offsets,
    merge_earliest,
    next_offsets,
)
from fraud.stream.watchdog import exit_wedged

log = logging.getLogger("fraud.stream")

#: At-least-once: unacknowledged batches tolerated before the loop waits for acknowledgements.
MAX_UNACKED_BATCHES = 64
#: At-least-once: how often an idle loop looks for the acknowledgements a due commit waits for. Without it
#: the loop turned with a zero poll timeout until they came (a few ms per batch: at 200 events/s a quarter
#: of a core); the outputs are already out, only the commit waits.
ACK_CHECK_S = 0.005


@dataclass
class Delivered:
    """A batch handed to the delivery mode: its records, what processing made of them and its offsets."""

    batch: Sequence[Record]
    result: ProcessResult
    offsets: dict[TopicPartition, int]  # to commit after it
    firsts: dict[TopicPartition, int]  # to rewind to, to redo it
    at: float  # clock when delivered


#: confirmed(delivered batches, merged offsets, now)
ConfirmedFn = Callable[[list[Delivered], dict[TopicPartition, int], float], None]


class DeliveryMode:
    """Common part: the client, the config, the clock and the confirmation hook."""

    def __init__(self, client: StreamClient, config: StreamConfig, clock: Callable[[], float],
                 confirmed: ConfirmedFn) -> None:
        self.client = client
        self.config = config
        self.clock = clock
        self._confirmed = confirmed
        self.interval_s = config.commit_interval_ms / 1000.0

    def delivered(self, batch: Sequence[Record], result: ProcessResult, outputs: Sequence[Output]) -> Delivered:
        return Delivered(batch, result, next_offsets(batch), first_offsets(batch), self.clock())

    # -- the interface the processor uses -------------------------------------------------------------

    def deliver(self, batch: Sequence[Record], result: ProcessResult, outputs: Sequence[Output]) -> None:
        raise NotImplementedError

    def service(self, now: float, idle: bool) -> None:
        """Confirm and commit what is due. RetriableError (or ProducerNeedsReset) on a failure: the caller
        abandons everything uncommitted."""
        raise NotImplementedError

    def until_due(self, now: float) -> float | None:
        """Seconds until `service` has work to do on its own (None: nothing pending)."""
        raise NotImplementedError

    def commit_all(self) -> None:
        """Confirm and commit everything delivered so far (blocking)."""
        raise NotImplementedError

    def abandon(self) -> dict[TopicPartition, int]:
        """Drop everything not committed; per partition, the offset to rewind to."""
        raise NotImplementedError

    def forget(self, partitions: Sequence[TopicPartition]) -> None:
        """Partitions lost (not revoked): nothing of theirs may be committed any more."""

    def close(self) -> None:
        """The loop ended."""

    @property
    def uncommitted(self) -> bool:
        raise NotImplementedError


class AtLeastOnce(DeliveryMode):
    def __init__(self, client: StreamClient, config: StreamConfig, clock: Callable[[], float],
                 confirmed: ConfirmedFn) -> None:
        super().__init__(client, config, clock, confirmed)
        self._unacked: list[Delivered] = []
        self._acked: list[Delivered] = []
        self._acked_offsets: dict[TopicPartition, int] = {}
        self._last_commit = clock()
        #: committed in the background since the last synchronous commit (confirmed on revoke and close)
        self.async_offsets: dict[TopicPartition, int] = {}

    @property
    def uncommitted(self) -> bool:
        return bool(self._unacked or self._acked)

    def deliver(self, batch: Sequence[Record], result: ProcessResult, outputs: Sequence[Output]) -> None:
        self.client.produce_many(outputs)
        self._unacked.append(self.delivered(batch, result, outputs))
        if len(self._unacked) > MAX_UNACKED_BATCHES:
            self._wait_acks()

    def _ack_all(self) -> None:
        for d in self._unacked:
            self._acked_offsets.update(d.offsets)
        self._acked.extend(self._unacked)
        self._unacked = []

    def _wait_acks(self) -> None:
        self.client.flush(self.config.operation_timeout_s)
        self._ack_all()

    def service(self, now: float, idle: bool) -> None:
        due = idle or now - self._last_commit >= self.interval_s
        if self._unacked:
            if self.client.acknowledged():
                self._ack_all()
            elif due and now - self._unacked[0].at >= self.interval_s:
                # under constant load the producer may never be empty: wait for the records in flight
                self._wait_acks()
        if self._acked and due:
            self._commit(asynchronous=True)

    def _commit(self, asynchronous: bool) -> None:
        offsets, acked = self._acked_offsets, self._acked
        self._acked_offsets, self._acked = {}, []
        now = self.clock()
        self._last_commit = now
        # Acknowledged: the commit can go in the background (a lost commit only means those records are
        # delivered again); a synchronous commit follows on revoke and close.
        self.client.commit(offsets, self.config.operation_timeout_s, asynchronous=asynchronous)
        if asynchronous:
            self.async_offsets.update(offsets)
        self._confirmed(acked, offsets, now)

    def until_due(self, now: float) -> float | None:
        if not self.uncommitted:
            return None
        due = max(0.0, self._last_commit + self.interval_s - now)
        if due == 0.0 and not self._acked:  # due, but waiting for acknowledgements rather than for time
            return ACK_CHECK_S
        return due

    def commit_all(self) -> None:
        if self._unacked:
            self._wait_acks()
        if self._acked:
            self._commit(asynchronous=True)
        self.commit_sync(list(self.async_offsets))

    def commit_sync(self, partitions: Sequence[TopicPartition]) -> None:
        """Confirm background commits before partitions move or the job stops."""
        offsets = {tp: self.async_offsets.pop(tp) for tp in partitions if tp in self.async_offsets}
        if not offsets:
            return
        try:
            self.client.commit(offsets, self.config.operation_timeout_s)
        except RetriableError as exc:  # their records will be delivered again: allowed in at-least-once
            log_event(log, logging.WARNING, "final_commit_failed", error=str(exc),
                      partitions=[f"{t}[{p}]" for t, p in sorted(offsets)])

    def abandon(self) -> dict[TopicPartition, int]:
        rewind: dict[TopicPartition, int] = {}
        if self._acked:  # acknowledged before the failure: commit them rather than redo them
            try:
                self._commit(asynchronous=True)
            except RetriableError:
                for d in self._acked:
                    merge_earliest(rewind, d.firsts)
                self._acked, self._acked_offsets = [], {}
        for d in self._unacked:
            merge_earliest(rewind, d.firsts)
        self._unacked = []
        return rewind

    def forget(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:  # no longer ours: committing them would be refused
            self.async_offsets.pop(tp, None)
            self._acked_offsets.pop(tp, None)


#: Slack past the commit's own timeouts before a background commit counts as wedged.
WEDGED_MARGIN_S = 30.0
#: Exactly-once: batches finished while a transaction commits in the background, held for the next
#: transaction, before the loop waits for the commit.
MAX_HELD_BATCHES = 64


class Transactional(DeliveryMode):
    """Exactly-once. When the client allows it (`background_commit`), a due transaction is committed on a
    thread of its own while the loop goes on collecting, scoring and delivering: a producer has one
    transaction at a time, so batches delivered meanwhile are held (up to MAX_HELD_BATCHES, then the loop
    waits) and produced into the next transaction once the commit returns. That transaction's age counts
    from its oldest batch, so an output is still visible at most one interval plus one commit after it was
    delivered. Book-keeping (`confirmed`) always runs on the loop's thread."""

    def __init__(self, client: StreamClient, config: StreamConfig, clock: Callable[[], float],
                 confirmed: ConfirmedFn, abort_failed: Callable[[Exception], None],
                 wedged: Callable[[str], None] = exit_wedged) -> None:
        super().__init__(client, config, clock, confirmed)
        self._abort_failed = abort_failed
        self._wedged = wedged
        #: a background commit (send offsets, then commit: two calls with the operation timeout each) that
        #: has not returned after this long is stuck in the client, not slow
        self.wedged_after_s = 2 * config.operation_timeout_s + WEDGED_MARGIN_S
        self._open_since: float | None = None
        self._batches: list[Delivered] = []
        self._offsets: dict[TopicPartition, int] = {}
        #: the transaction being committed in the background: (future, its batches, its offsets)
        self._committing: tuple[Future, list[Delivered], dict[TopicPartition, int]] | None = None
        #: batches of a transaction whose commit failed: redone, after an abort
        self._failed: list[Delivered] = []
        #: batches delivered during a background commit, with their outputs (not produced yet)
        self._held: list[tuple[Delivered, Sequence[Output]]] = []
        self._executor: ThreadPoolExecutor | None = None
        self.aborts = 0

    @property
    def uncommitted(self) -> bool:
        return (self._open_since is not None or self._committing is not None or bool(self._failed)
                or bool(self._held))

    def deliver(self, batch: Sequence[Record], result: ProcessResult, outputs: Sequence[Output]) -> None:
        if self._committing is not None:  # one transaction at a time: hold this batch while that one commits
            self._settle(wait=len(self._held) >= MAX_HELD_BATCHES)
            if self._committing is not None:
                self._held.append((self.delivered(batch, result, outputs), outputs))
                return
        self._release_held()
        self._produce(self.delivered(batch, result, outputs), outputs)

    def _produce(self, d: Delivered, outputs: Sequence[Output]) -> None:
        if self._open_since is None:
            self.client.begin_transaction()
            self._open_since = d.at  # a held batch ages the transaction from its delivery, not from now
        # registered before producing: a failure below aborts the transaction and redoes this batch too
        self._batches.append(d)
        self._offsets.update(d.offsets)
        self.client.produce_many(outputs)

    def _release_held(self) -> None:
        """Produce the batches held during a commit (that has returned) into the next transaction, in order."""
        while self._held:
            self._produce(*self._held[0])  # removed once registered: a failure leaves it to be rewound
            del self._held[0]

    def service(self, now: float, idle: bool) -> None:
        # idle with batches held: nothing else to do, so wait for the commit and deliver them now
        self._settle(wait=idle and bool(self._held))
        if self._committing is None:
            self._release_held()
        if self._open_since is not None and (idle or now - self._open_since >= self.interval_s):
            self._start_commit()

    def until_due(self, now: float) -> float | None:
        if self._held:
            return 0.0  # their commit is due as soon as the loop has nothing else to do
        if self._open_since is None:
            return None
        return max(0.0, self._open_since + self.interval_s - now)

    def commit_all(self) -> None:
        self._settle(wait=True)
        self._release_held()
        if self._open_since is not None:
            self._start_commit()
        self._settle(wait=True)

    def _commit_transaction(self, offsets: dict[TopicPartition, int], group_metadata: Any = None) -> None:
        c = self.config
        self.client.send_offsets_to_transaction(offsets, c.operation_timeout_s, group_metadata)
        self.client.commit_transaction(c.operation_timeout_s)

    def _start_commit(self) -> None:
        batches, offsets = self._batches, self._offsets
        self._open_since, self._batches, self._offsets = None, [], {}
        if not getattr(self.client, "background_commit", False):
            try:
                self._commit_transaction(offsets)
            except RetriableError:
                self._failed = batches
                raise
            self._confirmed(batches, offsets, self.clock())
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="txn-commit")
        # the group metadata is read here, on the polling thread (consumers are not thread-safe in every client)
        future = self._executor.submit(self._commit_transaction, offsets, self.client.group_metadata())
        self._committing = (future, batches, offsets)

    def _settle(self, wait: bool) -> None:
        """Book-keeping for a background commit that finished (waiting for it if `wait`); its failure is
        raised here, on the loop's thread."""
        if self._committing is None:
            return
        future, batches, offsets = self._committing
        if not wait and not future.done():
            return
        try:
            future.result(timeout=self.wedged_after_s)
        except FutureTimeout:
            self._wedged(f"a transaction commit has not returned after {self.wedged_after_s:.0f} s")
            # Only reached when `wedged` returns (tests): the transaction counts as failed and is redone.
            self._committing, self._failed = None, batches
            raise RetriableError("transaction commit wedged") from None
        except RetriableError:
            self._committing = None
            self._failed = batches
            raise
        except BaseException:
            self._committing = None
            raise
        self._committing = None
        self._confirmed(batches, offsets, self.clock())

    def abandon(self) -> dict[TopicPartition, int]:
        rewind: dict[TopicPartition, int] = {}
        if self._committing is not None:
            try:
                self._settle(wait=True)  # committed after all: those batches are done, not redone
            except RetriableError as exc:
                log_event(log, logging.WARNING, "commit_failed", error=str(exc))
        needs_abort = self._open_since is not None or bool(self._failed)
        for d in self._failed + self._batches + [d for d, _ in self._held]:  # held: never produced
            merge_earliest(rewind, d.firsts)
        self._open_since, self._batches, self._offsets, self._failed, self._held = None, [], {}, [], []
        if needs_abort:
            try:
                self.client.abort_transaction(self.config.operation_timeout_s)
                self.aborts += 1
            except RetriableError as exc:
                # The outcome is unknown (e.g. the broker went away mid-commit). A new producer's
                # init_transactions completes or aborts it; the rewind then reads the committed offsets.
                log_event(log, logging.WARNING, "abort_failed", error=str(exc))
                self._abort_failed(exc)
        return rewind

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)


def make_delivery(client: StreamClient, config: StreamConfig, clock: Callable[[], float], confirmed: ConfirmedFn,
                  abort_failed: Callable[[Exception], None],
                  wedged: Callable[[str], None] = exit_wedged) -> DeliveryMode:
    if config.exactly_once:
        return Transactional(client, config, clock, confirmed, abort_failed, wedged)
    return AtLeastOnce(client, config, clock, confirmed)
