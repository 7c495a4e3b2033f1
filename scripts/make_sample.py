#!/usr/bin/env python
"""Make the shipped sample (`fraud/sample/creditcard_sample.csv` and its README) from the full dataset.

The sample is a contiguous, time-ordered slice of the original file: the window of `--rows` data
rows holding the most frauds (the earliest such window, so the result is deterministic). Lines are
copied byte for byte, header included, so every reader treats the sample like the full file.

    .venv/bin/python scripts/make_sample.py                 # from `fraudctl data fetch`'s copy
    .venv/bin/python scripts/make_sample.py --source PATH   # from any copy (csv or csv.gz)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
from pathlib import Path

import numpy as np

from fraud.dataset import DATASET_SHA256, SHARED_DATASET, load_arrays
from fraud.errors import FraudError
from fraud.features import FEATURE_NAMES
from fraud.paths import SAMPLE_CSV, load_paths

DEFAULT_ROWS = 9_000  # ~4.8 MB: small enough for git, enough frauds (71) for the demo and pipeline tests
README_NAME = "README.md"


def best_window(labels: np.ndarray, size: int) -> tuple[int, int]:
    """(start, frauds) of the earliest window of `size` consecutive rows with the most frauds."""
    if not 0 < size <= len(labels):
        raise FraudError(f"window of {size} rows does not fit in {len(labels)} rows")
    cumulative = np.concatenate([[0], np.cumsum(labels, dtype=np.int64)])
    counts = cumulative[size:] - cumulative[:-size]
    start = int(np.argmax(counts))  # argmax returns the first maximum
    return start, int(counts[start])


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    with opener(path, "rb") as f:
        return f.read()


def _readme(*, source_sha: str, source_rows: int, source_frauds: int, start: int, rows: int, frauds: int,
            first_time: float, last_time: float, sample_sha: str, sample_bytes: int) -> str:
    return f"""# creditcard_sample.csv: a slice of the ULB credit-card fraud dataset

`creditcard_sample.csv` holds {rows:,} consecutive rows of the public **Credit Card Fraud Detection**
dataset, copied byte for byte (same quoted header, quoted `Class`), for the tests and the demo.
The full file is fetched and verified by `fraudctl data fetch`.

## Origin, license, citation

- Dataset: "Credit Card Fraud Detection": card transactions made by European cardholders over two
  days in September 2013, collected and analysed during a research collaboration of **Worldline**
  and the **Machine Learning Group (MLG) of the Université Libre de Bruxelles (ULB)** on big data
  mining and fraud detection. Published on Kaggle as `mlg-ulb/creditcardfraud`.
- License: **Database Contents License (DbCL) v1.0** (the contents licence that goes with the Open
  Database License, ODbL v1.0), as given on the Kaggle page. This slice is distributed under the
  same license.
- Cite: Andrea Dal Pozzolo, Olivier Caelen, Reid A. Johnson and Gianluca Bontempi, "Calibrating
  Probability with Undersampling for Unbalanced Classification", IEEE Symposium Series on
  Computational Intelligence (SSCI), 2015.
- Features `V1`..`V28` are principal components computed by the data providers; only `Time`
  (seconds since the first transaction) and `Amount` are untransformed. `Class` is 1 for fraud.

## How this slice was made

`scripts/make_sample.py` read the full file (sha256 of the uncompressed CSV
`{source_sha}`, {source_rows:,} rows, {source_frauds} frauds) and kept the window of {rows:,}
consecutive data rows with the most frauds (the earliest such window). Row numbers are 0-based
positions among the full file's data rows (the header is not counted). Rebuild with
`.venv/bin/python scripts/make_sample.py`.

| what | value |
| --- | --- |
| source sha256 | `{source_sha}` |
| first row | {start} |
| last row | {start + rows - 1} |
| rows | {rows} |
| frauds | {frauds} |
| first Time | {first_time:g} |
| last Time | {last_time:g} |
| sample bytes | {sample_bytes} |
| sample sha256 | `{sample_sha}` |

The slice is time-ordered (non-decreasing `Time`) and its fraud rate ({frauds / rows:.2%}) is
several times the full file's (0.17 %): it was chosen for having frauds to find, not to be
representative.
"""


def make_sample(source: Path, out: Path, rows: int, *, any_source: bool = False) -> str:
    data = _read_bytes(source)
    source_sha = hashlib.sha256(data).hexdigest()
    if source_sha != DATASET_SHA256 and not any_source:
        raise FraudError(f"{source} is not the published dataset (sha256 {source_sha}, expected {DATASET_SHA256})")
    arrays = load_arrays(source)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    header, body = lines[0], lines[1:]
    if len(body) != len(arrays.labels):
        raise FraudError(f"{source}: {len(body)} lines but {len(arrays.labels)} rows (quoted newlines?)")
    start, frauds = best_window(arrays.labels, rows)
    sample = b"\n".join([header, *body[start:start + rows]]) + b"\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(sample)
    time = arrays.features[start:start + rows, FEATURE_NAMES.index("Time")]
    readme = _readme(source_sha=source_sha, source_rows=len(body), source_frauds=int(arrays.labels.sum()),
                     start=start, rows=rows, frauds=frauds, first_time=float(time[0]), last_time=float(time[-1]),
                     sample_sha=hashlib.sha256(sample).hexdigest(), sample_bytes=len(sample))
    (out.parent / README_NAME).write_text(readme, encoding="utf-8")
    return f"wrote {out}: rows {start}..{start + rows - 1} of {source} ({rows} rows, {frauds} frauds, {len(sample):,} bytes)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=None,
                        help="full dataset (csv or csv.gz); default: the fetched copy, else the shared copy")
    parser.add_argument("--out", type=Path, default=SAMPLE_CSV, help=f"default: {SAMPLE_CSV}")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"rows in the slice (default {DEFAULT_ROWS})")
    parser.add_argument("--any-source", action="store_true",
                        help="accept a source that is not the published file (for tests)")
    args = parser.parse_args(argv)
    source = args.source
    if source is None:
        fetched = load_paths().dataset_csv_gz
        source = fetched if fetched.is_file() else SHARED_DATASET
    try:
        if not source.is_file():
            raise FraudError(f"no dataset at {source}: run `fraudctl data fetch` or pass --source")
        print(make_sample(source, args.out, args.rows, any_source=args.any_source))
    except FraudError as exc:
        print(f"make_sample: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
