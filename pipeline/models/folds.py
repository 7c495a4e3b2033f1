"""Rolling time folds: a second, harsher protocol beside the single train/validation/eval split.

Fold k trains on everything before `k` time units (its last `validation_share` of rows, in time order,
is the validation window the kind early-stops and chooses on) and is scored on the next unit. With the
public data (two days) and 12-hour units from 24 h on, that is: train on day 1 -> score hours 24-36;
train on the first 36 h -> score hours 36-48. Each fold's figures come with their own bootstrap
interval; the mean over folds is reported beside the single split.

The inputs are the pipeline's own transformed columns (the run's Transform graph applied to the raw
rows), so the folds see exactly what the Trainers see.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fraud.features import FEATURE_NAMES, Kind
from fraud.metrics import Scorecard, scorecard
from pipeline.models.base import Dataset, ModelKind, input_columns, stack_columns

HOUR_S = 3600


@dataclass(frozen=True)
class Fold:
    index: int
    train_end_s: float  # train on time < train_end_s
    test_end_s: float  # score train_end_s <= time < test_end_s


def rolling_folds(time_s: np.ndarray, unit_s: float, min_train_s: float) -> list[Fold]:
    """Folds over [0, max(time)]: train on [0, t), test on [t, t + unit), for t = min_train_s, + unit, ..."""
    end = float(np.max(time_s)) if len(time_s) else 0.0
    folds, t = [], float(min_train_s)
    while t < end:
        folds.append(Fold(len(folds) + 1, t, t + unit_s))
        t += unit_s
    return folds


def transformed_columns(transform_output_dir: str, raw: np.ndarray, batch: int = 65_536) -> tuple[dict[str, np.ndarray],
                                                                                                 Any]:
    """The run's Transform graph applied to raw feature rows [N, 30] (fraud.features order)."""
    import tensorflow as tf
    import tensorflow_transform as tft

    output = tft.TFTransformOutput(transform_output_dir)
    layer = output.transform_features_layer()
    spec = output.transformed_feature_spec()
    parts: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(raw), batch):
        chunk = raw[i:i + batch].astype(np.float32)
        out = layer({name: tf.constant(chunk[:, j:j + 1]) for j, name in enumerate(FEATURE_NAMES)})
        for key, value in out.items():
            parts.setdefault(key, []).append(value.numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}, spec


@dataclass(frozen=True)
class FoldResult:
    kind: str
    fold: Fold
    card: Scorecard
    seconds: float


def run_folds(kinds: Mapping[str, ModelKind], configs: Mapping[str, Mapping[str, Any]],
              transformed: Mapping[str, np.ndarray], spec: Mapping[str, Any], labels: np.ndarray,
              time_s: np.ndarray, folds: Sequence[Fold], validation_share: float = 0.15,
              log: Any = print, bootstrap_samples: int = 300) -> Iterator[FoldResult]:
    """Trains and scores every kind on every fold (see the module docstring)."""
    for name, kind in kinds.items():
        config = kind.config(configs.get(name, {}))
        columns = input_columns(spec, exclude_kinds=[Kind(k) for k in config.exclude_kinds])
        x = stack_columns(transformed, columns)
        for fold in folds:
            train_idx = np.nonzero(time_s < fold.train_end_s)[0]
            test = (time_s >= fold.train_end_s) & (time_s < fold.test_end_s)
            cut = int(len(train_idx) * (1.0 - validation_share))
            fit_rows, val_rows = train_idx[:cut], train_idx[cut:]
            start = time.time()
            fitted = kind.fit(Dataset(x[fit_rows], labels[fit_rows], tuple(columns)),
                              Dataset(x[val_rows], labels[val_rows], tuple(columns)), config, None,
                              lambda m: None)
            card = scorecard(labels[test], fitted.raw_scores(x[test]), samples=bootstrap_samples)
            result = FoldResult(name, fold, card, time.time() - start)
            log(f"  fold {fold.index} ({fold.train_end_s / HOUR_S:.0f}h -> {fold.test_end_s / HOUR_S:.0f}h) "
                f"{name}: {card.describe()} ({card.frauds} frauds, {result.seconds:.0f}s)")
            yield result


def fold_means(results: Sequence[FoldResult]) -> dict[str, dict[str, float]]:
    """Per kind: mean over folds of AUPRC, ROC-AUC, recall at 1% FPR and precision at 100."""
    out: dict[str, dict[str, float]] = {}
    for kind in dict.fromkeys(r.kind for r in results):
        cards = [r.card for r in results if r.kind == kind]
        out[kind] = {k: float(np.nanmean([getattr(c, k) for c in cards]))
                     for k in ("auprc", "roc_auc", "recall_at_1pct_fpr", "precision_at_100")}
        out[kind]["folds"] = len(cards)
    return out
