"""Plain, testable training code behind the Trainer module files (pipeline/modules/*_trainer.py).

What is here:
- ranking metrics in numpy (AUPRC = average precision, ROC-AUC, precision at k);
- the decision threshold, chosen on validation data for a stated target (a precision, or an alert
  budget = share of transactions flagged), and Platt calibration of a raw score into a probability;
- the two models: an autoencoder trained on non-fraud rows only (ensemble of seeds, early stopping
  on validation AUPRC, per-feature reconstruction errors weighted by their spread on normal rows)
  and a supervised MLP (class weights, early stopping on validation AUPRC);
- export of either as a SavedModel with the project's signature (fraud/signature.py): serialized raw
  tf.Examples in, Transform graph inside, score/decision/threshold/explanations out, and the
  threshold with its target recorded in `assets.extra/fraud_model.json`.

Rows are split by event time upstream: `train` (oldest), `validation`, `eval` (most recent). The
trainers only ever look at train and validation; the Evaluator judges on eval.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from fraud import signature
from fraud.features import FEATURE_NAMES, FEATURES, LABEL_KEY, Kind, transformed_name

#: File in the SavedModel's assets.extra holding the threshold, its target and training facts.
MODEL_INFO_FILE = "fraud_model.json"
#: Name of the signature TFMA calls to get transformed features (slices) from raw examples.
TRANSFORM_SIGNATURE = "transform_features"

# ---------------------------------------------------------------------------------------------
# Metrics (numpy; the same definitions as scikit-learn's average_precision_score / roc_auc_score)


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (step-wise, ties grouped)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    positives = int(y.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # Last index of each group of tied scores.
    ends = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[ends]
    fp = (ends + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def precision_at_k(labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")[:k]
    return float(np.asarray(labels)[order].mean()) if len(order) else float("nan")


def precision_recall_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float, int]:
    """Precision, recall and number of alerts when flagging score >= threshold."""
    y = np.asarray(labels).astype(bool)
    flagged = np.asarray(scores) >= threshold
    alerts = int(flagged.sum())
    tp = int((flagged & y).sum())
    precision = tp / alerts if alerts else float("nan")
    recall = tp / int(y.sum()) if y.any() else float("nan")
    return precision, recall, alerts


# ---------------------------------------------------------------------------------------------
# Threshold and calibration

PRECISION = "precision"
ALERT_RATE = "alert_rate"


@dataclass(frozen=True)
class ThresholdTarget:
    """What the shipped threshold is chosen for, on validation data.

    precision: the lowest threshold whose validation precision is >= value (most recall at that
      precision); if no threshold reaches it, the one with the best F1 (recorded as target not met).
    alert_rate: flag at most `value` of all transactions (an analyst budget, e.g. 0.002 = 2 per 1000).
    """

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in (PRECISION, ALERT_RATE):
            raise ValueError(f"threshold target kind must be {PRECISION!r} or {ALERT_RATE!r}, got {self.kind!r}")
        if not 0.0 < self.value <= 1.0:
            raise ValueError(f"threshold target value must be in (0, 1], got {self.value}")

    def describe(self) -> str:
        return f"precision >= {self.value:g}" if self.kind == PRECISION else f"alert rate <= {self.value:g}"

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> ThresholdTarget:
        return cls(kind=str(obj["kind"]), value=float(obj["value"]))


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    target: ThresholdTarget
    target_met: bool
    precision: float
    recall: float
    alert_rate: float
    rows: int
    frauds: int

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["target"] = asdict(self.target)
        out["target_text"] = self.target.describe()
        return out


def choose_threshold(scores: np.ndarray, labels: np.ndarray, target: ThresholdTarget) -> ThresholdChoice:
    """The decision threshold (flag score >= threshold) for `target` on validation scores and labels."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n, positives = len(s), int(y.sum())
    if n == 0:
        raise ValueError("no validation rows to choose a threshold on")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    ends = np.r_[np.nonzero(np.diff(s_sorted))[0], n - 1]  # cut after each group of ties
    tp = np.cumsum(y_sorted)[ends]
    alerts = ends + 1
    precision = tp / alerts
    recall = tp / positives if positives else np.zeros_like(precision, dtype=np.float64)
    met = True
    if target.kind == ALERT_RATE:
        ok = np.nonzero(alerts <= target.value * n)[0]
        idx = int(ok[-1]) if len(ok) else 0
        met = bool(len(ok))
    else:
        ok = np.nonzero(precision >= target.value)[0]
        if len(ok) and positives:
            idx = int(ok[-1])
        else:
            met = False
            f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
            idx = int(np.argmax(f1))
    threshold = float(s_sorted[ends[idx]])
    return ThresholdChoice(threshold=threshold, target=target, target_met=met, precision=float(precision[idx]),
                           recall=float(recall[idx]), alert_rate=float(alerts[idx] / n), rows=n, frauds=positives)


@dataclass(frozen=True)
class Calibration:
    """Platt scaling: probability = sigmoid(a * raw + b), fitted on validation rows."""

    a: float
    b: float

    def apply(self, raw: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.a * np.asarray(raw, dtype=np.float64) + self.b)))

    @classmethod
    def fit(cls, raw: np.ndarray, labels: np.ndarray, l2: float = 1e-3, iterations: int = 100) -> Calibration:
        """Newton's method on the log loss with Platt's smoothed targets (no 0/1 overconfidence)."""
        x = np.asarray(raw, dtype=np.float64)
        y = np.asarray(labels).astype(bool)
        pos, neg = int(y.sum()), int((~y).sum())
        if pos == 0 or neg == 0:
            raise ValueError("calibration needs both classes in the validation rows")
        t = np.where(y, (pos + 1.0) / (pos + 2.0), 1.0 / (neg + 2.0))
        mu, sd = x.mean(), x.std() or 1.0
        z = (x - mu) / sd  # fit on a standardized copy for a well-conditioned Hessian
        w = np.array([1.0, math.log((pos + 1.0) / (neg + 1.0))])
        X = np.stack([z, np.ones_like(z)], axis=1)
        for _ in range(iterations):
            p = 1.0 / (1.0 + np.exp(-(X @ w)))
            grad = X.T @ (p - t) + l2 * np.r_[w[0], 0.0]
            hess = (X * (p * (1 - p))[:, None]).T @ X + l2 * np.diag([1.0, 0.0]) + 1e-9 * np.eye(2)
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.max(np.abs(step)) < 1e-10:
                break
        return cls(a=float(w[0] / sd), b=float(w[1] - w[0] * mu / sd))


# ---------------------------------------------------------------------------------------------
# Data: transformed examples as numpy columns


@dataclass(frozen=True)
class Column:
    """One block of model-input columns: the transform output of one raw feature."""

    raw_name: str
    name: str
    width: int
    kind: Kind


def input_columns(transformed_spec: Mapping[str, Any], exclude_kinds: Sequence[Kind] = ()) -> list[Column]:
    """Model-input blocks in fraud.features order, widths read from the transformed feature spec."""
    out = []
    for raw_name, feature in FEATURES.items():
        if feature.kind in exclude_kinds:
            continue
        name = transformed_name(raw_name)
        shape = list(getattr(transformed_spec[name], "shape", []) or [1])
        out.append(Column(raw_name, name, int(np.prod(shape)) if shape else 1, feature.kind))
    return out


def contribution_matrix(columns: Sequence[Column]) -> np.ndarray:
    """[input width, 30] 0/1 matrix summing per-column values into per-raw-feature values."""
    total = sum(c.width for c in columns)
    m = np.zeros((total, len(FEATURE_NAMES)), dtype=np.float32)
    start = 0
    for c in columns:
        m[start:start + c.width, FEATURE_NAMES.index(c.raw_name)] = 1.0
        start += c.width
    return m


def stack_columns(data: Mapping[str, np.ndarray], columns: Sequence[Column]) -> np.ndarray:
    n = len(next(iter(data.values())))
    return np.concatenate([np.asarray(data[c.name], dtype=np.float32).reshape(n, c.width) for c in columns], axis=1)


def load_transformed(file_patterns: Sequence[str], feature_spec: Mapping[str, Any],
                     keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Reads transformed, gzipped TFRecord examples into numpy arrays (one per key)."""
    import tensorflow as tf

    files: list[str] = []
    for pattern in file_patterns:
        files.extend(sorted(tf.io.gfile.glob(pattern)))
    if not files:
        raise ValueError(f"no files match {list(file_patterns)}")
    spec = {k: feature_spec[k] for k in keys}
    ds = (tf.data.TFRecordDataset(files, compression_type="GZIP")
          .batch(8192)
          .map(lambda x: tf.io.parse_example(x, spec), num_parallel_calls=1))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for batch in ds:
        for k in keys:
            parts[k].append(batch[k].numpy())
    return {k: np.concatenate(v, axis=0) for k, v in parts.items()}


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # [rows, width] float32
    y: np.ndarray  # [rows] int


def load_dataset(file_patterns: Sequence[str], feature_spec: Mapping[str, Any], columns: Sequence[Column]) -> Dataset:
    data = load_transformed(file_patterns, feature_spec, [c.name for c in columns] + [LABEL_KEY])
    return Dataset(x=stack_columns(data, columns), y=data[LABEL_KEY].reshape(-1).astype(np.int64))


# ---------------------------------------------------------------------------------------------
# Models


def _keras():
    import tf_keras  # Keras 2: the same Keras as TF Transform's transform_features_layer

    return tf_keras


@dataclass(frozen=True)
class TrainingReport:
    """What happened during training, recorded in the model's info file."""

    model: str
    seeds_tried: int
    members: list[dict[str, Any]]
    validation_auprc: float
    seconds: float
    train_rows: int
    train_rows_used: int
    validation_rows: int
    validation_frauds: int


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
    target: ThresholdTarget = field(default_factory=lambda: ThresholdTarget(PRECISION, 0.5))

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> AutoencoderConfig:
        return _config_from_dict(cls, obj)


@dataclass(frozen=True)
class SupervisedConfig:
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
    target: ThresholdTarget = field(default_factory=lambda: ThresholdTarget(PRECISION, 0.8))

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> SupervisedConfig:
        return _config_from_dict(cls, obj)


def _config_from_dict(cls: Any, obj: Mapping[str, Any]) -> Any:
    known = {f for f in cls.__dataclass_fields__}
    unknown = set(obj) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    values = dict(obj)
    for key in ("widths", "exclude_kinds"):
        if key in values:
            values[key] = tuple(values[key])
    if "target" in values and not isinstance(values["target"], ThresholdTarget):
        values["target"] = ThresholdTarget.from_dict(values["target"])
    return replace(cls(), **values)


def _epochs_and_steps(rows: int, batch_size: int, epochs: int, max_steps: int | None) -> tuple[int, int | None]:
    """(epochs, steps per epoch) so that training stops after max_steps gradient steps at most."""
    per_epoch = max(1, math.ceil(rows / batch_size))
    if max_steps is None or max_steps >= per_epoch * epochs:
        return epochs, None
    if max_steps < per_epoch:
        return 1, max(1, max_steps)
    return max(1, max_steps // per_epoch), None


def _predict(model: Any, x: np.ndarray, batch: int = 65_536) -> np.ndarray:
    """Direct calls in large batches: Keras' predict() builds a data pipeline per call, which costs
    more than the arithmetic on these small dense models when scoring after every epoch."""
    return np.concatenate([model(x[i:i + batch], training=False).numpy() for i in range(0, len(x), batch)], axis=0)


def _dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, steps: int | None):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(min(len(x), 200_000), seed=seed,
                                                           reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    return ds.take(steps) if steps else ds


class AutoencoderScorer:
    """Numpy twin of the exported autoencoder graph, used to pick epochs and members on validation."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = mean.astype(np.float32)
        self.std = std.astype(np.float32)

    def standardize(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    @staticmethod
    def squared_errors(model: Any, xs: np.ndarray) -> np.ndarray:
        return (_predict(model, xs) - xs) ** 2


def train_autoencoder(train: Dataset, validation: Dataset, config: AutoencoderConfig,
                      log: Callable[[str], None] = print) -> tuple[dict[str, Any], TrainingReport]:
    """Trains the autoencoder ensemble on normal train rows; returns its parts and a report.

    Per seed: train `epochs` epochs, after each one score validation rows and keep the weights of the
    epoch with the best validation AUPRC. Score of one member = mean over features of the squared
    error divided by that feature's mean squared error on normal validation rows (features the
    model reconstructs well for normal rows weigh more), over its median on normal validation rows.
    The `ensemble` best members are averaged.
    """
    keras = _keras()
    start = time.time()
    normal = train.x[train.y == 0]
    mean, std = normal.mean(axis=0), normal.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)
    scorer = AutoencoderScorer(mean, std)
    xs_train = scorer.standardize(normal)
    xs_val = scorer.standardize(validation.x)
    val_normal = validation.y == 0
    if not val_normal.any():
        raise ValueError("validation rows hold no normal transaction")
    d = train.x.shape[1]
    epochs, steps = _epochs_and_steps(len(xs_train), config.batch_size, config.epochs, config.max_steps)
    members = []
    for seed in range(config.seeds):
        keras.utils.set_random_seed(seed)
        model = _build_autoencoder(keras, d, config)
        best: tuple[float, int, Any, np.ndarray, float] = (-np.inf, -1, None, np.ones(d), 1.0)
        ds = _dataset(xs_train, xs_train, config.batch_size, seed, steps)
        for epoch in range(epochs):
            model.fit(ds, epochs=1, verbose=0)
            err = AutoencoderScorer.squared_errors(model, xs_val)
            weights = 1.0 / np.maximum(err[val_normal].mean(axis=0), 1e-9)
            per_row = (err * weights).mean(axis=1)
            median = float(np.median(per_row[val_normal])) or 1.0
            ap = average_precision(validation.y, per_row) if validation.y.any() else -float(np.mean(per_row[val_normal]))
            if ap > best[0]:
                best = (ap, epoch, model.get_weights(), weights, median)
        model.set_weights(best[2])
        members.append({"seed": seed, "epoch": best[1], "validation_auprc": best[0], "model": model,
                        "weights": best[3].astype(np.float32), "median": best[4]})
        log(f"autoencoder seed {seed}: best epoch {best[1]} validation AUPRC {best[0]:.4f}")
    members.sort(key=lambda m: -m["validation_auprc"])
    kept = members[:max(1, config.ensemble)]
    parts = {"mean": scorer.mean, "std": scorer.std, "members": kept}
    raw_val = np.log(autoencoder_errors(parts, validation.x)[0] + 1e-12)
    report = TrainingReport(
        model="autoencoder", seeds_tried=config.seeds,
        members=[{k: v for k, v in m.items() if k in ("seed", "epoch", "validation_auprc")} for m in kept],
        validation_auprc=average_precision(validation.y, raw_val) if validation.y.any() else float("nan"),
        seconds=time.time() - start, train_rows=len(train.x), train_rows_used=len(normal),
        validation_rows=len(validation.x), validation_frauds=int(validation.y.sum()))
    return parts, report


def _build_autoencoder(keras: Any, d: int, config: AutoencoderConfig) -> Any:
    inputs = keras.Input((d,))
    x = inputs
    if config.noise:
        x = keras.layers.GaussianNoise(config.noise)(x)
    for width in config.widths:
        x = keras.layers.Dense(width, activation=config.activation)(x)
    outputs = keras.layers.Dense(d)(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(config.learning_rate), "mse")
    return model


def autoencoder_errors(parts: Mapping[str, Any], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(reconstruction error [rows], per-column contributions [rows, width]) of the ensemble, in numpy."""
    xs = (x - parts["mean"]) / parts["std"]
    contributions = np.zeros_like(xs, dtype=np.float64)
    for m in parts["members"]:
        err = AutoencoderScorer.squared_errors(m["model"], xs)
        contributions += err * m["weights"] / (xs.shape[1] * m["median"])
    contributions /= len(parts["members"])
    return contributions.sum(axis=1), contributions


def train_supervised(train: Dataset, validation: Dataset, config: SupervisedConfig,
                     log: Callable[[str], None] = print) -> tuple[dict[str, Any], TrainingReport]:
    """Trains MLPs on all train rows (fraud weighted by config.fraud_weight), early-stopped per seed
    on validation AUPRC; the `ensemble` best are averaged (mean logit)."""
    keras = _keras()
    start = time.time()
    mean, std = train.x.mean(axis=0), train.x.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)
    xs_train = ((train.x - mean) / std).astype(np.float32)
    xs_val = ((validation.x - mean) / std).astype(np.float32)
    epochs, steps = _epochs_and_steps(len(xs_train), config.batch_size, config.epochs, config.max_steps)
    sample_weight = np.where(train.y == 1, config.fraud_weight, 1.0).astype(np.float32)
    members = []
    for seed in range(config.seeds):
        keras.utils.set_random_seed(seed)
        model = _build_mlp(keras, train.x.shape[1], config)
        ds = _dataset((xs_train, train.y.astype(np.float32)), sample_weight, config.batch_size, seed, steps)
        ds = ds.map(lambda xy, w: (xy[0], xy[1], w))
        best: tuple[float, int, Any] = (-np.inf, -1, None)
        for epoch in range(epochs):
            model.fit(ds, epochs=1, verbose=0)
            logits = _predict(model, xs_val)[:, 0]
            # Without a fraud in validation there is nothing to rank: keep the last epoch.
            ap = average_precision(validation.y, logits) if validation.y.any() else float(epoch)
            if ap > best[0]:
                best = (ap, epoch, model.get_weights())
        model.set_weights(best[2])
        members.append({"seed": seed, "epoch": best[1], "validation_auprc": best[0], "model": model})
        log(f"supervised seed {seed}: best epoch {best[1]} validation AUPRC {best[0]:.4f}")
    members.sort(key=lambda m: -m["validation_auprc"])
    kept = members[:max(1, config.ensemble)]
    parts = {"mean": mean.astype(np.float32), "std": std.astype(np.float32), "members": kept}
    report = TrainingReport(
        model="supervised", seeds_tried=config.seeds,
        members=[{k: v for k, v in m.items() if k in ("seed", "epoch", "validation_auprc")} for m in kept],
        validation_auprc=average_precision(validation.y, supervised_logits(parts, validation.x))
        if validation.y.any() else float("nan"),
        seconds=time.time() - start, train_rows=len(train.x), train_rows_used=len(train.x),
        validation_rows=len(validation.x), validation_frauds=int(validation.y.sum()))
    return parts, report


def _build_mlp(keras: Any, d: int, config: SupervisedConfig) -> Any:
    inputs = keras.Input((d,))
    x = inputs
    for width in config.widths:
        x = keras.layers.Dense(width, activation="relu", kernel_regularizer=keras.regularizers.l2(config.l2))(x)
        if config.dropout:
            x = keras.layers.Dropout(config.dropout)(x)
    outputs = keras.layers.Dense(1)(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(config.learning_rate), keras.losses.BinaryCrossentropy(from_logits=True))
    return model


def supervised_logits(parts: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
    xs = ((x - parts["mean"]) / parts["std"]).astype(np.float32)
    return np.mean([_predict(m["model"], xs)[:, 0] for m in parts["members"]], axis=0)


# ---------------------------------------------------------------------------------------------
# Export: the served SavedModel


def _raw_serving_spec(raw_feature_spec: Mapping[str, Any]) -> dict[str, Any]:
    """The raw feature spec of serving examples: the 30 features only (no label, no identity keys)."""
    return {name: raw_feature_spec[name] for name in FEATURE_NAMES}


def build_serving_module(*, kind: str, parts: Mapping[str, Any], columns: Sequence[Column], tft_output: Any,
                         calibration: Calibration, threshold: float) -> Any:
    """A tf.Module whose `serve` takes serialized raw tf.Examples and returns the signature outputs."""
    import tensorflow as tf

    matrix = tf.constant(contribution_matrix(columns))
    col_names = [c.name for c in columns]
    col_widths = [c.width for c in columns]
    raw_spec = _raw_serving_spec(tft_output.raw_feature_spec())

    class FraudModel(tf.Module):
        def __init__(self) -> None:
            super().__init__(name=f"fraud_{kind}")
            self.tft_layer = tft_output.transform_features_layer()
            self.members = [m["model"] for m in parts["members"]]
            self.mean = tf.constant(parts["mean"])
            self.std = tf.constant(parts["std"])
            if kind == "autoencoder":
                self.member_weights = tf.constant(np.stack([m["weights"] for m in parts["members"]]))
                self.medians = tf.constant(np.array([m["median"] for m in parts["members"]], dtype=np.float32))
            self.cal_a = tf.constant(calibration.a, tf.float32)
            self.cal_b = tf.constant(calibration.b, tf.float32)
            self.threshold = tf.constant(threshold, tf.float32)

        def _inputs(self, transformed: Mapping[str, tf.Tensor]) -> tf.Tensor:
            blocks = [tf.reshape(tf.cast(transformed[n], tf.float32), [-1, w]) for n, w in zip(col_names, col_widths, strict=True)]
            return (tf.concat(blocks, axis=1) - self.mean) / self.std

        def _score(self, xs: tf.Tensor) -> dict[str, tf.Tensor]:
            if kind == "autoencoder":
                d = tf.cast(tf.shape(xs)[1], tf.float32)
                contributions = tf.zeros_like(xs)
                for i, member in enumerate(self.members):
                    err = tf.square(member(xs, training=False) - xs)
                    contributions += err * self.member_weights[i] / (d * self.medians[i])
                contributions /= float(len(self.members))
                error = tf.reduce_sum(contributions, axis=1)
                raw = tf.math.log(error + 1e-12)
                return {"raw": raw, "contributions": contributions, signature.RECONSTRUCTION_ERROR: error}
            with tf.GradientTape() as tape:
                tape.watch(xs)
                logit = tf.add_n([tf.reshape(m(xs, training=False), [-1]) for m in self.members])
                logit /= float(len(self.members))
            # Gradient x input on the standardized inputs (baseline: the training mean).
            contributions = tape.gradient(logit, xs) * xs
            return {"raw": logit, "contributions": contributions}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=signature.INPUT_EXAMPLES)])
        def serve(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
            raw_features = tf.io.parse_example(examples, raw_spec)
            transformed = self.tft_layer(raw_features)
            out = self._score(self._inputs(transformed))
            score = tf.sigmoid(self.cal_a * out["raw"] + self.cal_b)
            result = {
                signature.SCORE: score,
                signature.DECISION: tf.cast(score >= self.threshold, tf.int64),
                signature.THRESHOLD: tf.fill(tf.shape(score), self.threshold),
                signature.FEATURE_CONTRIBUTIONS: tf.matmul(out["contributions"], matrix),
            }
            if signature.RECONSTRUCTION_ERROR in out:
                result[signature.RECONSTRUCTION_ERROR] = out[signature.RECONSTRUCTION_ERROR]
            return result

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=signature.INPUT_EXAMPLES)])
        def transform_features(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
            return self.tft_layer(tf.io.parse_example(examples, raw_spec))

    return FraudModel()


def save_serving_model(module: Any, export_dir: str, info: Mapping[str, Any]) -> None:
    """Saves the module with `serving_default` and `transform_features`, plus assets.extra/fraud_model.json."""
    import tensorflow as tf

    tf.saved_model.save(module, export_dir, signatures={
        signature.SIGNATURE_NAME: module.serve.get_concrete_function(),
        TRANSFORM_SIGNATURE: module.transform_features.get_concrete_function(),
    })
    extra = os.path.join(export_dir, "assets.extra")
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(extra, MODEL_INFO_FILE), "w") as f:
        f.write(json.dumps(_jsonable(info), indent=1, sort_keys=True))


def read_model_info(model_dir: str) -> dict[str, Any]:
    import tensorflow as tf

    with tf.io.gfile.GFile(os.path.join(model_dir, "assets.extra", MODEL_INFO_FILE)) as f:
        return json.loads(f.read())


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Kind):
        return obj.value
    if hasattr(obj, "__dataclass_fields__"):
        return _jsonable(asdict(obj))
    return obj


# ---------------------------------------------------------------------------------------------
# The whole training run of one model (what run_fn calls)


@dataclass(frozen=True)
class TrainerInputs:
    train_files: Sequence[str]
    validation_files: Sequence[str]
    transform_output_dir: str
    serving_model_dir: str
    max_steps: int | None = None


def run_training(kind: str, inputs: TrainerInputs, config: AutoencoderConfig | SupervisedConfig,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Loads data, trains `kind` ("autoencoder" | "supervised"), calibrates, picks the threshold, exports.

    Returns the info recorded in the model (threshold, target, validation figures, training report).
    """
    import tensorflow_transform as tft

    if inputs.max_steps is not None and config.max_steps is None:
        config = replace(config, max_steps=inputs.max_steps)
    tft_output = tft.TFTransformOutput(inputs.transform_output_dir)
    spec = tft_output.transformed_feature_spec()
    columns = input_columns(spec, exclude_kinds=[Kind(k) for k in config.exclude_kinds])
    train = load_dataset(inputs.train_files, spec, columns)
    validation = load_dataset(inputs.validation_files, spec, columns)
    log(f"{kind}: {len(train.x)} train rows ({int(train.y.sum())} fraud), {len(validation.x)} validation rows "
        f"({int(validation.y.sum())} fraud), {train.x.shape[1]} input columns")
    if kind == "autoencoder":
        parts, report = train_autoencoder(train, validation, config, log)
        raw_val = np.log(autoencoder_errors(parts, validation.x)[0] + 1e-12)
    elif kind == "supervised":
        parts, report = train_supervised(train, validation, config, log)
        raw_val = supervised_logits(parts, validation.x)
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    calibrated_on = "validation"
    if not validation.y.any():
        # Tiny data sets can hold no fraud in the validation window: fall back to the train rows
        # (biased for the autoencoder, which saw them) rather than ship an uncalibrated score.
        calibrated_on = "train (validation holds no fraud)"
        log(f"{kind}: validation rows hold no fraud; calibrating and thresholding on train rows")
        raw_val = (np.log(autoencoder_errors(parts, train.x)[0] + 1e-12) if kind == "autoencoder"
                   else supervised_logits(parts, train.x))
        validation = train
    calibration = Calibration.fit(raw_val, validation.y)
    scores_val = calibration.apply(raw_val)
    choice = choose_threshold(scores_val, validation.y, config.target)
    log(f"{kind}: threshold {choice.threshold:.6g} for {config.target.describe()} "
        f"(validation precision {choice.precision:.3f}, recall {choice.recall:.3f}, target met: {choice.target_met})")
    module = build_serving_module(kind=kind, parts=parts, columns=columns, tft_output=tft_output,
                                  calibration=calibration, threshold=choice.threshold)
    info = {
        "model": kind,
        "signature": signature.SIGNATURE_NAME,
        "threshold": choice.threshold,
        "threshold_target": asdict(config.target),
        "threshold_target_text": config.target.describe(),
        "threshold_on_validation": choice.to_dict(),
        "calibration": asdict(calibration),
        "calibrated_on": calibrated_on,
        "validation_auprc": average_precision(validation.y, scores_val),
        "config": asdict(config),
        "training": asdict(report),
        "input_columns": [asdict(c) for c in columns],
        "feature_names": list(FEATURE_NAMES),
        "created_at_ms": int(time.time() * 1000),
    }
    save_serving_model(module, inputs.serving_model_dir, info)
    return _jsonable(info)
