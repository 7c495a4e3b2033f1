"""What one chaos run sends: valid raw transactions (dataset rows, as `fraudctl replay` makes them) with their
labels, and malformed events of many kinds, each with the dead-letter topic(s) it must end up in and why.

Malformed events go where a real producer could put them:

- the raw topic (a broken upstream system): dead-lettered by preprocessing, with the contract's reason;
- the clean transactions topic (a producer that skipped preprocessing): dead-lettered by the bridge, and by
  the monitor, which reads that topic for drift;
- the scores and labels topics: dead-lettered by the warehouse sink and by the monitor.

Expected reasons are stated here from the contract (fraud.contract) and the rules file
(preprocessing/rules.yaml), not asked of the code under test.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import orjson

from fraud.contract import LabelEvent, ScoreEvent, TransactionEvent
from fraud.dataset import iter_rows
from fraud.paths import SAMPLE_CSV
from fraud.replay import CardPool, transaction_event

#: Roles of the topics a run uses (their names are made per run).
RAW, TRANSACTIONS, SCORES, LABELS = "raw", "transactions", "scores", "labels"
DLQ_PREPROCESS, DLQ_BRIDGE, DLQ_MONITORING = "dlq_preprocess", "dlq_bridge", "dlq_monitoring"
#: The `component` header of each job's dead letters.
PREPROCESSING, BRIDGE, SINK, MONITOR = "preprocessing", "kafka_bridge", "warehouse_sink", "monitor"

#: Where a bad record of a topic must be dead-lettered: (dead-letter topic role, component).
DEAD_LETTER_PATHS: dict[str, tuple[tuple[str, str], ...]] = {
    RAW: ((DLQ_PREPROCESS, PREPROCESSING),),
    TRANSACTIONS: ((DLQ_BRIDGE, BRIDGE), (DLQ_MONITORING, MONITOR)),
    SCORES: ((DLQ_MONITORING, SINK), (DLQ_MONITORING, MONITOR)),
    LABELS: ((DLQ_MONITORING, SINK), (DLQ_MONITORING, MONITOR)),
}


@dataclass(frozen=True)
class Bad:
    """One malformed record: where it goes, what it is, the reason every job must give."""

    key: bytes
    topic: str  # role
    kind: str
    reason: str
    value: bytes | None

    @property
    def expected(self) -> tuple[tuple[str, str], ...]:
        return DEAD_LETTER_PATHS[self.topic]


def _sample_transaction() -> dict:
    rows = iter_rows(SAMPLE_CSV, limit=1)
    return transaction_event(next(iter(rows)), CardPool(100, 1)).to_dict()


def _mutations(base: dict) -> list[tuple[str, str, Callable[[dict], None] | bytes | None]]:
    """(kind, reason, a change to a valid event or the raw bytes) for transaction-shaped records."""

    def drop(name: str) -> Callable[[dict], None]:
        return lambda d: d.pop(name)

    def drop_feature(name: str) -> Callable[[dict], None]:
        return lambda d: d["features"].pop(name)

    def feature(name: str, value: object) -> Callable[[dict], None]:
        return lambda d: d["features"].__setitem__(name, value)

    nan = json.dumps({**base, "features": {**base["features"], "V3": float("nan")}}).encode()
    inf = json.dumps({**base, "features": {**base["features"], "V4": float("-inf")}}).encode()
    return [
        ("truncated_json", "malformed_json", b'{"transaction_id": "tx-x", '),
        ("not_json", "malformed_json", b"not json at all"),
        ("bad_utf8", "bad_encoding", b'{"transaction_id": "\xff\xfe"}'),
        ("json_array", "not_an_object", b"[1, 2, 3]"),
        ("missing_card", "missing_field", drop("card_id")),
        ("missing_feature", "missing_field", drop_feature("V7")),
        ("unknown_field", "unknown_field", lambda d: d.update(extra=1)),
        ("unknown_feature", "unknown_field", feature("V29", 0.5)),
        ("feature_as_string", "wrong_type", feature("V1", "1.5")),
        ("time_as_string", "wrong_type", lambda d: d.update(event_time_ms="yesterday")),
        ("negative_amount", "out_of_range", feature("Amount", -3.0)),
        ("nan_feature", "not_finite", nan),
        ("inf_feature", "not_finite", inf),
        ("oversize", "oversize", lambda d: d.update(attributes={"note": "x" * 20_000})),
    ]


def _materialize(base: dict, change: Callable[[dict], None] | bytes | None, tx_id: str) -> bytes | None:
    if change is None or isinstance(change, bytes):
        return change
    d = {**base, "transaction_id": tx_id, "features": dict(base["features"])}
    change(d)
    return orjson.dumps(d)


def bad_records(per_kind: int) -> list[Bad]:
    """Every kind of malformed record, `per_kind` of each (distinct keys and transaction ids)."""
    base = _sample_transaction()
    out: list[Bad] = []
    raw_kinds = _mutations(base) + [
        ("tombstone", "not_an_object", None),
        ("amount_over_limit", "check:amount_limit", lambda d: d["features"].__setitem__("Amount", 150_000.0)),
        ("raw_id_in_transaction_id", "raw_id_in_transaction_id",
         lambda d: d.__setitem__("transaction_id", f"tx-{d['card_id']}")),
    ]
    # Clean-topic records (the bridge reads them as TransactionEvents: no preprocessing-only rules there).
    tx_kinds = [k for k in _mutations(base) if k[0] in (
        "truncated_json", "json_array", "missing_card", "feature_as_string", "nan_feature", "oversize")]
    for i in range(per_kind):
        for kind, reason, change in raw_kinds:
            key = f"bad-raw-{kind}-{i}"
            value = _materialize(base, change, key)
            out.append(Bad(key.encode(), RAW, kind, reason, value))
        for kind, reason, change in tx_kinds:
            key = f"bad-tx-{kind}-{i}"
            out.append(Bad(key.encode(), TRANSACTIONS, kind, reason, _materialize(base, change, key)))
    score = ScoreEvent(transaction_id="s", event_time_ms=1, card_id="c", score=0.5, decision=False, threshold=0.5,
                       model_name="fraud", model_version=1, source_timestamp_ms=1, scored_at_ms=2).to_dict()
    label = LabelEvent("l", 1, 1, 2).to_dict()
    for i in range(per_kind):
        for kind, reason, value in (
                ("truncated_json", "malformed_json", b'{"transaction_id": '),
                ("missing_score", "missing_field", orjson.dumps({k: v for k, v in score.items() if k != "score"})),
                ("score_above_one", "out_of_range", orjson.dumps({**score, "transaction_id": f"bad-s-{i}",
                                                                  "score": 1.5}))):
            out.append(Bad(f"bad-scores-{kind}-{i}".encode(), SCORES, kind, reason, value))
        for kind, reason, value in (
                ("json_array", "not_an_object", b"[1]"),
                ("label_as_string", "wrong_type", orjson.dumps({**label, "label": "fraud"})),
                ("tombstone", "malformed_json", None)):
            out.append(Bad(f"bad-labels-{kind}-{i}".encode(), LABELS, kind, reason, value))
    return out


class Send(NamedTuple):
    """One record to send `due` seconds after the start. A valid label's value is made when it is sent
    (`label`: (label, event time); its labelled_at_ms is the wall clock then)."""

    due: float
    topic: str  # role
    key: bytes
    value: bytes | None
    label: tuple[int, int] | None = None


@dataclass
class Corpus:
    """The run's records in send order."""

    valid_ids: list[str]
    labels: dict[str, int]  # transaction id -> label (every valid transaction gets one)
    bad: list[Bad]
    schedule: list[Send] = field(default_factory=list)

    @property
    def bad_by_key(self) -> dict[bytes, Bad]:
        return {b.key: b for b in self.bad}


def build(dataset: Path, events: int, *, rate: float, per_kind: int, label_delay_s: float, seed: int,
          cards: CardPool | None = None) -> Corpus:
    """`events` valid transactions from `dataset` (rows 0..events-1) at `rate` per second, their labels
    `label_delay_s` later, and the malformed records spread among them at random times."""
    cards = cards or CardPool()
    rng = random.Random(seed)
    schedule: list[Send] = []
    valid_ids: list[str] = []
    labels: dict[str, int] = {}
    for n, row in enumerate(iter_rows(dataset, limit=events)):
        event: TransactionEvent = transaction_event(row, cards)
        due = n / rate
        key = event.transaction_id.encode()
        schedule.append(Send(due, RAW, key, event.to_json()))
        schedule.append(Send(due + label_delay_s, LABELS, key, None, (row.label, event.event_time_ms)))
        valid_ids.append(event.transaction_id)
        labels[event.transaction_id] = row.label
    if len(valid_ids) < events:
        raise ValueError(f"{dataset} has only {len(valid_ids)} rows, {events} asked for")
    bad = bad_records(per_kind)
    span = events / rate
    for b in bad:
        schedule.append(Send(rng.uniform(0.02, 0.98) * span, b.topic, b.key, b.value))
    schedule.sort(key=lambda s: s.due)
    return Corpus(valid_ids, labels, bad, schedule)


def label_value(tx_id: str, label: int, event_time_ms: int, labelled_at_ms: int) -> bytes:
    return LabelEvent(tx_id, label, event_time_ms, labelled_at_ms).to_json()
