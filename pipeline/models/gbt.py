"""Gradient-boosted trees with TensorFlow Decision Forests (the `gbt` model kind).

A TF-DF GradientBoostedTreesModel (binary classification) on the transformed features; the
validation rows are its validation set (early stopping when the validation loss stops falling).
Normal train rows can be subsampled (`normal_sample_rate`, every fraud is kept): boosting time grows
with the rows while the few frauds carry the signal. The raw score is the logit of the model's
probability; the served graph runs TF-DF's inference ops (`SimpleML*`), so whatever loads the model
imports tensorflow_decision_forests first (fraud.model_info.load_custom_ops).

Warm start: decision forests cannot continue boosting on new data, so every run trains from scratch
and says so in its report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fraud.metrics import average_precision
from pipeline.models import base

NAME = "gbt"
_EPS = 1e-6


@dataclass(frozen=True)
class GbtConfig:
    num_trees: int = 300
    max_depth: int = 6
    shrinkage: float = 0.1
    min_examples: int = 5
    subsample: float = 1.0
    #: Share of the normal train rows kept (all frauds are kept); 1.0 = all.
    normal_sample_rate: float = 1.0
    num_threads: int = 2
    seed: int = 0
    max_steps: int | None = None  # unused (trees, not gradient steps); TrainArgs.num_steps is ignored
    exclude_kinds: tuple[str, ...] = ()
    target: base.ThresholdTarget = base.target_field(0.8)


def _logit(p: Any) -> Any:
    import tensorflow as tf

    p = tf.clip_by_value(p, _EPS, 1.0 - _EPS)
    return tf.math.log(p) - tf.math.log1p(-p)


class FittedGbt(base.Fitted):
    def __init__(self, model: Any, report: base.TrainingReport) -> None:
        self.model = model
        self.report = report

    def raw_scores(self, x: np.ndarray) -> np.ndarray:
        p = np.clip(base.predict(self.model, x.astype(np.float32))[:, 0].astype(np.float64), _EPS, 1.0 - _EPS)
        return np.log(p) - np.log1p(-p)

    def graph(self, x: Any) -> dict[str, Any]:
        import tensorflow as tf

        return {"raw": _logit(tf.reshape(self.model(x), [-1]))}

    def trackables(self) -> list[Any]:
        return [self.model]


def sample_rows(data: base.Dataset, rate: float, seed: int) -> base.Dataset:
    """Every fraud and a `rate` share of the normal rows, in their original order."""
    if rate >= 1.0:
        return data
    keep = (data.y == 1) | (np.random.default_rng(seed).random(len(data.y)) < rate)
    return base.Dataset(x=data.x[keep], y=data.y[keep], columns=data.columns)


class Gbt(base.ModelKind):
    name = NAME
    config_class = GbtConfig

    def fit(self, train: base.Dataset, validation: base.Dataset, config: GbtConfig, warm_start: str | None,
            log: base.Log) -> FittedGbt:
        import tensorflow as tf
        import tensorflow_decision_forests as tfdf

        start = time.time()
        used = sample_rows(train, config.normal_sample_rate, config.seed)
        model = tfdf.keras.GradientBoostedTreesModel(
            task=tfdf.keras.Task.CLASSIFICATION, num_trees=config.num_trees, max_depth=config.max_depth,
            shrinkage=config.shrinkage, min_examples=config.min_examples, subsample=config.subsample,
            num_threads=config.num_threads, random_seed=config.seed, verbose=0)

        def batches(d: base.Dataset) -> Any:
            return tf.data.Dataset.from_tensor_slices((d.x.astype(np.float32), d.y)).batch(65_536)

        model.fit(batches(used), validation_data=batches(validation) if validation.y.any() else None, verbose=0)
        trees = model.make_inspector().num_trees()
        fitted = FittedGbt(model, report=None)  # type: ignore[arg-type]
        val_auprc = average_precision(validation.y, fitted.raw_scores(validation.x)) if validation.y.any() \
            else float("nan")
        log(f"{NAME}: {trees} trees on {len(used.x)} rows, validation AUPRC {val_auprc:.4f}")
        notes = ["decision forests do not continue on new data: trained from scratch"] if warm_start else []
        fitted.report = base.TrainingReport(
            model=NAME, seeds_tried=1, members=[{"seed": config.seed, "trees": trees, "validation_auprc": val_auprc}],
            validation_auprc=val_auprc, seconds=time.time() - start, train_rows=len(train.x),
            train_rows_used=len(used.x), validation_rows=len(validation.x),
            validation_frauds=int(validation.y.sum()), warm_started_from=None, notes=tuple(notes))
        return fitted


KIND = Gbt()
