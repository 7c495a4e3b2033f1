"""Several warehouse sinks on one warehouse, sharing the partitions through their consumer group, on the
real broker and a real DuckDB file (two connections in this process: DuckDB's file lock is per process).

- two sinks split the partitions; one leaves mid-stream and the other takes its partitions over from the
  offsets stored with the rows: every row written once, no record written by both;
- a sink stuck in a write longer than its max poll interval is dropped from the group; the other sink
  claims its partitions and goes on; when the stuck write resumes, the warehouse refuses it (fenced), so
  the stuck sink writes nothing of partitions it no longer owns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from fraud.stream.metrics import RecordingMetrics
from monitoring.testing import produce, synthetic_scores
from warehouse import metrics as m
from warehouse.config import SinkConfig
from warehouse.sink import SinkJob
from warehouse.store import DuckDBWarehouse

pytestmark = pytest.mark.integration


class Running:
    """A SinkJob in a thread."""

    def __init__(self, job: SinkJob) -> None:
        self.job = job
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.job.run()
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            self.error = exc

    def stop(self, timeout_s: float = 60) -> None:
        self.job.request_stop()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the sink did not stop"
        assert self.error is None, repr(self.error)


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def count(path: Path, sql: str) -> int:
    con = duckdb.connect(str(path))  # same process: shares the database the sinks have open
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


@pytest.fixture
def setup(kafka_topic, kafka_client_config, tmp_path: Path):
    scores_t, labels_t, dlq_t = kafka_topic(partitions=4), kafka_topic(partitions=2), kafka_topic(partitions=1)
    path = tmp_path / "wh.duckdb"
    first = DuckDBWarehouse(path)
    first.open()  # create the tables once, before two connections race to
    first.close()

    def config(name: str, **kw) -> SinkConfig:
        return SinkConfig(kafka=kafka_client_config.with_client_id(name), duckdb_path=path, scores_topic=scores_t,
                          labels_topic=labels_t, dlq_topic=dlq_t, group_id=f"sinks-{scores_t}", instance_id=name,
                          session_timeout_ms=6000, batch_max_size=200, batch_max_wait_ms=20, **kw)

    return scores_t, labels_t, path, config


def stream_of(events, scores_t: str, labels_t: str) -> list[tuple[str, bytes, bytes]]:
    out = [(scores_t, e.score.transaction_id.encode(), e.score.to_json()) for e in events]
    return out + [(labels_t, e.label.transaction_id.encode(), e.label.to_json()) for e in events[::2]]


def test_two_sinks_split_the_partitions_and_one_takes_over_when_the_other_leaves(setup, kafka_client_config):
    scores_t, labels_t, path, config = setup
    events = synthetic_scores(4000, seed=21)
    a = Running(SinkJob(config("sink-a"), DuckDBWarehouse(path)))
    wait_until("sink a to own all six partitions", lambda: len(a.job.owned) == 6)
    b = Running(SinkJob(config("sink-b"), DuckDBWarehouse(path)))
    try:
        wait_until("the group to split the partitions",
                   lambda: a.job.owned and b.job.owned and len(a.job.owned) + len(b.job.owned) == 6)
        assert not set(a.job.owned) & set(b.job.owned)
        produce(kafka_client_config, stream_of(events[:2000], scores_t, labels_t), rate=2000)
        wait_until("the first half in the warehouse", lambda: count(path, "SELECT count(*) FROM scores") == 2000)
        a.stop()  # leaves the group: its partitions go to b, which starts them at the stored offsets
        wait_until("sink b to own all six partitions", lambda: len(b.job.owned) == 6)
        produce(kafka_client_config, stream_of(events[2000:], scores_t, labels_t), rate=2000)
        wait_until("every score in the warehouse", lambda: count(path, "SELECT count(*) FROM scores") == 4000)
        wait_until("every label in the warehouse", lambda: count(path, "SELECT count(*) FROM labels") == 2000)
    finally:
        a.job.request_stop()
        b.stop()
    sa, sb = a.job.stats, b.job.stats
    assert sa.scores_inserted > 0 and sb.scores_inserted > 0  # both wrote
    assert sa.scores_inserted + sb.scores_inserted == 4000
    assert sa.scores_ignored == sb.scores_ignored == 0  # no record was written by both
    assert sa.fenced == sb.fenced == 0  # a clean hand-over needs no fence
    con = duckdb.connect(str(path))
    try:
        owners = dict(((t, p), (o, e)) for t, p, o, e in con.execute(
            "SELECT topic, partition, owner, epoch FROM sink_offsets").fetchall())
        ends = con.execute("SELECT topic, sum(next_offset) FROM sink_offsets GROUP BY 1").fetchall()
    finally:
        con.close()
    assert {o for o, _e in owners.values()} == {"sink-b"}
    # Each partition was claimed twice: by a at the start, by b when it joined (half) or when a left (half).
    assert {e for _o, e in owners.values()} == {2}
    assert dict(ends) == {scores_t: 4000, labels_t: 2000}


class StuckWarehouse(DuckDBWarehouse):
    """DuckDB, but the `stuck_at`-th write stops for `stuck_s` first (a warehouse that hangs)."""

    def __init__(self, path: Path, stuck_at: int, stuck_s: float) -> None:
        super().__init__(path)
        self.writes = 0
        self.stuck_at = stuck_at
        self.stuck_s = stuck_s
        self.stuck = threading.Event()

    def write(self, batch, epochs=None):
        self.writes += 1
        if self.writes == self.stuck_at:
            self.stuck.set()
            time.sleep(self.stuck_s)
        return super().write(batch, epochs)


def test_a_sink_stuck_past_its_poll_interval_is_fenced_when_its_write_resumes(setup, kafka_client_config):
    scores_t, labels_t, path, config = setup
    events = synthetic_scores(3000, seed=22)
    stuck_wh = StuckWarehouse(path, stuck_at=3, stuck_s=14.0)
    metrics = RecordingMetrics(m.SINK_METRICS)
    a = Running(SinkJob(config("sink-a", max_poll_interval_ms=6000), stuck_wh, metrics=metrics))
    wait_until("sink a to own all six partitions", lambda: len(a.job.owned) == 6)
    b = Running(SinkJob(config("sink-b"), DuckDBWarehouse(path)))
    try:
        wait_until("the group to split the partitions",
                   lambda: a.job.owned and b.job.owned and len(a.job.owned) + len(b.job.owned) == 6)
        feeder = threading.Thread(target=produce, args=(kafka_client_config, stream_of(events, scores_t, labels_t)),
                                  kwargs={"rate": 300})
        feeder.start()
        wait_until("sink a to hang in a write", stuck_wh.stuck.is_set)
        # a's consumer leaves the group after 6 s without a poll; b claims everything and goes on.
        wait_until("sink b to own all six partitions", lambda: len(b.job.owned) == 6, timeout_s=30)
        feeder.join(60)
        wait_until("every score in the warehouse", lambda: count(path, "SELECT count(*) FROM scores") == 3000)
        wait_until("sink a to be refused", lambda: a.job.stats.fenced >= 1, timeout_s=30)
        wait_until("every label in the warehouse", lambda: count(path, "SELECT count(*) FROM labels") == 1500)
    finally:
        a.job.request_stop()
        b.stop()
        a.thread.join(30)
    sa, sb = a.job.stats, b.job.stats
    assert sa.fenced >= 1 and metrics.total(m.SINK_FENCED) == sa.fenced
    assert sa.scores_inserted + sb.scores_inserted == 3000
    assert sa.scores_ignored == sb.scores_ignored == 0  # the refused batch wrote nothing; b wrote it once
