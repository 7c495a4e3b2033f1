"""Each model kind on small synthetic data: it trains, its numpy scorer and its TensorFlow twin (what is
exported) agree, and warm starting loads the saved members. Plus the pieces around the kinds: the
selection rule, the settings' validation, tuning's wiring and the rolling folds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from components.model_selector import choose
from fraud.features import FEATURES, Kind, transformed_name
from pipeline.models import KINDS, mlp
from pipeline.models.base import Column, Dataset
from pipeline.models.folds import rolling_folds

COLUMNS = tuple(Column(name, transformed_name(name), 2 if f.kind is Kind.TIME_OF_DAY else 1, f.kind)
                for name, f in FEATURES.items())
SMALL = {
    "autoencoder": {"widths": [8, 4, 8], "epochs": 2, "seeds": 2, "ensemble": 1},
    "supervised": {"widths": [8], "epochs": 2, "seeds": 2, "ensemble": 2},
    "gbt": {"num_trees": 5, "max_depth": 3},
    "hybrid": {"ae_widths": [8, 4, 8], "ae_epochs": 1, "ae_seeds": 1, "widths": [8], "epochs": 2, "seeds": 1},
}


def _data(n: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.05).astype(np.int64)
    x = rng.normal(size=(n, 31)).astype(np.float32)
    x[y == 1, 2:6] += 3.0  # frauds sit away from the normal rows in a few columns
    return Dataset(x, y, COLUMNS)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_kind_trains_and_its_graph_agrees_with_its_numpy_scorer(name: str, tmp_path) -> None:
    import tensorflow as tf

    kind = KINDS[name]
    config = kind.config(SMALL[name])
    train, validation = _data(1200, 0), _data(400, 1)
    fitted = kind.fit(train, validation, config, None, lambda m: None)
    raw = fitted.raw_scores(validation.x)
    out = fitted.graph(tf.constant(validation.x))
    np.testing.assert_allclose(out["raw"].numpy(), raw, rtol=1e-4, atol=1e-4)
    if "contributions" in out:
        assert out["contributions"].shape == validation.x.shape
    assert fitted.report.model == name and fitted.report.warm_started_from is None
    assert raw[validation.y == 1].mean() > raw[validation.y == 0].mean()

    fitted.save_warm_start(str(tmp_path / "warm"))
    again = kind.fit(train, validation, config, str(tmp_path / "warm"), lambda m: None)
    if name == "gbt":
        assert again.report.warm_started_from is None and "from scratch" in again.report.notes[0]
    else:
        assert again.report.warm_started_from == str(tmp_path / "warm")


def test_selection_takes_the_best_validation_figure_and_skips_missing_ones() -> None:
    assert choose({"a": 0.5, "b": 0.7, "c": None}) == "b"
    assert choose({"a": math.nan, "b": 0.1}) == "b"
    assert choose({"b": 0.5, "a": 0.5}) == "a"  # ties: the first name
    with pytest.raises(ValueError):
        choose({})


def test_training_and_tuning_settings_are_validated() -> None:
    from pipeline.pipeline import TrainingSettings, TuningSettings

    with pytest.raises(ValueError, match="unknown model kinds"):
        TrainingSettings(kinds=("forest",))
    with pytest.raises(ValueError, match="unknown MlpConfig keys"):
        TrainingSettings(configs={"supervised": {"width": [3]}})
    with pytest.raises(ValueError, match="not tunable"):
        TuningSettings(kinds=("gbt",))
    assert mlp.with_hyperparameters(mlp.MlpConfig(), {"widths": "128,64", "dropout": 0.1, "fraud_weight": 3.0}) == \
        mlp.MlpConfig(widths=(128, 64), dropout=0.1, fraud_weight=3.0)


def test_hybrid_head_takes_every_mlp_setting_with_the_mlp_defaults() -> None:
    import dataclasses

    from pipeline.models import hybrid

    own = {"exclude_kinds", "target"}  # each kind's own: which columns it sees, its threshold's target
    mlp_fields = {f.name for f in dataclasses.fields(mlp.MlpConfig)} - own
    assert set(hybrid._HEAD_FIELDS) == mlp_fields
    assert hybrid.HybridConfig().head() == mlp.MlpConfig()
    tuned = hybrid.HybridConfig(widths=(16,), dropout=0.0, learning_rate=0.01, max_steps=7).head()
    assert (tuned.widths, tuned.dropout, tuned.learning_rate, tuned.max_steps) == ((16,), 0.0, 0.01, 7)


def test_tuning_puts_a_tuner_before_the_trainer_it_feeds(tmp_path) -> None:
    from pipeline.pipeline import TrainingSettings, TuningSettings, create_pipeline

    def nodes(**options):
        p = create_pipeline(pipeline_root=str(tmp_path / "root"), exports_dir=str(tmp_path / "exports"),
                            schema_file=str(tmp_path / "schema.pbtxt"), serving_model_dir=str(tmp_path / "models"),
                            training=TrainingSettings(kinds=("autoencoder", "supervised")), **options)
        return {c.id: c for c in p.components}

    assert not [n for n in nodes() if n.startswith("Tuner_")]  # off by default (and in the demo)
    tuned = nodes(tuning=TuningSettings(max_trials=2, epochs=1))
    assert "Tuner_supervised" in tuned and "Tuner_autoencoder" not in tuned
    assert "hyperparameters" in tuned["Trainer_supervised"].inputs
    assert "hyperparameters" not in tuned["Trainer_autoencoder"].inputs
    assert {"base_model_supervised", "KindBlessing_supervised", "ModelSelector", "Evaluator", "ModelScorecard",
            "serving_model"} <= set(tuned)


def test_rolling_folds_train_on_everything_before_and_test_on_the_next_unit() -> None:
    hour = 3600.0
    folds = rolling_folds(np.arange(0, 48 * hour, 60.0), 12 * hour, 24 * hour)
    assert [(f.train_end_s / hour, f.test_end_s / hour) for f in folds] == [(24, 36), (36, 48)]
    assert rolling_folds(np.arange(0, 10 * hour, 60.0), 12 * hour, 24 * hour) == []
