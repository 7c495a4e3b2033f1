"""kafka-python 3.x and confluent-kafka against the real Kafka 4.1 broker, on every API the project uses.

Kafka 4.0 removed the old protocol versions; these tests record which client calls still work:
idempotent produce with acks=all, consumer groups with manual commit, admin create/describe/list offsets,
and transactions (init/begin/send_offsets_to_transaction/commit/abort) seen through read_committed.
"""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.integration


def _consume(config, topic: str, expected: int, *, timeout_s: float = 30.0, **kwargs) -> list:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, **config.consumer_kwargs(auto_offset_reset="earliest", **kwargs))
    records = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def test_kafka_python_idempotent_produce_and_group_consume_with_manual_commit(kafka_client_config, kafka_topic):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    topic = kafka_topic(partitions=2)
    producer = KafkaProducer(**kafka_client_config.producer_kwargs(acks="all", enable_idempotence=True, linger_ms=5))
    futures = [producer.send(topic, key=f"k{i % 7}".encode(), value=f"v{i}".encode()) for i in range(50)]
    producer.flush(timeout=30)
    metas = [f.get(timeout=30) for f in futures]
    producer.close()
    assert {m.partition for m in metas} == {0, 1}
    # a key always lands on the same partition
    by_key: dict[bytes, set[int]] = {}
    for i, meta in enumerate(metas):
        by_key.setdefault(f"k{i % 7}".encode(), set()).add(meta.partition)
    assert all(len(parts) == 1 for parts in by_key.values())

    group = f"{topic}.group"
    consumer = KafkaConsumer(topic, **kafka_client_config.consumer_kwargs(group, auto_offset_reset="earliest"))
    seen = []
    deadline = time.monotonic() + 30
    while len(seen) < 30 and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500, max_records=30 - len(seen)).values():
            seen.extend(batch)
    assert len(seen) == 30
    consumer.commit()
    committed = {tp: consumer.committed(tp) for tp in consumer.assignment()}
    consumer.close(autocommit=False)
    assert sum(committed.values()) == 30

    # a new member of the same group resumes after the committed offsets: exactly the other 20
    rest = _consume(kafka_client_config, topic, 20, group_id=group)
    assert len(rest) == 20
    values = sorted(r.value for r in seen + rest)
    assert values == sorted(f"v{i}".encode() for i in range(50))

    # list offsets (earliest/latest) per partition
    probe = KafkaConsumer(**kafka_client_config.consumer_kwargs())
    tps = [TopicPartition(topic, p) for p in (0, 1)]
    end = probe.end_offsets(tps)
    begin = probe.beginning_offsets(tps)
    probe.close()
    assert sum(end.values()) == 50 and set(begin.values()) == {0}


def test_kafka_python_admin_creates_describes_topics_and_lists_offsets(kafka_client_config):
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import ConfigResource, ConfigResourceType
    from kafka.protocol.consumer import OffsetSpec
    from kafka.structs import TopicPartition

    from fraud.embedded.testing import unique_topic_name

    name = unique_topic_name("admin")
    admin = KafkaAdminClient(**kafka_client_config.admin_kwargs())
    try:
        admin.create_topics({name: {"num_partitions": 3, "replication_factor": 1,
                                    "configs": {"cleanup.policy": "compact"}}}, wait_for_metadata=True)
        (described,) = admin.describe_topics([name])
        assert described["error_code"] == 0 and len(described["partitions"]) == 3
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name, ["cleanup.policy"])],
                                         config_filter="all")
        assert configs["topic"][name]["cleanup.policy"]["value"] == "compact"

        producer = KafkaProducer(**kafka_client_config.producer_kwargs(acks="all"))
        for i in range(6):
            producer.send(name, key=b"k", value=str(i).encode(), partition=i % 3)
        producer.flush(timeout=30)
        producer.close()
        offsets = admin.list_partition_offsets({TopicPartition(name, p): OffsetSpec.LATEST for p in range(3)})
        assert {tp.partition: o.offset for tp, o in offsets.items()} == {0: 2, 1: 2, 2: 2}
        admin.delete_topics([name])
    finally:
        admin.close()


def test_kafka_python_transactions_commit_abort_and_read_committed(kafka_client_config, kafka_topic):
    """Consume-transform-produce exactly once: outputs and input offsets commit or abort together."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    source, sink = kafka_topic(), kafka_topic()
    plain = KafkaProducer(**kafka_client_config.producer_kwargs(acks="all"))
    for i in range(10):
        plain.send(source, value=f"in{i}".encode())
    plain.flush(timeout=30)
    plain.close()

    group = f"{source}.eos"
    consumer = KafkaConsumer(source, **kafka_client_config.consumer_kwargs(
        group, auto_offset_reset="earliest", isolation_level="read_committed"))
    producer = KafkaProducer(**kafka_client_config.producer_kwargs(transactional_id=f"{sink}.tx", acks="all"))
    producer.init_transactions()

    def process(n: int) -> list:
        got: list = []
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500, max_records=n - len(got)).values():
                got.extend(batch)
        assert len(got) == n
        producer.begin_transaction()
        for rec in got:
            producer.send(sink, value=rec.value.upper())
        last = {}
        for rec in got:
            last[TopicPartition(rec.topic, rec.partition)] = rec.offset + 1
        from kafka.structs import OffsetAndMetadata

        producer.send_offsets_to_transaction(
            {tp: OffsetAndMetadata(off, "", -1) for tp, off in last.items()}, consumer.group_metadata()
        )
        return got

    process(4)
    producer.commit_transaction()
    aborted = process(3)
    producer.flush(timeout=30)  # the aborted records reach the log (unsent ones would just be dropped)
    producer.abort_transaction()
    producer.close()
    consumer.close(autocommit=False)

    committed_view = _consume(kafka_client_config, sink, 7, timeout_s=5, isolation_level="read_committed")
    assert sorted(r.value for r in committed_view) == [f"IN{i}".encode() for i in range(4)]
    uncommitted_view = _consume(kafka_client_config, sink, 7, timeout_s=15, isolation_level="read_uncommitted")
    assert len(uncommitted_view) == 7  # the aborted records are in the log, hidden from read_committed

    # the aborted batch's input offsets were not committed: the group resumes at offset 4
    probe = KafkaConsumer(**kafka_client_config.consumer_kwargs(group))
    assert probe.committed(TopicPartition(source, 0)) == 4
    probe.close()
    assert [r.value for r in aborted] == [b"in4", b"in5", b"in6"]


def test_confluent_kafka_produce_consume_and_transactions(kafka_client_config, kafka_topic):
    confluent_kafka = pytest.importorskip("confluent_kafka")
    topic = kafka_topic(partitions=2)
    producer = confluent_kafka.Producer(kafka_client_config.confluent(**{"enable.idempotence": True, "acks": "all"}))
    for i in range(20):
        producer.produce(topic, key=f"k{i}", value=f"v{i}")
    assert producer.flush(30) == 0

    tx = confluent_kafka.Producer(kafka_client_config.confluent(**{"transactional.id": f"{topic}.ctx"}))
    tx.init_transactions(30)
    tx.begin_transaction()
    tx.produce(topic, key="tx", value="committed")
    tx.commit_transaction(30)
    tx.begin_transaction()
    tx.produce(topic, key="tx", value="aborted")
    tx.abort_transaction(30)

    consumer = confluent_kafka.Consumer(kafka_client_config.confluent(**{
        "group.id": f"{topic}.g", "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "isolation.level": "read_committed"}))
    consumer.subscribe([topic])
    values = []
    deadline = time.monotonic() + 30
    while len(values) < 21 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            values.append(msg.value().decode())
    # nothing else arrives: the aborted record stays hidden
    extra = consumer.poll(2.0)
    consumer.commit(asynchronous=False)
    consumer.close()
    assert sorted(values) == sorted([f"v{i}" for i in range(20)] + ["committed"])
    assert extra is None or extra.error() is not None


@pytest.mark.parametrize("kind", ["confluent-kafka", "kafka-python"])
def test_backlog_counts_what_the_consumer_has_not_read_and_nothing_past_aborted_records(kafka_client_config,
                                                                                       kafka_topic, kind):
    """The fetch watchdog's question to the brokers (fraud.stream.watchdog): 0 once everything readable was
    read, even though aborted records and transaction markers end the log; n after n new records."""
    from confluent_kafka import Producer

    from fraud.stream.clients import make_client
    from fraud.stream.config import StreamConfig
    from fraud.stream.reader import PartitionReader

    topic = kafka_topic(partitions=2)
    producer = Producer(kafka_client_config.confluent(**{"transactional.id": f"{topic}.txn"}))
    producer.init_transactions(30)

    def transaction(n: int, commit: bool) -> None:
        producer.begin_transaction()
        for i in range(n):
            producer.produce(topic, value=f"v{i}".encode(), partition=i % 2)
        producer.flush(30)
        (producer.commit_transaction if commit else producer.abort_transaction)(30)

    transaction(10, True)
    transaction(6, False)  # aborted records, then a marker, at the end of both partitions
    config = StreamConfig(kafka=kafka_client_config, input_topics=(topic,), group_id=f"{topic}.g",
                          dlq_topic=f"{topic}.dlq", component="test", client=kind)
    client = make_client(config)
    reader = PartitionReader(kafka_client_config, [topic], group_id=f"{topic}.r")
    try:
        client.subscribe([topic], lambda tps: None, lambda tps: None, lambda tps: None)
        got: list = []
        deadline = time.monotonic() + 30
        while len(got) < 10 and time.monotonic() < deadline:
            got += client.poll(100, 0.5)
        while len(got) < 20 and time.monotonic() < deadline:
            got += reader.poll(100, 0.5)
        assert len(got) == 20
        for _ in range(4):  # a poll or two more lets each consumer step past the trailing aborted records
            client.poll(100, 0.2)
            reader.poll(100, 0.2)
        assert client.backlog(10.0) == {(topic, 0): 0, (topic, 1): 0}
        assert reader.backlog() == {(topic, 0): 0, (topic, 1): 0} and reader.caught_up()
        transaction(3, True)  # 2 records to partition 0, 1 to partition 1
        # The markers land a moment after the commit returns (and kafka-python's end offset under read_committed
        # is the last stable offset, which moves with them): 3 records and up to 2 markers, seen soon.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and 0 in (*client.backlog(10.0).values(), *reader.backlog().values()):
            time.sleep(0.2)
        assert 2 <= client.backlog(10.0)[(topic, 0)] <= 3 and 1 <= client.backlog(10.0)[(topic, 1)] <= 2
        assert 2 <= reader.backlog()[(topic, 0)] <= 3 and 1 <= reader.backlog()[(topic, 1)] <= 2
    finally:
        producer.flush(10)
        client.close(10)
        reader.close()


@pytest.mark.parametrize("start", ["latest", "time"])
def test_a_reader_starting_at_the_end_reads_every_record_appended_after_it_started(kafka_client_config,
                                                                                  kafka_topic, start):
    """A partition that starts at its end (empty for the start time, or `latest`) starts at the offset its
    end had when the reader was made, not at librdkafka's logical end resolved a moment later: records
    appended in between were skipped (the monitor lost the first labels of a partition in a chaos run)."""
    from confluent_kafka import Producer

    from fraud.stream.reader import PartitionReader

    topic = kafka_topic(partitions=3)
    producer = Producer(kafka_client_config.confluent(**{"enable.idempotence": True}))
    producer.produce(topic, b"before", partition=0)  # partition 0 has an old record, 1 and 2 are empty
    producer.flush(30)
    time.sleep(0.05)
    since = int(time.time() * 1000)
    reader = PartitionReader(kafka_client_config, [topic], group_id=f"{topic}.r",
                             default_start="latest" if start == "latest" else since)
    try:
        for i in range(30):  # at once: before the reader's first fetch
            producer.produce(topic, f"v{i}".encode(), partition=i % 3)
        producer.flush(30)
        got: list = []
        deadline = time.monotonic() + 30
        while len(got) < 30 and time.monotonic() < deadline:
            got += reader.poll(100, 0.5)
        time.sleep(0.5)
        got += reader.poll(100, 0.5)
        assert sorted(r.value for r in got) == sorted(f"v{i}".encode() for i in range(30))
    finally:
        reader.close()


@pytest.mark.parametrize("kind", ["confluent-kafka", "kafka-python"])
def test_a_revoke_callback_can_commit_synchronously_before_its_partitions_move(kafka_client_config, kafka_topic,
                                                                              kind):
    """At-least-once commits what it delivered, synchronously, when partitions are revoked. kafka-python 3 runs
    rebalance listeners on its IO thread, where that commit was refused ("Cannot block on net.run() from the
    IO thread"): its listener now runs the callback on a thread of its own. A second member joins; the first
    commits in its revoke callback, and the new owner starts from that commit."""
    from confluent_kafka import Producer

    from fraud.stream.clients import make_client
    from fraud.stream.config import StreamConfig

    topic = kafka_topic(partitions=2)
    producer = Producer(kafka_client_config.confluent())
    for i in range(10):
        producer.produce(topic, value=f"v{i}".encode(), partition=i % 2)
    assert producer.flush(30) == 0
    config = StreamConfig(kafka=kafka_client_config, input_topics=(topic,), group_id=f"{topic}.g",
                          dlq_topic=f"{topic}.dlq", component="test", client=kind, session_timeout_ms=6000)
    first, second = make_client(config), make_client(config)
    read: dict = {}
    revoked: list = []
    errors: list = []

    def on_revoke(partitions) -> None:
        try:
            offsets = {tp: read[tp] + 1 for tp in partitions if tp in read}
            first.commit(offsets, 10.0)  # synchronous, as AtLeastOnce.commit_all's is
            revoked.append(offsets)
        except BaseException as exc:  # noqa: BLE001 - asserted below, not lost in the client's logs
            errors.append(exc)
            raise

    second_assigned: list = []
    try:
        first.subscribe([topic], lambda tps: None, on_revoke, lambda tps: None)
        deadline = time.monotonic() + 30
        while sum(1 for _ in read) < 2 and time.monotonic() < deadline:
            for r in first.poll(100, 0.2):
                read[(r.topic, r.partition)] = max(read.get((r.topic, r.partition), -1), r.offset)
        assert read == {(topic, 0): 4, (topic, 1): 4}
        second.subscribe([topic], lambda tps: second_assigned.extend(tps), lambda tps: None, lambda tps: None)
        got = []
        while not (any(revoked) and second_assigned) and time.monotonic() < deadline + 30:
            first.poll(100, 0.1)
            got += second.poll(100, 0.1)
        assert not errors, errors
        # kafka-python also calls the listener with nothing revoked when a member first joins, and the join
        # can take two rounds: every revoke commits what was read, the first one both partitions
        nonempty = [r for r in revoked if r]
        assert nonempty and nonempty[0] == {(topic, 0): 5, (topic, 1): 5}
        assert all(offset == 5 for r in nonempty for offset in r.values())
        assert second_assigned
        for _ in range(10):
            got += second.poll(100, 0.1)
        assert got == []  # the new owner starts at the revoked member's commit: nothing is read twice
    finally:
        first.close(10)
        second.close(10)
