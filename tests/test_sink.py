"""Unit tests of the sink loop on fakes (no broker): parsing into rows and dead letters, dead letters
acknowledged before the warehouse commit, the same batch retried after a transient failure, and the
configuration's one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fraud.errors import FraudError
from fraud.kafka_config import KafkaClientConfig
from fraud.stream.metrics import RecordingMetrics
from fraud.stream.records import Record, RetriableError
from monitoring.testing import synthetic_scores
from warehouse import metrics as m
from warehouse.config import SinkConfig
from warehouse.sink import SinkJob, parse_batch
from warehouse.store import DuckDBWarehouse, WarehouseBatch, WriteResult

S, L = "fraud.scores", "fraud.labels"


def records(n: int = 10) -> list[Record]:
    data = synthetic_scores(n, seed=1)
    out = [Record(S, i % 2, i // 2, d.score.transaction_id.encode(), d.score.to_json(), 0) for i, d in enumerate(data)]
    out += [Record(L, 0, i, None, d.label.to_json(), 0) for i, d in enumerate(data[:4])]
    out += [Record(S, 0, n, b"k", b'{"transaction_id": 1}', 0), Record(L, 0, 4, None, None, 0)]
    return out


def test_parse_batch_splits_rows_and_dead_letters_and_covers_every_offset():
    batch, dead = parse_batch(records(), S, L)
    assert len(batch.scores) == 10 and len(batch.labels) == 4
    assert [(d.reason, d.field, d.source_offset) for d in dead] == [
        ("missing_field", "event_time_ms", 10), ("malformed_json", None, 4)]
    assert batch.offsets == {(S, 0): 11, (S, 1): 5, (L, 0): 5}


class Reader:
    def __init__(self, batches: list[list[Record]]) -> None:
        self.batches = batches
        self.committed: list[dict] = []

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        return self.batches.pop(0) if self.batches else []

    def lag(self) -> dict:
        return {}

    def commit_advisory(self, offsets: dict) -> None:
        self.committed.append(dict(offsets))

    def close(self) -> None:
        pass


class Producer:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.sent = []

    def send_dead_letter(self, topic: str, dead) -> None:
        self.sent.append((topic, dead))
        self.log.append("dead_letter")

    def flush(self, timeout_s: float = 30.0) -> None:
        self.log.append("flush")

    def close(self) -> None:
        pass


class FlakyWarehouse(DuckDBWarehouse):
    """DuckDB, but the first `failures` writes fail transiently."""

    def __init__(self, path: Path, failures: int, log: list[str]) -> None:
        super().__init__(path)
        self.failures = failures
        self.log = log

    def write(self, batch: WarehouseBatch) -> WriteResult:
        self.log.append("write")
        if self.failures:
            self.failures -= 1
            raise RetriableError("warehouse unavailable")
        return super().write(batch)


def config(tmp_path: Path, **kw) -> SinkConfig:
    return SinkConfig(kafka=KafkaClientConfig(), duckdb_path=tmp_path / "wh.duckdb", batch_max_size=100,
                      batch_max_wait_ms=0, stop_when_idle_s=0.2, **kw)


def test_dead_letters_are_flushed_before_the_write_and_a_failed_write_is_retried(tmp_path: Path):
    log: list[str] = []
    reader = Reader([records()])
    producer = Producer(log)
    metrics = RecordingMetrics(m.SINK_METRICS)
    sleeps: list[float] = []
    wh = FlakyWarehouse(tmp_path / "wh.duckdb", failures=2, log=log)
    job = SinkJob(config(tmp_path), wh, metrics=metrics, reader_factory=lambda *a, **k: reader, producer=producer,
                  sleep=sleeps.append)
    stats = job.run()
    assert log == ["dead_letter", "dead_letter", "flush", "write"] * 3
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0] * 1.2  # backoff grows
    assert stats.scores_inserted == 10 and stats.labels_written == 4 and stats.dead_letters == 2
    assert metrics.total(m.SINK_RETRIES) == 2
    assert metrics.total(m.SINK_ROWS_WRITTEN, table="scores") == 10
    assert metrics.total(m.SINK_DEAD_LETTERS, reason="missing_field") == 1
    assert reader.committed == [{(S, 0): 11, (S, 1): 5, (L, 0): 5}]
    reopened = DuckDBWarehouse(tmp_path / "wh.duckdb")
    reopened.open()
    assert reopened.stored_offsets() == {(S, 0): 11, (S, 1): 5, (L, 0): 5}
    reopened.close()


def test_stop_during_a_retry_commits_nothing(tmp_path: Path):
    log: list[str] = []
    wh = FlakyWarehouse(tmp_path / "wh.duckdb", failures=100, log=log)
    job = SinkJob(config(tmp_path), wh, reader_factory=lambda *a, **k: Reader([records()]), producer=Producer(log),
                  sleep=lambda s: job.request_stop())
    stats = job.run()
    assert stats.batches == 0
    reopened = DuckDBWarehouse(tmp_path / "wh.duckdb")
    reopened.open()
    assert reopened.stored_offsets() == {}
    reopened.close()


def test_sink_resumes_from_the_offsets_stored_with_the_rows(tmp_path: Path):
    starts: list[dict] = []

    def factory(kafka, topics, *, group_id, start, default_start):
        starts.append(dict(start))
        assert topics == [S, L] and default_start == "earliest"
        return Reader([records()] if not start else [])

    for _ in range(2):
        SinkJob(config(tmp_path), DuckDBWarehouse(tmp_path / "wh.duckdb"), reader_factory=factory,
                producer=Producer([])).run()
    assert starts == [{}, {(S, 0): 11, (S, 1): 5, (L, 0): 5}]


@pytest.mark.parametrize("env, message", [
    ({"FRAUD_SINK_WAREHOUSE": "bigquery"}, "needs --bigquery-project"),
    ({"FRAUD_SINK_BATCH_MAX_SIZE": "0"}, "FRAUD_SINK_BATCH_MAX_SIZE='0': must be >= 1"),
    ({"FRAUD_SINK_DLQ_TOPIC": "fraud.scores"}, "also an input topic"),
    ({"FRAUD_SINK_WAREHOUSE": "sqlite"}, "expected one of duckdb, bigquery"),
])
def test_bad_sink_settings_are_one_line_errors(tmp_path: Path, env: dict, message: str):
    from fraud.paths import load_paths

    with pytest.raises(FraudError) as err:
        SinkConfig.from_args(None, env, load_paths({"FRAUD_HOME": str(tmp_path)}))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_default_warehouse_lives_under_fraud_home(tmp_path: Path):
    from fraud.paths import load_paths

    c = SinkConfig.from_args(None, {}, load_paths({"FRAUD_HOME": str(tmp_path)}))
    assert c.duckdb_path == tmp_path / "warehouse" / "fraud.duckdb"
    assert c.http_port is None and c.kafka.client_id == "fraud-sink"
