"""`fraudctl export`: a bounded snapshot of a Kafka topic as one new span (see fraud/spans.py).

Each run reads every partition from where the previous complete span ended (its manifest's end
offsets; the log start for partitions never exported) up to the end offsets seen when the run starts,
and writes one new span: data files in Kafka Connect's storage-sink layout, `_manifest.json`, and
`_SUCCESS` last.

Crash safety: before reading anything the run records its plan (span number, per-partition
[start, end)) in `_plan.json` inside the new span directory. A run that finds a span without its
marker but with a plan redoes exactly that plan (same span number, same offsets, the partial files
replaced), so a crash followed by a re-run gives the same span: no gap, no overlap, and no span that
looks complete before it is. Records are read with isolation level read_committed, so aborted
transactional writes are never exported; transaction markers take offsets, which is why a partition
is read until the consumer's position reaches the planned end offset, not until a record count.

Records that break the event contract are not written to the data files: they go to
`_rejected.jsonl` in the span with Kafka Connect-style error fields, and the manifest counts them.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import orjson

from fraud import spans
from fraud.contract import ContractError, DeadLetter, TransactionEvent
from fraud.dataset import iter_rows
from fraud.errors import FraudError
from fraud.kafka_config import KafkaClientConfig
from fraud.paths import load_paths
from fraud.replay import CardPool, transaction_event
from fraud.stream.admin import KafkaAdmin
from fraud.stream.reader import PartitionReader
from fraud.topics import TRANSACTIONS

DEFAULT_ROWS_PER_FILE = 100_000
COMPONENT = "fraudctl-export"


# ---------------------------------------------------------------------------------------------
# Writing a span


class _PartitionFile:
    def __init__(self, directory: Path, topic: str, partition: int, start_offset: int, file_format: str) -> None:
        self.rel_path = spans.data_file_path(topic, partition, start_offset, file_format)
        self.final = directory / self.rel_path
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.final.with_name(f".{self.final.name}.tmp")
        self.start_offset = start_offset
        self.rows = 0
        self.file_format = file_format
        self._records: list[dict[str, Any]] = []
        self._fh = open(self.tmp, "wb") if file_format == spans.JSON_FORMAT else None

    def write(self, event: TransactionEvent) -> None:
        if self._fh is not None:
            self._fh.write(event.to_json() + b"\n")
        else:
            record = event.to_dict()
            record.setdefault("label", None)
            record.setdefault("attributes", {})
            self._records.append(record)
        self.rows += 1

    def close(self) -> dict[str, Any]:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
        else:
            import fastavro

            with open(self.tmp, "wb") as f:
                fastavro.writer(f, fastavro.parse_schema(spans.EVENT_AVRO_SCHEMA), self._records, codec="deflate")
                f.flush()
                os.fsync(f.fileno())
        os.replace(self.tmp, self.final)
        return {"path": self.rel_path, "start_offset": self.start_offset, "rows": self.rows}


class SpanWriter:
    """Writes records into one span directory, rolling files every `rows_per_file` per partition."""

    def __init__(self, directory: Path, topic: str, file_format: str = spans.JSON_FORMAT,
                 rows_per_file: int = DEFAULT_ROWS_PER_FILE,
                 on_file_closed: Callable[[dict[str, Any]], None] | None = None) -> None:
        if file_format not in spans.FILE_FORMATS:
            raise FraudError(f"unknown file format {file_format!r} (one of {', '.join(spans.FILE_FORMATS)})")
        if rows_per_file < 1:
            raise FraudError(f"rows per file must be >= 1, got {rows_per_file}")
        self.directory = Path(directory)
        self.topic = topic
        self.file_format = file_format
        self.rows_per_file = rows_per_file
        self._open: dict[int, _PartitionFile] = {}
        self._files: dict[int, list[dict[str, Any]]] = {}
        self._on_file_closed = on_file_closed
        self.unlabeled = 0
        self.rejected = 0
        self._rejected_fh = None

    def write(self, partition: int, offset: int, event: TransactionEvent) -> None:
        current = self._open.get(partition)
        if current is None:
            current = self._open[partition] = _PartitionFile(self.directory, self.topic, partition, offset,
                                                             self.file_format)
        current.write(event)
        if event.label is None:
            self.unlabeled += 1
        if current.rows >= self.rows_per_file:
            self._close(partition)

    def reject(self, letter: DeadLetter) -> None:
        if self._rejected_fh is None:
            self._rejected_fh = open(self.directory / spans.REJECTED, "wb")
        self._rejected_fh.write(orjson.dumps({
            "headers": {k: v.decode("utf-8") for k, v in letter.headers()},
            "key": letter.key.decode("utf-8", "replace") if letter.key is not None else None,
            "value": letter.value.decode("utf-8", "replace") if letter.value is not None else None,
        }) + b"\n")
        self.rejected += 1

    def _close(self, partition: int) -> None:
        entry = self._open.pop(partition).close()
        self._files.setdefault(partition, []).append(entry)
        if self._on_file_closed is not None:
            self._on_file_closed(entry)

    def finish(self) -> dict[int, list[dict[str, Any]]]:
        """Closes every open file; returns the files written per partition."""
        for partition in list(self._open):
            self._close(partition)
        if self._rejected_fh is not None:
            self._rejected_fh.flush()
            os.fsync(self._rejected_fh.fileno())
            self._rejected_fh.close()
            self._rejected_fh = None
        return self._files


def write_span(base: Path, span: int, topic: str, records: Iterable[tuple[int, int, TransactionEvent]],
               file_format: str = spans.JSON_FORMAT, rows_per_file: int = DEFAULT_ROWS_PER_FILE,
               source: str = "file") -> dict[str, Any]:
    """Writes a complete span from (partition, offset, event) records in offset order per partition
    (for tests, benchmarks and offline loads; the Kafka export uses the same writer)."""
    directory = spans.span_dir(base, span)
    if directory.exists():
        raise FraudError(f"{directory}: span already exists")
    directory.mkdir(parents=True)
    writer = SpanWriter(directory, topic, file_format, rows_per_file)
    ends: dict[int, int] = {}
    starts: dict[int, int] = {}
    for partition, offset, event in records:
        writer.write(partition, offset, event)
        starts.setdefault(partition, offset)
        ends[partition] = offset + 1
    files = writer.finish()
    partitions = [{"partition": p, "start_offset": starts[p], "end_offset": ends[p],
                   "rows": sum(f["rows"] for f in files[p]), "files": files[p]} for p in sorted(files)]
    manifest = spans.build_manifest(span=span, topic=topic, file_format=file_format, partitions=partitions,
                                    source=source, unlabeled=writer.unlabeled)
    spans.write_json_atomically(directory / spans.MANIFEST, manifest)
    spans.write_marker(directory)
    return manifest


def write_csv_span(csv: Path, base: Path, span: int = 1, *, start: int = 0, limit: int | None = None) -> int:
    """Writes dataset rows (a CSV as `fraudctl data` fetches it, from data row `start`, at most `limit`) as one
    complete span of labelled TransactionEvents, spread over the topic's partitions as replay would; returns
    the rows written. For benchmarks, tests and offline loads that train without a broker."""
    cards = CardPool()
    partitions = TRANSACTIONS.partitions
    offsets = [0] * partitions

    def records() -> Iterator[tuple[int, int, TransactionEvent]]:
        for row in iter_rows(csv, start=start, limit=limit):
            p = row.index % partitions
            offset = offsets[p]
            offsets[p] += 1
            yield p, offset, replace(transaction_event(row, cards), label=row.label)

    return write_span(base, span, TRANSACTIONS.name, records())["rows"]


# ---------------------------------------------------------------------------------------------
# Reading Kafka


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class ExportSource(Protocol):
    """What the export needs from Kafka (a fake implements it in unit tests)."""

    def partitions(self, topic: str) -> list[int]: ...

    def beginning_offsets(self, topic: str, partitions: list[int]) -> dict[int, int]: ...

    def end_offsets(self, topic: str, partitions: list[int]) -> dict[int, int]: ...

    def read(self, topic: str, partition: int, start: int, end: int) -> Iterator[Record]:
        """Committed records of [start, end) in offset order (offsets may have gaps)."""
        ...

    def close(self) -> None: ...


class KafkaExportSource:
    """ExportSource over fraud.stream: offsets from its admin, records from its reader (read_committed, the
    partition assigned explicitly: no consumer group)."""

    def __init__(self, client_config: KafkaClientConfig, poll_timeout_ms: int = 1000, idle_timeout_s: float = 60.0) -> None:
        self._kafka = client_config
        self._admin = KafkaAdmin(client_config)
        self._poll_timeout_s = poll_timeout_ms / 1000.0
        self._idle_timeout_s = idle_timeout_s

    def partitions(self, topic: str) -> list[int]:
        return self._admin.partitions(topic)

    def beginning_offsets(self, topic: str, partitions: list[int]) -> dict[int, int]:
        return {p: o for (_t, p), o in self._admin.start_offsets([(topic, p) for p in partitions]).items()}

    def end_offsets(self, topic: str, partitions: list[int]) -> dict[int, int]:
        return {p: o for (_t, p), o in self._admin.end_offsets([(topic, p) for p in partitions]).items()}

    def read(self, topic: str, partition: int, start: int, end: int) -> Iterator[Record]:
        tp = (topic, partition)
        reader = PartitionReader(self._kafka, [topic], group_id=f"{self._kafka.client_id}-export", start={tp: start},
                                 only=[tp])
        try:
            idle_since = time.monotonic()
            while reader.positions().get(tp, start) < end:
                batch = reader.poll(5000, self._poll_timeout_s)
                if batch:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > self._idle_timeout_s:
                    raise FraudError(f"{topic}[{partition}]: no progress for {self._idle_timeout_s:.0f}s at offset "
                                     f"{reader.positions().get(tp, start)} (planned end {end})")
                for msg in batch:
                    if msg.offset >= end:
                        return
                    yield Record(partition, msg.offset, msg.key, msg.value)
        finally:
            reader.close()

    def close(self) -> None:
        self._admin.close()


# ---------------------------------------------------------------------------------------------
# The export


@dataclass(frozen=True)
class ExportResult:
    span: int | None  # None: nothing new to export
    directory: Path | None
    rows: int
    rejected: int
    unlabeled: int
    resumed: bool
    seconds: float
    manifest: Mapping[str, Any] | None


def plan_export(source: ExportSource, base: Path, topic: str) -> tuple[int, dict[int, tuple[int, int]], bool]:
    """(span, {partition: (start, end)}, resumed): a crashed export's plan, or a new one."""
    states = spans.list_spans(base)
    complete = [s for s in states if s.complete]
    last = complete[-1] if complete else None
    unfinished = [s for s in states if not s.complete and (last is None or s.span > last.span)]
    if len(unfinished) > 1:
        names = ", ".join(s.path.name for s in unfinished)
        raise FraudError(f"{base}: several unfinished spans ({names}); remove all but the first and re-run")
    if unfinished and unfinished[0].has_plan:
        plan = spans.read_json(unfinished[0].path / spans.PLAN)
        if plan.get("topic") != topic:
            raise FraudError(f"{unfinished[0].path}: unfinished export of topic {plan.get('topic')}, not {topic}")
        ranges = {int(p): (int(r[0]), int(r[1])) for p, r in plan["partitions"].items()}
        return int(plan["span"]), ranges, True
    if unfinished:
        # A span directory without a plan or marker: not ours (e.g. a Connect sink still writing).
        raise FraudError(f"{unfinished[0].path}: span without {spans.MARKER} or {spans.PLAN}; seal it "
                         f"(fraudctl export --seal) or remove it")
    if last is not None:
        manifest = spans.read_manifest(last.path)
        if manifest["topic"] != topic:
            raise FraudError(f"{last.path}: the export base holds topic {manifest['topic']}, not {topic}")
        previous_end = spans.end_offsets(manifest)
    else:
        previous_end = {}
    partitions = source.partitions(topic)
    gone = sorted(set(previous_end) - set(partitions))
    if gone:
        raise FraudError(f"{topic}: partitions {gone} exported before no longer exist")
    begin = source.beginning_offsets(topic, partitions)
    end = source.end_offsets(topic, partitions)
    ranges = {}
    for p in partitions:
        start = previous_end.get(p, begin[p])
        if start < begin[p]:
            raise FraudError(f"{topic}[{p}]: offsets {start}..{begin[p] - 1} were deleted (retention) before they "
                             f"were exported; the next span would have a gap")
        if start > end[p]:
            raise FraudError(f"{topic}[{p}]: the last span ends at offset {start} but the partition ends at {end[p]} "
                             f"(topic recreated?)")
        ranges[p] = (start, end[p])
    return (last.span + 1 if last else 1), ranges, False


def export_span(source: ExportSource, base: Path, topic: str = TRANSACTIONS.name,
                file_format: str = spans.JSON_FORMAT, rows_per_file: int = DEFAULT_ROWS_PER_FILE,
                on_file_closed: Callable[[dict[str, Any]], None] | None = None) -> ExportResult:
    """Exports one span (see the module docstring). `on_file_closed` is called after each data file."""
    started = time.monotonic()
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    span, ranges, resumed = plan_export(source, base, topic)
    if not resumed and all(start == end for start, end in ranges.values()):
        return ExportResult(None, None, 0, 0, 0, False, time.monotonic() - started, None)
    directory = spans.span_dir(base, span)
    if resumed:
        plan = spans.read_json(directory / spans.PLAN)
        file_format = plan["file_format"]
        for child in directory.iterdir():  # partial files of the crashed run
            if child.name != spans.PLAN:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    else:
        directory.mkdir()
        spans.write_json_atomically(directory / spans.PLAN, {
            "span": span, "topic": topic, "file_format": file_format,
            "partitions": {str(p): [s, e] for p, (s, e) in sorted(ranges.items())},
            "planned_at_ms": int(time.time() * 1000),
        })
    writer = SpanWriter(directory, topic, file_format, rows_per_file, on_file_closed)
    for partition, (start, end) in sorted(ranges.items()):
        for record in source.read(topic, partition, start, end):
            try:
                if record.value is None:
                    raise ContractError("missing_field", "record has no value (tombstone)")
                event = TransactionEvent.from_json(record.value)
            except ContractError as exc:
                writer.reject(DeadLetter.from_error(exc, key=record.key, value=record.value, topic=topic,
                                                    partition=record.partition, offset=record.offset,
                                                    component=COMPONENT, stage="VALUE_CONVERTER"))
                continue
            writer.write(partition, record.offset, event)
    files = writer.finish()
    partitions = [{"partition": p, "start_offset": s, "end_offset": e,
                   "rows": sum(f["rows"] for f in files.get(p, [])), "files": files.get(p, [])}
                  for p, (s, e) in sorted(ranges.items())]
    manifest = spans.build_manifest(span=span, topic=topic, file_format=file_format, partitions=partitions,
                                    source="kafka", rejected=writer.rejected, unlabeled=writer.unlabeled)
    spans.write_json_atomically(directory / spans.MANIFEST, manifest)
    spans.write_marker(directory)
    return ExportResult(span, directory, manifest["rows"], writer.rejected, writer.unlabeled, resumed,
                        time.monotonic() - started, manifest)


# ---------------------------------------------------------------------------------------------
# CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export new records of a topic as one training span",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--topic", default=TRANSACTIONS.name, help="topic to export (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="export base directory (default: FRAUD_HOME/exports)")
    p.add_argument("--format", choices=spans.FILE_FORMATS, default=spans.JSON_FORMAT, dest="file_format")
    p.add_argument("--rows-per-file", type=int, default=DEFAULT_ROWS_PER_FILE)
    p.add_argument("--seal", type=Path, metavar="SPAN_DIR", default=None,
                   help="instead of exporting: write the manifest and marker of a span a Kafka Connect sink wrote")
    KafkaClientConfig.add_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.seal is not None:
        manifest = spans.seal_span(args.seal, args.topic)
        print(f"sealed {args.seal}: {manifest['rows']} rows in {len(manifest['partitions'])} partitions")
        return 0
    base = args.out or load_paths().exports_dir
    config = KafkaClientConfig.from_env_and_args(args, client_id=COMPONENT)
    source = KafkaExportSource(config)
    try:
        result = export_span(source, base, args.topic, args.file_format, args.rows_per_file)
    finally:
        source.close()
    if result.span is None:
        print(f"no new records in {args.topic} since the last span; nothing written")
        return 0
    print(f"span {result.span} -> {result.directory}: {result.rows} rows, {result.unlabeled} without a label, "
          f"{result.rejected} rejected{' (resumed a crashed export)' if result.resumed else ''}, "
          f"{result.seconds:.1f}s")
    return 0


def read_rejected(directory: Path) -> list[dict[str, Any]]:
    path = Path(directory) / spans.REJECTED
    if not path.exists():
        return []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]
