"""Drift and skew of serving features against the served model's training statistics, with TFDV's comparators.

Serving features come from the clean transactions topic (a score event does not carry them): transactions
are collected per event-time window, and when a window closes TFDV computes its statistics
(`generate_statistics_from_dataframe`, with as many quantile buckets as the training statistics have, so
both histograms are cut alike) and validates them twice:

- **skew** (TFDV's `skew_comparator`): training statistics vs the window, i.e. training/serving skew of the
  model that is being served;
- **drift** (TFDV's `drift_comparator`): the window vs its control, the previous checked window, or the
  training statistics when there is none (the first window after a start). A replay drifted from the
  first event therefore raises a drift alert at once; a shift in the middle of a stream raises one at
  the window where it happens, and skew alerts for as long as it lasts.

Numeric features are compared by Jensen-Shannon divergence on TFDV's QUANTILES histograms (the STANDARD
equal-width histograms put almost all of a heavy-tailed feature such as Amount into one bucket, and their
approximate JSD reached 0.7 between two samples of the same data in our measurements; see README.md).
Features are named by TFDV's own anomaly records; schema anomalies of the window (e.g. values outside the
curated domain) are reported separately.

Training statistics are found with `find_training_statistics`: a path given in config, else MLMD (the
pipeline's metadata) -> the latest pushed model (or the one of a given version) -> its pipeline run ->
that run's StatisticsGen output -> `Split-train/FeatureStats.pb`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fraud.contract import TransactionEvent
from fraud.errors import FraudError
from fraud.features import FEATURE_NAMES

TRAIN_SPLIT = "Split-train"
STATS_FILE = "FeatureStats.pb"
STATS_TFRECORD = "stats_tfrecord"


# ---------------------------------------------------------------------------------------------
# Finding the training statistics of the served model


@dataclass(frozen=True)
class TrainingStatistics:
    statistics: Any  # DatasetFeatureStatisticsList
    source: str  # where it came from (path, or MLMD artifact)
    model_name: str | None = None
    model_version: int | None = None


def load_statistics_file(path: Path) -> Any:
    """A DatasetFeatureStatisticsList from FeatureStats.pb (binary proto), a stats_tfrecord file, or a
    StatisticsGen artifact directory (its Split-train)."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    path = Path(path)
    if path.is_dir():
        for candidate in (path / TRAIN_SPLIT / STATS_FILE, path / STATS_FILE, path / TRAIN_SPLIT / STATS_TFRECORD,
                          path / STATS_TFRECORD):
            if candidate.is_file():
                return load_statistics_file(candidate)
        raise FraudError(f"training statistics: no {TRAIN_SPLIT}/{STATS_FILE} under {path}")
    if not path.is_file():
        raise FraudError(f"training statistics: {path} does not exist")
    if path.name.startswith(STATS_TFRECORD):
        import tensorflow_data_validation as tfdv

        return tfdv.load_statistics(str(path))
    stats = statistics_pb2.DatasetFeatureStatisticsList()
    try:
        stats.ParseFromString(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 (protobuf raises DecodeError; say which file)
        raise FraudError(f"training statistics: {path} is not a DatasetFeatureStatisticsList ({exc})") from None
    if not stats.datasets:
        raise FraudError(f"training statistics: {path} holds no dataset statistics")
    return stats


def find_training_statistics(*, stats_path: Path | None = None, metadata_path: Path | None = None,
                             model_version: int | None = None) -> TrainingStatistics:
    """The training statistics of the served model: `stats_path` if given, else looked up in MLMD."""
    if stats_path is not None:
        return TrainingStatistics(load_statistics_file(stats_path), str(stats_path))
    if metadata_path is None or not Path(metadata_path).is_file():
        raise FraudError(f"training statistics: no --training-stats given and no pipeline metadata at "
                         f"{metadata_path} (run the pipeline, pass --training-stats, or --drift 0)")
    return _from_mlmd(Path(metadata_path), model_version)


def _from_mlmd(metadata_path: Path, model_version: int | None) -> TrainingStatistics:
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(metadata_path)
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    where = f"MLMD {metadata_path}"

    def prop(artifact: Any, name: str) -> Any:
        value = artifact.custom_properties.get(name)
        if value is None:
            return None
        return value.string_value or value.int_value

    try:
        pushed = store.get_artifacts_by_type("PushedModel")
    except Exception:  # noqa: BLE001 (no such type yet: nothing was ever pushed)
        pushed = []
    pushed = [a for a in pushed if prop(a, "pushed") == 1]
    if model_version is not None:
        pushed = [a for a in pushed if str(prop(a, "pushed_version")) == str(model_version)]
    if not pushed:
        which = f"version {model_version}" if model_version is not None else "any version"
        raise FraudError(f"training statistics: {where} records no pushed model ({which}); pass --training-stats")
    model = max(pushed, key=lambda a: (a.create_time_since_epoch, a.id))
    context_types = {t.id: t.name for t in store.get_context_types()}
    runs = [c for c in store.get_contexts_by_artifact(model.id) if context_types.get(c.type_id) == "pipeline_run"]
    if not runs:
        raise FraudError(f"training statistics: pushed model {model.uri} has no pipeline_run context in {where}")
    stats_type = store.get_artifact_type("ExampleStatistics")
    candidates = [a for a in store.get_artifacts_by_context(runs[0].id)
                  if a.type_id == stats_type.id and a.state == metadata_store_pb2.Artifact.LIVE]
    if not candidates:
        raise FraudError(f"training statistics: run {runs[0].name} of the pushed model has no StatisticsGen output")
    stats_artifact = max(candidates, key=lambda a: (a.create_time_since_epoch, a.id))
    version = prop(model, "pushed_version")
    stats = load_statistics_file(Path(stats_artifact.uri))
    return TrainingStatistics(stats, f"{where}: {stats_artifact.uri} (run {runs[0].name})",
                              model_version=int(version) if version and str(version).isdigit() else None)


# ---------------------------------------------------------------------------------------------
# Checking one window


@dataclass
class DriftResult:
    window_start_ms: int
    window_end_ms: int
    rows: int
    control: str  # "training" or "window <start ms>"
    drift_jsd: dict[str, float] = field(default_factory=dict)
    skew_jsd: dict[str, float] = field(default_factory=dict)
    drifted: list[str] = field(default_factory=list)  # TFDV's drift anomalies (JSD over the threshold)
    skewed: list[str] = field(default_factory=list)
    schema_anomalies: dict[str, str] = field(default_factory=dict)  # feature -> TFDV's description
    threshold: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DriftResult:
        return cls(**d)


_COMPARATOR_REASONS = ("COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH", "COMPARATOR_L_INFTY_HIGH",
                       "COMPARATOR_NORMALIZED_ABSOLUTE_DIFFERENCE_HIGH")


def quantile_buckets(stats: Any, default: int = 10) -> int:
    """How many quantile buckets the numeric histograms of `stats` have (StatisticsGen's default is 10)."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    for feature in stats.datasets[0].features:
        if feature.HasField("num_stats"):
            for h in feature.num_stats.histograms:
                if h.type == statistics_pb2.Histogram.QUANTILES and h.buckets:
                    return len(h.buckets)
    return default


class DriftChecker:
    """Validates window statistics against training statistics (skew) and a control (drift) with TFDV."""

    def __init__(self, training: TrainingStatistics, schema: Any, features: Sequence[str], threshold: float,
                 min_rows: int) -> None:
        from tensorflow_metadata.proto.v0 import schema_pb2

        self.training = training
        self.features = tuple(features)
        self.threshold = threshold
        self.min_rows = min_rows
        self.buckets = quantile_buckets(training.statistics)
        names = {f.name for f in schema.feature}
        missing = [f for f in self.features if f not in names]
        if missing:
            raise FraudError(f"drift: features {missing} are not in the schema")
        trained = {self._name(f) for f in training.statistics.datasets[0].features}
        missing = [f for f in self.features if f not in trained]
        if missing:
            raise FraudError(f"drift: features {missing} are not in the training statistics ({training.source})")
        self.schema = copy.deepcopy(schema)
        for f in self.schema.feature:
            if f.name in self.features:
                for comparator in (f.drift_comparator, f.skew_comparator):
                    comparator.jensen_shannon_divergence.threshold = threshold
                    comparator.jensen_shannon_divergence.source.type = schema_pb2.HistogramSelection.QUANTILES

    @staticmethod
    def _name(feature: Any) -> str:
        return feature.path.step[0] if feature.path.step else feature.name

    def statistics(self, rows: np.ndarray) -> Any:
        """TFDV statistics of a window: `rows` is (n, 30) in fraud.features order."""
        import pandas as pd
        import tensorflow_data_validation as tfdv

        frame = pd.DataFrame(np.asarray(rows, dtype=np.float64), columns=list(FEATURE_NAMES))
        options = tfdv.StatsOptions(num_quantiles_histogram_buckets=self.buckets)
        return tfdv.generate_statistics_from_dataframe(frame, stats_options=options, n_jobs=1)

    def check(self, start_ms: int, end_ms: int, rows: np.ndarray, control: Any | None = None,
              control_name: str = "training") -> tuple[DriftResult, Any]:
        """Validate one window; returns the result and the window's statistics (the next window's control)."""
        import tensorflow_data_validation as tfdv

        window = self.statistics(rows)
        previous = control if control is not None else self.training.statistics
        drift = tfdv.validate_statistics(window, self.schema, environment="SERVING", previous_statistics=previous)
        skew = tfdv.validate_statistics(self.training.statistics, self.schema, environment="TRAINING",
                                        serving_statistics=window)
        result = DriftResult(start_ms, end_ms, int(len(rows)), control_name if control is not None else "training",
                             threshold=self.threshold)
        for info in drift.drift_skew_info:
            name = info.path.step[0]
            if name in self.features and info.drift_measurements:
                result.drift_jsd[name] = float(info.drift_measurements[0].value)
        for info in skew.drift_skew_info:
            name = info.path.step[0]
            if name in self.features and info.skew_measurements:
                result.skew_jsd[name] = float(info.skew_measurements[0].value)
        result.drifted = _comparator_features(drift, self.features)
        result.skewed = _comparator_features(skew, self.features)
        for name, info in drift.anomaly_info.items():
            reasons = [r for r in info.reason if _reason_name(r.type) not in _COMPARATOR_REASONS]
            if reasons:
                result.schema_anomalies[name] = "; ".join(r.short_description for r in reasons)
        return result, window


def _reason_name(type_value: int) -> str:
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    return anomalies_pb2.AnomalyInfo.Type.Name(type_value)


def _comparator_features(anomalies: Any, features: Iterable[str]) -> list[str]:
    wanted = set(features)
    out = []
    for name, info in anomalies.anomaly_info.items():
        if name in wanted and any(_reason_name(r.type) in _COMPARATOR_REASONS for r in info.reason):
            out.append(name)
    order = {n: i for i, n in enumerate(FEATURE_NAMES)}
    return sorted(out, key=lambda n: order.get(n, len(order)))


# ---------------------------------------------------------------------------------------------
# Windows of serving features


class DriftWindows:
    """Collects transactions per event-time window; checks each window once, when it closes."""

    def __init__(self, checker: DriftChecker, size_ms: int, lateness_ms: int) -> None:
        self.checker = checker
        self.size_ms = size_ms
        self.lateness_ms = lateness_ms
        self.watermark_ms: int | None = None
        self._open: dict[int, list[list[float]]] = {}
        self._checked_until = -1  # windows with index <= this were checked (or skipped) already
        self._control: tuple[Any, str] | None = None
        self.late = 0
        self.skipped: list[tuple[int, int]] = []  # (window start, rows) of windows too small to check

    def add(self, tx: TransactionEvent) -> None:
        k = tx.event_time_ms // self.size_ms
        if k <= self._checked_until:
            self.late += 1  # its window was checked already
            return
        self._open.setdefault(k, []).append(tx.feature_vector())
        if self.watermark_ms is None or tx.event_time_ms > self.watermark_ms:
            self.watermark_ms = tx.event_time_ms

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able fields, arrays): the open windows' rows, the control window's statistics (serialized)."""
        keys = sorted(self._open)
        arrays = {f"open.{k}": np.asarray(self._open[k], dtype=np.float64) for k in keys}
        control_name = None
        if self._control is not None:
            stats, control_name = self._control
            arrays["control"] = np.frombuffer(stats.SerializeToString(), dtype=np.uint8)
        meta = {"watermark_ms": self.watermark_ms, "open": keys, "checked_until": self._checked_until,
                "control_name": control_name, "late": self.late, "skipped": [list(x) for x in self.skipped]}
        return meta, arrays

    def restore(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        from tensorflow_metadata.proto.v0 import statistics_pb2

        self.watermark_ms = meta["watermark_ms"]
        self._open = {int(k): arrays[f"open.{k}"].tolist() for k in meta["open"]}
        self._checked_until = int(meta["checked_until"])
        self.late = int(meta["late"])
        self.skipped = [(int(a), int(b)) for a, b in meta["skipped"]]
        self._control = None
        if meta["control_name"] is not None:
            stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(arrays["control"].tobytes())
            self._control = (stats, meta["control_name"])

    @property
    def pending_rows(self) -> int:
        return sum(len(v) for v in self._open.values())

    def close_due(self, *, everything: bool = False) -> list[DriftResult]:
        """Check the windows that closed (their end plus the allowed lateness passed), oldest first."""
        if self.watermark_ms is None:
            return []
        due = sorted(k for k in self._open
                     if everything or (k + 1) * self.size_ms + self.lateness_ms <= self.watermark_ms)
        results = []
        for k in due:
            rows = np.asarray(self._open.pop(k), dtype=np.float64)
            self._checked_until = max(self._checked_until, k)
            start = k * self.size_ms
            if len(rows) < self.checker.min_rows:
                self.skipped.append((start, len(rows)))
                continue
            control, name = self._control if self._control is not None else (None, "training")
            result, stats = self.checker.check(start, start + self.size_ms, rows, control, name)
            self._control = (stats, f"window {start}")
            results.append(result)
        return results
