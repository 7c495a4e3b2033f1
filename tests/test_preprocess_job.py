"""Unit tests of the preprocessing job's own logic (no broker): the process function, redacted dead letters,
committed-only counts, config parsing and the CLI's one-line refusals."""

from __future__ import annotations

import argparse

import orjson
import pytest

from fraud.contract import H_EXC_MESSAGE, H_FIELD, H_OFFSET, H_REASON, H_TOPIC, DeadLetter
from fraud.dataset import iter_rows
from fraud.errors import FraudError
from fraud.kafka_config import KafkaClientConfig
from fraud.paths import SAMPLE_CSV
from fraud.replay import CardPool, transaction_event
from fraud.stream.config import Delivery
from fraud.stream.metrics import RecordingMetrics
from fraud.stream.records import ProcessResult, Record
from fraudctl.cli import main
from preprocessing.anonymize import AnonymizeKey
from preprocessing.job import (
    CLEAN,
    FILTERED,
    PREPROCESS_METRICS,
    PreprocessConfig,
    PreprocessJob,
    add_arguments,
)
from preprocessing.rules import DEFAULT_RULES, load_rules

KAFKA = KafkaClientConfig(bootstrap_servers=("127.0.0.1:1",), client_id="unit")
KEY = AnonymizeKey(b"u" * 32, "test")
CARDS = CardPool()
LINES = SAMPLE_CSV.read_bytes().splitlines()


def make_job(**kw) -> tuple[PreprocessJob, RecordingMetrics]:
    config = PreprocessConfig.build(kafka=KAFKA, rules=load_rules(DEFAULT_RULES), key=KEY, csv_topic="csv",
                                    raw_topic="raw", output_topic="out", dlq_topic="dlq", **kw)
    metrics = RecordingMetrics(PREPROCESS_METRICS)
    return PreprocessJob(config, users={}, metrics=metrics), metrics


def rec(topic: str, offset: int, value: bytes | None, key: bytes | None = None) -> Record:
    return Record(topic, 0, offset, key, value, 1_700_000_000_000)


def raw(index: int = 0) -> dict:
    row = next(iter_rows(SAMPLE_CSV, start=index, limit=1))
    return transaction_event(row, CARDS).to_dict()


def test_process_routes_every_record_and_counts_only_after_commit():
    job, metrics = make_job()
    no_label = LINES[1].rsplit(b",", 1)[0] + b","
    batch = [rec("csv", 0, LINES[0]), rec("csv", 1, LINES[1]), rec("csv", 2, b""), rec("csv", 3, no_label),
             rec("csv", 4, b"1,2"), rec("raw", 0, orjson.dumps(raw(0)), b"tx-000000"), rec("raw", 1, b"{oops")]
    result = job.process(batch)
    assert [o.topic for o in result.outputs] == ["out", "out"]
    assert [d.reason for d in result.dead_letters] == ["csv_columns", "malformed_json"]
    assert job.stats.total == 0, "nothing is counted before the batch is committed"
    job._on_committed(batch, result)
    s = job.stats
    assert s.consumed == {"csv": 5, "raw": 2}
    assert s.clean == {"csv": 1, "raw": 1}
    assert s.filtered == {"csv_header": 1, "blank_line": 1, "filter:no_label": 1}
    assert s.dead == {"csv_columns": 1, "malformed_json": 1}
    assert sum(s.clean.values()) + sum(s.filtered.values()) + sum(s.dead.values()) == s.total
    assert metrics.total(FILTERED, reason="csv_header") == 1
    assert metrics.total(CLEAN, source="raw") == 1


def test_counts_travel_with_their_batch():
    job, _ = make_job()
    first = [rec("csv", 0, LINES[0]), rec("csv", 1, LINES[1])]
    second = [rec("csv", 2, b""), rec("csv", 3, b""), rec("csv", 4, LINES[2])]
    r1 = job.process(first)
    job.process(first)  # an attempt that fails in delivery: no on_committed for it
    r2 = job.process(second)  # pipelined: processed before the first batch is committed
    job._on_committed(first, r1)
    assert job.stats.filtered == {"csv_header": 1} and job.stats.clean == {"csv": 1}
    job._on_committed(second, r2)
    assert job.stats.filtered == {"csv_header": 1, "blank_line": 2} and job.stats.clean == {"csv": 2}
    assert job.stats.total == 5


def test_dead_letters_keep_coordinates_and_hide_raw_ids():
    job, _ = make_job()
    obj = raw(2)
    card, cust = obj["card_id"], obj["customer_id"]
    obj["features"]["Amount"] = -5.0  # contract violation after parsing
    r1 = rec("raw", 7, orjson.dumps(obj), key=card.encode())  # keyed by the card number (a bad producer)
    bad = dict(raw(3), **{card: "x"})  # an unknown field named like a card number
    r2 = rec("raw", 8, orjson.dumps(bad), key=b"tx-000003")
    result = job.process([r1, r2])
    d1, d2 = result.dead_letters
    assert d1.reason == "out_of_range" and d1.field == "features.Amount"
    assert d1.key == job.anonymizer.pseudonym("card_id", card).encode()
    assert card.encode() not in d1.value and cust.encode() not in d1.value
    assert orjson.loads(d1.value)["features"]["Amount"] == -5.0
    headers = dict(d1.headers())
    assert headers[H_TOPIC] == b"raw" and headers[H_OFFSET] == b"7" and headers[H_REASON] == b"out_of_range"
    back = DeadLetter.from_record(d1.key, d1.value, d1.headers())
    assert back.source_offset == 7 and back.component == "preprocessing"
    assert d2.reason == "unknown_field"
    assert card not in d2.field and card.encode() not in dict(d2.headers())[H_FIELD]
    assert card.encode() not in dict(d2.headers())[H_EXC_MESSAGE] and card.encode() not in d2.value


def test_config_refuses_overlapping_topics():
    with pytest.raises(FraudError, match="output topic raw is also an input"):
        PreprocessConfig.build(kafka=KAFKA, rules=load_rules(DEFAULT_RULES), key=KEY, output_topic="raw",
                               csv_topic="csv", raw_topic="raw")
    with pytest.raises(FraudError, match="no input topic"):
        PreprocessConfig.build(kafka=KAFKA, rules=load_rules(DEFAULT_RULES), key=KEY, csv_topic="", raw_topic="")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_config_from_flags_and_environment(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("k" * 24)
    args = _parse(["--raw-topic", "", "--delivery", "exactly_once", "--key-file", str(key_file), "--bootstrap",
                   "127.0.0.1:9999"])
    config = PreprocessConfig.from_args(args, {"FRAUD_PREPROCESS_BATCH_MAX_SIZE": "77",
                                               "FRAUD_PREPROCESS_OUTPUT_TOPIC": "clean"})
    assert dict(config.sources) == {"fraud.ingest.csv": "csv"}
    assert config.stream.delivery is Delivery.EXACTLY_ONCE
    assert config.stream.batch_max_size == 77 and config.output_topic == "clean"
    assert config.key.secret == b"k" * 24 and "k" * 24 not in repr(config)
    assert config.stream.kafka.bootstrap == "127.0.0.1:9999"
    assert config.rules.path == str(DEFAULT_RULES)


def test_cli_refuses_a_bad_rules_file_with_its_line(tmp_path, capsys):
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nmasks:\n  m: {field: card_id, function: mask_left}\n")
    assert main(["preprocess", "run", "--rules", str(rules), "--dev-insecure-key"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fraudctl preprocess") and len(err.splitlines()) == 1
    assert err.endswith(f": {rules}:3: masks.m: mask_left needs `chars` (how many characters)")
    assert main(["preprocess", "check-rules", "--rules", str(rules)]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_cli_refuses_to_run_without_a_key(monkeypatch, capsys):
    monkeypatch.delenv("FRAUD_ANONYMIZE_KEY", raising=False)
    monkeypatch.delenv("FRAUD_ANONYMIZE_KEY_FILE", raising=False)
    assert main(["preprocess", "run"]) == 1
    assert "no anonymization key" in capsys.readouterr().err


def test_check_rules_describes_the_shipped_rules(capsys):
    assert main(["preprocess", "check-rules"]) == 0
    out = capsys.readouterr().out
    assert "filter no_label: drop when source == \"csv\" and label is missing" in out
    assert "mask card_display: mask_left(card_id, 12)" in out


def test_process_result_is_the_stream_type():
    job, _ = make_job()
    assert isinstance(job.process([]), ProcessResult)


def test_an_unexpected_error_on_one_record_dead_letters_it_and_the_batch_goes_on(monkeypatch):
    job, _ = make_job()
    real = job.preprocessor.process
    poison = orjson.dumps(raw(1))

    def process(source, value):
        if value == poison:
            raise KeyError(raw(1)["card_id"])  # the text of an error may quote the record
        return real(source, value)

    monkeypatch.setattr(job.preprocessor, "process", process)
    result = job.process([rec("raw", 0, orjson.dumps(raw(0))), rec("raw", 1, poison), rec("raw", 2, orjson.dumps(raw(2)))])
    assert len(result.outputs) == 2
    (dl,) = result.dead_letters
    assert dl.reason == "internal_error" and dl.message == "KeyError while preprocessing" and dl.source_offset == 1
    assert raw(1)["card_id"].encode() not in dl.value


def test_records_wait_for_the_users_table_and_a_failed_load_stops_the_job():
    import threading

    from fraud.stream.records import RetriableError

    class Loading(dict):
        loaded = threading.Event()
        load_error = None

    job, _ = make_job()
    table = Loading()
    job._users_table = table
    batch = [rec("raw", 0, orjson.dumps(raw(0)))]
    with pytest.raises(RetriableError, match="users table .* is still loading"):
        job.process(batch)
    table.load_error = "users topic x: read 5 of 9 records in 60 s"
    with pytest.raises(FraudError, match="users table: users topic x: read 5 of 9"):
        job.process(batch)
    table.load_error = None
    table.loaded.set()
    assert len(job.process(batch).outputs) == 1
