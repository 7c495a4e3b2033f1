"""Export spans on disk: the layout `fraudctl export` writes and the pipeline's ExampleGen reads.

One span is one bounded snapshot of a topic, in the layout of Kafka Connect's storage sinks
(S3/GCS/HDFS: `topics.dir` = the span directory):

    <base>/span-00000007/
        _plan.json                                   offsets chosen at start (our exporter only)
        fraud.transactions/partition=0/fraud.transactions+0+0000001200.json
        fraud.transactions/partition=0/fraud.transactions+0+0000101200.json
        fraud.transactions/partition=3/...
        _manifest.json                               per partition: [start, end) offsets, rows, files
        _SUCCESS                                     written last; a span without it is not complete

Data files hold one TransactionEvent per line (JSON, optionally gzipped) or per Avro record
(EVENT_AVRO_SCHEMA). A span written by a Connect sink has no plan or manifest of its own:
`seal_span()` derives the manifest from the file names and writes the marker.

Only the standard library here: the exporter and the CLI import it without TensorFlow.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fraud.errors import FraudError
from fraud.features import FEATURE_NAMES

SPAN_PREFIX = "span-"
SPAN_WIDTH = 8
MARKER = "_SUCCESS"
MANIFEST = "_manifest.json"
PLAN = "_plan.json"
REJECTED = "_rejected.jsonl"
MANIFEST_VERSION = 1

JSON_FORMAT = "json"
AVRO_FORMAT = "avro"
FILE_FORMATS = (JSON_FORMAT, AVRO_FORMAT)
#: File name endings per format; Connect's JsonFormat writes `.json` (`.json.gz` when compressed).
EXTENSIONS: Mapping[str, tuple[str, ...]] = {JSON_FORMAT: (".json", ".json.gz"), AVRO_FORMAT: (".avro",)}

_SPAN_RE = re.compile(rf"^{SPAN_PREFIX}(\d+)$")
_FILE_RE = re.compile(r"^(?P<topic>.+)\+(?P<partition>\d+)\+(?P<offset>\d+)(?P<ext>\.json|\.json\.gz|\.avro)$")

#: Avro schema of one exported TransactionEvent (the same fields as the JSON contract).
EVENT_AVRO_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "TransactionEvent",
    "namespace": "fraud",
    "fields": [
        {"name": "transaction_id", "type": "string"},
        {"name": "event_time_ms", "type": "long"},
        {"name": "card_id", "type": "string"},
        {"name": "customer_id", "type": "string"},
        {
            "name": "features",
            "type": {
                "type": "record",
                "name": "Features",
                "fields": [{"name": n, "type": "double"} for n in FEATURE_NAMES],
            },
        },
        {"name": "label", "type": ["null", "int"], "default": None},
        {"name": "attributes", "type": {"type": "map", "values": "string"}, "default": {}},
    ],
}


def span_dir_name(span: int) -> str:
    return f"{SPAN_PREFIX}{span:0{SPAN_WIDTH}d}"


def span_dir(base: Path, span: int) -> Path:
    return Path(base) / span_dir_name(span)


def span_pattern(topic: str) -> str:
    """The ExampleGen input pattern (relative to the export base) matching every data file of a span."""
    return f"{SPAN_PREFIX}{{SPAN:{SPAN_WIDTH}}}/{topic}/partition=*/{topic}+*"


def data_file_name(topic: str, partition: int, start_offset: int, file_format: str) -> str:
    """Kafka Connect's storage-sink name: `<topic>+<partition>+<startOffset>.<ext>` (offset 10 digits)."""
    return f"{topic}+{partition}+{start_offset:010d}{EXTENSIONS[file_format][0]}"


def data_file_path(topic: str, partition: int, start_offset: int, file_format: str) -> str:
    """Path of a data file relative to its span directory."""
    return f"{topic}/partition={partition}/{data_file_name(topic, partition, start_offset, file_format)}"


@dataclass(frozen=True)
class DataFile:
    path: Path
    topic: str
    partition: int
    start_offset: int
    file_format: str


def parse_data_file(path: Path) -> DataFile:
    """Reads topic, partition, start offset and format from a data file's name."""
    m = _FILE_RE.match(path.name)
    if not m:
        raise FraudError(f"{path}: not a span data file (<topic>+<partition>+<startOffset>.json|.avro)")
    if path.parent.name != f"partition={m['partition']}":
        raise FraudError(f"{path}: file of partition {m['partition']} in directory {path.parent.name}")
    fmt = AVRO_FORMAT if m["ext"] == ".avro" else JSON_FORMAT
    return DataFile(path, m["topic"], int(m["partition"]), int(m["offset"]), fmt)


def list_data_files(directory: Path, topic: str) -> list[DataFile]:
    """Data files of `topic` in a span directory, ordered by partition and start offset."""
    files = [parse_data_file(p) for p in (Path(directory) / topic).glob("partition=*/*") if _FILE_RE.match(p.name)]
    return sorted(files, key=lambda f: (f.partition, f.start_offset))


@dataclass(frozen=True)
class SpanState:
    span: int
    path: Path
    complete: bool
    has_plan: bool


def list_spans(base: Path) -> list[SpanState]:
    """Every span directory under `base`, by span number."""
    base = Path(base)
    if not base.is_dir():
        return []
    out = []
    for child in base.iterdir():
        m = _SPAN_RE.match(child.name)
        if m and child.is_dir():
            out.append(SpanState(int(m[1]), child, (child / MARKER).is_file(), (child / PLAN).is_file()))
    return sorted(out, key=lambda s: s.span)


def latest_complete_span(base: Path) -> SpanState | None:
    complete = [s for s in list_spans(base) if s.complete]
    return complete[-1] if complete else None


def is_complete(directory: Path) -> bool:
    return (Path(directory) / MARKER).is_file()


def write_json_atomically(path: Path, obj: Mapping[str, Any]) -> None:
    """Write JSON to a temp file, fsync, rename: a reader sees the old file or the whole new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(json.dumps(obj, indent=1, sort_keys=True).encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise FraudError(f"{path}: missing") from None
    except ValueError as exc:
        raise FraudError(f"{path}: not valid JSON ({exc})") from None


def read_manifest(directory: Path) -> dict[str, Any]:
    manifest = read_json(Path(directory) / MANIFEST)
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise FraudError(f"{directory / MANIFEST}: unsupported format_version {manifest.get('format_version')!r}")
    return manifest


def end_offsets(manifest: Mapping[str, Any]) -> dict[int, int]:
    """Per partition, the offset the next export starts from."""
    return {int(p["partition"]): int(p["end_offset"]) for p in manifest["partitions"]}


def write_marker(directory: Path) -> None:
    """The success marker, written last: its presence is what makes a span complete."""
    marker = Path(directory) / MARKER
    with open(marker, "wb") as f:
        f.write(f"{int(time.time() * 1000)}\n".encode())
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(Path(directory))


def require_complete(directory: Path) -> None:
    if not is_complete(directory):
        raise FraudError(f"{directory}: span has no {MARKER} marker (export unfinished or crashed); refusing to read it")


def iter_json_lines(path: Path) -> Iterator[bytes]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        for line in f:
            line = line.strip()
            if line:
                yield line


def count_rows(data_file: DataFile) -> int:
    if data_file.file_format == AVRO_FORMAT:
        import fastavro

        with open(data_file.path, "rb") as f:
            return sum(1 for _ in fastavro.reader(f))
    return sum(1 for _ in iter_json_lines(data_file.path))


def build_manifest(*, span: int, topic: str, file_format: str, partitions: Iterable[Mapping[str, Any]],
                   source: str, rejected: int = 0, unlabeled: int = 0) -> dict[str, Any]:
    parts = sorted(partitions, key=lambda p: p["partition"])
    return {
        "format_version": MANIFEST_VERSION,
        "span": span,
        "topic": topic,
        "file_format": file_format,
        "source": source,
        "created_at_ms": int(time.time() * 1000),
        "partitions": parts,
        "rows": sum(p["rows"] for p in parts),
        "rejected": rejected,
        "unlabeled": unlabeled,
    }


def seal_span(directory: Path, topic: str) -> dict[str, Any]:
    """Make a span written by a Kafka Connect storage sink readable: derive its manifest, write the marker.

    Connect names each file after its first offset; a partition's end offset is taken as the last
    file's start offset plus its row count, exact when the partition has no gaps in its offsets
    (no compaction, no transaction markers). The manifest records `"source": "connect"`.
    """
    directory = Path(directory)
    m = _SPAN_RE.match(directory.name)
    if not m:
        raise FraudError(f"{directory}: a span directory is named {SPAN_PREFIX}<number>")
    if is_complete(directory):
        raise FraudError(f"{directory}: already sealed")
    files = list_data_files(directory, topic)
    if not files:
        raise FraudError(f"{directory}: no data files of topic {topic} in the Connect layout")
    formats = {f.file_format for f in files}
    if len(formats) != 1:
        raise FraudError(f"{directory}: mixed file formats {sorted(formats)}")
    by_partition: dict[int, list[dict[str, Any]]] = {}
    for f in files:
        by_partition.setdefault(f.partition, []).append(
            {"path": str(f.path.relative_to(directory)), "start_offset": f.start_offset, "rows": count_rows(f)})
    partitions = []
    for p, entries in by_partition.items():
        last = entries[-1]
        partitions.append({"partition": p, "start_offset": entries[0]["start_offset"],
                           "end_offset": last["start_offset"] + last["rows"],
                           "rows": sum(e["rows"] for e in entries), "files": entries})
    manifest = build_manifest(span=int(m[1]), topic=topic, file_format=formats.pop(), partitions=partitions,
                              source="connect")
    write_json_atomically(directory / MANIFEST, manifest)
    write_marker(directory)
    return manifest
