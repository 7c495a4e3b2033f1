"""Autoencoder (unsupervised): trained on normal train rows only; the score is the reconstruction error.

An ensemble of seeds, each early-stopped on validation AUPRC. Score of one member: mean over columns
of the squared error, each column weighted by 1 / its mean squared error on normal validation rows
(columns the model reconstructs well for normal rows weigh more), divided by the member's median on
normal validation rows. The `ensemble` best members are averaged; the raw score is log(error). The
per-column weighted errors are the explanation (`feature_contributions`), the error itself is served
as `reconstruction_error`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fraud import signature
from fraud.features import Kind
from fraud.metrics import average_precision
from pipeline.models import base

NAME = "autoencoder"


@dataclass(frozen=True)
class AutoencoderConfig:
    widths: tuple[int, ...] = (64, 32, 24, 32, 64)
    activation: str = "elu"
    epochs: int = 20
    batch_size: int = 512
    learning_rate: float = 2e-3
    seeds: int = 4
    ensemble: int = 2  # members kept: the best seeds by validation AUPRC
    noise: float = 0.0
    max_steps: int | None = None  # upper bound on gradient steps per seed (TrainArgs.num_steps)
    exclude_kinds: tuple[str, ...] = (Kind.TIME_OF_DAY.value,)
    target: base.ThresholdTarget = base.target_field(0.5)

    def architecture(self) -> dict[str, Any]:
        return {"widths": list(self.widths), "activation": self.activation}


def build(d: int, config: AutoencoderConfig) -> Any:
    keras = base.keras()
    inputs = keras.Input((d,))
    x = inputs
    if config.noise:
        x = keras.layers.GaussianNoise(config.noise)(x)
    for width in config.widths:
        x = keras.layers.Dense(width, activation=config.activation)(x)
    model = keras.Model(inputs, keras.layers.Dense(d)(x))
    model.compile(keras.optimizers.Adam(config.learning_rate), "mse")
    return model


class FittedAutoencoder(base.Fitted):
    def __init__(self, mean: np.ndarray, std: np.ndarray, members: list[dict[str, Any]], config: AutoencoderConfig,
                 report: base.TrainingReport) -> None:
        self.mean, self.std = mean, std
        self.members = members  # {"model", "weights" [d], "median"}
        self.config = config
        self.report = report

    def errors(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(reconstruction error [rows], per-column contributions [rows, width]) in numpy."""
        xs = (x - self.mean) / self.std
        contributions = np.zeros_like(xs, dtype=np.float64)
        for m in self.members:
            err = (base.predict(m["model"], xs) - xs) ** 2
            contributions += err * m["weights"] / (xs.shape[1] * m["median"])
        contributions /= len(self.members)
        return contributions.sum(axis=1), contributions

    def raw_scores(self, x: np.ndarray) -> np.ndarray:
        return np.log(self.errors(x)[0] + 1e-12)

    def graph_errors(self, x: Any) -> tuple[Any, Any]:
        import tensorflow as tf

        xs = (x - tf.constant(self.mean)) / tf.constant(self.std)
        d = float(self.mean.shape[0])
        contributions = tf.zeros_like(xs)
        for m in self.members:
            err = tf.square(m["model"](xs, training=False) - xs)
            contributions += err * tf.constant(m["weights"]) / (d * float(m["median"]))
        contributions /= float(len(self.members))
        return tf.reduce_sum(contributions, axis=1), contributions

    def graph(self, x: Any) -> dict[str, Any]:
        import tensorflow as tf

        error, contributions = self.graph_errors(x)
        return {"raw": tf.math.log(error + 1e-12), "contributions": contributions,
                signature.RECONSTRUCTION_ERROR: error}

    def trackables(self) -> list[Any]:
        return [m["model"] for m in self.members]

    def save_warm_start(self, directory: str) -> None:
        base.save_keras_members(directory, [m["model"] for m in self.members],
                                {"kind": NAME, **self.config.architecture(), "d": int(self.mean.shape[0])})


def fit_autoencoder(train: base.Dataset, validation: base.Dataset, config: AutoencoderConfig,
                    warm_start: str | None, log: base.Log, name: str = NAME) -> FittedAutoencoder:
    """Trains the ensemble on normal train rows (see the module docstring)."""
    keras = base.keras()
    start = time.time()
    normal = train.x[train.y == 0]
    mean, std = base.standardizer(normal)
    xs_train = (normal - mean) / std
    xs_val = (validation.x - mean) / std
    val_normal = validation.y == 0
    if not val_normal.any():
        raise ValueError("validation rows hold no normal transaction")
    d = train.x.shape[1]
    epochs, steps = base.epochs_and_steps(len(xs_train), config.batch_size, config.epochs, config.max_steps)
    meta = {"kind": NAME, **config.architecture(), "d": d}
    members, warmed = [], 0
    for seed in range(config.seeds):
        keras.utils.set_random_seed(seed)
        model = build(d, config)
        if warm_start and base.load_keras_member(warm_start, seed, model, meta):
            warmed += 1
        best: tuple[float, int, Any, np.ndarray, float] = (-np.inf, -1, None, np.ones(d), 1.0)
        ds = base.shuffled_batches((xs_train, xs_train), config.batch_size, seed, steps)
        for epoch in range(epochs):
            model.fit(ds, epochs=1, verbose=0)
            err = (base.predict(model, xs_val) - xs_val) ** 2
            weights = 1.0 / np.maximum(err[val_normal].mean(axis=0), 1e-9)
            per_row = (err * weights).mean(axis=1)
            median = float(np.median(per_row[val_normal])) or 1.0
            ap = average_precision(validation.y, per_row) if validation.y.any() else -float(np.mean(per_row[val_normal]))
            if ap > best[0]:
                best = (ap, epoch, model.get_weights(), weights, median)
        model.set_weights(best[2])
        members.append({"seed": seed, "epoch": best[1], "validation_auprc": best[0], "model": model,
                        "weights": best[3].astype(np.float32), "median": best[4]})
        log(f"{name} seed {seed}: best epoch {best[1]} validation AUPRC {best[0]:.4f}")
    members.sort(key=lambda m: -m["validation_auprc"])
    kept = members[:max(1, config.ensemble)]
    fitted = FittedAutoencoder(mean, std, kept, config, report=None)  # type: ignore[arg-type]
    fitted.report = base.TrainingReport(
        model=name, seeds_tried=config.seeds,
        members=[{k: v for k, v in m.items() if k in ("seed", "epoch", "validation_auprc")} for m in kept],
        validation_auprc=average_precision(validation.y, fitted.raw_scores(validation.x))
        if validation.y.any() else float("nan"),
        seconds=time.time() - start, train_rows=len(train.x), train_rows_used=len(normal),
        validation_rows=len(validation.x), validation_frauds=int(validation.y.sum()),
        warm_started_from=warm_start if warmed else None,
        notes=(f"{warmed} of {config.seeds} seeds started from the base model",) if warm_start else ())
    return fitted


class Autoencoder(base.ModelKind):
    name = NAME
    config_class = AutoencoderConfig

    def fit(self, train: base.Dataset, validation: base.Dataset, config: AutoencoderConfig,
            warm_start: str | None, log: base.Log) -> FittedAutoencoder:
        return fit_autoencoder(train, validation, config, warm_start, log)


KIND = Autoencoder()
