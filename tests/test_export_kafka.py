"""`fraudctl export` against a real Apache Kafka broker: bounded snapshots, a crash mid-export and a
re-run (same span, no gap, no overlap), transactions (aborted records never exported, markers
leave offset gaps), and the CLI end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaProducer
from test_export import event

from fraud import spans
from fraud.contract import TransactionEvent
from pipeline.export import KafkaExportSource, export_span

pytestmark = pytest.mark.integration


class Crash(Exception):
    pass


def _produce(config, topic: str, ids: range, partitions: int) -> None:
    producer = KafkaProducer(**config.producer_kwargs(acks="all"))
    for i in ids:
        producer.send(topic, key=f"tx-{i:06d}".encode(), value=event(i, label=i % 2).to_json(), partition=i % partitions)
    producer.flush(timeout=30)
    producer.close()


def _exported_ids(base: Path, topic: str) -> list[str]:
    ids = []
    for state in spans.list_spans(base):
        assert state.complete
        for f in spans.list_data_files(state.path, topic):
            ids += [TransactionEvent.from_json(line).transaction_id for line in spans.iter_json_lines(f.path)]
    return ids


def test_crash_and_rerun_give_the_same_span_then_the_next_one_continues(kafka_client_config, kafka_topic,
                                                                       tmp_path: Path) -> None:
    topic = kafka_topic(partitions=3)
    _produce(kafka_client_config, topic, range(0, 300), 3)
    base = tmp_path / "exports"

    closed = []

    def crash_after_two_files(entry):
        closed.append(entry)
        if len(closed) == 2:
            raise Crash("simulated crash mid-export")

    source = KafkaExportSource(kafka_client_config)
    try:
        with pytest.raises(Crash):
            export_span(source, base, topic, rows_per_file=40, on_file_closed=crash_after_two_files)
        crashed = spans.span_dir(base, 1)
        assert not spans.is_complete(crashed)
        plan = json.loads((crashed / spans.PLAN).read_text())
        assert plan["partitions"] == {"0": [0, 100], "1": [0, 100], "2": [0, 100]}

        _produce(kafka_client_config, topic, range(300, 330), 3)  # arrives between the crash and the re-run
        rerun = export_span(source, base, topic, rows_per_file=40)
        assert rerun.resumed and rerun.span == 1 and rerun.rows == 300
        manifest = spans.read_manifest(rerun.directory)
        assert [(p["start_offset"], p["end_offset"], p["rows"]) for p in manifest["partitions"]] == [(0, 100, 100)] * 3

        following = export_span(source, base, topic, rows_per_file=40)
        assert following.span == 2 and following.rows == 30 and not following.resumed
        assert export_span(source, base, topic).span is None
    finally:
        source.close()
    ids = _exported_ids(base, topic)
    assert len(ids) == len(set(ids)) == 330
    assert sorted(ids) == [f"tx-{i:06d}" for i in range(330)]


def test_transactions_aborted_records_are_not_exported(kafka_client_config, kafka_topic, tmp_path: Path) -> None:
    topic = kafka_topic(partitions=1)
    producer = KafkaProducer(**kafka_client_config.producer_kwargs(transactional_id=f"{topic}.tx", acks="all"))
    producer.init_transactions()
    producer.begin_transaction()
    for i in range(5):
        producer.send(topic, value=event(i).to_json())
    producer.commit_transaction()
    producer.begin_transaction()
    for i in range(5, 8):
        producer.send(topic, value=event(i).to_json())
    producer.flush(timeout=30)
    producer.abort_transaction()
    producer.begin_transaction()
    producer.send(topic, value=b'{"not": "an event"}')
    producer.send(topic, value=event(8).to_json())
    producer.commit_transaction()
    producer.close()

    source = KafkaExportSource(kafka_client_config)
    try:
        result = export_span(source, tmp_path, topic)
    finally:
        source.close()
    assert sorted(_exported_ids(tmp_path, topic)) == [f"tx-{i:06d}" for i in (0, 1, 2, 3, 4, 8)]
    assert result.rejected == 1
    (partition,) = spans.read_manifest(result.directory)["partitions"]
    # 5 records + marker, 3 aborted + marker, 2 records + marker: the span ends at the log end.
    assert partition["end_offset"] == 13 and partition["rows"] == 6


def test_cli_export(kafka_broker, kafka_topic, tmp_path: Path) -> None:
    topic = kafka_topic(partitions=2)
    _produce(kafka_broker.client_config(), topic, range(0, 20), 2)
    env = dict(os.environ, FRAUD_HOME=str(tmp_path / "home"))
    cmd = [sys.executable, "-m", "fraudctl.cli", "export", "--topic", topic, "--bootstrap", kafka_broker.bootstrap,
           "--format", "avro"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "span 1" in first.stdout and "20 rows" in first.stdout
    files = spans.list_data_files(spans.span_dir(tmp_path / "home" / "exports", 1), topic)
    assert {f.file_format for f in files} == {"avro"} and len(files) == 2
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing written" in again.stdout
    other_topic = subprocess.run(cmd[:5] + ["other.topic"] + cmd[6:], env=env, capture_output=True, text=True,
                                 timeout=120)
    assert other_topic.returncode == 1
    assert f"the export base holds topic {topic}, not other.topic" in other_topic.stderr.strip().splitlines()[-1]
    missing = subprocess.run(cmd[:5] + ["no.such.topic"] + cmd[6:] + ["--out", str(tmp_path / "other")], env=env,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].startswith("fraudctl export: topic no.such.topic")
