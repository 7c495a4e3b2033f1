"""Unit tests of the training library: metrics, threshold choice, calibration, configs, layout."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from fraud import metrics
from fraud.features import FEATURE_NAMES, Kind
from pipeline.models import KINDS
from pipeline.models import base as training
from pipeline.models.autoencoder import AutoencoderConfig
from pipeline.models.base import (
    ALERT_RATE,
    PRECISION,
    Calibration,
    ThresholdTarget,
    choose_threshold,
)
from pipeline.models.mlp import MlpConfig as SupervisedConfig


def _data(seed: int = 0, n: int = 5000, frauds: int = 40, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=int)
    y[rng.choice(n, frauds, replace=False)] = 1
    s = rng.normal(size=n) + 2.5 * y
    if ties:
        s = np.round(s, 1)
    return y, s


@pytest.mark.parametrize("ties", [False, True])
def test_ranking_metrics_match_scikit_learn(ties: bool) -> None:
    y, s = _data(ties=ties)
    assert metrics.average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert metrics.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_precision_at_k_and_at_threshold() -> None:
    y = np.array([1, 0, 1, 0, 0, 1])
    s = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.05])
    assert metrics.precision_at_k(y, s, 3) == pytest.approx(2 / 3)
    precision, recall, alerts = metrics.precision_recall_at(y, s, 0.7)
    assert (precision, recall, alerts) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 3)


def test_precision_target_gives_most_recall_at_that_precision() -> None:
    y, s = _data(seed=1)
    choice = choose_threshold(s, y, ThresholdTarget(PRECISION, 0.6))
    precision, recall, _ = metrics.precision_recall_at(y, s, choice.threshold)
    assert choice.target_met
    assert precision >= 0.6 and precision == pytest.approx(choice.precision)
    assert recall == pytest.approx(choice.recall)
    # Any lower threshold that still reaches the precision would give no more recall.
    for t in np.unique(s[s < choice.threshold])[-200:]:
        p, r, _ = metrics.precision_recall_at(y, s, t)
        assert p < 0.6 or r <= choice.recall


def test_unreachable_precision_falls_back_to_best_f1_and_says_so() -> None:
    y, s = _data(seed=2)
    s = s - 2.5 * y  # no signal: precision never reaches 0.99
    choice = choose_threshold(s, y, ThresholdTarget(PRECISION, 0.99))
    assert not choice.target_met
    assert 0.0 <= choice.precision < 0.99


def test_alert_budget_flags_at_most_that_share() -> None:
    y, s = _data(seed=3)
    choice = choose_threshold(s, y, ThresholdTarget(ALERT_RATE, 0.01))
    flagged = int((s >= choice.threshold).sum())
    assert flagged <= 0.01 * len(s)
    assert flagged == pytest.approx(0.01 * len(s), abs=1)
    assert choice.alert_rate == pytest.approx(flagged / len(s))


def test_target_is_validated() -> None:
    with pytest.raises(ValueError, match="kind"):
        ThresholdTarget("recall", 0.5)
    with pytest.raises(ValueError, match="value"):
        ThresholdTarget(PRECISION, 1.5)


def test_platt_calibration_recovers_a_logistic_relation() -> None:
    rng = np.random.default_rng(4)
    raw = rng.normal(size=200_000)
    p = 1 / (1 + np.exp(-(2.0 * raw - 5.0)))
    y = (rng.random(len(raw)) < p).astype(int)
    cal = Calibration.fit(raw, y)
    assert cal.a == pytest.approx(2.0, rel=0.05)
    assert cal.b == pytest.approx(-5.0, rel=0.05)
    scores = cal.apply(raw)
    assert 0.0 <= scores.min() and scores.max() <= 1.0
    # Calibrated: mean prediction close to the observed fraud rate.
    assert scores.mean() == pytest.approx(y.mean(), rel=0.05)


def test_calibration_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both classes"):
        Calibration.fit(np.arange(10.0), np.zeros(10))


def test_configs_from_dict_reject_unknown_keys_and_parse_target() -> None:
    cfg = training.config_from_dict(AutoencoderConfig, {"epochs": 3, "widths": [8, 4, 8],
                                                        "target": {"kind": "alert_rate", "value": 0.01}})
    assert cfg.epochs == 3 and cfg.widths == (8, 4, 8)
    assert cfg.target == ThresholdTarget(ALERT_RATE, 0.01)
    assert training.config_from_dict(SupervisedConfig, {}) == SupervisedConfig()
    with pytest.raises(ValueError, match="unknown"):
        training.config_from_dict(SupervisedConfig, {"epoch": 3})
    for name, kind in KINDS.items():
        assert kind.name == name and kind.config({}) == kind.config_class()


def test_max_steps_bounds_training() -> None:
    assert training.epochs_and_steps(1000, 100, 5, None) == (5, None)
    assert training.epochs_and_steps(1000, 100, 5, 3) == (1, 3)
    assert training.epochs_and_steps(1000, 100, 5, 25) == (2, None)


def test_input_columns_and_contribution_matrix_follow_the_feature_module() -> None:
    class _Spec:
        def __init__(self, shape):
            self.shape = shape

    spec = {training.transformed_name(n): _Spec([2] if n == "Time" else [1]) for n in FEATURE_NAMES}
    columns = training.input_columns(spec)
    assert [c.raw_name for c in columns] == list(FEATURE_NAMES)
    matrix = training.contribution_matrix(columns)
    assert matrix.shape == (31, 30)
    assert matrix[:2, FEATURE_NAMES.index("Time")].tolist() == [1.0, 1.0]
    assert (matrix.sum(axis=1) == 1).all()
    without_time = training.input_columns(spec, exclude_kinds=[Kind.TIME_OF_DAY])
    assert "Time" not in [c.raw_name for c in without_time]
    assert training.contribution_matrix(without_time)[:, FEATURE_NAMES.index("Time")].sum() == 0
    # The hybrid's autoencoder sees every column but Time's [sin, cos] (the first two).
    assert training.column_indices(columns, exclude_kinds=["time_of_day"]).tolist() == list(range(2, 31))


def test_recall_at_fpr_counts_frauds_above_the_highest_allowed_normal() -> None:
    y = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0])
    s = np.array([12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1], dtype=float)
    # 9 normal rows: at FPR <= 1/9 one normal may be flagged -> the two frauds above the 2nd normal.
    assert metrics.recall_at_fpr(y, s, fpr=1 / 9) == pytest.approx(2 / 3)
    assert metrics.recall_at_fpr(y, s, fpr=0.0) == pytest.approx(1 / 3)
    assert metrics.recall_at_fpr(y, s, fpr=1.0) == pytest.approx(1.0)
    # Ties are flagged together: a fraud tied with a normal is only caught when the normal may be.
    assert metrics.recall_at_fpr(np.array([1, 0, 0]), np.array([1.0, 1.0, 0.0]), fpr=0.0) == 0.0


def test_bootstrap_interval_brackets_auprc_and_narrows_with_more_frauds() -> None:
    y, s = _data(seed=3, n=4000, frauds=20)
    lo, hi = metrics.bootstrap_interval(y, s, samples=300)
    assert lo <= metrics.average_precision(y, s) <= hi
    y2, s2 = _data(seed=3, n=40000, frauds=400)
    lo2, hi2 = metrics.bootstrap_interval(y2, s2, samples=100)
    assert hi2 - lo2 < hi - lo
    card = metrics.scorecard(y, s, samples=50)
    assert card.frauds == 20 and card.rows == 4000
    assert metrics.Scorecard.from_dict(card.to_dict()) == card



def test_signature_methods_are_rewritten_and_the_model_still_loads(tmp_path) -> None:
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    from fraud.model_info import load_custom_ops, saved_model_ops

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs):
            return {"outputs": tf.strings.to_number(inputs)}

    module = Tiny()
    export = tmp_path / "m"
    tf.saved_model.save(module, str(export), signatures={"regression": module.regress.get_concrete_function()})
    training.set_signature_methods(str(export), {"regression": training.REGRESS_METHOD})
    proto = saved_model_pb2.SavedModel.FromString((export / "saved_model.pb").read_bytes())
    assert proto.meta_graphs[0].signature_def["regression"].method_name == "tensorflow/serving/regress"
    loaded = tf.saved_model.load(str(export))
    assert loaded.signatures["regression"](inputs=tf.constant([b"1.5"]))["outputs"].numpy().tolist() == [1.5]
    with pytest.raises(ValueError, match="no signature 'classification'"):
        training.set_signature_methods(str(export), {"classification": training.CLASSIFY_METHOD})
    # No decision-forest ops in it: nothing to import.
    assert "StringToNumber" in saved_model_ops(str(export)) and load_custom_ops(str(export)) == []
