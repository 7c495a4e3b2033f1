"""Unit tests of fraud.stream: the processor's delivery logic against an in-memory fake client (no broker),
config/options parsing, metrics, the health endpoint and JSON logs. The real-broker tests of the same
machinery are in tests/test_stream_integration.py."""

from __future__ import annotations

import argparse
import gc
import io
import json
import logging
import signal
import threading
import time
import urllib.request
import weakref
from collections.abc import Mapping, Sequence

import pytest

from fraud.contract import H_OFFSET, H_REASON, H_TOPIC, DeadLetter
from fraud.errors import FraudError
from fraud.kafka_config import KafkaClientConfig
from fraud.logs import JsonFormatter, log_event
from fraud.stream import metrics as m
from fraud.stream.config import ClientKind, Delivery, StreamConfig, stream_options
from fraud.stream.health import HealthServer, Lifecycle
from fraud.stream.options import add_options, resolve_options
from fraud.stream.processor import StreamProcessor, settle_heap
from fraud.stream.records import (
    FatalError,
    Output,
    ProcessResult,
    ProducerNeedsReset,
    Record,
    RetriableError,
    TopicPartition,
    first_offsets,
    merge_earliest,
    next_offsets,
)
from fraud.stream.signals import install_stop_handlers

IN, OUT, DLQ = "in", "out", "dlq"


class FakeClient:
    """An in-memory Kafka: partition logs, committed offsets, transactions that publish only on commit.

    `fail` maps an operation name to how many of its next calls raise RetriableError; `ambiguous_commit`
    makes the next commit_transaction apply but raise anyway (an answer lost on the way back)."""

    def __init__(self, logs: dict[TopicPartition, list[bytes]], exactly_once: bool,
                 background_commit: bool = False) -> None:
        self.logs = logs
        self.eos = exactly_once
        self.background_commit = background_commit  # transactions committed on the delivery mode's thread
        self.committed_offsets: dict[TopicPartition, int] = {}
        self.position: dict[TopicPartition, int] = {}
        self.assigned: set[TopicPartition] = set()
        self.published: list[Output] = []  # visible to read_committed consumers
        self.txn: list[Output] | None = None
        self.txn_offsets: dict[TopicPartition, int] = {}
        self.fail: dict[str, int] = {}
        self.ambiguous_commit = False
        self.abort_fails = False
        self.resets = 0
        self.inits = 0
        self.closed = False
        self.polls = 0
        self.on_poll = None  # hook(client) run at the start of each poll
        self.callbacks = None
        self.commit_calls: list[bool] = []
        self.transactions = 0
        self.unacked: list[list[Output]] = []  # produced outside a transaction, per produce_many call
        self.ack_lag = 1  # acknowledgements show up this many checks after a produce (pipelining)
        self._checks = 0
        self.max_ahead = 0  # most batches produced while an earlier one still awaited its acknowledgements

    def _maybe_fail(self, op: str) -> None:
        if self.fail.get(op, 0) > 0:
            self.fail[op] -= 1
            raise RetriableError(f"injected {op} failure")

    def subscribe(self, topics, on_assign, on_revoke, on_lost) -> None:
        self.callbacks = (on_assign, on_revoke, on_lost)
        self.assign(list(self.logs))

    def assign(self, tps: list[TopicPartition], keep_positions: bool = False) -> None:
        """`keep_positions`: a partition assigned again keeps its fetch position (kafka-python); otherwise it
        restarts from the committed offset (librdkafka)."""
        for tp in tps:
            self.assigned.add(tp)
            if not (keep_positions and tp in self.position):
                self.position[tp] = self.committed_offsets.get(tp, 0)
        self.callbacks[0](tps)

    def revoke(self, tps: list[TopicPartition]) -> None:
        self.assigned -= set(tps)
        self.callbacks[1](tps)

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        self.polls += 1
        if self.on_poll:
            self.on_poll(self)
        out = []
        for tp in sorted(self.assigned):
            log = self.logs[tp]
            while self.position[tp] < len(log) and len(out) < max_records:
                off = self.position[tp]
                out.append(Record(tp[0], tp[1], off, f"k{off}".encode(), log[off], 1000))
                self.position[tp] = off + 1
        if not out and timeout_s > 0:
            time.sleep(min(timeout_s, 0.001))  # a real poll blocks (and lets a background commit run)
        return out

    def produce(self, out: Output) -> None:
        self.produce_many([out])

    def produce_many(self, outs) -> None:
        for _ in outs:
            self._maybe_fail("produce")
        if self.txn is not None:
            self.txn.extend(outs)
        else:
            self.unacked.append(list(outs))
            self.max_ahead = max(self.max_ahead, len(self.unacked) - 1)
            self._checks = 0

    def _ack(self) -> None:
        try:
            self._maybe_fail("wait")
        except RetriableError:
            self.unacked = []  # those records failed: never published
            raise
        for outs in self.unacked:
            self.published.extend(outs)
        self.unacked = []

    def acknowledged(self) -> bool:
        if not self.unacked:
            return True
        self._checks += 1
        if self._checks <= self.ack_lag:
            return False
        self._ack()
        return True

    def flush(self, timeout_s: float) -> None:
        self._maybe_fail("flush")
        self._ack()

    def commit(self, offsets: Mapping[TopicPartition, int], timeout_s: float, asynchronous: bool = False) -> None:
        self.commit_calls.append(asynchronous)
        if asynchronous and self.fail.get("commit", 0) > 0:  # a background commit fails silently
            self.fail["commit"] -= 1
            return
        self._maybe_fail("commit")
        self.committed_offsets.update(offsets)

    def committed(self, partitions: Sequence[TopicPartition], timeout_s: float):
        self._maybe_fail("committed")
        return {tp: self.committed_offsets.get(tp) for tp in partitions}

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.position.update(offsets)

    def pause(self, partitions) -> None:
        pass

    def resume(self, partitions) -> None:
        pass

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def high_watermarks(self) -> dict[TopicPartition, int]:
        return {tp: len(self.logs[tp]) for tp in self.assigned}

    def backlog(self, timeout_s: float) -> dict[TopicPartition, int]:
        return {tp: len(self.logs[tp]) - self.position.get(tp, self.committed_offsets.get(tp, 0))
                for tp in self.assigned}

    def init_transactions(self, timeout_s: float) -> None:
        self._maybe_fail("init")
        self.inits += 1
        self.txn = None

    def begin_transaction(self) -> None:
        assert self.txn is None, "transaction already open"
        self.txn, self.txn_offsets = [], {}
        self.transactions += 1

    def group_metadata(self) -> str:
        return "generation-1"

    def send_offsets_to_transaction(self, offsets, timeout_s: float, group_metadata=None) -> None:
        self._maybe_fail("send_offsets")
        self.txn_offsets = dict(offsets)

    def commit_transaction(self, timeout_s: float) -> None:
        self._maybe_fail("commit_transaction")
        assert self.txn is not None
        self.published.extend(self.txn)
        self.committed_offsets.update(self.txn_offsets)
        self.txn = None
        if self.ambiguous_commit:
            self.ambiguous_commit = False
            raise RetriableError("commit answer lost")

    def abort_transaction(self, timeout_s: float) -> None:
        if self.abort_fails:
            raise RetriableError("abort failed")
        self.txn = None

    def reset_producer(self) -> None:
        self.resets += 1
        self.txn = None

    def close(self, timeout_s: float) -> None:
        self.closed = True


def make_config(delivery: Delivery = Delivery.AT_LEAST_ONCE, **kw) -> StreamConfig:
    settings = dict(kafka=KafkaClientConfig(), input_topics=(IN,), group_id="g", dlq_topic=DLQ, component="test",
                    delivery=delivery, instance_id="i0", batch_max_size=4, batch_max_wait_ms=0,
                    retry_backoff_initial_ms=1, retry_backoff_max_ms=2)
    settings.update(kw)
    return StreamConfig(**settings)


def upper_or_dead(records: Sequence[Record]) -> ProcessResult:
    """Uppercases values; values starting with 'bad' become dead letters."""
    result = ProcessResult()
    for r in records:
        if r.value.startswith(b"bad"):
            result.dead_letters.append(DeadLetter(r.key, r.value, r.topic, r.partition, r.offset, "bad_value",
                                                  "value starts with bad", "test", "TRANSFORMATION"))
        else:
            result.outputs.append(Output(OUT, r.value.upper(), r.key))
    return result


def run_until_drained(proc: StreamProcessor, client: FakeClient, total: int, max_polls: int = 500) -> None:
    def hook(c: FakeClient) -> None:
        done = sum(c.committed_offsets.values()) >= total
        if done or c.polls > max_polls:
            proc.request_stop()

    client.on_poll = hook
    proc.run()


def logs_of(n: int, partitions: int = 2, bad_every: int = 0) -> dict[TopicPartition, list[bytes]]:
    out: dict[TopicPartition, list[bytes]] = {(IN, p): [] for p in range(partitions)}
    for i in range(n):
        value = f"bad{i}" if bad_every and i % bad_every == 0 else f"v{i}"
        out[(IN, i % partitions)].append(value.encode())
    return out


def values(outputs: list[Output], topic: str) -> list[bytes]:
    return sorted(o.value for o in outputs if o.topic == topic)


def test_offsets_of_a_batch_and_merging_rewinds_keeps_the_earliest_per_partition():
    records = [Record(IN, p, off, None, b"v", 0) for p, off in [(0, 7), (1, 3), (0, 5), (0, 9)]]
    assert first_offsets(records) == {(IN, 0): 5, (IN, 1): 3}
    assert next_offsets(records) == {(IN, 0): 10, (IN, 1): 4}
    rewind = {(IN, 0): 6, (IN, 2): 1}
    merge_earliest(rewind, first_offsets(records))
    assert rewind == {(IN, 0): 5, (IN, 1): 3, (IN, 2): 1}
    merge_earliest(rewind, {(IN, 0): 8, (IN, 2): 0})
    assert rewind == {(IN, 0): 5, (IN, 1): 3, (IN, 2): 0}


@pytest.mark.parametrize("delivery", list(Delivery))
def test_every_record_becomes_one_output_or_dead_letter_and_offsets_commit(delivery):
    logs = logs_of(23, bad_every=5)
    client = FakeClient(logs, delivery is Delivery.EXACTLY_ONCE)
    metrics = m.RecordingMetrics()
    proc = StreamProcessor(make_config(delivery), upper_or_dead, client=client, metrics=metrics)
    run_until_drained(proc, client, 23)
    assert values(client.published, OUT) == sorted(f"V{i}".encode() for i in range(23) if i % 5)
    dead = [o for o in client.published if o.topic == DLQ]
    assert sorted(o.value for o in dead) == sorted(f"bad{i}".encode() for i in range(0, 23, 5))
    headers = dict(dead[0].headers)
    assert headers[H_REASON] == b"bad_value" and headers[H_TOPIC] == IN.encode()
    assert int(headers[H_OFFSET]) >= 0
    assert client.committed_offsets == {(IN, 0): 12, (IN, 1): 11}
    assert client.closed
    assert metrics.total(m.DEAD_LETTERED, reason="bad_value") == 5
    assert metrics.total(m.PRODUCED, topic=OUT) == 18
    assert max(metrics.values(m.BATCH_SIZE)) <= 4
    assert client.inits == (1 if delivery is Delivery.EXACTLY_ONCE else 0)


@pytest.mark.parametrize("delivery", list(Delivery))
def test_retriable_process_failure_commits_nothing_then_redoes_the_batch(delivery):
    logs = logs_of(10)
    client = FakeClient(logs, delivery is Delivery.EXACTLY_ONCE)
    calls = {"n": 0}
    committed_while_failing = []

    def flaky(records):
        calls["n"] += 1
        if 2 <= calls["n"] <= 5:  # the server is "down" for four attempts
            committed_while_failing.append(dict(client.committed_offsets))
            raise RetriableError("UNAVAILABLE")
        return upper_or_dead(records)

    metrics = m.RecordingMetrics()
    proc = StreamProcessor(make_config(delivery), flaky, client=client, metrics=metrics)
    run_until_drained(proc, client, 10)
    # nothing committed during the outage beyond the first batch (delivered before it: committed at the
    # first failure rather than redone)
    assert all(c == committed_while_failing[1] for c in committed_while_failing[1:])
    assert sum(committed_while_failing[-1].values()) <= 4
    assert values(client.published, OUT) == sorted(f"V{i}".encode() for i in range(10))  # once each
    assert metrics.total(m.RETRIES, stage="process") == 4


def test_at_least_once_commits_in_background_after_flush_and_confirms_on_stop():
    client = FakeClient(logs_of(8), False)
    client.fail["commit"] = 1  # one background commit lost: the next one (cumulative offsets) supersedes it
    proc = StreamProcessor(make_config(), upper_or_dead, client=client, metrics=m.RecordingMetrics())
    run_until_drained(proc, client, 8)
    assert values(client.published, OUT) == sorted(f"V{i}".encode() for i in range(8))
    assert client.committed_offsets == {(IN, 0): 4, (IN, 1): 4}
    assert client.commit_calls[:-1] == [True] * (len(client.commit_calls) - 1)
    assert client.commit_calls[-1] is False  # the synchronous confirmation on stop


def test_at_least_once_pipelined_failure_redoes_the_in_flight_batches_and_never_commits_unacked():
    logs = logs_of(12, partitions=1)
    client = FakeClient(logs, False)
    client.fail["wait"] = 2  # acknowledgements of in-flight batches fail twice
    violations = []
    original_commit = client.commit

    def checked_commit(offsets, timeout_s, asynchronous=False):
        published = {o.value for o in client.published}
        for (_, _), off in offsets.items():  # every record below the committed offset has its output acked
            missing = [i for i in range(off) if logs[(IN, 0)][i].upper() not in published]
            if missing:
                violations.append((off, missing))
        original_commit(offsets, timeout_s, asynchronous)

    client.commit = checked_commit
    metrics = m.RecordingMetrics()
    hooked: list[int] = []

    def on_committed(batch, result):  # runs once the batch's offsets are committed, never for failed attempts
        hooked.extend(r.offset for r in batch)

    proc = StreamProcessor(make_config(batch_max_size=2), upper_or_dead, client=client, metrics=metrics,
                           on_committed=on_committed)
    run_until_drained(proc, client, 12)
    assert violations == []
    assert sorted(hooked) == list(range(12))  # each record's batch reported exactly once
    assert metrics.total(m.PRODUCED, topic=OUT) == 12  # counted when committed, not per attempt
    assert set(values(client.published, OUT)) == {f"V{i}".encode() for i in range(12)}
    assert client.committed_offsets == {(IN, 0): 12}
    assert metrics.total(m.RETRIES, stage="commit") == 2  # acknowledgements fail where they are confirmed
    # pipelining happened: a batch was produced while the previous one still awaited its acks
    assert client.max_ahead >= 1  # pipelined: a batch was produced before the one before it was acknowledged


def test_at_least_once_lost_commits_mean_redelivery_after_restart_never_loss():
    logs = logs_of(8)
    first = FakeClient(logs, False)
    first.fail["commit"] = 100  # every commit fails (e.g. the coordinator is away until the process dies)
    proc = StreamProcessor(make_config(), upper_or_dead, client=first, metrics=m.RecordingMetrics())
    first.on_poll = lambda c: proc.request_stop() if c.polls > 5 else None
    proc.run()
    assert first.committed_offsets == {} and len(first.published) == 8
    second = FakeClient(logs, False)  # the restarted job: same log, same (empty) committed offsets
    proc2 = StreamProcessor(make_config(), upper_or_dead, client=second, metrics=m.RecordingMetrics())
    run_until_drained(proc2, second, 8)
    got = values(first.published + second.published, OUT)
    assert set(got) == {f"V{i}".encode() for i in range(8)} and len(got) == 16  # at least once


@pytest.mark.parametrize("background", [False, True], ids=["sync-commit", "background-commit"])
def test_exactly_once_failed_transaction_is_aborted_and_redone_without_duplicates(background):
    logs = logs_of(12)
    client = FakeClient(logs, True, background)
    client.fail["send_offsets"] = 1
    client.fail["commit_transaction"] = 2
    metrics = m.RecordingMetrics()
    proc = StreamProcessor(make_config(Delivery.EXACTLY_ONCE), upper_or_dead, client=client, metrics=metrics)
    run_until_drained(proc, client, 12)
    assert values(client.published, OUT) == sorted(f"V{i}".encode() for i in range(12))
    assert metrics.total(m.ABORTS) == 3


@pytest.mark.parametrize("background", [False, True], ids=["sync-commit", "background-commit"])
def test_exactly_once_ambiguous_commit_resets_producer_and_resumes_after_the_committed_batch(background):
    logs = logs_of(8)
    client = FakeClient(logs, True, background)
    client.ambiguous_commit = True  # first transaction commits, but the client hears an error
    client.abort_fails = True  # ... and cannot abort (wrong state)

    def process(records):
        client.abort_fails = client.resets == 0
        return upper_or_dead(records)

    proc = StreamProcessor(make_config(Delivery.EXACTLY_ONCE), process, client=client, metrics=m.RecordingMetrics())
    run_until_drained(proc, client, 8)
    assert client.resets == 1 and client.inits == 2  # new producer, initialized again
    # the rewind read the committed offsets: the committed batch was not redone
    assert values(client.published, OUT) == sorted(f"V{i}".encode() for i in range(8))


@pytest.mark.parametrize("background", [False, True], ids=["sync-commit", "background-commit"])
def test_fenced_producer_is_replaced_but_repeated_fencing_is_fatal(background):
    client = FakeClient(logs_of(4), True, background)

    proc = StreamProcessor(make_config(Delivery.EXACTLY_ONCE), upper_or_dead, client=client,
                           metrics=m.RecordingMetrics())

    def fenced(timeout_s):
        raise ProducerNeedsReset("ProducerFenced")

    client.commit_transaction = fenced
    with pytest.raises(FatalError, match="another instance"):
        proc.run()
    assert client.resets == 5 and client.closed
    assert client.published == [] and client.committed_offsets == {}


def test_revoked_partition_records_are_dropped_from_the_batch_being_collected():
    logs = logs_of(6)
    client = FakeClient(logs, True)
    seen: list[Record] = []

    def process(records):
        seen.extend(records)
        return upper_or_dead(records)

    proc = StreamProcessor(make_config(Delivery.EXACTLY_ONCE, batch_max_size=100, batch_max_wait_ms=50),
                           process, client=client, metrics=m.RecordingMetrics())
    original_poll = client.poll
    state = {"n": 0}

    def poll(max_records, timeout_s):
        state["n"] += 1
        if state["n"] == 2:  # partition 1 moves to another member while this batch is collected
            client.revoke([(IN, 1)])
            proc.request_stop()
        return original_poll(max_records, timeout_s)

    client.poll = poll
    proc.run()
    assert {r.partition for r in seen} == {0}
    assert client.committed_offsets == {(IN, 0): 3}  # nothing committed for the revoked partition


class StepClock:
    """A clock that moves `step` seconds each time the client polls."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("background", [False, True], ids=["sync-commit", "background-commit"])
def test_exactly_once_one_transaction_spans_the_batches_of_a_commit_interval(background):
    logs = logs_of(200, partitions=2)
    client = FakeClient(logs, True, background)
    clock = StepClock(0.03)  # 30 ms per poll: a transaction holds about 4 batches of 4 records
    open_at: list[float] = []
    ages: list[float] = []
    original_begin, original_commit, original_metadata = (client.begin_transaction, client.commit_transaction,
                                                           client.group_metadata)

    def begin() -> None:
        open_at.append(clock.now)
        original_begin()

    # The age is taken when the loop hands the transaction over: in the commit call itself (sync), or when
    # the loop reads the group metadata for the commit thread (background; the thread may start later, by
    # however long the OS takes to schedule it, while the loop goes on).
    def commit(timeout_s: float) -> None:
        if not background:
            ages.append(clock.now - open_at[-1])
        original_commit(timeout_s)

    def metadata() -> str:
        ages.append(clock.now - open_at[-1])
        return original_metadata()

    client.begin_transaction, client.commit_transaction = begin, commit
    if background:
        client.group_metadata = metadata

    def hook(c: FakeClient) -> None:
        clock.now += clock.step
        committing = proc._mode._committing if background else None
        if committing is not None:  # a background commit returns within a 30 ms poll, as real ones do here
            committing[0].result(5)
        if sum(c.committed_offsets.values()) >= 200 or c.polls > 500:
            proc.request_stop()

    client.on_poll = hook
    metrics = m.RecordingMetrics()
    proc = StreamProcessor(make_config(Delivery.EXACTLY_ONCE, commit_interval_ms=100), upper_or_dead, client=client,
                           metrics=metrics, clock=clock)
    proc.run()
    batches = metrics.total(m.COMMITS)
    assert values(client.published, OUT) == sorted(f"V{i}".encode() for i in range(200))
    assert batches == 50 and 10 <= client.transactions <= 20  # about 4 batches per transaction, not 1
    # none stays open past the interval plus the turn that notices it
    assert len(ages) == client.transactions and max(ages) <= 0.1 + 0.03 + 1e-9
    assert client.committed_offsets == {(IN, 0): 100, (IN, 1): 100}


def test_exactly_once_commits_at_once_when_the_loop_is_idle():
    client = FakeClient(logs_of(6), True)
    clock = StepClock(0.0)  # time stands still: only idleness can commit
    committed_at_poll: list[int] = []
    original_commit = client.commit_transaction

    def commit(timeout_s: float) -> None:
        committed_at_poll.append(client.polls)
        original_commit(timeout_s)

    client.commit_transaction = commit
    proc = StreamProcessor(make_config(Delivery.EXACTLY_ONCE, batch_max_size=100, commit_interval_ms=10_000),
                           upper_or_dead, client=client, metrics=m.RecordingMetrics(), clock=clock)
    client.on_poll = lambda c: proc.request_stop() if c.polls >= 3 else None
    proc.run()
    assert committed_at_poll[0] == 2  # the first poll that found nothing committed the open transaction
    assert len(client.published) == 6


@pytest.mark.parametrize("background", [False, True], ids=["sync-commit", "background-commit"])
def test_exactly_once_revoke_commits_the_open_transaction_before_the_partitions_move(background):
    logs = logs_of(8)
    client = FakeClient(logs, True, background)
    clock = StepClock(0.0)
    state = {"n": 0}
    original_poll = client.poll
    at_revoke: dict = {}

    def poll(max_records, timeout_s):
        state["n"] += 1
        if state["n"] == 3:  # two batches delivered into one open transaction (time stands still)
            at_revoke["open_before"] = client.txn is not None
            client.revoke([(IN, 0), (IN, 1)])
            at_revoke["open_after"] = client.txn is not None
            proc.request_stop()
        return original_poll(max_records, timeout_s)

    client.poll = poll
    proc = StreamProcessor(make_config(Delivery.EXACTLY_ONCE, batch_max_size=2, commit_interval_ms=10_000),
                           upper_or_dead, client=client, metrics=m.RecordingMetrics(), clock=clock)
    proc.run()
    assert at_revoke == {"open_before": True, "open_after": False}
    assert client.committed_offsets == {(IN, 0): 4}  # 2 batches of 2 records, committed on revoke
    assert client.transactions == 1


class StagedUpper:
    """A staged process function: submit returns a pending result that is only done once asked twice, so
    the processor has to submit the next batch before it delivers this one (pipelining)."""

    def __init__(self, fail_results: int = 0) -> None:
        self.events: list[tuple[str, int]] = []
        self.fail_results = fail_results
        self.cancelled = 0

    def submit(self, records):
        self.events.append(("submit", records[0].offset))
        outer = self

        class Pending:
            polls = 0

            def done(self) -> bool:
                self.polls += 1
                return self.polls > 2

            def result(self):
                outer.events.append(("result", records[0].offset))
                if outer.fail_results > 0:
                    outer.fail_results -= 1
                    raise RetriableError("Predict UNAVAILABLE")
                return upper_or_dead(records)

            def cancel(self) -> None:
                outer.cancelled += 1

        return Pending()


@pytest.mark.parametrize("delivery", list(Delivery))
def test_staged_process_is_pipelined_in_order_and_a_failure_redoes_the_batches_in_flight(delivery):
    logs = logs_of(40, partitions=1)
    client = FakeClient(logs, delivery is Delivery.EXACTLY_ONCE)
    staged = StagedUpper(fail_results=2)
    proc = StreamProcessor(make_config(delivery, batch_max_size=4), staged, client=client,
                           metrics=m.RecordingMetrics())
    run_until_drained(proc, client, 40)
    # a batch was submitted before the one before it was finished
    order = staged.events
    assert any(a[0] == "submit" and b[0] == "submit" for a, b in zip(order, order[1:], strict=False))
    assert staged.cancelled >= 1  # the failure dropped the batch in flight behind it
    published = [o.value for o in client.published if o.topic == OUT]
    assert sorted(set(published)) == sorted(f"V{i}".encode() for i in range(40))
    if delivery is Delivery.EXACTLY_ONCE:
        assert len(published) == 40  # redone, never duplicated
    # per partition, outputs come out in offset order (a redo may repeat, never reorder, in at-least-once)
    first_seen = [published.index(f"V{i}".encode()) for i in range(40)]
    assert first_seen == sorted(first_seen)


@pytest.mark.parametrize("keep_positions", [False, True], ids=["librdkafka", "kafka-python"])
@pytest.mark.parametrize("delivery", list(Delivery))
def test_a_partition_assigned_back_after_a_revoke_redoes_the_batches_dropped_in_flight(delivery, keep_positions):
    """A revoke drops the batches in flight (their records are read again from the committed offset). When the
    same member gets the partitions back, librdkafka restarts them from the committed offset, but kafka-python
    keeps the fetch position of a partition that stays assigned: without a rewind the dropped batch was
    skipped (a full-suite run lost 64 of 400 transactions, one batch)."""
    logs = logs_of(40, partitions=2)
    client = FakeClient(logs, delivery is Delivery.EXACTLY_ONCE)
    staged = StagedUpper()
    state = {"n": 0}
    original_poll = client.poll

    def poll(max_records, timeout_s):
        state["n"] += 1
        if state["n"] == 4:  # batches in flight: a rebalance gives both partitions back to this member
            tps = sorted(client.assigned)
            client.revoke(tps)
            client.assign(tps, keep_positions=keep_positions)
        return original_poll(max_records, timeout_s)

    client.poll = poll
    proc = StreamProcessor(make_config(delivery, batch_max_size=4), staged, client=client,
                           metrics=m.RecordingMetrics())
    run_until_drained(proc, client, 40)
    assert staged.cancelled >= 1  # the revoke dropped a batch in flight
    published = [o.value for o in client.published if o.topic == OUT]
    assert sorted(set(published)) == sorted(f"V{i}".encode() for i in range(40))  # nothing skipped
    if delivery is Delivery.EXACTLY_ONCE:
        assert len(published) == 40  # and nothing twice
    assert client.committed_offsets == {(IN, 0): 20, (IN, 1): 20}


@pytest.mark.parametrize("background", [False, True], ids=["sync-commit", "background-commit"])
def test_exactly_once_process_failure_commits_what_was_delivered_instead_of_aborting_it(background):
    logs = logs_of(12, partitions=1)
    client = FakeClient(logs, True, background)
    calls = {"n": 0}

    def flaky(records):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RetriableError("UNAVAILABLE")
        return upper_or_dead(records)

    metrics = m.RecordingMetrics()
    proc = StreamProcessor(make_config(Delivery.EXACTLY_ONCE, commit_interval_ms=10_000), flaky, client=client,
                           metrics=metrics, clock=StepClock(0.0))
    run_until_drained(proc, client, 12)
    assert metrics.total(m.ABORTS) == 0
    assert values(client.published, OUT) == sorted(f"V{i}".encode() for i in range(12))


def test_at_least_once_commits_acknowledged_offsets_at_most_every_commit_interval():
    logs = logs_of(400, partitions=1)
    client = FakeClient(logs, False)
    clock = StepClock(0.01)

    def hook(c: FakeClient) -> None:
        clock.now += clock.step
        if sum(c.committed_offsets.values()) >= 400 or c.polls > 500:
            proc.request_stop()

    client.on_poll = hook
    proc = StreamProcessor(make_config(commit_interval_ms=50), upper_or_dead, client=client,
                           metrics=m.RecordingMetrics(), clock=clock)
    proc.run()
    assert client.committed_offsets == {(IN, 0): 400}
    # 100 batches, ~10 ms each: a commit every ~5 batches, not one per batch
    assert 10 <= len(client.commit_calls) <= 30


def test_at_least_once_idle_loop_waiting_for_acknowledgements_polls_instead_of_spinning():
    """A commit that is due by time but waits for a fresh batch's acknowledgements makes an idle loop poll
    with a short timeout, not zero: at 200 events/s the zero-timeout turns cost the bridge a quarter of a core."""
    from fraud.stream.delivery import ACK_CHECK_S

    logs = logs_of(1, partitions=1)
    client = FakeClient(logs, False)
    client.ack_lag = 10**9  # acknowledged only by a flush (when the oldest batch is an interval old)
    started = time.monotonic()
    after_second: list[float] = []  # poll timeouts once a batch arrives long after the last commit
    original_poll = client.poll

    def poll(max_records, timeout_s):
        elapsed = time.monotonic() - started
        if after_second:
            after_second.append(timeout_s)
        elif elapsed > 0.25:
            logs[(IN, 0)].append(b"v-late")
            after_second.append(timeout_s)
        if elapsed > 0.45:
            proc.request_stop()
        return original_poll(max_records, timeout_s)

    client.poll = poll
    proc = StreamProcessor(make_config(commit_interval_ms=100), upper_or_dead, client=client,
                           metrics=m.RecordingMetrics())
    proc.run()
    waits = after_second[2:]  # after the poll that found the record, the loop is idle with it unacknowledged
    assert waits and waits.count(0.0) == 0 and ACK_CHECK_S in waits
    assert client.committed_offsets == {(IN, 0): 2} and len(client.published) == 2


def test_stop_flag_finishes_the_batch_at_hand_then_closes():
    client = FakeClient(logs_of(4, partitions=1), False)
    proc = StreamProcessor(make_config(), upper_or_dead, client=client, metrics=m.RecordingMetrics())
    client.on_poll = lambda c: proc.request_stop() if c.polls == 1 else None
    proc.run()
    assert client.committed_offsets == {(IN, 0): 4} and client.closed
    assert proc.health()[0] is False  # stopped: no longer healthy


def test_unexpected_process_error_stops_the_job_without_commit():
    client = FakeClient(logs_of(4), False)

    def broken(records):
        raise ZeroDivisionError("bug")

    proc = StreamProcessor(make_config(), broken, client=client, metrics=m.RecordingMetrics())
    with pytest.raises(ZeroDivisionError):
        proc.run()
    assert client.committed_offsets == {} and client.closed and proc.health()[2]["state"] == "failed"


def test_idle_job_is_ready_again_once_a_retried_init_transactions_succeeds():
    """Seen in the compose stack: a fresh broker answers the first InitProducerId with NOT_COORDINATOR; the
    retry succeeds, and /readyz must say ready although no record has come yet."""
    client = FakeClient({(IN, 0): []}, True)
    client.fail["init"] = 1
    proc = StreamProcessor(make_config(Delivery.EXACTLY_ONCE), upper_or_dead, client=client, metrics=m.RecordingMetrics())
    seen = []

    def hook(c: FakeClient) -> None:
        seen.append(proc.health()[1:])
        if c.polls >= 3:
            proc.request_stop()

    client.on_poll = hook
    proc.run()
    assert client.inits == 1
    ready, details = seen[-1]
    assert ready and details["retry_attempt"] == 0, seen


def test_a_failing_process_keeps_the_job_not_ready_and_its_backoff_growing_across_rewinds():
    """Each retry of a failing Predict rewinds before polling again; that rewind succeeding is not a recovery:
    the job stays not ready and the backoff keeps doubling (a test saw /readyz say ready while the model server
    was down, in the moment between a rewind and the next failure), until a batch is delivered."""
    client = FakeClient(logs_of(4, partitions=1), False)
    state = {"fail": True}
    ready_at_poll: list[bool] = []
    sleeps: list[float] = []

    def process(records):
        if state["fail"]:
            raise RetriableError("Predict UNAVAILABLE")
        return upper_or_dead(records)

    def hook(c: FakeClient) -> None:
        ready_at_poll.append(proc.health()[1])
        if c.polls == 8:
            state["fail"] = False
        if c.committed_offsets.get((IN, 0)) == 4 or c.polls > 50:
            proc.request_stop()

    client.on_poll = hook
    proc = StreamProcessor(make_config(retry_backoff_initial_ms=1, retry_backoff_max_ms=1000), process,
                           client=client, metrics=m.RecordingMetrics(), sleep=sleeps.append)
    proc.run()
    assert ready_at_poll[0] is True and not any(ready_at_poll[1:8])  # not ready from the first failure on
    assert sleeps == sorted(sleeps) and sleeps[-1] > 8 * sleeps[0]  # the backoff grew instead of restarting
    assert client.committed_offsets == {(IN, 0): 4}


def test_rewind_failure_is_retried_before_any_poll():
    client = FakeClient(logs_of(6, partitions=1), False)
    client.fail["wait"] = 1
    client.fail["committed"] = 2
    metrics = m.RecordingMetrics()
    proc = StreamProcessor(make_config(), upper_or_dead, client=client, metrics=metrics)
    run_until_drained(proc, client, 6)
    assert metrics.total(m.RETRIES, stage="rewind") == 2
    assert set(values(client.published, OUT)) == {f"V{i}".encode() for i in range(6)}


# -- config and options -----------------------------------------------------------------------


def _parse(argv, env):
    parser = argparse.ArgumentParser()
    opts = stream_options(group_id="fraud-bridge")
    add_options(parser, opts, "FRAUD_X_", "stream")
    return resolve_options(opts, parser.parse_args(argv), env, "FRAUD_X_")


def test_options_flag_over_environment_over_default():
    values_ = _parse(["--batch-max-size", "64"], {"FRAUD_X_BATCH_MAX_SIZE": "8", "FRAUD_X_DELIVERY": "exactly_once",
                                                   "FRAUD_X_STATIC_MEMBERSHIP": "yes"})
    assert values_["batch_max_size"] == 64 and values_["delivery"] == "exactly_once"
    assert values_["static_membership"] is True and values_["group_id"] == "fraud-bridge"
    cfg = StreamConfig.from_options(values_, kafka=KafkaClientConfig(), input_topics=(IN,), dlq_topic=DLQ,
                                    component="x")
    assert cfg.delivery is Delivery.EXACTLY_ONCE and cfg.client is ClientKind.CONFLUENT and cfg.http_port is None
    assert cfg.transactional_id == f"fraud-bridge-{cfg.instance_id}"


@pytest.mark.parametrize("argv, env, message", [
    (["--batch-max-size", "0"], {}, "--batch-max-size='0': must be >= 1"),
    ([], {"FRAUD_X_BATCH_MAX_WAIT_MS": "soon"}, "FRAUD_X_BATCH_MAX_WAIT_MS='soon': invalid literal"),
    ([], {"FRAUD_X_DELIVERY": "twice"}, "FRAUD_X_DELIVERY='twice': expected one of at_least_once, exactly_once"),
    ([], {"FRAUD_X_STATIC_MEMBERSHIP": "maybe"}, "FRAUD_X_STATIC_MEMBERSHIP='maybe': expected one of"),
])
def test_bad_options_are_one_line_errors_naming_the_setting(argv, env, message):
    with pytest.raises(FraudError) as info:
        _parse(argv, env)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_config_validation():
    with pytest.raises(FraudError, match="dead-letter topic in is also an input"):
        make_config(dlq_topic=IN)
    with pytest.raises(FraudError, match="instance id"):
        make_config(instance_id="a b")


# -- metrics, health, logs --------------------------------------------------------------------


def test_metrics_fake_and_prometheus_check_names_kinds_and_labels():
    fake = m.RecordingMetrics()
    with pytest.raises(ValueError):
        fake.increment(m.CONSUMED)  # missing the topic label
    with pytest.raises(TypeError):
        fake.observe(m.CONSUMED, 1, topic="t")
    undeclared = m.MetricDef("nope_total", m.Kind.COUNTER, "x")
    with pytest.raises(KeyError):
        fake.increment(undeclared)
    prom = m.PrometheusMetrics("fraud_test")
    prom.increment(m.CONSUMED, 3, topic="t")
    prom.observe(m.BATCH_SIZE, 7)
    prom.gauge(m.LAG, 5, topic="t", partition="0")
    text = prom.exposition().decode()
    assert 'fraud_test_records_consumed_total{topic="t"} 3.0' in text
    assert "fraud_test_batch_size_count 1.0" in text
    assert 'fraud_test_consumer_lag{partition="0",topic="t"} 5.0' in text


def test_health_endpoint_on_loopback_reports_health_readiness_and_metrics():
    prom = m.PrometheusMetrics("fraud_test")
    prom.increment(m.COMMITS)
    state = {"healthy": True, "ready": False}
    server = HealthServer("127.0.0.1", 0, lambda: (state["healthy"], state["ready"], {"state": "x"}),
                          prom.exposition).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        with urllib.request.urlopen(base + "/healthz") as resp:
            assert resp.status == 200 and json.loads(resp.read())["state"] == "x"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "/readyz")
        assert info.value.code == 503
        with urllib.request.urlopen(base + "/metrics") as resp:
            assert b"fraud_test_commits_total 1.0" in resp.read()
        assert server._server.server_address[0] == "127.0.0.1"
    finally:
        server.close()


def test_lifecycle_reports_alive_ready_stalled_and_closes_its_endpoint_however_the_run_ends(caplog):
    caplog.set_level(logging.INFO, logger="test.lifecycle")
    now = [100.0]
    life = Lifecycle("job", logging.getLogger("test.lifecycle"), stall_timeout_s=5, clock=lambda: now[0])
    assert life.alive() and not life.ready()  # starting
    with life.lifetime(lambda: {"done": 3}):
        life.serve("127.0.0.1", 0, lambda: (life.alive(), life.ready(), {"state": life.state}), None)
        port = life.port
        life.state = "running"
        assert life.ready()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz") as resp:
            assert json.loads(resp.read())["state"] == "running"
        now[0] += 6  # the loop did not beat for longer than the stall timeout
        assert not life.alive() and not life.ready()
        life.beat()
        assert life.ready()
        life.state = "stopping"
    assert life.state == "stopped" and life.http is None and life.port == port and not life.alive()
    with pytest.raises(OSError):  # the endpoint is closed
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)

    failing = Lifecycle("job", logging.getLogger("test.lifecycle"))
    with pytest.raises(RuntimeError), failing.lifetime():
        failing.serve("127.0.0.1", 0, lambda: (True, True, {}), None)
        failing.state = "running"
        raise RuntimeError("boom")
    assert failing.state == "failed" and failing.http is None
    stopped = [r.fields for r in caplog.records if r.name == "test.lifecycle" and r.getMessage() == "job_stopped"]
    assert stopped == [{"state": "stopped", "done": 3}, {"state": "failed"}]


def test_json_logs_one_object_per_line_with_fields():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.stream.json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        log_event(logger, logging.WARNING, "dead_letter", transaction_id="tx-1", offset=7)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert obj["event"] == "dead_letter" and obj["transaction_id"] == "tx-1" and obj["offset"] == 7
    assert obj["level"] == "warning"


# -- Kafka TLS/SASL settings reach both clients ------------------------------------------------------


def _secure_config(tmp_path) -> StreamConfig:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    kafka = KafkaClientConfig(bootstrap_servers=("broker:9093",), security_protocol="SASL_SSL",
                              sasl_mechanism="SCRAM-SHA-512", sasl_username="bridge", sasl_password="s3cret",
                              ssl_cafile=ca, client_id="fraud-bridge")
    return make_config(Delivery.EXACTLY_ONCE, kafka=kafka, static_membership=True)


def test_confluent_client_passes_tls_sasl_and_delivery_settings(tmp_path, monkeypatch):
    confluent_kafka = pytest.importorskip("confluent_kafka")
    seen: dict[str, dict] = {}
    monkeypatch.setattr(confluent_kafka, "Consumer", lambda conf: seen.setdefault("consumer", conf))
    monkeypatch.setattr(confluent_kafka, "Producer", lambda conf: seen.setdefault("producer", conf))
    from fraud.stream.confluent_client import ConfluentClient

    ConfluentClient(_secure_config(tmp_path))
    for conf in seen.values():
        assert conf["security.protocol"] == "SASL_SSL" and conf["sasl.mechanism"] == "SCRAM-SHA-512"
        assert conf["sasl.username"] == "bridge" and conf["sasl.password"] == "s3cret"
        assert conf["ssl.ca.location"] == str(tmp_path / "ca.pem") and conf["bootstrap.servers"] == "broker:9093"
    c, p = seen["consumer"], seen["producer"]
    assert c["enable.auto.commit"] is False and c["isolation.level"] == "read_committed"
    assert c["group.instance.id"] == "i0" and c["group.id"] == "g"
    assert p["transactional.id"] == "g-i0" and p["acks"] == "all" and p["enable.idempotence"] is True


def test_kafka_python_client_passes_tls_sasl_and_delivery_settings(tmp_path, monkeypatch):
    import kafka

    seen: dict[str, dict] = {}
    monkeypatch.setattr(kafka, "KafkaConsumer", lambda **kw: seen.setdefault("consumer", kw))
    monkeypatch.setattr(kafka, "KafkaProducer", lambda **kw: seen.setdefault("producer", kw))
    from fraud.stream.kafka_python_client import KafkaPythonClient

    KafkaPythonClient(_secure_config(tmp_path))
    for kw in seen.values():
        assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
        assert kw["sasl_plain_username"] == "bridge" and kw["sasl_plain_password"] == "s3cret"
        assert kw["ssl_cafile"] == str(tmp_path / "ca.pem")
    c, p = seen["consumer"], seen["producer"]
    assert c["enable_auto_commit"] is False and c["isolation_level"] == "read_committed"
    assert c["group_instance_id"] == "i0"
    assert p["transactional_id"] == "g-i0" and p["acks"] == "all" and p["enable_idempotence"] is True


class _Message:
    """The parts of confluent_kafka.Message that records_from_messages reads."""

    def __init__(self, offset: int, error=None, headers=None) -> None:
        self._offset, self._error, self._headers = offset, error, headers

    def error(self):
        return self._error

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return 1

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v%d" % self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, 1000 + self._offset)

    def headers(self):
        return self._headers


def test_confluent_messages_become_records_skipping_eof_and_logging_errors(caplog):
    from confluent_kafka import KafkaError

    from fraud.stream.confluent_client import records_from_messages

    msgs = [_Message(5, headers=[("h", b"1")]), _Message(-1, KafkaError(KafkaError._PARTITION_EOF)),
            _Message(-1, KafkaError(KafkaError._TRANSPORT, "broker down")), _Message(6)]
    with caplog.at_level(logging.WARNING, logger="fraud.stream.confluent"):
        records = records_from_messages(msgs, FraudError)
    assert [(r.offset, r.value, r.timestamp_ms, r.headers) for r in records] == [
        (5, b"v5", 1005, (("h", b"1"),)), (6, b"v6", 1006, ())]
    assert [r.msg for r in caplog.records] == ["consume_error"] and "broker down" in str(vars(caplog.records[0]))
    with pytest.raises(FraudError, match="fenced"):
        records_from_messages([_Message(7), _Message(-1, KafkaError(KafkaError._FENCED, "fenced", fatal=True))],
                              FraudError)
    # librdkafka's "Fatal consumer error" event (a static member fenced by one with its group.instance.id,
    # seen after broker bounces) has the _FATAL code without the fatal flag: the consumer is dead all the same.
    static_fenced = KafkaError(KafkaError._FATAL, "Fatal error: Broker: Static consumer fenced by other consumer")
    assert not static_fenced.fatal()
    with pytest.raises(FraudError, match="Static consumer fenced"):
        records_from_messages([_Message(-1, static_fenced)], FraudError)


class _NeverDone:
    """A kafka-python TransactionalRequestResult whose coordinator never answers."""

    def wait(self, timeout_ms=None):
        return False


class _StuckTransactions:
    def __init__(self) -> None:
        self.wakeups = 0
        self._sender = self
        self._transaction_manager = self

    def wakeup(self) -> None:
        self.wakeups += 1

    def begin_commit(self):
        return _NeverDone()

    def begin_abort(self):
        return _NeverDone()

    def send_offsets_to_transaction(self, offsets, group_metadata):
        return _NeverDone()


def test_kafka_python_transaction_steps_are_bounded_and_a_stuck_one_replaces_the_producer():
    from fraud.stream.kafka_python_client import KafkaPythonClient
    from fraud.stream.records import ProducerNeedsReset

    client = KafkaPythonClient.__new__(KafkaPythonClient)  # no broker: only the producer side is exercised
    client._producer, client._futures = _StuckTransactions(), []
    client._consumer = argparse.Namespace(group_metadata=lambda: "g")
    for step, call in [("commit transaction", lambda: client.commit_transaction(0.01)),
                       ("abort transaction", lambda: client.abort_transaction(0.01)),
                       ("send offsets", lambda: client.send_offsets_to_transaction({("t", 0): 5}, 0.01))]:
        with pytest.raises(ProducerNeedsReset, match=f"{step}.*no answer .* in 0.01 s"):
            call()
    assert client._producer.wakeups == 3


def test_kafka_python_without_the_transaction_internals_is_refused_before_any_transaction():
    from fraud.stream.kafka_python_client import KafkaPythonClient

    client = KafkaPythonClient.__new__(KafkaPythonClient)
    client._producer = argparse.Namespace(init_transactions=lambda: None)  # a kafka-python that changed its insides
    with pytest.raises(FatalError, match="no KafkaProducer._transaction_manager/_sender"):
        client.init_transactions(1.0)


class _WedgedCommitClient:
    """A transactional client whose send_offsets_to_transaction never returns (librdkafka#5456/#5511)."""

    background_commit = True

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()
        self.produced: list[Output] = []

    def begin_transaction(self) -> None:
        pass

    def produce_many(self, outs) -> None:
        self.produced.extend(outs)

    def group_metadata(self) -> object:
        return object()

    def send_offsets_to_transaction(self, offsets, timeout_s, group_metadata=None) -> None:
        self.release.wait(30)  # stuck past its own timeout, as the wedged client is

    def commit_transaction(self, timeout_s: float) -> None:
        pass

    def abort_transaction(self, timeout_s: float) -> None:
        pass


def test_a_background_commit_stuck_in_the_client_ends_the_process_instead_of_hanging_it():
    """A commit that outlives twice the operation timeout plus a margin is a wedged client: the delivery
    mode calls its `wedged` hook (by default: exit at once, so the orchestrator restarts the instance and
    its init_transactions fences this one) instead of waiting forever; the batch counts as not committed."""
    from fraud.stream import delivery

    client = _WedgedCommitClient()
    wedged: list[str] = []
    mode = delivery.Transactional(client, make_config(Delivery.EXACTLY_ONCE, operation_timeout_s=0.05),
                                  time.monotonic, lambda *a: None, lambda exc: None, wedged=wedged.append)
    mode.wedged_after_s = 0.3  # the default is 2 x operation timeout + 30 s
    batch = [Record(IN, 0, 0, b"k", b"v", 1000)]
    mode.deliver(batch, ProcessResult([Output(OUT, b"k", b"v")]), [Output(OUT, b"k", b"v")])
    mode.service(time.monotonic(), idle=True)  # starts the background commit, which never returns
    mode.deliver(batch, ProcessResult(), [])  # held for the next transaction: the loop does not wait yet
    started = time.monotonic()
    with pytest.raises(RetriableError, match="wedged"):
        mode.service(time.monotonic(), idle=True)  # idle with a batch held: waits for the commit
    assert 0.25 < time.monotonic() - started < 5
    assert wedged and "has not returned" in wedged[0]
    assert mode.uncommitted  # the stuck transaction's batch is redone, never counted as committed
    client.release.set()
    assert delivery.Transactional(client, make_config(Delivery.EXACTLY_ONCE, operation_timeout_s=30.0),
                                  time.monotonic, lambda *a: None, lambda exc: None).wedged_after_s == 90.0


class _GatedCommits(FakeClient):
    """A FakeClient whose background commits wait for `gate`, each after recording how many batches of
    outputs the transaction held."""

    def __init__(self, logs) -> None:
        import threading

        super().__init__(logs, True, background_commit=True)
        self.gate = threading.Event()
        self.fail_next_commit = False

    def commit_transaction(self, timeout_s: float) -> None:
        assert self.gate.wait(10)
        if self.fail_next_commit:
            self.fail_next_commit = False
            raise RetriableError("injected commit failure")
        super().commit_transaction(timeout_s)


def _batch(offset: int) -> tuple[list[Record], list[Output]]:
    value = f"v{offset}".encode()
    return [Record(IN, 0, offset, b"k", value, 1000)], [Output(OUT, value.upper(), b"k")]


def test_exactly_once_batches_finished_during_a_background_commit_are_held_then_go_into_the_next_transaction():
    """The loop does not stop for a background commit: deliver() holds the batches that come meanwhile (a
    producer has one transaction at a time), and once the commit returns they are produced, in order, into
    the next transaction, which is as old as its oldest batch."""
    from fraud.stream import delivery

    client = _GatedCommits({(IN, 0): []})
    clock = StepClock(0.0)
    confirmed: list[int] = []
    mode = delivery.Transactional(client, make_config(Delivery.EXACTLY_ONCE, commit_interval_ms=100), clock,
                                  lambda ds, offsets, now: confirmed.extend(d.batch[0].offset for d in ds),
                                  lambda exc: None)
    mode.deliver(*_batch(0)[:1], ProcessResult(), _batch(0)[1])
    clock.now = 0.1
    mode.service(clock.now, idle=False)  # due: committing in the background, held up by the gate
    for offset in (1, 2, 3):
        clock.now += 0.01
        records, outs = _batch(offset)
        mode.deliver(records, ProcessResult(outs), outs)  # returns at once: held
    assert client.txn == [Output(OUT, b"V0", b"k")] and client.transactions == 1
    assert mode.until_due(clock.now) == 0.0 and mode.uncommitted
    client.gate.set()
    clock.now = 0.15
    mode.service(clock.now, idle=True)  # idle: waits for the commit, produces the held, commits them at once
    mode.commit_all()
    assert [o.value for o in client.published] == [b"V0", b"V1", b"V2", b"V3"]
    assert client.transactions == 2 and client.committed_offsets == {(IN, 0): 4}
    assert confirmed == [0, 1, 2, 3] and not mode.uncommitted
    # under load (not idle) the held batches open the next transaction aged from the first of them
    client.gate.clear()
    mode.deliver(*_batch(4)[:1], ProcessResult(), _batch(4)[1])
    mode.service(clock.now, idle=True)  # commit 3 starts, gated
    clock.now = 0.2
    records, outs = _batch(5)
    mode.deliver(records, ProcessResult(outs), outs)  # held, delivered at 0.2
    client.gate.set()
    clock.now = 0.25
    mode._committing[0].result(10)
    mode.service(clock.now, idle=False)
    assert client.txn == [Output(OUT, b"V5", b"k")]
    assert mode.until_due(clock.now) == pytest.approx(0.05)  # 0.2 + 0.1 - 0.25: its age counts from 0.2
    mode.commit_all()
    mode.close()


def test_exactly_once_a_failed_background_commit_rewinds_the_held_batches_too():
    """A background commit that fails aborts its transaction; the batches held behind it were never
    produced, and the rewind covers them as well as the failed transaction's own."""
    from fraud.stream import delivery

    client = _GatedCommits({(IN, 0): []})
    clock = StepClock(0.0)
    mode = delivery.Transactional(client, make_config(Delivery.EXACTLY_ONCE, commit_interval_ms=100), clock,
                                  lambda *a: None, lambda exc: None)
    records, outs = _batch(10)
    mode.deliver(records, ProcessResult(outs), outs)
    client.fail_next_commit = True
    mode.service(clock.now, idle=True)  # the commit starts and will fail
    for offset in (11, 12):
        records, outs = _batch(offset)
        mode.deliver(records, ProcessResult(outs), outs)
    client.gate.set()
    with pytest.raises(RetriableError, match="injected"):
        mode.service(clock.now, idle=True)
    assert mode.uncommitted
    assert mode.abandon() == {(IN, 0): 10}
    assert not mode.uncommitted and client.published == [] and client.txn is None
    mode.close()


class DeafClient(FakeClient):
    """Assigned its partitions, yet fetches nothing (librdkafka after a failed committed-offset fetch)."""

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        self.polls += 1
        if self.on_poll:
            self.on_poll(self)
        return []


@pytest.mark.parametrize("delivery_mode", [Delivery.AT_LEAST_ONCE, Delivery.EXACTLY_ONCE])
def test_a_consumer_that_fetches_nothing_from_partitions_holding_records_is_declared_wedged(delivery_mode):
    client = DeafClient(logs_of(10), delivery_mode is Delivery.EXACTLY_ONCE)
    clock = StepClock(1.0)  # one second per poll
    wedged: list[str] = []

    def hook(c: FakeClient) -> None:
        clock.now += clock.step
        if wedged or c.polls > 100:
            proc.request_stop()

    client.on_poll = hook
    proc = StreamProcessor(make_config(delivery_mode, fetch_stall_s=30.0), upper_or_dead, client=client,
                           metrics=m.RecordingMetrics(), clock=clock, wedged=wedged.append)
    proc.run()
    assert len(wedged) == 1 and "no record fetched for 30 s" in wedged[0]
    assert "in[0]': 5" in wedged[0] and "in[1]': 5" in wedged[0]  # what the partitions hold, named
    assert 30 <= client.polls <= 33  # within a turn or two of the period, not before it


def test_a_quiet_stream_is_not_a_wedged_consumer_and_a_broker_that_does_not_answer_is_not_either():
    client = FakeClient(logs_of(10), False)
    clock = StepClock(1.0)
    wedged: list[str] = []
    backlog_calls = {"n": 0}
    original_backlog = client.backlog

    def backlog(timeout_s: float) -> dict[TopicPartition, int]:
        backlog_calls["n"] += 1
        if backlog_calls["n"] == 2:
            raise RetriableError("brokers away")
        return original_backlog(timeout_s)

    def hook(c: FakeClient) -> None:
        clock.now += clock.step
        if c.polls > 200:
            proc.request_stop()

    client.backlog, client.on_poll = backlog, hook
    proc = StreamProcessor(make_config(fetch_stall_s=30.0), upper_or_dead, client=client,
                           metrics=m.RecordingMetrics(), clock=clock, wedged=wedged.append)
    proc.run()
    assert len(client.published) == 10 and not wedged  # everything read, then 200 s of nothing to read
    assert 5 <= backlog_calls["n"] <= 7  # asked once per quiet period (the brokers are not asked every turn)


def test_the_fetch_watch_is_off_at_zero_and_waits_for_an_assignment():
    from fraud.stream.watchdog import FetchWatch

    wedged: list[str] = []
    off = FetchWatch(0.0, wedged.append)
    off.check(0.0, True, lambda: {("t", 0): 5})
    off.check(1e6, True, lambda: {("t", 0): 5})
    watch = FetchWatch(10.0, wedged.append)
    watch.check(0.0, False, lambda: {("t", 0): 5})
    watch.check(50.0, False, lambda: {("t", 0): 5})  # nothing assigned: nothing to fetch from
    watch.check(55.0, True, lambda: {("t", 0): 5})  # assigned at 55: the period starts there
    assert not wedged
    watch.check(66.0, True, lambda: {("t", 0): 0, ("t", 1): 3})
    assert wedged == ["no record fetched for 10 s while assigned partitions hold {'t[1]': 3}"]


def test_kafka_python_errors_are_classified_not_turned_into_attribute_errors():
    """kafka.errors has no AuthenticationFailedError: naming it made every classification an AttributeError
    (seen when a rebalance listener's failure reached `_raise`)."""
    from kafka import errors as E  # noqa: N812

    from fraud.stream.kafka_python_client import _raise
    from fraud.stream.records import FatalError, ProducerNeedsReset

    for exc, kind in ((E.KafkaTimeoutError("slow"), RetriableError), (E.KafkaError("listener"), RetriableError),
                      (E.ProducerFencedError(), ProducerNeedsReset),
                      (E.SaslAuthenticationFailedError("bad password"), FatalError),
                      (E.TopicAuthorizationFailedError(), FatalError)):
        with pytest.raises(kind):
            _raise(exc, "poll")


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_settle_heap_freezes_start_up_and_raises_only_the_young_threshold():
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    gc.disable()  # no automatic collection in between: the garbage below is there when settle_heap runs
    try:
        settle_heap(0)  # 0: the interpreter's settings stay
        assert gc.get_threshold() == before and gc.get_freeze_count() == frozen
        alive = [object() for _ in range(10)]
        garbage = weakref.ref(_Cycle())  # unreachable, only a collection frees it
        assert garbage() is not None
        settle_heap(50_000)
        assert gc.get_threshold() == (50_000, *before[1:])
        assert gc.get_freeze_count() >= frozen + len(alive)  # what exists now (this list among it) left the collections
        assert garbage() is None  # collected first, not frozen for good
        del alive
    finally:
        gc.enable()
        gc.unfreeze()
        gc.set_threshold(*before)


def test_a_negative_gc_threshold_is_refused():
    with pytest.raises(FraudError, match="GC threshold"):
        StreamConfig(kafka=KafkaClientConfig(bootstrap_servers=("localhost:9092",)), input_topics=("in",),
                     group_id="g", dlq_topic="dlq", component="test", gc_threshold=-1)


def test_stop_handlers_set_an_event_or_call_a_jobs_request_stop():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        calls: list[int] = []
        install_stop_handlers(lambda: calls.append(1))
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        assert calls == [1]
        stop = threading.Event()
        install_stop_handlers(stop)
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        assert stop.is_set() and calls == [1]
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])
