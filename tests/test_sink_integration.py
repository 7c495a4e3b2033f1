"""The warehouse sink against the real embedded Kafka broker: `fraudctl sink run` as a subprocess, killed
with SIGKILL mid-stream several times and restarted; every score row must end up in DuckDB exactly once."""

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
from monitoring.kafka_io import read_all
from monitoring.testing import produce, synthetic_scores
from monitoring.warehouse import open_readonly

pytestmark = pytest.mark.integration

N_EVENTS = 6000
MALFORMED = [
    b"{not json",
    b'{"transaction_id": "tx-bad-1"}',
    b'{"transaction_id": "tx-bad-2", "event_time_ms": 1, "card_id": "c", "score": 1.5, "decision": true, '
    b'"threshold": 0.5, "model_name": "m", "model_version": 1, "source_timestamp_ms": 1, "scored_at_ms": 2}',
]


def sink_command(bootstrap: str, scores: str, labels: str, dlq: str, db: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fraud.cli", "sink", "run", "--bootstrap", bootstrap, "--scores-topic", scores,
            "--labels-topic", labels, "--dlq-topic", dlq, "--duckdb-path", str(db), "--batch-max-size", "150",
            "--batch-max-wait-ms", "20", "--group-id", f"sink-{scores}", *extra]


def rows_in(db: Path) -> int:
    if not db.exists():
        return 0
    con = open_readonly(db)
    try:
        return con.execute("SELECT count(*) FROM scores").fetchone()[0]
    finally:
        con.close()


def test_sink_kill_9_mid_stream_leaves_every_score_exactly_once(kafka_broker, kafka_topic, kafka_client_config,
                                                                 tmp_path: Path):
    scores_t, labels_t, dlq_t = kafka_topic(partitions=4), kafka_topic(partitions=2), kafka_topic(partitions=1)
    db = tmp_path / "warehouse.duckdb"
    events = synthetic_scores(N_EVENTS, seed=11)
    # An at-least-once bridge re-sends some scores: the same transaction id twice (same payload).
    resent = [events[i] for i in range(0, N_EVENTS, 97)]
    stream = [(scores_t, e.score.transaction_id.encode(), e.score.to_json()) for e in events]
    stream += [(scores_t, e.score.transaction_id.encode(), e.score.to_json()) for e in resent]
    stream += [(scores_t, b"bad", value) for value in MALFORMED]
    random.Random(3).shuffle(stream)
    labelled = events[: N_EVENTS // 2]
    stream += [(labels_t, e.label.transaction_id.encode(), e.label.to_json()) for e in labelled]

    producer = threading.Thread(target=produce, args=(kafka_client_config, stream), kwargs={"rate": 900.0})
    producer.start()
    cmd = sink_command(kafka_broker.bootstrap, scores_t, labels_t, dlq_t, db)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    partial_counts = []
    rng = random.Random(5)
    try:
        for _ in range(3):
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(rng.uniform(3.5, 5.0))
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            partial_counts.append(rows_in(db))
    finally:
        producer.join(60)
    assert not producer.is_alive()
    # At least one kill landed while rows were still arriving.
    assert any(0 < c < N_EVENTS for c in partial_counts), partial_counts

    done = subprocess.run(cmd + ["--stop-when-idle-s", "3"], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]

    con = open_readonly(db)
    try:
        total, distinct = con.execute("SELECT count(*), count(DISTINCT transaction_id) FROM scores").fetchone()
        assert total == distinct == N_EVENTS
        stored = dict(((t, p), o) for t, p, o in con.execute(
            "SELECT topic, partition, next_offset FROM sink_offsets").fetchall())
        got = dict(con.execute("SELECT transaction_id, score FROM scores").fetchall())
        labels = dict(con.execute("SELECT transaction_id, label FROM labels").fetchall())
        offsets_ok = con.execute(
            "SELECT count(*) FROM scores WHERE kafka_topic = ? AND kafka_offset >= 0", [scores_t]).fetchone()[0]
    finally:
        con.close()
    assert got == {e.score.transaction_id: e.score.score for e in events}
    assert labels == {e.label.transaction_id: e.label.label for e in labelled}
    assert offsets_ok == N_EVENTS
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

