"""Kafka administration for every job, on confluent-kafka's AdminClient (the library of the hot path).

- topics: which exist, their partitions and replicas, create (`ensure_topics`: what `fraudctl topics` runs),
  grow, delete, their configs;
- offsets: a partition's start and end (the end for read_committed is the last stable offset), a consumer
  group's committed offsets (read and set), and whether a group has consumed everything (`caught_up`);
- the cluster: its brokers (is it there at all?).

Everything is synchronous, bounded by `timeout_s`, and fails with a one-line FraudError naming the
bootstrap servers. Reading and producing records is fraud.stream.reader's; the consume-process-produce
loop's clients are fraud.stream.clients'.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fraud.errors import FraudError
from fraud.kafka_config import KafkaClientConfig
from fraud.stream.confluent_client import rdkafka_log
from fraud.stream.records import TopicPartition
from fraud.topics import TopicSpec

#: Retries of an admin call that failed with a retriable error (a coordinator moving, a broker bouncing).
RETRY_SLEEP_S = 0.5


@dataclass(frozen=True)
class PartitionInfo:
    leader: int  # -1: none
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


@dataclass(frozen=True)
class TopicResult:
    name: str
    partitions: int
    action: str  # "created", "exists" or "increased"


def _kafka_error(exc: BaseException) -> Any:
    from confluent_kafka import KafkaException

    if isinstance(exc, KafkaException) and exc.args:
        return exc.args[0]
    return None


def _retriable(exc: BaseException) -> bool:
    err = _kafka_error(exc)
    return err is not None and (err.retriable() or err.name() in (
        "_TRANSPORT", "_TIMED_OUT", "COORDINATOR_LOAD_IN_PROGRESS", "COORDINATOR_NOT_AVAILABLE",
        "NOT_COORDINATOR", "LEADER_NOT_AVAILABLE", "NOT_LEADER_OR_FOLLOWER", "REQUEST_TIMED_OUT",
        # a partition's leadership moving (a broker bounce): the client's metadata is older than the broker's
        "FENCED_LEADER_EPOCH", "UNKNOWN_LEADER_EPOCH", "OFFSET_NOT_AVAILABLE"))


def _stale_leader(exc: BaseException) -> bool:
    err = _kafka_error(exc)
    return err is not None and err.name() in ("FENCED_LEADER_EPOCH", "UNKNOWN_LEADER_EPOCH", "NOT_LEADER_OR_FOLLOWER")


class KafkaAdmin:
    """Admin operations against one cluster (see the module docstring)."""

    def __init__(self, config: KafkaClientConfig, *, timeout_s: float = 30.0) -> None:
        from confluent_kafka.admin import AdminClient

        self.config = config
        self.timeout_s = timeout_s
        self._make = lambda: AdminClient(config.confluent(**{"logger": rdkafka_log}))
        self._admin = self._make()

    def __enter__(self) -> KafkaAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._admin = None

    # -- plumbing ------------------------------------------------------------------------------

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        """Run the AdminClient call `method` (returning {key: future}); results by key, retrying retriable
        failures until the timeout. Per-key failures are returned as exceptions for the caller to judge."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                # looked up on every attempt: a retry after a stale leader runs on the client made afresh
                futures = getattr(self._admin, method)(*args, request_timeout=self.timeout_s, **kwargs)
                out: dict[Any, Any] = {}
                for key, fut in futures.items():
                    try:
                        out[key] = fut.result(timeout=self.timeout_s)
                    except Exception as exc:  # noqa: BLE001 (judged per key by the caller)
                        if _retriable(exc) and time.monotonic() < deadline:
                            raise
                        out[key] = exc
                return out
            except Exception as exc:  # noqa: BLE001
                if not _retriable(exc) or time.monotonic() >= deadline:
                    raise FraudError(f"{what} on {self.config.bootstrap} failed: {exc}") from None
                if _stale_leader(exc):
                    # librdkafka's admin client keeps answering from the leader epoch it cached (a chaos run
                    # saw FENCED_LEADER_EPOCH for a whole minute after a broker bounce): a new client asks
                    # the cluster afresh
                    self._admin = self._make()
                time.sleep(RETRY_SLEEP_S)

    def _metadata(self) -> Any:
        try:
            return self._admin.list_topics(timeout=self.timeout_s)
        except Exception as exc:  # noqa: BLE001
            raise FraudError(f"cannot reach Kafka at {self.config.bootstrap}: {exc}") from None

    # -- cluster and topics --------------------------------------------------------------------

    def brokers(self) -> list[int]:
        """Ids of the brokers the cluster reports (FraudError when it cannot be reached)."""
        return sorted(self._metadata().brokers)

    def topics(self) -> set[str]:
        """Names of the topics that exist (internal ones included)."""
        return set(self._metadata().topics)

    def describe(self, names: Iterable[str]) -> dict[str, dict[int, PartitionInfo]]:
        """topic -> partition -> leader, replicas, in-sync replicas, for the topics of `names` that exist."""
        meta = self._metadata()
        out = {}
        for name in names:
            t = meta.topics.get(name)
            if t is None or t.error is not None or not t.partitions:
                continue
            out[name] = {p: PartitionInfo(info.leader, tuple(info.replicas), tuple(info.isrs))
                         for p, info in sorted(t.partitions.items())}
        return out

    def partitions(self, topic: str) -> list[int]:
        """The partitions of `topic`; a one-line FraudError when it does not exist."""
        found = self.describe([topic]).get(topic)
        if not found:
            raise FraudError(f"topic {topic} does not exist on {self.config.bootstrap} "
                             f"(`fraudctl topics` creates the project's topics)")
        return sorted(found)

    def topic_partitions(self, topics: Iterable[str]) -> list[TopicPartition]:
        return [(t, p) for t in topics for p in self.partitions(t)]

    def topic_configs(self, names: Iterable[str]) -> dict[str, dict[str, str]]:
        """topic -> every config entry (name -> value) of the topics of `names`."""
        from confluent_kafka.admin import ConfigResource, ResourceType

        resources = [ConfigResource(ResourceType.TOPIC, n) for n in names]
        if not resources:
            return {}
        got = self._call("describe configs", "describe_configs", resources)
        out = {}
        for res, entries in got.items():
            if isinstance(entries, Exception):
                raise FraudError(f"cannot read the config of topic {res.name} on {self.config.bootstrap}: {entries}")
            out[res.name] = {k: e.value for k, e in entries.items()}
        return out

    def create_topics(self, specs: Sequence[TopicSpec], *, replication_factor: int | None = None) -> dict[str, str]:
        """Create the topics; name -> "created" or "exists" (someone else created it meanwhile)."""
        from confluent_kafka.admin import NewTopic

        if not specs:
            return {}
        new = [NewTopic(s.name, num_partitions=s.partitions,
                        replication_factor=replication_factor if replication_factor is not None else -1,
                        config=dict(s.config)) for s in specs]
        got = self._call("create topics", "create_topics", new, operation_timeout=self.timeout_s)
        out = {}
        for name, res in got.items():
            err = _kafka_error(res) if isinstance(res, Exception) else None
            if res is None or not isinstance(res, Exception):
                out[name] = "created"
            elif err is not None and err.name() == "TOPIC_ALREADY_EXISTS":
                out[name] = "exists"
            else:
                rf = f" (replication factor {replication_factor})" if replication_factor is not None else ""
                raise FraudError(f"cannot create topic {name}{rf} on {self.config.bootstrap}: "
                                 f"{err.str() if err is not None else res}")
        return out

    def add_partitions(self, totals: Mapping[str, int]) -> None:
        from confluent_kafka.admin import NewPartitions

        if not totals:
            return
        got = self._call("create partitions", "create_partitions",
                         [NewPartitions(t, n) for t, n in totals.items()], operation_timeout=self.timeout_s)
        for name, res in got.items():
            if isinstance(res, Exception):
                raise FraudError(f"cannot add partitions to {name} on {self.config.bootstrap}: {res}")

    def delete_topics(self, names: Sequence[str]) -> None:
        """Delete the topics; ones that do not exist are fine."""
        if not names:
            return
        got = self._call("delete topics", "delete_topics", list(names), operation_timeout=self.timeout_s)
        for name, res in got.items():
            err = _kafka_error(res) if isinstance(res, Exception) else None
            if isinstance(res, Exception) and (err is None or err.name() != "UNKNOWN_TOPIC_OR_PART"):
                raise FraudError(f"cannot delete topic {name} on {self.config.bootstrap}: {res}")

    def wait_ready(self, names: Sequence[str], timeout_s: float | None = None) -> None:
        """Wait until every partition of the topics has a leader (creation is asynchronous)."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.timeout_s)
        while True:
            described = self.describe(names)
            ready = [n for n in names if n in described and all(p.leader >= 0 for p in described[n].values())]
            if len(ready) == len(names):
                return
            if time.monotonic() > deadline:
                raise FraudError(f"topics {sorted(set(names) - set(ready))} not ready on {self.config.bootstrap}")
            time.sleep(0.1)

    # -- offsets -------------------------------------------------------------------------------

    def _list_offsets(self, tps: Sequence[TopicPartition], latest: bool, committed: bool) -> dict[TopicPartition, int]:
        from confluent_kafka import IsolationLevel
        from confluent_kafka import TopicPartition as TP
        from confluent_kafka.admin import OffsetSpec

        if not tps:
            return {}
        spec = OffsetSpec.latest() if latest else OffsetSpec.earliest()
        iso = IsolationLevel.READ_COMMITTED if committed else IsolationLevel.READ_UNCOMMITTED
        got = self._call("list offsets", "list_offsets", {TP(t, p): spec for t, p in tps},
                         isolation_level=iso)
        out = {}
        for tp, res in got.items():
            if isinstance(res, Exception):
                raise FraudError(f"cannot read the offsets of {tp.topic}[{tp.partition}] on "
                                 f"{self.config.bootstrap}: {res}")
            out[(tp.topic, tp.partition)] = res.offset
        return out

    def end_offsets(self, topics_or_partitions: Iterable[str] | Iterable[TopicPartition], *,
                    committed: bool = True) -> dict[TopicPartition, int]:
        """Per partition, the offset after its last record: what a read_committed consumer can reach (the last
        stable offset) by default, the high watermark with `committed=False`."""
        return self._list_offsets(self._tps(topics_or_partitions), True, committed)

    def start_offsets(self, topics_or_partitions: Iterable[str] | Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Per partition, its first offset (the log start)."""
        return self._list_offsets(self._tps(topics_or_partitions), False, False)

    def _tps(self, items: Iterable[str] | Iterable[TopicPartition]) -> list[TopicPartition]:
        items = list(items)
        if items and isinstance(items[0], str):
            return self.topic_partitions(items)  # type: ignore[arg-type]
        return [tuple(x) for x in items]  # type: ignore[misc]

    def _group_consumer(self, group: str) -> Any:
        from confluent_kafka import Consumer

        # A consumer of the group, never subscribed: it reads and commits the group's offsets. (AdminClient's
        # list_consumer_group_offsets crashes the process, in librdkafka 2.16, when the group's coordinator is
        # not known yet: confluent-kafka-python issue 1982, confluent-kafka-javascript issue 374.)
        return Consumer(self.config.confluent(**{"group.id": group, "enable.auto.commit": False,
                                                 "logger": rdkafka_log}))

    def group_offsets(self, group: str, topics: Iterable[str]) -> dict[TopicPartition, int]:
        """The group's committed offsets on `topics` (partitions it never committed are left out)."""
        from confluent_kafka import TopicPartition as TP

        tps = [TP(t, p) for t, p in self.topic_partitions(topics)]
        consumer = self._group_consumer(group)
        deadline = time.monotonic() + self.timeout_s
        try:
            while True:
                try:
                    got = consumer.committed(tps, timeout=self.timeout_s)
                    break
                except Exception as exc:  # noqa: BLE001
                    if not _retriable(exc) or time.monotonic() >= deadline:
                        raise FraudError(f"cannot read the offsets of group {group} on {self.config.bootstrap}: "
                                         f"{exc}") from None
                    time.sleep(RETRY_SLEEP_S)
        finally:
            consumer.close()
        return {(tp.topic, tp.partition): tp.offset for tp in got if tp.offset >= 0}

    def set_group_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit `offsets` for `group` (which must have no active member)."""
        from confluent_kafka import TopicPartition as TP

        if not offsets:
            return
        consumer = self._group_consumer(group)
        deadline = time.monotonic() + self.timeout_s
        try:
            while True:
                try:
                    consumer.commit(offsets=[TP(t, p, o) for (t, p), o in sorted(offsets.items())],
                                    asynchronous=False)
                    return
                except Exception as exc:  # noqa: BLE001
                    if not _retriable(exc) or time.monotonic() >= deadline:
                        raise FraudError(f"cannot set the offsets of group {group} on {self.config.bootstrap}: "
                                         f"{exc}") from None
                    time.sleep(RETRY_SLEEP_S)
        finally:
            consumer.close()

    def caught_up(self, group: str, topics: Iterable[str]) -> bool:
        """True when `group` has consumed every committed record of `topics`.

        Under transactions the end offset is no measure on its own (a commit marker takes an offset the
        group's committed position may stop before), so a partition whose committed offset is below its
        last stable offset is read from there, as a read_committed consumer: caught up means nothing is
        there before the end."""
        from fraud.stream.reader import PartitionReader  # the reader uses this module's offsets at top level

        topics = list(topics)
        ends = self.end_offsets(topics)
        committed = self.group_offsets(group, topics)
        starts = self.start_offsets(list(ends))
        behind = {tp: committed.get(tp, starts[tp]) for tp, end in ends.items() if committed.get(tp, starts[tp]) < end}
        if not behind:
            return True
        reader = PartitionReader(self.config, sorted({t for t, _ in behind}), group_id=f"{group}.caught-up-check",
                                 start=behind, default_start="latest", timeout_s=self.timeout_s)
        try:
            deadline = time.monotonic() + min(self.timeout_s, 10.0)
            while time.monotonic() < deadline:
                if reader.poll(1, 0.5):
                    return False
                positions = reader.positions()
                if all(positions.get(tp, -1) >= ends[tp] for tp in behind):
                    return True
            return False
        finally:
            reader.close()

    # -- topics the project declares -----------------------------------------------------------

    def ensure_topics(self, specs: Iterable[TopicSpec], *, replication_factor: int | None = None,
                      min_insync_replicas: int | None = None,
                      increase_partitions: bool = False) -> list[TopicResult]:
        """Create each topic of `specs` that does not exist, with its partitions and config (idempotent).

        An existing topic with the declared partition count and config is fine. One with fewer partitions is
        an error unless `increase_partitions` (adding partitions changes which partition a key lands in, so
        it is never done silently); one with more partitions, or a different declared config, is an error.
        `replication_factor` None is the cluster's default; `min_insync_replicas` is added to each topic's
        config when given. With an explicit replication factor, an existing topic with another replica
        count is an error (Kafka changes it only by reassigning partitions).
        """
        specs = list(specs)
        if min_insync_replicas is not None:
            isr = {"min.insync.replicas": str(min_insync_replicas)}
            specs = [dataclasses.replace(s, config={**s.config, **isr}) for s in specs]
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise FraudError(f"duplicate topic names in {names}")
        existing = self.describe(names)
        missing = [s for s in specs if s.name not in existing]
        results: dict[str, TopicResult] = {}
        if missing:
            for name, action in self.create_topics(missing, replication_factor=replication_factor).items():
                if action == "created":
                    results[name] = TopicResult(name, next(s.partitions for s in missing if s.name == name), "created")
            self.wait_ready([s.name for s in missing])
            existing = self.describe(names)
        grow: dict[str, int] = {}
        for spec in specs:
            if spec.name in results:
                continue
            parts = existing[spec.name]
            have = len(parts)
            replicas = {len(p.replicas) for p in parts.values()}
            if replication_factor is not None and replication_factor > 0 and replicas != {replication_factor}:
                raise FraudError(
                    f"topic {spec.name} exists with {'/'.join(map(str, sorted(replicas)))} replicas per partition, "
                    f"but the replication factor is configured as {replication_factor} "
                    f"(reassign its partitions, or delete the topic)")
            if have == spec.partitions:
                results[spec.name] = TopicResult(spec.name, have, "exists")
            elif have < spec.partitions and increase_partitions:
                grow[spec.name] = spec.partitions
                results[spec.name] = TopicResult(spec.name, spec.partitions, "increased")
            else:
                hint = " (pass --increase-partitions to add partitions)" if have < spec.partitions else ""
                raise FraudError(f"topic {spec.name} has {have} partitions, fraud.topics declares "
                                 f"{spec.partitions}{hint}")
        self.add_partitions(grow)
        self._check_configs([s for s in specs if results[s.name].action != "created"])
        return [results[name] for name in names]

    def _check_configs(self, specs: list[TopicSpec]) -> None:
        wanted = [s for s in specs if s.config]
        if not wanted:
            return
        have = self.topic_configs([s.name for s in wanted])
        for spec in wanted:
            for key, value in spec.config.items():
                actual = have.get(spec.name, {}).get(key)
                if actual != value:
                    raise FraudError(f"topic {spec.name} exists with {key}={actual}, but fraud.topics declares "
                                     f"{key}={value}; change it with kafka-configs or delete the topic")


def ensure_topics(config: KafkaClientConfig, specs: Iterable[TopicSpec], *, replication_factor: int | None = None,
                  increase_partitions: bool = False, timeout_s: float = 30.0) -> list[TopicResult]:
    """`KafkaAdmin.ensure_topics` with a fresh admin client (what `fraudctl topics` runs)."""
    with KafkaAdmin(config, timeout_s=timeout_s) as admin:
        return admin.ensure_topics(specs, replication_factor=replication_factor,
                                   increase_partitions=increase_partitions)
