"""Hybrid: the autoencoder's view of a transaction as inputs to a supervised model (`hybrid` kind).

An autoencoder is trained on normal train rows (pipeline/models/autoencoder.py); its log
reconstruction error and its per-column contributions (log1p) are appended to the transformed
features, and an MLP ensemble (pipeline/models/mlp.py) is trained on that on every train row. The
autoencoder says "unlike the normal rows, and where"; the MLP learns which of that means fraud. The
explanation is the MLP's gradient x input folded back onto the original columns (feature + its
reconstruction contribution).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fraud.metrics import average_precision
from pipeline.models import base
from pipeline.models.autoencoder import AutoencoderConfig, FittedAutoencoder, fit_autoencoder
from pipeline.models.mlp import MlpConfig, MlpHead, fit_head

NAME = "hybrid"


#: The MLP head's settings, which HybridConfig carries flat (one hyperparameter namespace) with MlpConfig's defaults.
_HEAD_FIELDS = ("widths", "dropout", "l2", "fraud_weight", "epochs", "batch_size", "learning_rate", "seeds", "ensemble",
                "max_steps")


@dataclass(frozen=True)
class HybridConfig:
    ae_widths: tuple[int, ...] = (64, 32, 24, 32, 64)
    ae_epochs: int = 10
    ae_seeds: int = 2
    ae_ensemble: int = 1
    widths: tuple[int, ...] = MlpConfig.widths
    dropout: float = MlpConfig.dropout
    l2: float = MlpConfig.l2
    fraud_weight: float = MlpConfig.fraud_weight
    epochs: int = MlpConfig.epochs
    batch_size: int = MlpConfig.batch_size  # the autoencoder's too
    learning_rate: float = MlpConfig.learning_rate
    seeds: int = MlpConfig.seeds
    ensemble: int = MlpConfig.ensemble
    max_steps: int | None = MlpConfig.max_steps  # the autoencoder's too
    exclude_kinds: tuple[str, ...] = ()
    target: base.ThresholdTarget = base.target_field(0.8)

    def autoencoder(self) -> AutoencoderConfig:
        return AutoencoderConfig(widths=self.ae_widths, epochs=self.ae_epochs, seeds=self.ae_seeds,
                                 ensemble=self.ae_ensemble, batch_size=self.batch_size, max_steps=self.max_steps)

    def head(self) -> MlpConfig:
        return MlpConfig(**{name: getattr(self, name) for name in _HEAD_FIELDS})


class FittedHybrid(base.Fitted):
    def __init__(self, ae: FittedAutoencoder, ae_columns: np.ndarray, head: MlpHead, config: HybridConfig,
                 report: base.TrainingReport) -> None:
        self.ae = ae
        self.ae_columns = ae_columns  # indices of the input columns the autoencoder sees
        self.head = head
        self.config = config
        self.report = report

    def augment(self, x: np.ndarray) -> np.ndarray:
        error, contributions = self.ae.errors(x[:, self.ae_columns])
        return np.concatenate([x, np.log(error + 1e-12)[:, None], np.log1p(contributions)], axis=1).astype(np.float32)

    def raw_scores(self, x: np.ndarray) -> np.ndarray:
        return self.head.logits(self.augment(x))

    def graph(self, x: Any) -> dict[str, Any]:
        import tensorflow as tf

        error, contributions = self.ae.graph_errors(tf.gather(x, self.ae_columns, axis=1))
        augmented = tf.concat([x, tf.math.log(error + 1e-12)[:, None], tf.math.log1p(contributions)], axis=1)
        out = self.head.graph(augmented)
        d = int(x.shape[1])
        per_input = out["contributions"]
        # Fold the attributions of the autoencoder columns back onto the input columns they came from.
        fold = np.zeros((len(self.ae_columns), d), dtype=np.float32)
        fold[np.arange(len(self.ae_columns)), self.ae_columns] = 1.0
        folded = per_input[:, :d] + tf.matmul(per_input[:, d + 1:], tf.constant(fold))
        return {"raw": out["raw"], "contributions": folded}

    def trackables(self) -> list[Any]:
        return self.ae.trackables() + self.head.models()

    def save_warm_start(self, directory: str) -> None:
        self.ae.save_warm_start(os.path.join(directory, "autoencoder"))
        base.save_keras_members(os.path.join(directory, "head"), self.head.models(),
                                _head_meta(self.config, int(self.head.mean.shape[0])))


def _head_meta(config: HybridConfig, d: int) -> dict[str, Any]:
    return {"kind": NAME, **config.head().architecture(), "d": d}


class Hybrid(base.ModelKind):
    name = NAME
    config_class = HybridConfig

    def fit(self, train: base.Dataset, validation: base.Dataset, config: HybridConfig, warm_start: str | None,
            log: base.Log) -> FittedHybrid:
        start = time.time()
        ae_config = config.autoencoder()
        # The autoencoder sees what it sees as a model of its own (time of day excluded).
        ae_columns = base.column_indices(train.columns, exclude_kinds=ae_config.exclude_kinds)
        ae = fit_autoencoder(base.Dataset(train.x[:, ae_columns], train.y),
                             base.Dataset(validation.x[:, ae_columns], validation.y), ae_config,
                             os.path.join(warm_start, "autoencoder") if warm_start else None, log,
                             name=f"{NAME} autoencoder")
        partial = FittedHybrid(ae, ae_columns, head=None, config=config, report=None)  # type: ignore[arg-type]
        aug_train = base.Dataset(partial.augment(train.x), train.y)
        aug_val = base.Dataset(partial.augment(validation.x), validation.y)
        head, facts, warmed = fit_head(aug_train, aug_val, config.head(),
                                       os.path.join(warm_start, "head") if warm_start else None, log, f"{NAME} head",
                                       _head_meta(config, aug_train.x.shape[1]))
        partial.head = head
        val_auprc = average_precision(validation.y, head.logits(aug_val.x)) if validation.y.any() else float("nan")
        partial.report = base.TrainingReport(
            model=NAME, seeds_tried=config.seeds, members=facts, validation_auprc=val_auprc,
            seconds=time.time() - start, train_rows=len(train.x), train_rows_used=len(train.x),
            validation_rows=len(validation.x), validation_frauds=int(validation.y.sum()),
            warm_started_from=warm_start if (warmed or ae.report.warm_started_from) else None,
            notes=ae.report.notes + ((f"head: {warmed} of {config.seeds} seeds started from the base model",)
                                     if warm_start else ()))
        return partial


KIND = Hybrid()
