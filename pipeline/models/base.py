"""The shared base of every model kind: data, threshold, calibration, the served SavedModel, the run.

One module per model kind (pipeline/models/autoencoder.py, mlp.py, gbt.py, hybrid.py) implements
`ModelKind.fit`, which returns a `Fitted` model: a numpy scorer (used to pick epochs, members, the
calibration and the threshold on validation rows) and its TensorFlow twin (`Fitted.graph`, used in the
export). Everything else is here and the same for every kind:

- transformed examples as numpy columns (`load_dataset`), in fraud.features order;
- the decision threshold, chosen on validation rows for a stated target (a precision, or an alert
  budget), and Platt calibration of the raw score into a probability;
- the served SavedModel (`build_serving_module`, `save_serving_model`): the Transform graph inside;
  signatures `serving_default` (serialized raw tf.Examples), `serving_features` (float32 [N, 30]),
  `classification` and `regression` for TF Serving's Classify/Regress APIs, `transform_features`
  for TFMA; the threshold and training facts in assets.extra/fraud_model.json (fraud.model_info);
- warm starting from a base model of the same kind (TFX Trainer `base_model`): each kind saves what it
  needs under `<model artifact>/warm_start/` and reads it back from there;
- `run_training`: load, fit, calibrate, choose the threshold, export (what every run_fn calls).

Rows are split by event time upstream: `train` (oldest), `validation`, `eval` (most recent). The
trainers only ever look at train and validation; the eval split is for the Evaluator and the report.
"""

from __future__ import annotations

import abc
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from fraud import signature
from fraud.features import FEATURE_NAMES, FEATURES, LABEL_KEY, Kind, transformed_name
from fraud.metrics import average_precision
from fraud.model_info import MODEL_INFO_FILE

#: Name of the signature TFMA calls to get transformed features (slices) from raw examples.
TRANSFORM_SIGNATURE = "transform_features"
#: Folder beside Format-Serving in a Trainer's model artifact with what warm starting needs.
WARM_START_DIR = "warm_start"
#: TF Serving's method names (tensorflow/serving signature_constants) and their tensor keys.
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
CLASSIFY_INPUTS = "inputs"
CLASSIFY_CLASSES = "classes"
CLASSIFY_SCORES = "scores"
REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"
#: Class labels of the classification signature, in the order of its `scores` columns.
CLASS_LABELS = (b"0", b"1")

Log = Callable[[str], None]

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
    columns: tuple[Column, ...] = ()  # what the columns of x are (empty: unknown)


def column_indices(columns: Sequence[Column], exclude_kinds: Sequence[str] = ()) -> np.ndarray:
    """Indices of the columns of x that belong to features not of `exclude_kinds`."""
    if not columns:
        raise ValueError("the data set does not say what its columns are")
    out, start = [], 0
    for c in columns:
        if c.kind.value not in exclude_kinds:
            out.extend(range(start, start + c.width))
        start += c.width
    return np.array(out, dtype=np.int64)


def load_dataset(file_patterns: Sequence[str], feature_spec: Mapping[str, Any], columns: Sequence[Column]) -> Dataset:
    data = load_transformed(file_patterns, feature_spec, [c.name for c in columns] + [LABEL_KEY])
    return Dataset(x=stack_columns(data, columns), y=data[LABEL_KEY].reshape(-1).astype(np.int64),
                   columns=tuple(columns))


# ---------------------------------------------------------------------------------------------
# Configs and training helpers shared by the kinds


def keras() -> Any:
    import tf_keras  # Keras 2: the same Keras as TF Transform's transform_features_layer

    return tf_keras


def config_from_dict(cls: Any, obj: Mapping[str, Any]) -> Any:
    """A frozen config dataclass from a dict of its fields (lists become tuples; unknown keys fail)."""
    known = set(cls.__dataclass_fields__)
    unknown = set(obj) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    values = dict(obj)
    for key, value in list(values.items()):
        if isinstance(value, list):
            values[key] = tuple(value)
    if "target" in values and not isinstance(values["target"], ThresholdTarget):
        values["target"] = ThresholdTarget.from_dict(values["target"])
    return replace(cls(), **values)


def epochs_and_steps(rows: int, batch_size: int, epochs: int, max_steps: int | None) -> tuple[int, int | None]:
    """(epochs, steps per epoch) so that training stops after max_steps gradient steps at most."""
    per_epoch = max(1, math.ceil(rows / batch_size))
    if max_steps is None or max_steps >= per_epoch * epochs:
        return epochs, None
    if max_steps < per_epoch:
        return 1, max(1, max_steps)
    return max(1, max_steps // per_epoch), None


def predict(model: Any, x: np.ndarray, batch: int = 65_536) -> np.ndarray:
    """Direct calls in large batches: Keras' predict() builds a data pipeline per call, which costs
    more than the arithmetic on these small dense models when scoring after every epoch."""
    return np.concatenate([model(x[i:i + batch], training=False).numpy() for i in range(0, len(x), batch)], axis=0)


def shuffled_batches(arrays: Any, batch_size: int, seed: int, steps: int | None) -> Any:
    import tensorflow as tf

    n = len(tf.nest.flatten(arrays)[0])
    ds = tf.data.Dataset.from_tensor_slices(arrays).shuffle(min(n, 200_000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    return ds.take(steps) if steps else ds


def standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of the columns of x, std 1 where a column is constant."""
    mean, std = x.mean(axis=0), x.std(axis=0)
    return mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


def save_keras_members(directory: str, members: Sequence[Any], meta: Mapping[str, Any]) -> None:
    """Weights of each Keras member (`member-<i>.weights.h5`) and what they were built with."""
    import tensorflow as tf

    tf.io.gfile.makedirs(directory)
    for i, model in enumerate(members):
        model.save_weights(os.path.join(directory, f"member-{i}.weights.h5"))
    with tf.io.gfile.GFile(os.path.join(directory, "members.json"), "w") as f:
        f.write(json.dumps({**jsonable(meta), "members": len(members)}, sort_keys=True))


def load_keras_member(directory: str, index: int, model: Any, meta: Mapping[str, Any]) -> bool:
    """Loads member `index` of a warm-start folder into `model` if it was built the same way."""
    import tensorflow as tf

    path = os.path.join(directory, "members.json")
    if not tf.io.gfile.exists(path):
        return False
    with tf.io.gfile.GFile(path) as f:
        saved = json.loads(f.read())
    if index >= saved.get("members", 0) or any(saved.get(k) != v for k, v in jsonable(meta).items()):
        return False
    model.load_weights(os.path.join(directory, f"member-{index}.weights.h5"))
    return True


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
    warm_started_from: str | None = None
    notes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# Model kinds


class Fitted(abc.ABC):
    """A trained model of one kind over the model-input columns (unstandardized transform outputs)."""

    report: TrainingReport

    @abc.abstractmethod
    def raw_scores(self, x: np.ndarray) -> np.ndarray:
        """Uncalibrated scores [rows] in numpy (higher = more likely fraud)."""

    @abc.abstractmethod
    def graph(self, x: Any) -> dict[str, Any]:
        """The same in TensorFlow: {"raw": [N]} plus optional "contributions" [N, width] and extra
        named outputs (e.g. signature.RECONSTRUCTION_ERROR)."""

    @abc.abstractmethod
    def trackables(self) -> list[Any]:
        """Objects owning the variables `graph` uses (tracked by the exported tf.Module)."""

    def save_warm_start(self, directory: str) -> None:  # noqa: B027 - optional for a kind
        """Writes what a later run needs to start from this model (default: nothing)."""


class ModelKind(abc.ABC):
    """One model family. Adding a model is adding a subclass in a module of its own."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    #: Has a TFX Tuner entry point (pipeline/modules/<kind>_tuner.py) and `with_hyperparameters`.
    tunable: ClassVar[bool] = False

    def config(self, obj: Mapping[str, Any]) -> Any:
        return config_from_dict(self.config_class, obj)

    def with_hyperparameters(self, config: Any, values: Mapping[str, Any]) -> Any:
        """The config with a Tuner's best values applied (kinds that are tunable override this)."""
        raise NotImplementedError(f"{self.name} is not tunable")

    @abc.abstractmethod
    def fit(self, train: Dataset, validation: Dataset, config: Any, warm_start: str | None, log: Log) -> Fitted:
        """Trains on `train`, chooses what it must (epochs, members) on `validation`; `warm_start` is
        the warm-start folder of the last blessed model of this kind, or None."""


# ---------------------------------------------------------------------------------------------
# Export: the served SavedModel


def raw_serving_spec(raw_feature_spec: Mapping[str, Any]) -> dict[str, Any]:
    """The raw feature spec of serving examples: the 30 features only (no label, no identity keys)."""
    return {name: raw_feature_spec[name] for name in FEATURE_NAMES}


def build_serving_module(*, kind: str, fitted: Fitted, columns: Sequence[Column], tft_output: Any,
                         calibration: Calibration, threshold: float) -> Any:
    """A tf.Module with the served signatures (see the module docstring)."""
    import tensorflow as tf

    matrix = tf.constant(contribution_matrix(columns))
    col_names = [c.name for c in columns]
    col_widths = [c.width for c in columns]
    raw_spec = raw_serving_spec(tft_output.raw_feature_spec())
    examples_spec = tf.TensorSpec([None], tf.string, name=signature.INPUT_EXAMPLES)
    inputs_spec = tf.TensorSpec([None], tf.string, name=CLASSIFY_INPUTS)
    features_spec = tf.TensorSpec([None, len(FEATURE_NAMES)], tf.float32, name=signature.INPUT_FEATURES)

    class FraudModel(tf.Module):
        def __init__(self) -> None:
            super().__init__(name=f"fraud_{kind}")
            self.tft_layer = tft_output.transform_features_layer()
            self.parts = fitted.trackables()
            self.cal_a = tf.constant(calibration.a, tf.float32)
            self.cal_b = tf.constant(calibration.b, tf.float32)
            self.threshold = tf.constant(threshold, tf.float32)

        def _outputs(self, raw_features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            transformed = self.tft_layer(raw_features)
            blocks = [tf.reshape(tf.cast(transformed[n], tf.float32), [-1, w])
                      for n, w in zip(col_names, col_widths, strict=True)]
            out = fitted.graph(tf.concat(blocks, axis=1))
            score = tf.sigmoid(self.cal_a * out.pop("raw") + self.cal_b)
            result = {
                signature.SCORE: score,
                signature.DECISION: tf.cast(score >= self.threshold, tf.int64),
                signature.THRESHOLD: tf.fill(tf.shape(score), self.threshold),
            }
            contributions = out.pop("contributions", None)
            if contributions is not None:
                result[signature.FEATURE_CONTRIBUTIONS] = tf.matmul(contributions, matrix)
            result.update(out)
            return result

        def _parse(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
            return tf.io.parse_example(examples, raw_spec)

        @tf.function(input_signature=[examples_spec])
        def serve(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
            return self._outputs(self._parse(examples))

        @tf.function(input_signature=[features_spec])
        def serve_features(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
            columns_in = tf.unstack(features, num=len(FEATURE_NAMES), axis=1)
            return self._outputs({name: tf.reshape(col, [-1, 1]) for name, col in zip(FEATURE_NAMES, columns_in,
                                                                                      strict=True)})

        # Classify and Regress call `serve` (traced once, called as a function) rather than tracing the
        # Transform graph and the model again.
        @tf.function(input_signature=[inputs_spec])
        def classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            score = self.serve(inputs)[signature.SCORE]
            classes = tf.tile(tf.constant([list(CLASS_LABELS)]), [tf.shape(score)[0], 1])
            return {CLASSIFY_CLASSES: classes, CLASSIFY_SCORES: tf.stack([1.0 - score, score], axis=1)}

        @tf.function(input_signature=[inputs_spec])
        def regress(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            return {REGRESS_OUTPUTS: self.serve(inputs)[signature.SCORE]}

        @tf.function(input_signature=[examples_spec])
        def transform_features(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
            return self.tft_layer(self._parse(examples))

    return FraudModel()


#: Signature key -> TF Serving method name, for the signatures that are not Predict.
SIGNATURE_METHODS = {signature.CLASSIFY_SIGNATURE_NAME: CLASSIFY_METHOD,
                     signature.REGRESS_SIGNATURE_NAME: REGRESS_METHOD}


def set_signature_methods(export_dir: str, methods: Mapping[str, str]) -> None:
    """Gives signatures their TF Serving method names in saved_model.pb, and rewrites fingerprint.pb.

    tf.saved_model.save writes every signature as tensorflow/serving/predict (TF 2.16 save.py,
    `_generate_signatures`) and has no option for another method; TF Serving's Classify and Regress
    want tensorflow/serving/classify and /regress (classifier.cc, regressor.cc). The method name is
    metadata only: the graph and object graph are untouched, so tf.saved_model.load reads the result.
    """
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.saved_model import fingerprinting_utils

    path = os.path.join(export_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        for key, method in methods.items():
            if key not in meta_graph.signature_def:
                raise ValueError(f"{export_dir}: no signature {key!r} to give method {method}")
            meta_graph.signature_def[key].method_name = method
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "wb") as f:
        f.write(saved_model.SerializeToString())
    tf.io.gfile.rename(tmp, path, overwrite=True)
    fingerprint = os.path.join(export_dir, "fingerprint.pb")
    if tf.io.gfile.exists(fingerprint):
        tf.io.gfile.remove(fingerprint)
        fingerprinting_utils.write_fingerprint(export_dir)


def save_serving_model(module: Any, export_dir: str, info: Mapping[str, Any]) -> None:
    """Saves the module with all its signatures, plus assets.extra/fraud_model.json."""
    import tensorflow as tf

    tf.saved_model.save(module, export_dir, signatures={
        signature.SIGNATURE_NAME: module.serve.get_concrete_function(),
        signature.FEATURES_SIGNATURE_NAME: module.serve_features.get_concrete_function(),
        signature.CLASSIFY_SIGNATURE_NAME: module.classify.get_concrete_function(),
        signature.REGRESS_SIGNATURE_NAME: module.regress.get_concrete_function(),
        TRANSFORM_SIGNATURE: module.transform_features.get_concrete_function(),
    })
    set_signature_methods(export_dir, SIGNATURE_METHODS)
    extra = os.path.join(export_dir, "assets.extra")
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(extra, MODEL_INFO_FILE), "w") as f:
        f.write(json.dumps(jsonable(info), indent=1, sort_keys=True))


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Kind):
        return obj.value
    if hasattr(obj, "__dataclass_fields__"):
        return jsonable(asdict(obj))
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
    #: Format-Serving directory of the model to warm-start from (TFX Trainer `base_model`), or None.
    base_model_dir: str | None = None


def warm_start_dir(serving_model_dir: str) -> str:
    """The warm-start folder beside a Trainer's Format-Serving directory."""
    return os.path.join(os.path.dirname(serving_model_dir.rstrip("/")), WARM_START_DIR)


def run_training(kind: ModelKind, inputs: TrainerInputs, config: Any, log: Log = print) -> dict[str, Any]:
    """Loads data, trains `kind`, calibrates, picks the threshold, exports.

    Returns the info recorded in the model (threshold, target, validation figures, training report).
    """
    import tensorflow as tf
    import tensorflow_transform as tft

    if inputs.max_steps is not None and getattr(config, "max_steps", 0) is None:
        config = replace(config, max_steps=inputs.max_steps)
    tft_output = tft.TFTransformOutput(inputs.transform_output_dir)
    spec = tft_output.transformed_feature_spec()
    columns = input_columns(spec, exclude_kinds=[Kind(k) for k in config.exclude_kinds])
    train = load_dataset(inputs.train_files, spec, columns)
    validation = load_dataset(inputs.validation_files, spec, columns)
    log(f"{kind.name}: {len(train.x)} train rows ({int(train.y.sum())} fraud), {len(validation.x)} validation rows "
        f"({int(validation.y.sum())} fraud), {train.x.shape[1]} input columns")
    warm = None
    if inputs.base_model_dir:
        candidate = warm_start_dir(inputs.base_model_dir)
        warm = candidate if tf.io.gfile.exists(candidate) else None
        log(f"{kind.name}: base model {inputs.base_model_dir}" + ("" if warm else " (no warm-start data; cold start)"))
    fitted = kind.fit(train, validation, config, warm, log)
    calibrated_on = "validation"
    calibration_rows = validation
    if not validation.y.any():
        # Tiny data sets can hold no fraud in the validation window: fall back to the train rows
        # (biased, the model saw them) rather than ship an uncalibrated score.
        calibrated_on = "train (validation holds no fraud)"
        log(f"{kind.name}: validation rows hold no fraud; calibrating and thresholding on train rows")
        calibration_rows = train
    raw_val = fitted.raw_scores(calibration_rows.x)
    calibration = Calibration.fit(raw_val, calibration_rows.y)
    scores_val = calibration.apply(raw_val)
    choice = choose_threshold(scores_val, calibration_rows.y, config.target)
    log(f"{kind.name}: threshold {choice.threshold:.6g} for {config.target.describe()} "
        f"(validation precision {choice.precision:.3f}, recall {choice.recall:.3f}, target met: {choice.target_met})")
    module = build_serving_module(kind=kind.name, fitted=fitted, columns=columns, tft_output=tft_output,
                                  calibration=calibration, threshold=choice.threshold)
    info = {
        "model": kind.name,
        "signature": signature.SIGNATURE_NAME,
        "threshold": choice.threshold,
        "threshold_target": asdict(config.target),
        "threshold_target_text": config.target.describe(),
        "threshold_on_validation": choice.to_dict(),
        "calibration": asdict(calibration),
        "calibrated_on": calibrated_on,
        "validation_auprc": average_precision(calibration_rows.y, scores_val),
        "config": asdict(config),
        "training": asdict(fitted.report),
        "warm_started_from": fitted.report.warm_started_from,
        "input_columns": [asdict(c) for c in columns],
        "feature_names": list(FEATURE_NAMES),
        "created_at_ms": int(time.time() * 1000),
    }
    save_serving_model(module, inputs.serving_model_dir, info)
    fitted.save_warm_start(warm_start_dir(inputs.serving_model_dir))
    return jsonable(info)


def make_run_fn(kind: ModelKind) -> Callable[[Any], None]:
    """The TFX Trainer `run_fn` of a kind: custom_config[kind.name] holds its config fields."""

    def run_fn(fn_args: Any) -> None:
        from absl import logging

        config = kind.config((fn_args.custom_config or {}).get(kind.name, {}))
        if fn_args.hyperparameters:  # the Tuner's best values
            import keras_tuner as kt

            values = kt.HyperParameters.from_config(fn_args.hyperparameters).values
            config = kind.with_hyperparameters(config, values)
            logging.info(f"{kind.name}: tuned hyperparameters {values}")
        inputs = TrainerInputs(train_files=fn_args.train_files, validation_files=fn_args.eval_files,
                               transform_output_dir=fn_args.transform_output,
                               serving_model_dir=fn_args.serving_model_dir, max_steps=fn_args.train_steps or None,
                               base_model_dir=fn_args.base_model or None)
        run_training(kind, inputs, config, log=logging.info)

    return run_fn


def default_target(precision: float) -> ThresholdTarget:
    return ThresholdTarget(PRECISION, precision)


def target_field(precision: float) -> Any:
    return field(default_factory=lambda: default_target(precision))
