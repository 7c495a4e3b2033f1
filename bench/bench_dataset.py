"""How fast the dataset readers are, as ratios against a baseline measured in the same run.

Baseline: decompress the file and split it into lines (the floor every reader pays). Then
`iter_rows` (csv module, a dict per row) and `load_arrays` (Arrow's CSV parser into numpy).

    .venv/bin/python bench/bench_dataset.py [PATH]     # default: the fetched dataset, else the sample
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

from fraud.dataset import iter_rows, load_arrays
from fraud.paths import SAMPLE_CSV, load_paths


def _best_of(repeats: int, fn) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    path = args.path or (load_paths().dataset_csv_gz if load_paths().dataset_csv_gz.is_file() else SAMPLE_CSV)

    def lines() -> int:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            return sum(1 for _ in f) - 1

    def rows() -> int:
        return sum(1 for _ in iter_rows(path))

    def arrays() -> int:
        return len(load_arrays(path).labels)

    base, n = _best_of(args.repeats, lines)
    print(f"{path}: {n} rows, best of {args.repeats}")
    print(f"baseline  decompress + split lines  {base:7.3f} s  {n / base:12,.0f} rows/s  1.00x")
    for name, fn in (("iter_rows", rows), ("load_arrays", arrays)):
        t, count = _best_of(args.repeats, fn)
        assert count == n, (name, count, n)
        print(f"{name:<11} {'':<22}{t:7.3f} s  {n / t:12,.0f} rows/s  {t / base:.2f}x baseline time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
