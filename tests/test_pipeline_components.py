"""The small custom components: the data-validation gate on real TFDV anomalies against the curated
schema, the model selector's choice, the integer-version pusher."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow_data_validation as tfdv

from components import versioned_pusher
from components.validation_gate import ANOMALIES_FILE, summarize_anomalies
from fraud.features import FEATURE_NAMES, LABEL_KEY
from schema import SCHEMA_FILE


def _frame(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {name: rng.normal(size=n) for name in FEATURE_NAMES}
    data["Time"] = np.arange(n, dtype=float) * 10
    data["Amount"] = rng.exponential(50, size=n)
    data[LABEL_KEY] = (rng.random(n) < 0.05).astype(int)
    data["transaction_id"] = [f"tx-{i:06d}" for i in range(n)]
    data["event_time_ms"] = np.arange(n) * 10_000
    data["card_id"] = [f"card-{i % 7}" for i in range(n)]
    return pd.DataFrame(data)


def _anomalies_dir(tmp_path: Path, frame: pd.DataFrame, environment: str = "TRAINING") -> Path:
    schema = tfdv.load_schema_text(str(SCHEMA_FILE))
    stats = tfdv.generate_statistics_from_dataframe(frame)
    anomalies = tfdv.validate_statistics(stats, schema, environment=environment)
    split = tmp_path / "Split-train"
    split.mkdir(parents=True)
    (split / ANOMALIES_FILE).write_bytes(anomalies.SerializeToString())
    return tmp_path


def test_clean_data_passes_the_curated_schema(tmp_path: Path) -> None:
    assert summarize_anomalies(str(_anomalies_dir(tmp_path, _frame())), ["train"]) == []


def test_out_of_range_and_missing_features_are_named(tmp_path: Path) -> None:
    frame = _frame()
    frame.loc[3, "V3"] = 5_000.0
    frame.loc[4, "Amount"] = -1.0
    frame = frame.drop(columns=["V7"])
    lines = summarize_anomalies(str(_anomalies_dir(tmp_path, frame)), ["train"])
    text = "\n".join(lines)
    assert len(lines) == 3
    assert "feature V3" in text and "feature Amount" in text and "feature V7" in text
    assert all(line.startswith("split train: ") for line in lines)


def test_serving_environment_needs_no_label_and_no_ids(tmp_path: Path) -> None:
    serving = _frame().drop(columns=[LABEL_KEY, "transaction_id", "event_time_ms", "card_id"])
    assert summarize_anomalies(str(_anomalies_dir(tmp_path, serving, "SERVING")), ["train"]) == []
    training = _frame().drop(columns=[LABEL_KEY])
    assert "feature Class" in "\n".join(summarize_anomalies(str(_anomalies_dir(tmp_path / "t", training)), ["train"]))


def test_schema_lists_exactly_the_feature_module() -> None:
    schema = tfdv.load_schema_text(str(SCHEMA_FILE))
    names = [f.name for f in schema.feature]
    assert names[:len(FEATURE_NAMES)] == list(FEATURE_NAMES)
    assert set(names) == set(FEATURE_NAMES) | {LABEL_KEY, "transaction_id", "event_time_ms", "card_id"}
    label = tfdv.get_feature(schema, LABEL_KEY)
    assert list(label.not_in_environment) == ["SERVING"]
    assert tfdv.get_feature(schema, "Amount").float_domain.min == 0.0


def test_pusher_writes_the_next_integer_version_atomically(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"pb")
    (model / "variables" / "variables.index").write_bytes(b"ix")
    base = tmp_path / "serving" / "fraud"
    assert versioned_pusher.push_model(str(model), str(base)) == (1, str(base / "1"))
    (base / "not-a-version").mkdir()
    (base / "7").mkdir()
    version, path = versioned_pusher.push_model(str(model), str(base))
    assert version == 8 and (Path(path) / "variables" / "variables.index").read_bytes() == b"ix"
    assert sorted(p for p in os.listdir(base)) == ["1", "7", "8", "not-a-version"]  # no staging left behind


def test_pusher_does_not_overwrite_a_version_that_appears(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"pb")
    base = tmp_path / "base"
    base.mkdir()
    (base / "1").mkdir()
    (base / "1" / "saved_model.pb").write_bytes(b"someone else's")
    monkeypatch.setattr(versioned_pusher, "next_version", lambda _: 1)  # a racing pusher took version 1
    with pytest.raises(OSError):
        versioned_pusher.push_model(str(model), str(base))
    assert (base / "1" / "saved_model.pb").read_bytes() == b"someone else's"
    assert sorted(os.listdir(base)) == ["1"]
