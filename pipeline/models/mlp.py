"""Supervised MLP on the transformed features (the `supervised` model kind).

Per seed: an MLP trained on all train rows (fraud rows weighted by `fraud_weight`), early-stopped on
validation AUPRC; the `ensemble` best seeds are averaged (mean logit). The explanation is gradient x
input on the standardized inputs (baseline: the training mean).

`MlpHead` is also the supervised half of the hybrid model (pipeline/models/hybrid.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fraud.metrics import average_precision
from pipeline.models import base

NAME = "supervised"


@dataclass(frozen=True)
class MlpConfig:
    widths: tuple[int, ...] = (64, 32)
    dropout: float = 0.2
    l2: float = 1e-4
    fraud_weight: float = 1.0  # class weight of fraud rows (1.0 = none; calibration fixes the base rate)
    epochs: int = 15
    batch_size: int = 512
    learning_rate: float = 1e-3
    seeds: int = 3
    ensemble: int = 3
    max_steps: int | None = None
    exclude_kinds: tuple[str, ...] = ()
    target: base.ThresholdTarget = base.target_field(0.8)

    def architecture(self) -> dict[str, Any]:
        return {"widths": list(self.widths), "dropout": self.dropout}


def build(d: int, config: MlpConfig) -> Any:
    keras = base.keras()
    inputs = keras.Input((d,))
    x = inputs
    for width in config.widths:
        x = keras.layers.Dense(width, activation="relu", kernel_regularizer=keras.regularizers.l2(config.l2))(x)
        if config.dropout:
            x = keras.layers.Dropout(config.dropout)(x)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    model.compile(keras.optimizers.Adam(config.learning_rate), keras.losses.BinaryCrossentropy(from_logits=True))
    return model


class MlpHead:
    """Standardization + an ensemble of MLPs over a matrix of inputs: numpy and TensorFlow twins."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, members: list[dict[str, Any]]) -> None:
        self.mean, self.std = mean, std
        self.members = members

    def logits(self, x: np.ndarray) -> np.ndarray:
        xs = ((x - self.mean) / self.std).astype(np.float32)
        return np.mean([base.predict(m["model"], xs)[:, 0] for m in self.members], axis=0)

    def graph(self, x: Any) -> dict[str, Any]:
        """{"raw": mean logit, "contributions": gradient x input per input column}."""
        import tensorflow as tf

        xs = (x - tf.constant(self.mean)) / tf.constant(self.std)
        with tf.GradientTape() as tape:
            tape.watch(xs)
            logit = tf.add_n([tf.reshape(m["model"](xs, training=False), [-1]) for m in self.members])
            logit /= float(len(self.members))
        return {"raw": logit, "contributions": tape.gradient(logit, xs) * xs}

    def models(self) -> list[Any]:
        return [m["model"] for m in self.members]


def fit_head(train: base.Dataset, validation: base.Dataset, config: MlpConfig, warm_start: str | None,
             log: base.Log, name: str, meta: dict[str, Any]) -> tuple[MlpHead, list[dict[str, Any]], int]:
    """(head, kept members' facts, seeds warm-started) for inputs train.x / validation.x."""
    keras = base.keras()
    mean, std = base.standardizer(train.x)
    xs_train = ((train.x - mean) / std).astype(np.float32)
    xs_val = ((validation.x - mean) / std).astype(np.float32)
    epochs, steps = base.epochs_and_steps(len(xs_train), config.batch_size, config.epochs, config.max_steps)
    sample_weight = np.where(train.y == 1, config.fraud_weight, 1.0).astype(np.float32)
    members, warmed = [], 0
    for seed in range(config.seeds):
        keras.utils.set_random_seed(seed)
        model = build(train.x.shape[1], config)
        if warm_start and base.load_keras_member(warm_start, seed, model, meta):
            warmed += 1
        ds = base.shuffled_batches((xs_train, train.y.astype(np.float32), sample_weight), config.batch_size, seed,
                                   steps)
        best: tuple[float, int, Any] = (-np.inf, -1, None)
        for epoch in range(epochs):
            model.fit(ds, epochs=1, verbose=0)
            logits = base.predict(model, xs_val)[:, 0]
            # Without a fraud in validation there is nothing to rank: keep the last epoch.
            ap = average_precision(validation.y, logits) if validation.y.any() else float(epoch)
            if ap > best[0]:
                best = (ap, epoch, model.get_weights())
        model.set_weights(best[2])
        members.append({"seed": seed, "epoch": best[1], "validation_auprc": best[0], "model": model})
        log(f"{name} seed {seed}: best epoch {best[1]} validation AUPRC {best[0]:.4f}")
    members.sort(key=lambda m: -m["validation_auprc"])
    kept = members[:max(1, config.ensemble)]
    facts = [{k: v for k, v in m.items() if k in ("seed", "epoch", "validation_auprc")} for m in kept]
    return MlpHead(mean, std, kept), facts, warmed


class FittedMlp(base.Fitted):
    def __init__(self, head: MlpHead, config: MlpConfig, report: base.TrainingReport) -> None:
        self.head = head
        self.config = config
        self.report = report

    def raw_scores(self, x: np.ndarray) -> np.ndarray:
        return self.head.logits(x)

    def graph(self, x: Any) -> dict[str, Any]:
        return self.head.graph(x)

    def trackables(self) -> list[Any]:
        return self.head.models()

    def save_warm_start(self, directory: str) -> None:
        base.save_keras_members(directory, self.head.models(), _meta(self.config, int(self.head.mean.shape[0])))


def _meta(config: MlpConfig, d: int) -> dict[str, Any]:
    return {"kind": NAME, **config.architecture(), "d": d}


class Mlp(base.ModelKind):
    name = NAME
    config_class = MlpConfig
    tunable = True

    def with_hyperparameters(self, config: MlpConfig, values: dict[str, Any]) -> MlpConfig:
        return with_hyperparameters(config, values)

    def fit(self, train: base.Dataset, validation: base.Dataset, config: MlpConfig, warm_start: str | None,
            log: base.Log) -> FittedMlp:
        start = time.time()
        head, facts, warmed = fit_head(train, validation, config, warm_start, log, NAME,
                                       _meta(config, train.x.shape[1]))
        report = base.TrainingReport(
            model=NAME, seeds_tried=config.seeds, members=facts,
            validation_auprc=average_precision(validation.y, head.logits(validation.x))
            if validation.y.any() else float("nan"),
            seconds=time.time() - start, train_rows=len(train.x), train_rows_used=len(train.x),
            validation_rows=len(validation.x), validation_frauds=int(validation.y.sum()),
            warm_started_from=warm_start if warmed else None,
            notes=(f"{warmed} of {config.seeds} seeds started from the base model",) if warm_start else ())
        return FittedMlp(head, config, report)


KIND = Mlp()


# ---------------------------------------------------------------------------------------------
# Tuning (TFX Tuner, KerasTuner): a search over the MLP's settings, judged on validation AUPRC

#: Choices of the search (widths as "w1,w2").
SEARCH_WIDTHS = ("32,16", "64,32", "128,64")
SEARCH_DROPOUT = (0.0, 0.1, 0.2, 0.3)
SEARCH_FRAUD_WEIGHT = (1.0, 3.0, 10.0)


def search_space() -> Any:
    import keras_tuner as kt

    hp = kt.HyperParameters()
    hp.Choice("widths", list(SEARCH_WIDTHS), default="64,32")
    hp.Choice("dropout", list(SEARCH_DROPOUT), default=0.2)
    hp.Float("learning_rate", 3e-4, 3e-3, sampling="log", default=1e-3)
    hp.Choice("fraud_weight", list(SEARCH_FRAUD_WEIGHT), default=1.0)
    return hp


def with_hyperparameters(config: MlpConfig, values: dict[str, Any]) -> MlpConfig:
    """The config with the tuned values applied (unknown keys ignored)."""
    from dataclasses import replace

    updates: dict[str, Any] = {}
    if "widths" in values:
        updates["widths"] = tuple(int(w) for w in str(values["widths"]).split(","))
    for key in ("dropout", "learning_rate", "fraud_weight"):
        if key in values:
            updates[key] = float(values[key])
    return replace(config, **updates)


def tuner_fn(fn_args: Any) -> Any:
    """TFX Tuner's entry point: RandomSearch over `search_space`, objective validation AUPRC.

    custom_config["supervised"] holds the base config; custom_config["tuning"] may hold "max_trials"
    and "epochs" (per trial).
    """
    import keras_tuner as kt
    import tensorflow_transform as tft
    from tfx import v1 as tfx

    from fraud.features import Kind

    custom = fn_args.custom_config or {}
    config = base.config_from_dict(MlpConfig, custom.get(NAME, {}))
    tuning = custom.get("tuning", {})
    output = tft.TFTransformOutput(fn_args.transform_graph_path)
    spec = output.transformed_feature_spec()
    columns = base.input_columns(spec, exclude_kinds=[Kind(k) for k in config.exclude_kinds])
    train = base.load_dataset(fn_args.train_files, spec, columns)
    validation = base.load_dataset(fn_args.eval_files, spec, columns)
    mean, std = base.standardizer(train.x)
    keras = base.keras()

    def build_model(hp: Any) -> Any:
        model = build(train.x.shape[1], with_hyperparameters(config, hp.values))
        model.compile(model.optimizer, model.loss, weighted_metrics=[],
                      metrics=[keras.metrics.AUC(curve="PR", from_logits=True, name="auprc")])
        return model

    class WeightedSearch(kt.RandomSearch):
        def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> Any:
            weight = float(trial.hyperparameters.get("fraud_weight"))
            kwargs["sample_weight"] = np.where(train.y == 1, weight, 1.0).astype(np.float32)
            return super().run_trial(trial, *args, **kwargs)

    tuner = WeightedSearch(build_model, max_trials=int(tuning.get("max_trials", 6)), hyperparameters=search_space(),
                           objective=kt.Objective("val_auprc", "max"), directory=fn_args.working_dir,
                           project_name="fraud_supervised", seed=0)
    return tfx.components.TunerFnResult(tuner=tuner, fit_kwargs={
        "x": ((train.x - mean) / std).astype(np.float32), "y": train.y.astype(np.float32),
        "validation_data": (((validation.x - mean) / std).astype(np.float32), validation.y.astype(np.float32)),
        "epochs": int(tuning.get("epochs", config.epochs)), "batch_size": config.batch_size, "verbose": 0})
