"""Warehouse tables for score and label events, written exactly once; the embedded default is DuckDB.

The sink hands a `WarehouseBatch` (parsed score and label events with their Kafka coordinates, and the
next offset of every partition the batch covers) to `Warehouse.write`, which applies it atomically:

- `scores`: one row per transaction id. A second score for the same id (an at-least-once bridge replaying
  a batch) is ignored: the first committed score is the decision that was acted on.
- `labels`: one row per transaction id; a later label (a chargeback overturning an analyst decision) replaces
  an earlier one, an older or equal one changes nothing.
- `sink_offsets`: per topic partition, the next Kafka offset to read. Written in the same transaction as the
  rows, so after a crash the sink resumes exactly where the last committed batch ended; rows of a record
  below the stored offset are never applied twice (the check is inside the transaction, too).

Several sinks share the partitions through a consumer group; the group only decides who owns which
partition. Ownership is fenced here: `claim` bumps a partition's `epoch` (and names the `owner`) in one
transaction that also reads its stored offset, and `write(batch, epochs)` refuses, inside its
transaction, a batch whose partitions' epochs are no longer the writer's (`Fenced`). So a sink that lost
a partition in a rebalance but does not know it yet (a long write, a pause longer than the session
timeout) can never write that partition's records after its next owner started from the stored offset:
every write committed before the claim is in the offset the claim reads, every write after it is refused.

Rows keep their Kafka topic, partition and offset, so any row can be traced back to its record.
`scored_labels` is a view joining both tables, which is what offline evaluation reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from fraud.contract import LabelEvent, ScoreEvent
from fraud.errors import FraudError
from fraud.stream.records import RetriableError

#: (topic, partition), as fraud.stream names a topic partition.
TopicPartition = tuple[str, int]


@dataclass(frozen=True)
class Located:
    """Where a parsed event was read from."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class ScoreRecord:
    event: ScoreEvent
    at: Located


@dataclass(frozen=True)
class LabelRecord:
    event: LabelEvent
    at: Located


@dataclass
class WarehouseBatch:
    """What one sink batch applies atomically. `offsets`: next offset per partition covered by the batch
    (including records that went to the dead-letter topic, which advance the offset but add no row)."""

    scores: list[ScoreRecord] = field(default_factory=list)
    labels: list[LabelRecord] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """A partition's stored next offset and the epoch its new owner writes with."""

    next_offset: int
    epoch: int


class Fenced(Exception):
    """The batch's partitions were claimed by another sink since this one claimed them: nothing was written."""

    def __init__(self, partitions: Sequence[TopicPartition]) -> None:
        self.partitions = sorted(partitions)
        super().__init__("partitions claimed by another sink: " + ", ".join(f"{t}[{p}]" for t, p in self.partitions))


@dataclass(frozen=True)
class WriteResult:
    scores_inserted: int
    scores_ignored: int  # already present (same transaction id) or below the stored offset
    labels_written: int
    labels_ignored: int


class Warehouse(Protocol):
    """The sink's storage: create tables, read stored offsets, apply a batch atomically."""

    description: str

    def open(self) -> None:
        """Create the tables if they do not exist (idempotent)."""

    def stored_offsets(self) -> dict[TopicPartition, int]:
        """Next offset to read per topic partition, as committed with the rows."""

    def claim(self, partitions: Sequence[TopicPartition], owner: str) -> dict[TopicPartition, Claim]:
        """Take ownership of `partitions`: bump each one's epoch, name `owner`, return the stored offsets
        (0 where none) with the new epochs, in one transaction."""

    def write(self, batch: WarehouseBatch, epochs: Mapping[TopicPartition, int] | None = None) -> WriteResult:
        """Apply the rows and the offsets in one transaction; nothing of the batch is visible if it fails.
        With `epochs`, raise `Fenced` (writing nothing) when a partition of the batch has another epoch."""

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Rows (shared by the DuckDB and BigQuery implementations)

#: Column name -> DuckDB type, in table order. BigQuery maps the same columns (see warehouse.bigquery).
SCORE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("transaction_id", "VARCHAR"),
    ("event_time_ms", "BIGINT"),
    ("card_id", "VARCHAR"),
    ("score", "DOUBLE"),
    ("decision", "BOOLEAN"),
    ("threshold", "DOUBLE"),
    ("model_name", "VARCHAR"),
    ("model_version", "BIGINT"),
    ("source_timestamp_ms", "BIGINT"),
    ("scored_at_ms", "BIGINT"),
    ("latency_ms", "BIGINT"),
    ("reconstruction_error", "DOUBLE"),
    ("explanation", "VARCHAR"),  # JSON object text
    ("outputs", "VARCHAR"),  # JSON object text
    ("kafka_topic", "VARCHAR"),
    ("kafka_partition", "INTEGER"),
    ("kafka_offset", "BIGINT"),
    ("ingested_at_ms", "BIGINT"),
)
LABEL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("transaction_id", "VARCHAR"),
    ("label", "INTEGER"),
    ("event_time_ms", "BIGINT"),
    ("labelled_at_ms", "BIGINT"),
    ("kafka_topic", "VARCHAR"),
    ("kafka_partition", "INTEGER"),
    ("kafka_offset", "BIGINT"),
    ("ingested_at_ms", "BIGINT"),
)
OFFSET_COLUMNS: tuple[tuple[str, str], ...] = (
    ("topic", "VARCHAR"),
    ("partition", "INTEGER"),
    ("next_offset", "BIGINT"),
    ("updated_at_ms", "BIGINT"),
    ("epoch", "BIGINT"),  # bumped by every claim; a write must carry the current one (fencing)
    ("owner", "VARCHAR"),  # who claimed it last (for operators)
)


def score_row(rec: ScoreRecord, ingested_at_ms: int) -> dict[str, Any]:
    e = rec.event
    return {
        "transaction_id": e.transaction_id,
        "event_time_ms": e.event_time_ms,
        "card_id": e.card_id,
        "score": e.score,
        "decision": e.decision,
        "threshold": e.threshold,
        "model_name": e.model_name,
        "model_version": e.model_version,
        "source_timestamp_ms": e.source_timestamp_ms,
        "scored_at_ms": e.scored_at_ms,
        "latency_ms": e.latency_ms,
        "reconstruction_error": e.reconstruction_error,
        "explanation": orjson.dumps(dict(e.explanation)).decode() if e.explanation else None,
        "outputs": orjson.dumps(dict(e.outputs)).decode() if e.outputs else None,
        "kafka_topic": rec.at.topic,
        "kafka_partition": rec.at.partition,
        "kafka_offset": rec.at.offset,
        "ingested_at_ms": ingested_at_ms,
    }


def label_row(rec: LabelRecord, ingested_at_ms: int) -> dict[str, Any]:
    e = rec.event
    return {
        "transaction_id": e.transaction_id,
        "label": e.label,
        "event_time_ms": e.event_time_ms,
        "labelled_at_ms": e.labelled_at_ms,
        "kafka_topic": rec.at.topic,
        "kafka_partition": rec.at.partition,
        "kafka_offset": rec.at.offset,
        "ingested_at_ms": ingested_at_ms,
    }


def select_new(batch: WarehouseBatch, stored: Mapping[TopicPartition, int]) -> tuple[list[ScoreRecord], list[LabelRecord]]:
    """The batch's records at or past the stored offsets, deduplicated within the batch by transaction id:
    the first score per id, the latest label per id (by labelled_at_ms, then offset)."""

    def fresh(at: Located) -> bool:
        return at.offset >= stored.get((at.topic, at.partition), 0)

    scores: dict[str, ScoreRecord] = {}
    for rec in batch.scores:
        if fresh(rec.at):
            scores.setdefault(rec.event.transaction_id, rec)
    labels: dict[str, LabelRecord] = {}
    for rec in batch.labels:
        if not fresh(rec.at):
            continue
        have = labels.get(rec.event.transaction_id)
        if have is None or (rec.event.labelled_at_ms, rec.at.offset) >= (have.event.labelled_at_ms, have.at.offset):
            labels[rec.event.transaction_id] = rec
    return list(scores.values()), list(labels.values())


def merged_offsets(stored: Mapping[TopicPartition, int], batch: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
    """Offsets never move backwards: a replayed older batch leaves the stored offset where it is."""
    return {tp: max(off, stored.get(tp, 0)) for tp, off in batch.items()}


def fenced_partitions(stored_epochs: Mapping[TopicPartition, int], epochs: Mapping[TopicPartition, int],
                      batch: Mapping[TopicPartition, int]) -> list[TopicPartition]:
    """The partitions of the batch whose stored epoch is not the writer's (a partition never claimed has 0)."""
    return sorted(tp for tp in batch if stored_epochs.get(tp, 0) != epochs.get(tp, -1))


def now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------------------------------------
# DuckDB


def _ddl(table: str, columns: Sequence[tuple[str, str]], key: Sequence[str]) -> str:
    cols = ",\n  ".join(f"{name} {typ}" for name, typ in columns)
    return f"CREATE TABLE IF NOT EXISTS {table} (\n  {cols},\n  PRIMARY KEY ({', '.join(key)})\n)"


_VIEW = """
CREATE OR REPLACE VIEW scored_labels AS
SELECT s.transaction_id, s.event_time_ms, s.score, s.decision, s.threshold, s.model_name, s.model_version,
       s.latency_ms, l.label, l.labelled_at_ms
FROM scores s LEFT JOIN labels l USING (transaction_id)
"""


class DuckDBWarehouse:
    """The embedded warehouse: one DuckDB file, one writer (DuckDB locks the file for one process)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.description = f"duckdb:{self.path}"
        self._con: Any = None

    def open(self) -> None:
        import duckdb

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(str(self.path))
        except duckdb.IOException as exc:
            # Most often: another process (a second sink, an open notebook) holds the file's lock.
            first = str(exc).splitlines()[0]
            raise FraudError(f"cannot open the warehouse {self.path}: {first}") from None
        con = self._con
        con.execute(_ddl("scores", SCORE_COLUMNS, ["transaction_id"]))
        con.execute(_ddl("labels", LABEL_COLUMNS, ["transaction_id"]))
        con.execute(_ddl("sink_offsets", OFFSET_COLUMNS, ["topic", "partition"]))
        for name, typ in OFFSET_COLUMNS[4:]:  # a warehouse made before partitions were claimed
            con.execute(f"ALTER TABLE sink_offsets ADD COLUMN IF NOT EXISTS {name} {typ}")
        con.execute(_VIEW)

    @property
    def connection(self) -> Any:
        if self._con is None:
            raise FraudError(f"warehouse {self.path} is not open")
        return self._con

    def stored_offsets(self) -> dict[TopicPartition, int]:
        rows = self.connection.execute("SELECT topic, partition, next_offset FROM sink_offsets").fetchall()
        return {(t, int(p)): int(o) for t, p, o in rows}

    def _epochs(self) -> dict[TopicPartition, int]:
        rows = self.connection.execute("SELECT topic, partition, coalesce(epoch, 0) FROM sink_offsets").fetchall()
        return {(t, int(p)): int(e) for t, p, e in rows}

    def claim(self, partitions: Sequence[TopicPartition], owner: str) -> dict[TopicPartition, Claim]:
        import duckdb

        con = self.connection
        ts = now_ms()
        try:
            con.execute("BEGIN TRANSACTION")
            try:
                stored = self.stored_offsets()
                epochs = self._epochs()
                out = {tp: Claim(stored.get(tp, 0), epochs.get(tp, 0) + 1) for tp in partitions}
                if out:
                    values = ", ".join("(?, ?, ?, ?, ?, ?)" for _ in out)
                    con.execute(
                        f"INSERT INTO sink_offsets VALUES {values} ON CONFLICT (topic, partition) DO UPDATE SET "
                        "epoch = excluded.epoch, owner = excluded.owner, updated_at_ms = excluded.updated_at_ms",
                        [x for (t, p), c in sorted(out.items()) for x in (t, p, c.next_offset, ts, c.epoch, owner)])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        except duckdb.TransactionException as exc:  # a concurrent claim or write of the same rows
            raise RetriableError(f"warehouse claim conflict: {str(exc).splitlines()[0]}") from None
        return out

    def write(self, batch: WarehouseBatch, epochs: Mapping[TopicPartition, int] | None = None) -> WriteResult:
        import duckdb

        try:
            return self._write(batch, epochs)
        except duckdb.TransactionException as exc:  # another sink wrote the same rows meanwhile: redo
            raise RetriableError(f"warehouse write conflict: {str(exc).splitlines()[0]}") from None

    def _write(self, batch: WarehouseBatch, epochs: Mapping[TopicPartition, int] | None) -> WriteResult:
        import pandas as pd

        con = self.connection
        ts = now_ms()
        con.execute("BEGIN TRANSACTION")
        try:
            stored_epochs = self._epochs()
            if epochs is not None:
                fenced = fenced_partitions(stored_epochs, epochs, batch.offsets)
                if fenced:
                    raise Fenced(fenced)
            stored = self.stored_offsets()
            scores, labels = select_new(batch, stored)
            inserted = labels_written = 0
            if scores:
                table = pd.DataFrame.from_records([score_row(r, ts) for r in scores], columns=_names(SCORE_COLUMNS))
                con.register("_score_batch", table)
                inserted = len(con.execute("INSERT INTO scores SELECT * FROM _score_batch ON CONFLICT DO NOTHING "
                                           "RETURNING transaction_id").fetchall())
                con.unregister("_score_batch")
            if labels:
                table = pd.DataFrame.from_records([label_row(r, ts) for r in labels], columns=_names(LABEL_COLUMNS))
                con.register("_label_batch", table)
                labels_written = len(con.execute(
                    "INSERT INTO labels SELECT * FROM _label_batch ON CONFLICT (transaction_id) DO UPDATE SET "
                    "label = excluded.label, event_time_ms = excluded.event_time_ms, "
                    "labelled_at_ms = excluded.labelled_at_ms, kafka_topic = excluded.kafka_topic, "
                    "kafka_partition = excluded.kafka_partition, kafka_offset = excluded.kafka_offset, "
                    "ingested_at_ms = excluded.ingested_at_ms "
                    "WHERE excluded.labelled_at_ms > labels.labelled_at_ms "
                    "OR (excluded.labelled_at_ms = labels.labelled_at_ms AND excluded.label <> labels.label) "
                    "RETURNING transaction_id"
                ).fetchall())
                con.unregister("_label_batch")
            offsets = merged_offsets(stored, batch.offsets)
            if offsets:
                # One statement (DuckDB's executemany costs milliseconds per call, more than the whole batch).
                # The epoch column is written too (with the value it has): DuckDB detects write conflicts per
                # column, so this is what makes a concurrent claim of the partition and this write collide.
                values = ", ".join("(?, ?, ?, ?, ?, ?)" for _ in offsets)
                con.execute(
                    f"INSERT INTO sink_offsets VALUES {values} ON CONFLICT (topic, partition) DO UPDATE SET "
                    "next_offset = excluded.next_offset, updated_at_ms = excluded.updated_at_ms, "
                    "epoch = excluded.epoch",
                    [x for (t, p), o in sorted(offsets.items())
                     for x in (t, p, o, ts, stored_epochs.get((t, p), 0), None)],
                )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return WriteResult(inserted, len(batch.scores) - inserted, labels_written, len(batch.labels) - labels_written)

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


def _names(columns: Iterable[tuple[str, str]]) -> list[str]:
    # DuckDB scans a pandas frame in place (pyarrow 10 is too old for its Arrow scan); a missing value
    # (None, or NaN in a float column) arrives as NULL, and INSERT casts each column to the table's type.
    return [name for name, _ in columns]


def open_readonly(path: Path) -> Any:
    """A read-only DuckDB connection for reports and tests (fails while a sink holds the file)."""
    import duckdb

    if not Path(path).is_file():
        raise FraudError(f"warehouse {path} does not exist (has `fraudctl sink run` written to it?)")
    try:
        return duckdb.connect(str(path), read_only=True)
    except duckdb.IOException as exc:
        raise FraudError(f"cannot open the warehouse {path} read-only: {str(exc).splitlines()[0]}") from None


@dataclass(frozen=True)
class LiveSummary:
    """What the warehouse holds of the live stream: scores, alerts, and the decisions' confusion counts
    over the transactions whose label arrived."""

    scored: int
    alerts: int
    model_versions: tuple[int, ...]
    labelled: int
    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def precision(self) -> float:
        flagged = self.true_positives + self.false_positives
        return self.true_positives / flagged if flagged else float("nan")

    @property
    def recall(self) -> float:
        frauds = self.true_positives + self.false_negatives
        return self.true_positives / frauds if frauds else float("nan")


def live_summary(path: Path) -> LiveSummary:
    """Counts over the `scores` and `labels` tables of the DuckDB warehouse at `path` (opened read-only)."""
    con = open_readonly(path)
    try:
        scored, alerts = con.execute("SELECT count(*), count(*) FILTER (WHERE decision) FROM scores").fetchone()
        versions = tuple(v for (v,) in con.execute(
            "SELECT DISTINCT model_version FROM scores ORDER BY model_version").fetchall())
        tp, fp, fn, labelled = con.execute(
            "SELECT count(*) FILTER (WHERE s.decision AND l.label = 1), count(*) FILTER (WHERE s.decision AND l.label = 0),"
            " count(*) FILTER (WHERE NOT s.decision AND l.label = 1), count(*) "
            "FROM scores s JOIN labels l USING (transaction_id)").fetchone()
    finally:
        con.close()
    return LiveSummary(scored, alerts, versions, labelled, tp, fp, fn)
