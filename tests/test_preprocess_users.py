"""The users reference table: synthetic users (unit) and the compacted topic read and followed (integration)."""

from __future__ import annotations

import time

import orjson
import pytest

from fraud.errors import FraudError
from fraud.replay import CardPool
from fraudctl.cli import main
from preprocessing.users import UsersTable, load_users, parse_user, synthetic_users

POOL = CardPool(40, 3)


def test_synthetic_users_cover_the_pool_deterministically():
    users = synthetic_users(POOL)
    assert set(users) == {c.customer_id for c in POOL.cards}
    assert users == synthetic_users(CardPool(40, 3))
    assert synthetic_users(CardPool(40, 4)) != users
    assert all(set(u) == {"name", "country", "segment"} for u in users.values())


def test_parse_user():
    assert parse_user(b'{"name": "A", "age": 30, "vip": true, "tags": [1], "x": null}', ("name", "age", "vip", "tags")) \
        == {"name": "A", "age": "30", "vip": "true"}
    assert parse_user(None, ("name",)) is None
    with pytest.raises(ValueError):
        parse_user(b"[1]", ("name",))
    with pytest.raises(ValueError):
        parse_user(b"{oops", ("name",))


@pytest.mark.integration
def test_table_loads_the_compacted_topic_and_follows_updates(kafka_broker, kafka_topic):
    from kafka import KafkaProducer

    config = kafka_broker.client_config("test-users")
    topic = kafka_topic(1, {"cleanup.policy": "compact"})
    users = synthetic_users(POOL)
    load_users(config, topic, users)
    gone, changed = sorted(users)[:2]
    producer = KafkaProducer(**config.producer_kwargs(acks="all"))
    producer.send(topic, key=gone.encode(), value=None)  # tombstone
    producer.send(topic, key=changed.encode(), value=orjson.dumps({"name": "New Name", "country": "NL"}))
    producer.send(topic, key=b"cust-broken", value=b"{not json")
    producer.flush()
    table = UsersTable(config, topic, ("name", "country")).start(timeout_s=60)
    try:
        assert len(table) == len(users) - 1 and gone not in table
        assert table[changed] == {"name": "New Name", "country": "NL"}
        assert table.bad_records == 1
        some = sorted(users)[5]
        assert table.get(some) == {"name": users[some]["name"], "country": users[some]["country"]}
        # Updates after the start are followed by the background reader.
        producer.send(topic, key=b"cust-new", value=orjson.dumps({"name": "Late", "country": "BE"}))
        producer.flush()
        deadline = time.monotonic() + 30
        while table.get("cust-new") is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert table.get("cust-new") == {"name": "Late", "country": "BE"}
    finally:
        table.close()
        producer.close()
    with pytest.raises(FraudError, match="users topic no.such.users does not exist"):
        UsersTable(config, "no.such.users", ("name",)).start(timeout_s=3)


@pytest.mark.integration
def test_fraudctl_preprocess_users_from_a_file(kafka_broker, kafka_topic, tmp_path, capsys):
    topic = kafka_topic(1, {"cleanup.policy": "compact"})
    path = tmp_path / "users.jsonl"
    path.write_text('{"customer_id": "c-1", "name": "Ann"}\n\n{"customer_id": "c-2", "name": "Bob"}\n')
    assert main(["preprocess", "users", "--file", str(path), "--topic", topic, "--bootstrap", kafka_broker.bootstrap]) == 0
    assert f"wrote 2 users to {topic}" in capsys.readouterr().out
    table = UsersTable(kafka_broker.client_config(), topic, ("name",)).start(timeout_s=60)
    try:
        assert dict(table.items()) == {"c-1": {"name": "Ann"}, "c-2": {"name": "Bob"}}
    finally:
        table.close()
    path.write_text('{"customer_id": "c-1"}\n{"name": "no id"}\n')
    assert main(["preprocess", "users", "--file", str(path), "--topic", topic, "--bootstrap", kafka_broker.bootstrap]) == 1
    assert f"{path}:2: expected a JSON object with a customer_id string" in capsys.readouterr().err
