"""The shipped sample agrees with its README, and scripts/make_sample.py makes it the way it says."""

from __future__ import annotations

import gzip
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fraud import dataset
from fraud.dataset import iter_rows, load_arrays
from fraud.features import CSV_COLUMNS
from fraud.paths import SAMPLE_CSV, SOURCE_ROOT

SCRIPT = SOURCE_ROOT / "scripts" / "make_sample.py"
README = SAMPLE_CSV.parent / "README.md"


def _readme_table(path: Path) -> dict[str, str]:
    table = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.fullmatch(r"\| ([a-zA-Z0-9 ]+) \| `?([^`|]+?)`? \|", line.strip())
        if m and m.group(1) != "what":
            table[m.group(1)] = m.group(2)
    return table


def test_sample_matches_its_readme():
    table = _readme_table(README)
    data = SAMPLE_CSV.read_bytes()
    assert hashlib.sha256(data).hexdigest() == table["sample sha256"]
    assert len(data) == int(table["sample bytes"])
    rows = list(iter_rows(SAMPLE_CSV))
    assert len(rows) == int(table["rows"]) == int(table["last row"]) - int(table["first row"]) + 1
    assert sum(r.label for r in rows) == int(table["frauds"])
    assert rows[0].features["Time"] == float(table["first Time"])
    assert rows[-1].features["Time"] == float(table["last Time"])
    assert table["source sha256"] == dataset.DATASET_SHA256


def test_sample_is_time_ordered_small_and_has_frauds_for_the_demo():
    arrays = load_arrays(SAMPLE_CSV)
    assert np.all(np.diff(arrays.time) >= 0)
    assert arrays.labels.sum() >= 40
    assert SAMPLE_CSV.stat().st_size < 5_000_000
    assert SAMPLE_CSV.read_text().splitlines()[0] == ",".join(f'"{c}"' for c in CSV_COLUMNS)


def test_readme_has_attribution():
    text = README.read_text(encoding="utf-8")
    for needle in ("Worldline", "Université Libre de Bruxelles", "mlg-ulb/creditcardfraud",
                   "Database Contents License (DbCL) v1.0", "Dal Pozzolo", "SSCI", "2015"):
        assert needle in text


def test_sample_is_the_stated_slice_of_the_full_file():
    if not dataset.SHARED_DATASET.is_file():
        pytest.skip("the shared full dataset is not present")
    table = _readme_table(README)
    with gzip.open(dataset.SHARED_DATASET, "rb") as f:
        lines = f.read().split(b"\n")
    first, last = int(table["first row"]), int(table["last row"])
    expected = b"\n".join([lines[0], *lines[1 + first:2 + last]]) + b"\n"
    assert SAMPLE_CSV.read_bytes() == expected


def _load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_sample", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_best_window_picks_the_earliest_window_with_most_frauds():
    best_window = _load_script().best_window
    labels = np.array([1, 0, 0, 1, 1, 0, 1, 1, 0, 0])
    assert best_window(labels, 3) == (2, 2)  # windows at 2, 3, 4 and 5 all hold 2: the earliest wins
    assert best_window(labels, 2) == (3, 2)
    assert best_window(labels, 10) == (0, 5)
    assert best_window(np.zeros(5, dtype=int), 2) == (0, 0)


def test_script_writes_the_densest_slice_verbatim(tmp_path):
    header = ",".join(f'"{c}"' for c in CSV_COLUMNS)
    labels = [0, 0, 1, 0, 1, 1, 0, 0, 1, 0]
    lines = [f"{i}," + ",".join(f"{i}.{k}" for k in range(1, 30)) + f',"{y}"' for i, y in enumerate(labels)]
    source = tmp_path / "full.csv.gz"
    source.write_bytes(gzip.compress(("\n".join([header, *lines]) + "\n").encode()))
    out = tmp_path / "sample" / "s.csv"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--source", str(source), "--out", str(out), "--rows", "4",
                           "--any-source"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == "\n".join([header, *lines[2:6]]) + "\n"
    table = _readme_table(out.parent / "README.md")
    assert (table["first row"], table["last row"], table["frauds"]) == ("2", "5", "3")

    # without --any-source, a file that is not the published dataset is refused in one line
    proc = subprocess.run([sys.executable, str(SCRIPT), "--source", str(source), "--out", str(out)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "is not the published dataset" in proc.stderr
