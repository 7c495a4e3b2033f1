"""`fraudctl replay` against the real embedded Kafka broker: what was sent is what a consumer reads."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from fraud.contract import LabelEvent, TransactionEvent
from fraud.dataset import iter_rows
from fraud.kafka_config import KafkaClientConfig
from fraud.paths import SAMPLE_CSV
from fraud.replay import CardPool, ReplayConfig, event_time_ms, run_replay, transaction_id
from fraud.stream.reader import read_to_end

pytestmark = pytest.mark.integration

PARTITIONS = 4


def _consume_all(kafka: KafkaClientConfig, topic: str) -> list:
    """Every record of `topic` from its beginning to its end."""
    return list(read_to_end(kafka, [topic], group_id=f"check-{topic}"))


def test_replay_sends_every_row_once_with_labels_after_the_delay(kafka_topic, kafka_client_config):
    topic, labels_topic = kafka_topic(partitions=PARTITIONS), kafka_topic(partitions=PARTITIONS)
    start, limit, delay_s = 200, 500, 1.5  # rows 200..699 of the sample hold 6 frauds
    config = ReplayConfig(file=SAMPLE_CSV, topic=topic, labels_topic=labels_topic, start_row=start, limit=limit,
                          rate=400.0, label_delay_s=delay_s, kafka=kafka_client_config, progress=False)
    stats = run_replay(config)

    rows = {transaction_id(r.index): r for r in iter_rows(SAMPLE_CSV, start=start, limit=limit)}
    frauds = sum(r.label for r in rows.values())
    assert frauds >= 3
    assert (stats.events, stats.labels, stats.frauds) == (limit, limit, frauds)
    assert stats.seconds >= (limit - 1) / 400.0  # paced, not as fast as possible

    txs = _consume_all(kafka_client_config, topic)
    labels = _consume_all(kafka_client_config, labels_topic)
    assert len(txs) == limit and len(labels) == limit  # nothing lost, nothing duplicated
    assert {r.key.decode() for r in txs} == set(rows) == {r.key.decode() for r in labels}

    cards = CardPool()
    tx_ts = {}
    for record in txs:
        event = TransactionEvent.from_json(record.value)
        row = rows[record.key.decode()]
        assert event.transaction_id == record.key.decode()
        assert event.label is None
        assert event.features == row.features
        assert event.event_time_ms == event_time_ms(row.features["Time"])
        card = cards.card_for_row(row.index)
        assert (event.card_id, event.customer_id) == (card.card_id, card.customer_id)
        tx_ts[event.transaction_id] = record.timestamp_ms

    fraud_labels = 0
    for record in labels:
        label = LabelEvent.from_json(record.value)
        row = rows[label.transaction_id]
        assert record.key.decode() == label.transaction_id
        assert label.label == row.label
        assert label.event_time_ms == event_time_ms(row.features["Time"])
        assert record.timestamp_ms == label.labelled_at_ms
        assert record.timestamp_ms - tx_ts[label.transaction_id] >= delay_s * 1000  # never earlier than the delay
        fraud_labels += label.label
    assert fraud_labels == frauds


def test_fraudctl_replay_command_against_the_broker(kafka_broker, kafka_topic, kafka_client_config):
    topic, labels_topic = kafka_topic(partitions=PARTITIONS), kafka_topic(partitions=PARTITIONS)
    proc = subprocess.run(
        [sys.executable, "-m", "fraudctl.cli", "replay", "--bootstrap", kafka_broker.bootstrap, "--topic", topic,
         "--labels-topic", labels_topic, "--limit", "120", "--label-delay", "30", "--flush-labels", "--no-progress"],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"replayed 120 events (rows 0..119) to {topic}, 120 labels to {labels_topic}, 0 frauds" in proc.stdout
    assert len(_consume_all(kafka_client_config, topic)) == 120
    labels = _consume_all(kafka_client_config, labels_topic)
    assert len(labels) == 120  # --flush-labels: sent at the end, long before the 30 s delay


def test_replay_to_a_missing_topic_fails_fast_in_one_line(kafka_broker, kafka_topic):
    labels_topic = kafka_topic()
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "fraudctl.cli", "replay", "--bootstrap", kafka_broker.bootstrap, "--topic", "no.such.topic",
         "--labels-topic", labels_topic, "--limit", "5", "--no-progress"],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "topic no.such.topic does not exist" in proc.stderr
    assert time.monotonic() - start < 30
