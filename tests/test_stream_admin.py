"""fraud.stream.admin on the real broker: topics (create idempotently, partition and config mismatches, growth,
delete), offsets under transactions (the end a read_committed reader can reach), group offsets, and
`caught_up` for a group whose committed offset stops before a commit marker."""

from __future__ import annotations

import pytest

from fraud.embedded.process import free_port
from fraud.errors import FraudError
from fraud.kafka_config import KafkaClientConfig
from fraud.stream.admin import KafkaAdmin, ensure_topics
from fraud.topics import TopicSpec

pytestmark = pytest.mark.integration


def test_ensure_topics_creates_checks_and_grows(kafka_client_config, kafka_topic):
    from fraud.embedded.testing import unique_topic_name

    name = unique_topic_name("admin")
    spec = TopicSpec(name, 2, {"cleanup.policy": "compact"})
    try:
        assert [(r.action, r.partitions) for r in ensure_topics(kafka_client_config, [spec])] == [("created", 2)]
        assert [r.action for r in ensure_topics(kafka_client_config, [spec])] == ["exists"]
        with KafkaAdmin(kafka_client_config) as admin:
            assert name in admin.topics() and admin.partitions(name) == [0, 1]
            assert admin.topic_configs([name])[name]["cleanup.policy"] == "compact"
            info = admin.describe([name])[name][0]
            assert info.leader >= 0 and info.replicas == info.isr == (info.leader,)
        with pytest.raises(FraudError, match=r"has 2 partitions, fraud.topics declares 1"):
            ensure_topics(kafka_client_config, [TopicSpec(name, 1, spec.config)])
        with pytest.raises(FraudError, match=r"has 2 partitions, fraud.topics declares 4 \(pass --increase-partitions"):
            ensure_topics(kafka_client_config, [TopicSpec(name, 4, spec.config)])
        (grown,) = ensure_topics(kafka_client_config, [TopicSpec(name, 4, spec.config)], increase_partitions=True)
        assert (grown.action, grown.partitions) == ("increased", 4)
        with pytest.raises(FraudError, match=r"cleanup.policy=compact, but fraud.topics declares cleanup.policy=delete"):
            ensure_topics(kafka_client_config, [TopicSpec(name, 4, {"cleanup.policy": "delete"})])
        with pytest.raises(FraudError, match=r"exists with 1 replicas per partition, but the replication factor is"):
            with KafkaAdmin(kafka_client_config) as admin:
                admin.ensure_topics([TopicSpec(name, 4, spec.config)], replication_factor=3)
    finally:
        with KafkaAdmin(kafka_client_config) as admin:
            admin.delete_topics([name, "no-such-topic-at-all"])
            assert name not in admin.topics()


def test_a_missing_topic_and_a_missing_broker_are_one_line_errors(kafka_client_config):
    with KafkaAdmin(kafka_client_config) as admin, pytest.raises(FraudError, match="topic nope does not exist"):
        admin.partitions("nope")
    gone = KafkaClientConfig(bootstrap_servers=(f"127.0.0.1:{free_port()}",))
    with pytest.raises(FraudError, match=r"cannot reach Kafka at 127.0.0.1:\d+"):
        ensure_topics(gone, [TopicSpec("x", 1)], timeout_s=3)


def test_offsets_under_transactions_and_a_group_caught_up_before_the_commit_marker(kafka_client_config, kafka_topic):
    from confluent_kafka import Producer

    topic = kafka_topic(partitions=1)
    producer = Producer(kafka_client_config.confluent(**{"transactional.id": f"{topic}.tx"}))
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, b"v%d" % i)
    producer.commit_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, b"open")  # an open transaction: a read_committed reader stops before it
    producer.flush(30)
    group = f"{topic}.group"
    with KafkaAdmin(kafka_client_config) as admin:
        assert admin.start_offsets([topic]) == {(topic, 0): 0}
        assert admin.end_offsets([topic]) == {(topic, 0): 4}  # 3 records and the marker: the last stable offset
        assert admin.end_offsets([topic], committed=False) == {(topic, 0): 5}  # the open record too
        assert admin.group_offsets(group, [topic]) == {}
        assert not admin.caught_up(group, [topic])
        admin.set_group_offsets(group, {(topic, 0): 2})
        assert admin.group_offsets(group, [topic]) == {(topic, 0): 2}
        assert not admin.caught_up(group, [topic])
        # What an exactly-once consumer commits after the last record: the marker's offset, before the end.
        admin.set_group_offsets(group, {(topic, 0): 3})
        assert admin.caught_up(group, [topic])
    producer.abort_transaction(30)


def test_a_leader_epoch_error_while_leadership_moves_is_retried_on_a_fresh_client():
    """ListOffsets during a broker bounce can answer FENCED_LEADER_EPOCH for a partition (seen in chaos runs:
    preprocessing exited at start while reading the users table's offsets). librdkafka's admin client keeps
    sending the leader epoch it cached, so it is retried on a new client: here the first client answers
    FENCED_LEADER_EPOCH for as long as it is asked (the chaos runs saw a whole minute), the next ones a
    stale epoch once, then the offset."""
    from concurrent.futures import Future

    from confluent_kafka import KafkaError, KafkaException

    made: list = []

    class Client:
        def __init__(self) -> None:
            self.answers = ([KafkaError.FENCED_LEADER_EPOCH] * 1000 if not made
                            else [KafkaError.UNKNOWN_LEADER_EPOCH] if len(made) == 1 else [])
            made.append(self)

        def list_offsets(self, request: dict, request_timeout: float) -> dict:
            fut: Future = Future()
            if self.answers:
                fut.set_exception(KafkaException(KafkaError(self.answers.pop(0))))
            else:
                fut.set_result(42)
            return {tp: fut for tp in request}

    admin = KafkaAdmin(KafkaClientConfig(bootstrap_servers=(f"127.0.0.1:{free_port()}",)), timeout_s=5.0)
    admin._make = Client
    admin._admin = Client()
    assert admin._call("list offsets", "list_offsets", {("t", 0): None}) == {("t", 0): 42}
    assert len(made) == 3 and admin._admin is made[2]
    assert len(made[0].answers) == 999  # asked once: the retry went to the new client
