"""The preprocessing job end to end on a real broker and a real Kafka Connect worker.

One module-scoped run: a CSV file (sample rows plus a blank line, a row without class, broken rows)
goes through `ingest_file` (Connect FileStreamSource) into the CSV topic; raw events with real synthetic
card ids (replay's) plus deliberately bad records go to the raw topic; the users table is loaded; the job
runs with exactly-once delivery until every record is committed. The tests then check the outcome:
counts reconcile, identities, enrichment, dead letters, metrics, and the privacy check: no raw card or
customer id in any downstream topic, in the job's logs or in a training export.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from fraud.contract import DeadLetter, TransactionEvent
from fraud.dataset import iter_rows
from fraud.embedded.testing import create_topic, delete_topics, unique_topic_name
from fraud.features import CSV_COLUMNS
from fraud.kafka_config import KafkaClientConfig
from fraud.logs import JsonFormatter
from fraud.paths import SAMPLE_CSV
from fraud.replay import CardPool, transaction_event, transaction_id
from preprocessing.anonymize import AnonymizeKey, Anonymizer
from preprocessing.ingest import ingest_file
from preprocessing.job import PreprocessConfig, PreprocessJob
from preprocessing.privacy import iter_topic
from preprocessing.rules import DEFAULT_RULES, load_rules
from preprocessing.transform import csv_index
from preprocessing.users import load_users, synthetic_users

pytestmark = pytest.mark.integration

LINES = SAMPLE_CSV.read_bytes().splitlines()
KEY = AnonymizeKey(b"integration-test-key-0123456789", "test")
CARDS = CardPool()  # replay's default pool (building one takes a while: build it once)
CSV_ROWS = 300
RAW_ROWS = 200


def _cell(line: bytes, column: str, value: str) -> bytes:
    cells = line.decode().split(",")
    cells[CSV_COLUMNS.index(column)] = value
    return ",".join(cells).encode()


def produce(config: KafkaClientConfig, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(**config.producer_kwargs(acks="all", linger_ms=5))
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value)
        producer.flush()
    finally:
        producer.close()


def read(config: KafkaClientConfig, topic: str) -> list:
    return list(iter_topic(config, topic, isolation_level="read_committed"))


class JobThread:
    """Runs a PreprocessJob in a thread; `wait_for(n)` until n records are committed."""

    def __init__(self, job: PreprocessJob) -> None:
        self.job = job
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.job.run()
        except BaseException as exc:  # re-raised in the test thread
            self.error = exc

    def __enter__(self) -> JobThread:
        self.thread.start()
        return self

    def wait_for(self, n: int, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.job.stats.total < n:
            if self.error is not None:
                raise self.error
            if time.monotonic() > deadline:
                raise AssertionError(f"job committed {self.job.stats.total} of {n} records in {timeout_s} s")
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self.job.request_stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the job did not stop"
        if self.error is not None and exc[0] is None:
            raise self.error


@dataclass
class Run:
    config: KafkaClientConfig
    topics: dict[str, str]
    csv_lines: list[bytes]
    raw_events: list[dict]
    raw_records: list[tuple[bytes | None, bytes | None]]
    job: PreprocessJob
    clean: list = field(default_factory=list)
    dead: list = field(default_factory=list)
    logs: str = ""
    metrics: str = ""
    ingested: int = 0
    tmp: Path | None = None


@pytest.fixture(scope="module")
def run(kafka_broker, kafka_connect, tmp_path_factory) -> Run:
    tmp = tmp_path_factory.mktemp("preprocess")
    config = kafka_broker.client_config("test-preprocess")
    topics = {"csv": 1, "raw": 4, "out": 4, "dlq": 1, "users": 1}
    names = {k: unique_topic_name(f"pp-{k}") for k in topics}
    for k, n in topics.items():
        create_topic(config, names[k], n, {"cleanup.policy": "compact"} if k == "users" else None)

    load_users(config, names["users"], synthetic_users(CARDS))

    rows = LINES[1:CSV_ROWS + 1]
    specials = [
        b"",  # blank line: filtered
        _cell(LINES[400], "Class", ""),  # no class: filtered by the no_label rule
        b"1,2,3",  # wrong column count: dead letter
        _cell(LINES[401], "Amount", "-1"),  # out of range: dead letter
        _cell(LINES[402], "Amount", "200000"),  # check amount_limit: dead letter
        _cell(LINES[403], "V5", "abc"),  # not a number: dead letter
    ]
    csv_lines = [LINES[0], *rows, *specials]
    path = tmp / "input.csv"
    path.write_bytes(b"\n".join(csv_lines) + b"\n")
    result = ingest_file(kafka_connect, config, path, names["csv"], staging_dir=tmp / "staging", timeout_s=180)

    cards = CARDS
    raw_events = [transaction_event(r, cards).to_dict() for r in iter_rows(SAMPLE_CSV, start=1000, limit=RAW_ROWS)]
    raw_events[0]["attributes"] = {"note": f"card {raw_events[0]['card_id']} of {raw_events[0]['customer_id']}"}
    raw_records: list[tuple[bytes | None, bytes | None]] = [
        (e["transaction_id"].encode(), orjson.dumps(e)) for e in raw_events]
    e1, e2, e3, e4 = (dict(transaction_event(r, cards).to_dict()) for r in iter_rows(SAMPLE_CSV, start=2000, limit=4))
    del e2["customer_id"]
    e3["features"]["Amount"] = -3.0
    e4[e4["card_id"]] = "field named like the card"
    raw_records += [
        (e1["transaction_id"].encode(), orjson.dumps(e1)[:-50]),  # broken JSON holding both ids
        (e2["transaction_id"].encode(), orjson.dumps(e2)),  # missing customer_id
        (e3["card_id"].encode(), orjson.dumps(e3)),  # keyed by the card number, Amount < 0
        (e4["transaction_id"].encode(), orjson.dumps(e4)),  # unknown field named like the card
        (b"tombstone", None),
    ]
    produce(config, names["raw"], raw_records)

    log_buffer = io.StringIO()
    handler = logging.StreamHandler(log_buffer)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)  # as the service runs (configure_logging); kafka-python's own chatter is left out
    logging.getLogger("kafka").setLevel(logging.WARNING)
    job_config = PreprocessConfig.build(
        kafka=config.with_client_id("test-preprocess-job"), rules=load_rules(DEFAULT_RULES), key=KEY,
        csv_topic=names["csv"], raw_topic=names["raw"], output_topic=names["out"], dlq_topic=names["dlq"],
        users_topic=names["users"], group_id=unique_topic_name("pp-group"), delivery="exactly_once",
        batch_max_size=100, http_port=0, instance_id="it-1")
    job = PreprocessJob(job_config)
    metrics_text = ""
    try:
        with JobThread(job) as jt:
            jt.wait_for(len(csv_lines) + len(raw_records))
            assert job.processor is not None and job.processor.http is not None
            with urllib.request.urlopen(f"http://127.0.0.1:{job.processor.http.port}/metrics", timeout=10) as resp:
                metrics_text = resp.read().decode()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    out = Run(config=config, topics=names, csv_lines=csv_lines, raw_events=raw_events, raw_records=raw_records,
              job=job, logs=log_buffer.getvalue(), metrics=metrics_text, ingested=result.sent, tmp=tmp)
    out.clean = [TransactionEvent.from_json(r.value) for r in read(config, names["out"])]
    out.dead = [DeadLetter.from_record(r.key, r.value, r.headers) for r in read(config, names["dlq"])]
    yield out
    delete_topics(config, list(names.values()))


def test_counts_reconcile(run: Run):
    s = run.job.stats
    assert run.ingested == len(run.csv_lines), "Connect put every line of the file in the CSV topic"
    assert s.consumed == {run.topics["csv"]: len(run.csv_lines), run.topics["raw"]: len(run.raw_records)}
    filtered = sum(s.filtered.values())
    assert len(run.clean) + len(run.dead) + filtered == len(run.csv_lines) + len(run.raw_records)
    assert len(run.clean) == sum(s.clean.values()) == CSV_ROWS + RAW_ROWS
    assert s.filtered == {"csv_header": 1, "blank_line": 1, "filter:no_label": 1}
    assert Counter(d.reason for d in run.dead) == s.dead == Counter({
        "csv_columns": 1, "out_of_range": 2, "check:amount_limit": 1, "wrong_type": 1, "malformed_json": 1,
        "missing_field": 1, "unknown_field": 1, "not_an_object": 1})
    assert len({e.transaction_id for e in run.clean}) == len(run.clean)


def test_csv_events_carry_labels_and_replay_identities(run: Run):
    anon = Anonymizer(KEY)
    cards = CARDS
    by_id = {e.transaction_id: e for e in run.clean}
    for line, row in zip(run.csv_lines[1:CSV_ROWS + 1], iter_rows(SAMPLE_CSV, limit=CSV_ROWS), strict=True):
        index = csv_index(line.decode())
        event = by_id[transaction_id(index)]
        card = cards.card_for_row(index)
        assert event.card_id == anon.pseudonym("card_id", card.card_id)
        assert event.customer_id == anon.pseudonym("customer_id", card.customer_id)
        assert event.label == row.label and dict(event.features) == row.features
        assert event.attributes["source"] == "csv"
        assert event.attributes["card_display"] == "n" * 12 + card.card_id[-4:]
    assert sum(e.label for e in run.clean if e.label is not None) > 0, "the sample slice has frauds"


def test_raw_events_are_pseudonymized_and_enriched(run: Run):
    anon = Anonymizer(KEY)
    users = synthetic_users(CARDS)
    by_id = {e.transaction_id: e for e in run.clean}
    for raw in run.raw_events:
        event = by_id[raw["transaction_id"]]
        assert event.card_id == anon.pseudonym("card_id", raw["card_id"])
        assert event.label is None and event.attributes["source"] == "raw"
        user = users[raw["customer_id"]]
        assert event.attributes["country"] == user["country"] and event.attributes["segment"] == user["segment"]
        assert event.attributes["user_name"][0] == user["name"][0] and user["name"] != event.attributes["user_name"]
        assert "note" not in event.attributes, "attributes not in the projection are dropped"


def test_dead_letters_say_why_and_where(run: Run):
    by_reason = {d.reason: d for d in run.dead}
    csv_dl = by_reason["csv_columns"]
    assert csv_dl.source_topic == run.topics["csv"] and csv_dl.value == b"1,2,3"
    assert run.csv_lines[csv_dl.source_offset] == b"1,2,3", "the offset is the line's record in the CSV topic"
    assert by_reason["check:amount_limit"].message == "check amount_limit failed: Amount <= 100000"
    assert by_reason["wrong_type"].field == "features.V5"
    assert by_reason["missing_field"].field == "customer_id" and by_reason["missing_field"].stage == "TRANSFORMATION"
    assert by_reason["malformed_json"].stage == "VALUE_CONVERTER"
    assert all(d.component == "preprocessing" for d in run.dead)


def test_metrics_and_logs(run: Run):
    assert 'fraud_preprocess_records_filtered_total{reason="csv_header"} 1.0' in run.metrics
    assert f'fraud_preprocess_records_clean_total{{source="csv"}} {CSV_ROWS}.0' in run.metrics
    assert "fraud_preprocess_users_table_rows 8000.0" in run.metrics
    events = [orjson.loads(line) for line in run.logs.splitlines() if line.startswith("{")]
    names = {e["event"] for e in events}
    assert {"preprocess_starting", "users_table_loaded", "dead_letter", "preprocess_stopped"} <= names
    start = next(e for e in events if e["event"] == "preprocess_starting")
    assert start["key_fingerprint"] == KEY.fingerprint and KEY.secret.decode() not in run.logs


# -- the privacy check ----------------------------------------------------------------------------


def _scanner():
    from fraud.replay import DEFAULT_CARDS, DEFAULT_SEED
    from preprocessing.privacy import IdScanner, pool_ids

    # Every card and customer id of replay's pool: the raw events' ids and the CSV lines' identities alike.
    return IdScanner(pool_ids(DEFAULT_CARDS, DEFAULT_SEED))


def test_no_raw_id_in_any_downstream_topic_or_in_the_logs(run: Run):
    from preprocessing.privacy import scan_topic

    scanner = _scanner()
    # The scan can see: the raw topic (upstream) is full of ids.
    n_raw, upstream = scan_topic(run.config, run.topics["raw"], scanner)
    assert n_raw == len(run.raw_records) and len({f.masked for f in upstream}) > 100
    for name in ("out", "dlq"):
        n, found = scan_topic(run.config, run.topics[name], scanner)
        assert n > 0 and found == [], f"raw ids in {name}: {found[:5]}"
    assert run.logs.count("dead_letter") >= len(run.dead)
    assert scanner.findings(run.logs.encode(), "logs") == []
    assert scanner.findings(str(run.job.stats.as_dict()).encode(), "stats") == []


def _export_command():
    """`fraudctl export` (pipeline colleague's), if it exists in this checkout."""
    import argparse

    try:
        from pipeline import export
    except ImportError:
        return None
    if not hasattr(export, "register"):
        return None
    parser = argparse.ArgumentParser()
    export.register(parser.add_subparsers(dest="command"))
    return parser


def test_no_raw_id_in_a_training_export(run: Run):
    from preprocessing.privacy import IdScanner, scan_path

    parser = _export_command()
    if parser is None:
        pytest.skip("fraudctl export (pipeline/export.py) is not in this checkout")
    out_dir = run.tmp / "exports"
    args = parser.parse_args(["export", "--topic", run.topics["out"], "--out", str(out_dir),
                              "--bootstrap", run.config.bootstrap])
    assert args.func(args) == 0
    files, found = scan_path(out_dir, _scanner())
    assert files >= 2, "a span has data files and its manifest"
    assert found == [], found[:5]
    # The same scan does find the pseudonyms there: the export holds the events, only not their raw ids.
    anon = Anonymizer(KEY)
    pseudonyms = IdScanner({anon.pseudonym("card_id", e["card_id"]): "card_id" for e in run.raw_events})
    assert len(scan_path(out_dir, pseudonyms)[1]) >= len({e["card_id"] for e in run.raw_events})


# -- the CLI: rule changes without code changes, and a hard kill under exactly-once ----------------


def _start_cli(bootstrap: str, rules: Path, raw: str, out: str, dlq: str, users: str, group: str,
               *extra: str):
    import os
    import subprocess
    import sys

    env = dict(os.environ, FRAUD_ANONYMIZE_KEY=KEY.secret.decode(), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "fraudctl.cli", "preprocess", "run", "--rules", str(rules), "--csv-topic", "",
           "--raw-topic", raw, "--output-topic", out, "--dlq-topic", dlq, "--users-topic", users,
           "--group-id", group, "--instance-id", "cli-1", "--bootstrap", bootstrap, "--batch-max-size", "50", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class Collector:
    """One read_committed consumer over every partition of a topic, collecting as the job writes."""

    def __init__(self, config: KafkaClientConfig, topic: str) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(**config.consumer_kwargs(None, isolation_level="read_committed"))
        tps = [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic))]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.records: list = []

    def poll(self, timeout_ms: int = 200) -> list:
        for batch in self.consumer.poll(timeout_ms=timeout_ms).values():
            self.records.extend(batch)
        return self.records

    def wait_for(self, n: int, proc, timeout_s: float = 120.0) -> list:
        deadline = time.monotonic() + timeout_s
        while len(self.poll()) < n:
            if proc.poll() is not None:
                raise AssertionError(f"the job exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"{len(self.records)} of {n} records after {timeout_s} s")
        return self.records

    def close(self) -> None:
        self.consumer.close()


def _stop(proc) -> str:
    import signal

    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    return err


def test_rule_changes_change_the_output_without_code_changes(kafka_broker, kafka_topic, tmp_path):
    config = kafka_broker.client_config("test-rules-change")
    raw, users = kafka_topic(2), kafka_topic(1, {"cleanup.policy": "compact"})
    events = [transaction_event(r, CARDS).to_dict() for r in iter_rows(SAMPLE_CSV, start=3000, limit=300)]
    produce(config, raw, [(e["transaction_id"].encode(), orjson.dumps(e)) for e in events])
    small = [e for e in events if e["features"]["Amount"] <= 100]
    assert 0 < len(small) < len(events)

    shipped = DEFAULT_RULES.read_text()
    changed = (shipped.replace("filters:\n", "filters:\n  - name: big\n    when: Amount > 100\n", 1)
               .replace("masks:\n", "masks:\n  customer_hidden: {field: customer_id, function: mask}\n", 1)
               .replace("attributes: [card_display,", "attributes: [customer_hidden, card_display,", 1))
    assert changed.count("customer_hidden") == 2 and "name: big" in changed
    results = {}
    for name, text, expected in (("shipped", shipped, len(events)), ("changed", changed, len(small))):
        rules = tmp_path / f"{name}.yaml"
        rules.write_text(text)
        out, dlq = kafka_topic(4), kafka_topic(1)
        collector = Collector(config, out)
        proc = _start_cli(kafka_broker.bootstrap, rules, raw, out, dlq, users, unique_topic_name(f"g-{name}"))
        records = collector.wait_for(expected, proc)
        err = _stop(proc)
        collector.close()
        assert f"preprocess: consumed {len(events)}, clean {expected}" in err
        results[name] = [TransactionEvent.from_json(r.value) for r in records]

    before, after = results["shipped"], results["changed"]
    assert len(before) == len(events) and len(after) == len(small)
    assert any(e.features["Amount"] > 100 for e in before)
    assert all(e.features["Amount"] <= 100 for e in after), "the new filter dropped the big amounts"
    assert all("customer_hidden" not in e.attributes for e in before)
    assert all(e.attributes["customer_hidden"] == "xxxx-nnnnnn" for e in after), "the new mask is projected"
    assert {e.transaction_id: e.card_id for e in after}.items() <= {e.transaction_id: e.card_id for e in before}.items()


def test_hard_kill_under_exactly_once_loses_and_duplicates_nothing(kafka_broker, kafka_topic, tmp_path):
    import signal

    config = kafka_broker.client_config("test-kill")
    raw, users, out, dlq = kafka_topic(4), kafka_topic(1, {"cleanup.policy": "compact"}), kafka_topic(4), kafka_topic(1)
    events = [transaction_event(r, CARDS).to_dict() for r in iter_rows(SAMPLE_CSV, start=4000, limit=3000)]
    produce(config, raw, [(e["transaction_id"].encode(), orjson.dumps(e)) for e in events])
    group = unique_topic_name("g-kill")
    args = ("--delivery", "exactly_once", "--batch-max-size", "20")
    collector = Collector(config, out)
    try:
        first = _start_cli(kafka_broker.bootstrap, DEFAULT_RULES, raw, out, dlq, users, group, *args)
        collector.wait_for(100, first)
        first.send_signal(signal.SIGKILL)  # no shutdown: a transaction may be left open
        first.communicate(timeout=30)
        partial = len(collector.poll())
        assert partial < len(events), "killed before the end (else the test proves nothing)"

        second = _start_cli(kafka_broker.bootstrap, DEFAULT_RULES, raw, out, dlq, users, group, *args)
        collector.wait_for(len(events), second, timeout_s=180)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # anything extra would show up now
            collector.poll()
        _stop(second)
        records = collector.poll()
    finally:
        collector.close()
    ids = [TransactionEvent.from_json(r.value).transaction_id for r in records]
    assert len(ids) == len(events) and set(ids) == {e["transaction_id"] for e in events}
