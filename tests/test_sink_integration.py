"""The warehouse sink against the real embedded Kafka broker: `fraudctl sink run` as a subprocess, killed
with SIGKILL mid-stream several times and restarted; every score row must end up in the warehouse exactly
once. Run on DuckDB, and on the BigQuery code path (the real client library) against the local fake
BigQuery server of test_warehouse_bigquery.py, whose MERGE semantics are an emulation."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fraud.contract import DeadLetter
from fraud.stream.reader import read_all
from monitoring.testing import produce, synthetic_scores
from warehouse.store import open_readonly

pytestmark = pytest.mark.integration

N_EVENTS = 6000
MALFORMED = [
    b"{not json",
    b'{"transaction_id": "tx-bad-1"}',
    b'{"transaction_id": "tx-bad-2", "event_time_ms": 1, "card_id": "c", "score": 1.5, "decision": true, '
    b'"threshold": 0.5, "model_name": "m", "model_version": 1, "source_timestamp_ms": 1, "scored_at_ms": 2}',
]


def sink_command(bootstrap: str, scores: str, labels: str, dlq: str, *warehouse: str) -> list[str]:
    return [sys.executable, "-m", "fraudctl.cli", "sink", "run", "--bootstrap", bootstrap, "--scores-topic", scores,
            "--labels-topic", labels, "--dlq-topic", dlq, "--batch-max-size", "150",
            "--batch-max-wait-ms", "20", "--group-id", f"sink-{scores}", *warehouse]


def static(instance_id: str) -> list[str]:
    """A static group member: a restart after kill -9 takes its partitions back at once (a dynamic one waits
    for the dead member's session to time out)."""
    return ["--instance-id", instance_id, "--static-membership", "1"]


def wait_for_line(proc: subprocess.Popen, needle: str, timeout_s: float) -> bool:
    """Read the process's stderr (JSON log lines) until one contains `needle`; keep draining it afterwards."""
    found = threading.Event()

    def pump() -> None:
        for line in proc.stderr:
            if needle in line:
                found.set()

    threading.Thread(target=pump, daemon=True).start()
    return found.wait(timeout_s)


class DuckDBStore:
    """Reads the DuckDB warehouse between runs (the sink holds the file's lock while it runs)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.args = ["--duckdb-path", str(path)]

    def _query(self, sql: str) -> list[tuple]:
        con = open_readonly(self.path)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    def count(self) -> int:
        return self._query("SELECT count(*) FROM scores")[0][0] if self.path.exists() else 0

    def contents(self) -> tuple[int, dict, dict, dict]:
        total = self._query("SELECT count(*) FROM scores")[0][0]
        scores = dict(self._query("SELECT transaction_id, score FROM scores"))
        labels = dict(self._query("SELECT transaction_id, label FROM labels"))
        offsets = {(t, p): o for t, p, o in self._query("SELECT topic, partition, next_offset FROM sink_offsets")}
        return total, scores, labels, offsets


class BigQueryStore:
    """The sink on the BigQuery code path (real client library) against the local fake server."""

    def __init__(self, fake) -> None:
        self.fake = fake
        self.args = ["--warehouse", "bigquery", "--bigquery-project", "test-project", "--bigquery-endpoint",
                     fake.endpoint, "--bigquery-retry-deadline-s", "5"]

    def count(self) -> int:
        return len(self.fake.scores)

    def contents(self) -> tuple[int, dict, dict, dict]:
        scores = {tx: row["score"] for tx, row in self.fake.scores.items()}
        return len(scores), scores, {tx: row["label"] for tx, row in self.fake.labels.items()}, dict(self.fake.offsets)


@pytest.fixture(params=["duckdb", "bigquery"])
def store(request, tmp_path: Path):
    if request.param == "duckdb":
        yield DuckDBStore(tmp_path / "warehouse.duckdb")
        return
    from test_warehouse_bigquery import FakeBigQuery

    with FakeBigQuery() as fake:
        yield BigQueryStore(fake)


def test_sink_kill_9_mid_stream_leaves_every_score_exactly_once(kafka_broker, kafka_topic, kafka_client_config,
                                                                 store):
    scores_t, labels_t, dlq_t = kafka_topic(partitions=4), kafka_topic(partitions=2), kafka_topic(partitions=1)
    events = synthetic_scores(N_EVENTS, seed=11)
    # An at-least-once bridge re-sends some scores: the same transaction id twice (same payload).
    resent = [events[i] for i in range(0, N_EVENTS, 97)]
    stream = [(scores_t, e.score.transaction_id.encode(), e.score.to_json()) for e in events]
    stream += [(scores_t, e.score.transaction_id.encode(), e.score.to_json()) for e in resent]
    stream += [(scores_t, b"bad", value) for value in MALFORMED]
    random.Random(3).shuffle(stream)
    labelled = events[: N_EVENTS // 2]
    stream += [(labels_t, e.label.transaction_id.encode(), e.label.to_json()) for e in labelled]

    producer = threading.Thread(target=produce, args=(kafka_client_config, stream), kwargs={"rate": 600.0})
    producer.start()
    cmd = sink_command(kafka_broker.bootstrap, scores_t, labels_t, dlq_t, *store.args, *static("sink-0"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    partial_counts = []
    rng = random.Random(5)
    try:
        for _ in range(3):
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            started = wait_for_line(proc, '"partitions_claimed"', timeout_s=90)
            assert started, "the sink did not start"
            time.sleep(rng.uniform(0.5, 2.0))  # the sink is consuming while the producer still produces
            assert proc.poll() is None, "the sink exited early"
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            partial_counts.append(store.count())
    finally:
        producer.join(60)
    assert not producer.is_alive()
    # At least one kill landed while rows were still arriving.
    assert any(0 < c < N_EVENTS for c in partial_counts), partial_counts

    done = subprocess.run(cmd + ["--stop-when-idle-s", "3"], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]

    total, got, labels, stored = store.contents()
    assert total == N_EVENTS
    assert got == {e.score.transaction_id: e.score.score for e in events}
    assert labels == {e.label.transaction_id: e.label.label for e in labelled}
    # The stored offsets are the ends of every partition: nothing left unread, nothing beyond.
    assert sum(o for (t, _p), o in stored.items() if t == scores_t) == len(stream) - len(labelled)
    assert sum(o for (t, _p), o in stored.items() if t == labels_t) == len(labelled)

    # Every malformed record is in the dead-letter topic with its reason (at least once: a kill between the
    # dead-letter flush and the warehouse commit re-sends it).
    dead = [DeadLetter.from_record(r.key, r.value, r.headers) for r in read_all(kafka_client_config, dlq_t,
                                                                                group_id=f"check-{dlq_t}")]
    assert {d.value for d in dead} == set(MALFORMED)
    assert {d.reason for d in dead} == {"malformed_json", "missing_field", "out_of_range"}
    assert all(d.source_topic == scores_t and d.component == "warehouse_sink" for d in dead)
    assert "sink:" in done.stdout
