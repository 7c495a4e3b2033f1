"""`fraudctl ingest`: a CSV file into the ingest topic through Kafka Connect's FileStreamSource.

As in the seed, Kafka Connect (standalone, the project's embedded worker) reads the file line by line
into fraud.ingest.csv; the preprocessing job turns those lines into clean events (it drops the header
and blank lines with a reason, it does not score them). One ingestion:

1. checks the file (the dataset's 31 columns on line 1; a last line without a line break is not read by
   FileStreamSource until one is added, so it is reported and not counted); a .csv.gz is unpacked into
   FRAUD_HOME/connect/ingest/ first, since FileStreamSource reads plain text only;
2. creates the connector *stopped* (KIP-980), reads its stored source offset (KIP-875): Connect keeps,
   per connector name and file, how far it has read, so ingesting the same file again sends only lines
   appended since (`--again` resets the offset and sends the whole file again);
3. resumes the connector and reports progress as the topic's end offset grows, until every line is in;
4. stops and deletes the connector (its offset stays in the worker's offset file), unless `--follow`
   leaves it tailing the file.

Progress is measured on the topic, so another writer to the same topic at the same time makes the
count approximate; ingest one file at a time (the default connector name is per file).
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fraud.embedded.connect import ConnectStandalone, file_source_config
from fraud.errors import FraudError
from fraud.features import CSV_COLUMNS
from fraud.kafka_config import KafkaClientConfig
from fraud.stream.admin import KafkaAdmin

_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class FileCheck:
    path: Path  # the plain-text file Connect reads
    lines: int  # complete lines (what Connect will send), header included
    has_header: bool
    incomplete_last_line: bool


@dataclass(frozen=True)
class IngestResult:
    file: Path
    topic: str
    connector: str
    start_position: int  # characters of the file Connect had read before (0 = from the start)
    expected: int  # lines to send this time
    sent: int  # records that reached the topic
    seconds: float
    following: bool
    incomplete_last_line: bool

    @property
    def lines_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        if self.expected == 0:
            text = (f"nothing new in {self.file}: Connect had read all of it before (connector {self.connector}); "
                    f"--again sends it again")
        else:
            start = "" if self.start_position == 0 else f", resuming at character {self.start_position}"
            text = (f"ingested {self.sent} lines of {self.file} into {self.topic} in {self.seconds:.1f} s "
                    f"({self.lines_per_s:,.0f} lines/s, connector {self.connector}{start})")
        if self.following:
            text += "; the connector keeps following the file (fraudctl connect status)"
        if self.incomplete_last_line:
            text += "; the last line has no line break and was not read (Connect waits for one)"
        return text


def _count_line_ends(data: bytes) -> tuple[int, bool]:
    """Line ends as FileStreamSource sees them (\\n, \\r\\n, \\r) and whether text follows the last one."""
    ends = data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")
    # A final lone \r is only taken as a line end once the next character shows it is not \r\n.
    incomplete = bool(data) and not data.endswith(b"\n")
    if data.endswith(b"\r"):
        ends -= 1
    return ends, incomplete


def check_file(path: Path, staging_dir: Path) -> FileCheck:
    """The plain-text file to ingest (unpacked into `staging_dir` if gzip) and its line count."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FraudError(f"no file to ingest at {path}")
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == _GZIP_MAGIC
        if gz:
            staging_dir.mkdir(parents=True, exist_ok=True)
            plain = staging_dir / path.name.removesuffix(".gz")
            if not plain.is_file() or plain.stat().st_mtime < path.stat().st_mtime:
                tmp = plain.with_suffix(plain.suffix + ".part")
                with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                tmp.replace(plain)
            path = plain
        data = path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise FraudError(f"cannot read {path}: {exc}") from None
    path = path.resolve()
    first = data.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")
    cells = [c.strip().strip('"') for c in first.split(",")]
    if len(cells) != len(CSV_COLUMNS):
        raise FraudError(f"{path}:1: expected the dataset's {len(CSV_COLUMNS)} columns "
                         f"({CSV_COLUMNS[0]},...,{CSV_COLUMNS[-1]}), got {len(cells)}")
    lines, incomplete = _count_line_ends(data)
    return FileCheck(path, lines, tuple(cells) == CSV_COLUMNS, incomplete)


def connector_name(path: Path) -> str:
    """One connector per file (and so one stored offset per file): ingest-<name>-<hash of the path>."""
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in path.name)[:60]
    return f"ingest-{stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def _rest(worker: ConnectStandalone, method: str, path: str, body: Any = None) -> Any:
    return worker.request(method, path, body)


def _position(offsets: Any, path: Path) -> int:
    for entry in (offsets or {}).get("offsets", []):
        if entry.get("partition", {}).get("filename") == str(path):
            return int(entry.get("offset", {}).get("position") or 0)
    return 0


def _lines_after(path: Path, position: int) -> int:
    """Complete lines after character `position` (Connect counts characters, not bytes)."""
    data = path.read_bytes()
    if data.isascii():
        rest = data[position:]
    else:
        rest = data.decode("utf-8", "replace")[position:].encode("utf-8")
    return _count_line_ends(rest)[0]


def _end_offset(admin: KafkaAdmin, topic: str) -> int:
    """Records in `topic` so far (Connect's producer is not transactional: the high watermark counts them)."""
    return sum(admin.end_offsets([topic], committed=False).values())


def ingest_file(worker: ConnectStandalone, kafka: KafkaClientConfig, file: Path, topic: str, *,
                staging_dir: Path, name: str | None = None, again: bool = False, follow: bool = False,
                timeout_s: float = 600.0, on_progress: Callable[[int, int], None] | None = None,
                poll_s: float = 0.25) -> IngestResult:
    """Ingest `file` into `topic` through the running Connect `worker`; see the module docstring."""
    checked = check_file(file, staging_dir)
    name = name or connector_name(checked.path)
    config = file_source_config(checked.path, topic)
    admin = KafkaAdmin(kafka.with_client_id(f"{kafka.client_id}-ingest"))
    try:
        if not admin.describe([topic]):
            raise FraudError(f"topic {topic} does not exist on {kafka.bootstrap} (`fraudctl topics` creates it)")
        if name in worker.connectors():
            worker.delete_connector(name)
        _rest(worker, "POST", "/connectors", {"name": name, "config": config, "initial_state": "STOPPED"})
        try:
            if again:
                _rest(worker, "DELETE", f"/connectors/{name}/offsets")
            start = _position(_rest(worker, "GET", f"/connectors/{name}/offsets"), checked.path)
            expected = _lines_after(checked.path, start)
            if expected == 0 and not follow:
                return IngestResult(checked.path, topic, name, start, 0, 0, 0.0, False, checked.incomplete_last_line)
            base = _end_offset(admin, topic)
            started = time.monotonic()
            _rest(worker, "PUT", f"/connectors/{name}/resume")
            worker.wait_running(name, timeout_s=min(timeout_s, 60.0))
            sent = 0
            while sent < expected:
                if time.monotonic() - started > timeout_s:
                    raise FraudError(f"ingest of {checked.path}: {sent} of {expected} lines reached {topic} in "
                                     f"{timeout_s:g} s (connector {name}; see {worker.log_file})")
                time.sleep(poll_s)
                sent = _end_offset(admin, topic) - base
                if on_progress is not None:
                    on_progress(min(sent, expected), expected)
                if sent < expected:
                    _raise_if_failed(worker, name)
            seconds = time.monotonic() - started
        except BaseException:
            if not follow:
                _remove(worker, name)
            raise
        if not follow:
            _finish(worker, name, checked.path, start, expected)
        return IngestResult(checked.path, topic, name, start, expected, sent, seconds, follow,
                            checked.incomplete_last_line)
    finally:
        admin.close()


def _raise_if_failed(worker: ConnectStandalone, name: str) -> None:
    status = worker.connector_status(name)
    for part in [status.get("connector", {})] + status.get("tasks", []):
        if part.get("state") == "FAILED":
            trace = (part.get("trace") or "no trace").splitlines()[0]
            raise FraudError(f"connector {name} FAILED: {trace}")


def _finish(worker: ConnectStandalone, name: str, path: Path, start: int, expected: int) -> None:
    """Stop the connector so its offset is written (a later ingest then resumes there), then delete it."""
    _rest(worker, "PUT", f"/connectors/{name}/stop")
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        if worker.connector_status(name).get("connector", {}).get("state") == "STOPPED":
            position = _position(_rest(worker, "GET", f"/connectors/{name}/offsets"), path)
            if position > start or expected == 0:
                break
        time.sleep(0.2)
    worker.delete_connector(name)


def _remove(worker: ConnectStandalone, name: str) -> None:
    try:
        worker.delete_connector(name)
    except FraudError:
        pass


def progress_printer(enabled: bool) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A progress bar on stderr when it is a terminal (else nothing), and its close function."""
    if not enabled or not sys.stderr.isatty():
        return (lambda done, total: None), (lambda: None)
    from tqdm import tqdm

    bar: list[Any] = []

    def update(done: int, total: int) -> None:
        if not bar:
            bar.append(tqdm(total=total, unit="line", desc="ingest", file=sys.stderr, dynamic_ncols=True))
        bar[0].n = done
        bar[0].refresh()

    def close() -> None:
        if bar:
            bar[0].close()

    return update, close
