"""Unit tests of the DuckDB warehouse: atomic batches, offsets stored with the rows, idempotent upserts."""

from __future__ import annotations

from pathlib import Path

import pytest

from fraud.contract import LabelEvent, ScoreEvent
from fraud.errors import FraudError
from warehouse.store import DuckDBWarehouse, LabelRecord, Located, ScoreRecord, WarehouseBatch, open_readonly

SCORES = "fraud.scores"
LABELS = "fraud.labels"


def score(tx: str, offset: int, partition: int = 0, value: float = 0.5, version: int = 1) -> ScoreRecord:
    event = ScoreEvent(transaction_id=tx, event_time_ms=1_000 + offset, card_id="card", score=value,
                       decision=value >= 0.5, threshold=0.5, model_name="m", model_version=version,
                       source_timestamp_ms=10_000, scored_at_ms=10_020, explanation={"V3": 0.7})
    return ScoreRecord(event, Located(SCORES, partition, offset))


def label(tx: str, offset: int, value: int, labelled_at: int = 50_000, partition: int = 0) -> LabelRecord:
    return LabelRecord(LabelEvent(tx, value, 1_000, labelled_at), Located(LABELS, partition, offset))


@pytest.fixture
def warehouse(tmp_path: Path):
    wh = DuckDBWarehouse(tmp_path / "wh.duckdb")
    wh.open()
    yield wh
    wh.close()


def count(wh: DuckDBWarehouse, table: str) -> int:
    return wh.connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_batch_rows_and_offsets_are_stored_together(warehouse: DuckDBWarehouse):
    batch = WarehouseBatch(scores=[score("a", 0), score("b", 1), score("c", 0, partition=1)],
                           labels=[label("a", 0, 1)],
                           offsets={(SCORES, 0): 2, (SCORES, 1): 1, (LABELS, 0): 1})
    result = warehouse.write(batch)
    assert (result.scores_inserted, result.labels_written) == (3, 1)
    assert warehouse.stored_offsets() == {(SCORES, 0): 2, (SCORES, 1): 1, (LABELS, 0): 1}
    row = warehouse.connection.execute(
        "SELECT latency_ms, kafka_topic, kafka_partition, kafka_offset, explanation FROM scores "
        "WHERE transaction_id = 'b'").fetchone()
    assert row == (20, SCORES, 0, 1, '{"V3":0.7}')
    joined = warehouse.connection.execute(
        "SELECT transaction_id, label FROM scored_labels ORDER BY transaction_id").fetchall()
    assert joined == [("a", 1), ("b", None), ("c", None)]


def test_replaying_a_committed_batch_changes_nothing(warehouse: DuckDBWarehouse):
    batch = WarehouseBatch(scores=[score("a", 0), score("b", 1)], labels=[label("a", 0, 1)],
                           offsets={(SCORES, 0): 2, (LABELS, 0): 1})
    warehouse.write(batch)
    again = warehouse.write(batch)
    assert again.scores_inserted == 0 and again.scores_ignored == 2 and again.labels_written == 0
    assert count(warehouse, "scores") == 2 and count(warehouse, "labels") == 1
    assert warehouse.stored_offsets()[(SCORES, 0)] == 2


def test_records_below_the_stored_offset_are_not_applied_even_with_new_ids(warehouse: DuckDBWarehouse):
    warehouse.write(WarehouseBatch(scores=[score("a", 0), score("b", 1)], offsets={(SCORES, 0): 2}))
    # A rewound batch re-reads offsets 1..2: offset 1 is committed already, offset 2 is new.
    result = warehouse.write(WarehouseBatch(scores=[score("b-renamed", 1), score("c", 2)], offsets={(SCORES, 0): 3}))
    assert result.scores_inserted == 1
    ids = [r[0] for r in warehouse.connection.execute("SELECT transaction_id FROM scores ORDER BY 1").fetchall()]
    assert ids == ["a", "b", "c"]
    # Offsets never move backwards.
    warehouse.write(WarehouseBatch(scores=[score("a", 0)], offsets={(SCORES, 0): 1}))
    assert warehouse.stored_offsets()[(SCORES, 0)] == 3


def test_a_second_score_for_a_transaction_keeps_the_first(warehouse: DuckDBWarehouse):
    warehouse.write(WarehouseBatch(scores=[score("a", 0, value=0.9), score("a", 1, value=0.1)],
                                   offsets={(SCORES, 0): 2}))
    warehouse.write(WarehouseBatch(scores=[score("a", 2, value=0.2, version=2)], offsets={(SCORES, 0): 3}))
    assert warehouse.connection.execute("SELECT score, model_version FROM scores").fetchall() == [(0.9, 1)]


def test_a_later_label_replaces_an_earlier_one_but_not_the_other_way(warehouse: DuckDBWarehouse):
    warehouse.write(WarehouseBatch(labels=[label("a", 0, 0, labelled_at=100)], offsets={(LABELS, 0): 1}))
    warehouse.write(WarehouseBatch(labels=[label("a", 1, 1, labelled_at=200)], offsets={(LABELS, 0): 2}))
    warehouse.write(WarehouseBatch(labels=[label("a", 2, 0, labelled_at=150)], offsets={(LABELS, 0): 3}))
    assert warehouse.connection.execute("SELECT label, labelled_at_ms, kafka_offset FROM labels").fetchall() == [
        (1, 200, 1)]


def test_a_failed_batch_leaves_no_trace(warehouse: DuckDBWarehouse, monkeypatch: pytest.MonkeyPatch):
    warehouse.write(WarehouseBatch(scores=[score("a", 0)], offsets={(SCORES, 0): 1}))
    import warehouse.store as wmod

    def broken_label_row(rec, ts):
        raise RuntimeError("disk full")

    monkeypatch.setattr(wmod, "label_row", broken_label_row)
    with pytest.raises(RuntimeError):
        warehouse.write(WarehouseBatch(scores=[score("b", 1)], labels=[label("b", 0, 1)],
                                       offsets={(SCORES, 0): 2, (LABELS, 0): 1}))
    assert count(warehouse, "scores") == 1
    assert warehouse.stored_offsets() == {(SCORES, 0): 1}


def test_tables_survive_reopening_and_a_second_writer_gets_one_line(tmp_path: Path):
    path = tmp_path / "wh.duckdb"
    wh = DuckDBWarehouse(path)
    wh.open()
    wh.write(WarehouseBatch(scores=[score("a", 0)], offsets={(SCORES, 0): 1}))
    wh.close()
    again = DuckDBWarehouse(path)
    again.open()
    assert again.stored_offsets() == {(SCORES, 0): 1}
    again.close()
    con = open_readonly(path)
    assert con.execute("SELECT count(*) FROM scores").fetchone()[0] == 1
    con.close()
    with pytest.raises(FraudError, match="does not exist"):
        open_readonly(tmp_path / "missing.duckdb")
