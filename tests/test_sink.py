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
    """A fake consumer-group member: at the first poll the group assigns `partitions` (the sink claims them
    and says where each starts), then the batches are served from there."""

    def __init__(self, batches: list[list[Record]], partitions: list | None = None) -> None:
        self.batches = batches
        self.partitions = partitions if partitions is not None else sorted({r.tp for b in batches for r in b})
        self.committed: list[dict] = []
        self.starts: dict | None = None
        self.claim = self.on_revoke = None
        self.generation = 0

    def bind(self, kafka, topics, *, group_id, claim, on_revoke, group_instance_id=None, session_timeout_ms=10_000,
             max_poll_interval_ms=300_000, fetch_stall_s=0.0):
        assert topics == [S, L]
        self.claim, self.on_revoke = claim, on_revoke
        return self

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        if self.starts is None:
            self.starts = dict(self.claim(self.partitions))
        while self.batches:
            got = [r for r in self.batches.pop(0) if r.offset >= self.starts.get(r.tp, 0)]
            if got:
                return got
        return []

    def seek(self, offsets: dict) -> None:
        self.seeks = getattr(self, "seeks", []) + [dict(offsets)]

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

    def write(self, batch: WarehouseBatch, epochs=None) -> WriteResult:
        self.log.append("write")
        if self.failures:
            self.failures -= 1
            raise RetriableError("warehouse unavailable")
        return super().write(batch, epochs)


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
    job = SinkJob(config(tmp_path), wh, metrics=metrics, reader_factory=reader.bind, producer=producer,
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
    job = SinkJob(config(tmp_path), wh, reader_factory=Reader([records()]).bind, producer=Producer(log),
                  sleep=lambda s: job.request_stop())
    stats = job.run()
    assert stats.batches == 0
    reopened = DuckDBWarehouse(tmp_path / "wh.duckdb")
    reopened.open()
    assert set(reopened.stored_offsets().values()) == {0}  # claimed, nothing written
    reopened.close()


def test_sink_resumes_from_the_offsets_stored_with_the_rows(tmp_path: Path):
    readers = []
    for _ in range(2):
        reader = Reader([records()])
        readers.append(reader)
        SinkJob(config(tmp_path), DuckDBWarehouse(tmp_path / "wh.duckdb"), reader_factory=reader.bind,
                producer=Producer([])).run()
    assert readers[0].starts == {(S, 0): 0, (S, 1): 0, (L, 0): 0}
    assert readers[1].starts == {(S, 0): 11, (S, 1): 5, (L, 0): 5}
    assert readers[1].committed == []  # nothing new: every record was below the stored offsets
    wh = DuckDBWarehouse(tmp_path / "wh.duckdb")
    wh.open()
    epochs = wh._epochs()
    wh.close()
    assert epochs == {(S, 0): 2, (S, 1): 2, (L, 0): 2}  # each start claimed every partition once


def test_a_sink_whose_partition_was_claimed_by_another_writes_nothing_of_it(tmp_path: Path):
    """Sink A owns both score partitions; sink B claims partition 1 before A writes (A missed the rebalance:
    paused past its session timeout). A's batch is refused whole; it keeps partition 0 and reads it again
    from the batch's start, and never writes partition 1 again."""
    data = records()
    a_reader = Reader([data])
    b_wh = DuckDBWarehouse(tmp_path / "wh.duckdb")

    class LateWarehouse(DuckDBWarehouse):
        first = True

        def write(self, batch, epochs=None):
            if self.first:  # B claims partition 1 between A's read and A's write
                self.first = False
                b_wh.open()
                b_wh.claim([(S, 1)], "sink-b")
            return super().write(batch, epochs)

    a_wh = LateWarehouse(tmp_path / "wh.duckdb")
    job = SinkJob(config(tmp_path), a_wh, reader_factory=a_reader.bind, producer=Producer([]))
    a_reader.batches.append([r for r in data if r.tp != (S, 1)])  # what A reads again after the seek
    stats = job.run()
    assert stats.fenced == 1 and a_reader.seeks == [{(S, 0): 0, (L, 0): 0}]
    assert (S, 1) not in job.owned
    con = b_wh.connection
    rows = con.execute("SELECT kafka_partition, count(*) FROM scores GROUP BY 1 ORDER BY 1").fetchall()
    offsets = dict(((t, p), (o, e, w)) for t, p, o, e, w in con.execute(
        "SELECT topic, partition, next_offset, epoch, owner FROM sink_offsets").fetchall())
    b_wh.close()
    assert rows == [(0, 5)]  # partition 0's scores, once; none of partition 1's
    assert offsets[(S, 1)] == (0, 2, "sink-b")
    assert offsets[(S, 0)][:2] == (11, 1) and offsets[(L, 0)][:2] == (5, 1)


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
