"""The privacy check: search topics, files and the warehouse for raw card and customer ids.

After preprocessing, no raw card number or customer id may appear in any downstream topic (clean
transactions, scores, labels, dead letters, alerts), in training exports, in the warehouse or in logs.
`IdScanner` finds any of a set of raw ids as a substring of arbitrary bytes; the scan functions apply it
to every key, value and header of a topic (aborted transactional records included: they sit in the log
too), to every file under a directory (gzip unpacked), and to every text column of a DuckDB warehouse
(its files compress strings, so scanning their bytes would not do).

The ids come from what went in: the synthetic pool of `fraudctl replay` (`pool_ids`) or a file of
known ids. Findings name the place and a masked form of the id, never the id itself.

Scanning is fast because ids have few *shapes*: each id is turned into a pattern with its digits
generalized (`9\\d{15}`-like, `cust-\\d{6}`), every window of text matching a shape is a candidate,
and candidates are looked up in the id set.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fraud.errors import FraudError
from fraud.kafka_config import KafkaClientConfig
from fraud.replay import CardPool
from fraud.stream.reader import read_to_end
from fraud.stream.records import Record
from preprocessing.anonymize import mask

_MAX_SHAPES = 64
_GZIP_MAGIC = b"\x1f\x8b"


def _shape(value: str, letters: bool) -> str:
    """A regex matching `value` with its digits (and, if `letters`, its ASCII letters) generalized."""
    runs: list[list[Any]] = []  # [character class, repeat]
    for ch in value:
        if ch.isdigit():
            cls = r"\d"
        elif letters and ch.isascii() and ch.isalpha():
            cls = "[A-Za-z]"
        else:
            cls = re.escape(ch)
        if runs and runs[-1][0] == cls:
            runs[-1][1] += 1
        else:
            runs.append([cls, 1])
    return "".join(c if n == 1 else f"{c}{{{n}}}" for c, n in runs)


@dataclass(frozen=True)
class Finding:
    where: str  # e.g. "topic fraud.transactions[2]@15 value", "file /x/y.json", "warehouse scores.card_id"
    kind: str  # "card_id" or "customer_id"
    masked: str  # the id with all but its last 2 characters masked

    def __str__(self) -> str:
        return f"{self.where}: raw {self.kind} {self.masked}"


class IdScanner:
    """Finds raw ids (id -> kind) as substrings of bytes."""

    def __init__(self, ids: Mapping[str, str]) -> None:
        if not ids:
            raise FraudError("the privacy check needs at least one raw id to look for")
        self.ids = {k.encode("utf-8"): v for k, v in ids.items()}
        shapes = {_shape(i, letters=False) for i in ids}
        if len(shapes) > _MAX_SHAPES:
            shapes = {_shape(i, letters=True) for i in ids}
        self._lengths: set[int] | None = None
        if len(shapes) > _MAX_SHAPES:  # ids without structure: look at every window of each length
            self._patterns: list[re.Pattern[bytes]] = []
            self._lengths = {len(i) for i in self.ids}
        else:
            self._patterns = [re.compile(b"(?=(" + s.encode() + b"))") for s in sorted(shapes)]

    def find(self, data: bytes) -> set[bytes]:
        found: set[bytes] = set()
        ids = self.ids
        if self._lengths is not None:
            for n in self._lengths:
                for i in range(len(data) - n + 1):
                    if data[i:i + n] in ids:
                        found.add(data[i:i + n])
            return found
        for pattern in self._patterns:
            for m in pattern.finditer(data):
                if m.group(1) in ids:
                    found.add(m.group(1))
        return found

    def findings(self, data: bytes, where: str) -> list[Finding]:
        return [Finding(where, self.ids[raw], mask(raw.decode("utf-8"), "mask_keep_right", 2))
                for raw in sorted(self.find(data))]


def pool_ids(cards: int, seed: int) -> dict[str, str]:
    """Every raw id of replay's synthetic card pool: card numbers and customer ids."""
    pool = CardPool(cards, seed)
    out = {c.card_id: "card_id" for c in pool.cards}
    out.update({c.customer_id: "customer_id" for c in pool.cards})
    return out


def read_ids_file(path: Path) -> dict[str, str]:
    """Ids from a file: one per line, optionally `kind<TAB>id` (kind defaults to "id")."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise FraudError(f"cannot read ids file {path}: {exc.strerror}") from None
    out: dict[str, str] = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        kind, _, value = line.partition("\t") if "\t" in line else ("id", "", line)
        out[value.strip()] = kind.strip()
    return out


# ---------------------------------------------------------------------------------------------
# Where to look


def iter_topic(kafka: KafkaClientConfig, topic: str, timeout_s: float = 60.0,
               isolation_level: str = "read_uncommitted") -> Iterator[Record]:
    """Every record of `topic` from the log start to its current end (by default read_uncommitted: records of
    aborted transactions too, since they sit in the log as well)."""
    return read_to_end(kafka, [topic], group_id=f"{kafka.client_id}-privacy", timeout_s=timeout_s,
                       read_committed=isolation_level == "read_committed")


def scan_topic(kafka: KafkaClientConfig, topic: str, scanner: IdScanner) -> tuple[int, list[Finding]]:
    """(records read, findings) for every key, value and header of `topic`."""
    findings: list[Finding] = []
    n = 0
    for rec in iter_topic(kafka, topic):
        n += 1
        where = f"topic {topic}[{rec.partition}]@{rec.offset}"
        if rec.key:
            findings += scanner.findings(rec.key, where + " key")
        if rec.value:
            findings += scanner.findings(rec.value, where + " value")
        for name, value in rec.headers or ():
            findings += scanner.findings(name.encode("utf-8") + b"=" + (value or b""), where + f" header {name}")
    return n, findings


def _files(root: Path) -> Iterable[Path]:
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path


def scan_path(root: Path, scanner: IdScanner) -> tuple[int, list[Finding]]:
    """(files read, findings) for a file or every file under a directory (gzip files unpacked)."""
    root = Path(root)
    if not root.exists():
        raise FraudError(f"nothing to scan at {root}")
    findings: list[Finding] = []
    n = 0
    for path in _files(root):
        n += 1
        try:
            data = path.read_bytes()
            if data[:2] == _GZIP_MAGIC:
                data = gzip.decompress(data)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise FraudError(f"cannot read {path}: {exc}") from None
        findings += scanner.findings(data, f"file {path}")
    return n, findings


def scan_duckdb(path: Path, scanner: IdScanner) -> tuple[int, list[Finding]]:
    """(text columns read, findings) for every VARCHAR/JSON column of every table and view of a DuckDB file."""
    import duckdb

    if not Path(path).is_file():
        raise FraudError(f"no warehouse at {path}")
    findings: list[Finding] = []
    columns = 0
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.execute(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns "
            "WHERE data_type IN ('VARCHAR', 'JSON', 'BLOB') ORDER BY 1, 2, 3").fetchall()
        for schema, table, column in rows:
            columns += 1
            query = f'SELECT DISTINCT CAST("{column}" AS VARCHAR) FROM "{schema}"."{table}" WHERE "{column}" IS NOT NULL'
            values = con.execute(query).fetchall()
            data = "\n".join(v[0] for v in values).encode("utf-8")
            findings += scanner.findings(data, f"warehouse {table}.{column}")
    finally:
        con.close()
    return columns, findings
