"""Unit tests of the span layout and the export logic (a fake Kafka source; the real broker is in
tests/test_export_kafka.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import fastavro
import pytest

from fraud import spans
from fraud.contract import TransactionEvent
from fraud.errors import FraudError
from fraud.features import FEATURE_NAMES
from pipeline.export import Record, export_span, read_rejected, write_span

TOPIC = "fraud.transactions"


def event(i: int, label: int | None = 0) -> TransactionEvent:
    features = {name: float(i % 7) / 10.0 for name in FEATURE_NAMES}
    features["Time"] = float(i)
    features["Amount"] = float(i % 100)
    return TransactionEvent(transaction_id=f"tx-{i:06d}", event_time_ms=1_000_000 + i * 1000, card_id=f"card-{i % 5}",
                            customer_id=f"cust-{i % 3}", features=features, label=label)


class FakeSource:
    """An in-memory topic: partition -> list of (offset, value); offsets may have gaps (tx markers)."""

    def __init__(self, partitions: int = 2) -> None:
        self.log: dict[int, list[tuple[int, bytes | None]]] = {p: [] for p in range(partitions)}
        self.next_offset = dict.fromkeys(self.log, 0)
        self.begin = dict.fromkeys(self.log, 0)
        self.reads: list[tuple[int, int, int]] = []
        self.fail_after: int | None = None
        self._served = 0

    def append(self, partition: int, value: bytes | None, gap: int = 0) -> int:
        offset = self.next_offset[partition] + gap
        self.log[partition].append((offset, value))
        self.next_offset[partition] = offset + 1
        return offset

    def partitions(self, topic: str) -> list[int]:
        return sorted(self.log)

    def beginning_offsets(self, topic: str, partitions: list[int]) -> dict[int, int]:
        return {p: self.begin[p] for p in partitions}

    def end_offsets(self, topic: str, partitions: list[int]) -> dict[int, int]:
        return {p: self.next_offset[p] for p in partitions}

    def read(self, topic: str, partition: int, start: int, end: int) -> Iterator[Record]:
        self.reads.append((partition, start, end))
        for offset, value in self.log[partition]:
            if start <= offset < end:
                if self.fail_after is not None and self._served >= self.fail_after:
                    raise ConnectionError("simulated crash")
                self._served += 1
                yield Record(partition, offset, f"tx-{offset}".encode(), value)

    def close(self) -> None:
        pass


def fill(source: FakeSource, start: int, count: int, label: int | None = 0) -> None:
    for i in range(start, start + count):
        source.append(i % len(source.log), event(i, label).to_json())


def exported_offsets(base: Path) -> list[tuple[int, int]]:
    """(partition, offset) of every exported row, from the manifests (files are contiguous here)."""
    out = []
    for state in spans.list_spans(base):
        manifest = spans.read_manifest(state.path)
        for p in manifest["partitions"]:
            out.extend((p["partition"], o) for o in range(p["start_offset"], p["end_offset"]))
    return out


def read_ids(directory: Path) -> list[str]:
    ids = []
    for f in spans.list_data_files(directory, TOPIC):
        for line in spans.iter_json_lines(f.path):
            ids.append(json.loads(line)["transaction_id"])
    return ids


def test_first_export_takes_everything_up_to_the_end_seen_at_start(tmp_path: Path) -> None:
    source = FakeSource()
    fill(source, 0, 10)
    result = export_span(source, tmp_path, TOPIC, rows_per_file=3)
    assert result.span == 1 and result.rows == 10 and not result.resumed
    directory = spans.span_dir(tmp_path, 1)
    assert spans.is_complete(directory)
    manifest = spans.read_manifest(directory)
    assert [(p["partition"], p["start_offset"], p["end_offset"], p["rows"]) for p in manifest["partitions"]] == [
        (0, 0, 5, 5), (1, 0, 5, 5)]
    # Connect layout: <topic>/partition=<p>/<topic>+<p>+<startOffset>.json, rolled every 3 rows.
    names = sorted(str(f.path.relative_to(directory)) for f in spans.list_data_files(directory, TOPIC))
    assert names == [f"{TOPIC}/partition=0/{TOPIC}+0+0000000000.json", f"{TOPIC}/partition=0/{TOPIC}+0+0000000003.json",
                     f"{TOPIC}/partition=1/{TOPIC}+1+0000000000.json", f"{TOPIC}/partition=1/{TOPIC}+1+0000000003.json"]
    assert sorted(read_ids(directory)) == [f"tx-{i:06d}" for i in range(10)]


def test_next_export_starts_where_the_last_one_ended(tmp_path: Path) -> None:
    source = FakeSource()
    fill(source, 0, 10)
    export_span(source, tmp_path, TOPIC)
    assert export_span(source, tmp_path, TOPIC).span is None  # nothing new: no empty span
    fill(source, 10, 6)
    result = export_span(source, tmp_path, TOPIC)
    assert result.span == 2 and result.rows == 6
    assert sorted(read_ids(result.directory)) == [f"tx-{i:06d}" for i in range(10, 16)]
    offsets = exported_offsets(tmp_path)
    assert len(offsets) == len(set(offsets)) == 16  # no overlap, no gap


def test_crash_then_rerun_gives_the_same_span(tmp_path: Path) -> None:
    clean_base, crash_base = tmp_path / "clean", tmp_path / "crash"
    source = FakeSource()
    fill(source, 0, 20)
    reference = export_span(source, clean_base, TOPIC, rows_per_file=4)

    crashing = FakeSource()
    fill(crashing, 0, 20)
    crashing.fail_after = 9
    with pytest.raises(ConnectionError):
        export_span(crashing, crash_base, TOPIC, rows_per_file=4)
    crashed = spans.span_dir(crash_base, 1)
    assert not spans.is_complete(crashed) and (crashed / spans.PLAN).exists()
    assert spans.latest_complete_span(crash_base) is None  # nothing looks complete
    # More records arrive before the re-run: they belong to the next span, not this one.
    fill(crashing, 20, 4)
    crashing.fail_after = None
    rerun = export_span(crashing, crash_base, TOPIC, rows_per_file=4)
    assert rerun.resumed and rerun.span == 1 and rerun.rows == reference.rows == 20
    assert sorted(read_ids(rerun.directory)) == sorted(read_ids(reference.directory))
    ref_manifest, rerun_manifest = (spans.read_manifest(d) for d in (reference.directory, rerun.directory))
    assert ref_manifest["partitions"] == rerun_manifest["partitions"]
    assert export_span(crashing, crash_base, TOPIC).rows == 4
    assert len(set(exported_offsets(crash_base))) == 24


def test_offset_gaps_unlabeled_and_bad_records(tmp_path: Path) -> None:
    source = FakeSource(partitions=1)
    source.append(0, event(0).to_json())
    source.append(0, event(1, label=None).to_json(), gap=1)  # offset 2: a transaction marker took 1
    source.append(0, b'{"transaction_id": "x"}')
    source.append(0, None)
    source.append(0, event(4, label=1).to_json())
    result = export_span(source, tmp_path, TOPIC)
    assert (result.rows, result.unlabeled, result.rejected) == (3, 1, 2)
    manifest = spans.read_manifest(result.directory)
    assert manifest["partitions"][0]["end_offset"] == 6 and manifest["rejected"] == 2
    rejected = read_rejected(result.directory)
    assert [r["headers"]["__connect.errors.offset"] for r in rejected] == ["3", "4"]
    assert rejected[0]["headers"]["fraud.errors.reason"] == "missing_field"


def test_retention_gap_is_refused(tmp_path: Path) -> None:
    source = FakeSource(partitions=1)
    fill(source, 0, 4)
    export_span(source, tmp_path, TOPIC)
    fill(source, 4, 4)
    source.begin[0] = 6  # offsets 4..5 deleted before export
    with pytest.raises(FraudError, match="deleted"):
        export_span(source, tmp_path, TOPIC)


def test_foreign_unfinished_span_is_refused(tmp_path: Path) -> None:
    (spans.span_dir(tmp_path, 1) / TOPIC).mkdir(parents=True)
    with pytest.raises(FraudError, match="seal"):
        export_span(FakeSource(), tmp_path, TOPIC)


def test_avro_span_round_trip(tmp_path: Path) -> None:
    events = [event(i, label=i % 2) for i in range(5)]
    write_span(tmp_path, 1, TOPIC, ((0, i, e) for i, e in enumerate(events)), file_format=spans.AVRO_FORMAT)
    (data_file,) = spans.list_data_files(spans.span_dir(tmp_path, 1), TOPIC)
    assert data_file.path.name == f"{TOPIC}+0+0000000000.avro"
    with open(data_file.path, "rb") as f:
        records = list(fastavro.reader(f))
    assert [TransactionEvent.from_dict(r) for r in records] == events


def test_seal_a_connect_written_span(tmp_path: Path) -> None:
    directory = spans.span_dir(tmp_path, 3)
    part = directory / TOPIC / "partition=1"
    part.mkdir(parents=True)
    (part / f"{TOPIC}+1+0000000100.json").write_bytes(b"".join(event(i).to_json() + b"\n" for i in range(3)))
    (part / f"{TOPIC}+1+0000000103.json").write_bytes(event(3).to_json() + b"\n")
    manifest = spans.seal_span(directory, TOPIC)
    assert spans.is_complete(directory)
    assert manifest["source"] == "connect" and manifest["rows"] == 4
    assert manifest["partitions"][0]["start_offset"] == 100 and manifest["partitions"][0]["end_offset"] == 104
    with pytest.raises(FraudError, match="already sealed"):
        spans.seal_span(directory, TOPIC)


def test_data_file_names_are_parsed_strictly(tmp_path: Path) -> None:
    good = tmp_path / "partition=2" / f"{TOPIC}+2+0000000042.json.gz"
    assert spans.parse_data_file(good).start_offset == 42 and spans.parse_data_file(good).partition == 2
    with pytest.raises(FraudError, match="not a span data file"):
        spans.parse_data_file(tmp_path / "partition=2" / "notes.txt")
    with pytest.raises(FraudError, match="directory"):
        spans.parse_data_file(tmp_path / "partition=1" / f"{TOPIC}+2+0000000042.json")
