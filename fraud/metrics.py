"""Ranking metrics of a fraud score, in numpy, and their uncertainty.

The same definitions as scikit-learn (average_precision_score, roc_auc_score), written out so the
trainers, the pipeline's scorecard, the report and the benchmarks share one implementation:

- AUPRC = average precision (step-wise, tied scores grouped), ROC-AUC (Mann-Whitney U, ties averaged);
- precision at k (the top k scores), recall at a false-positive rate (recall when at most that share
  of the normal rows is flagged; the out-of-time anchor of the fraud benchmarks is recall at 1% FPR);
- a percentile bootstrap interval of AUPRC: with 75 frauds in an eval window one fraud more or less
  moves AUPRC by about 0.01, so a single figure cannot say which of two models is better.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Resamples of the bootstrap interval (percentile method).
BOOTSTRAP_SAMPLES = 1000
#: False-positive rate of the reported recall.
ANCHOR_FPR = 0.01
#: k of the reported precision at k (an analyst's daily queue).
TOP_K = 100


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
    sorted_s = s[order]
    # Average rank of each group of ties: (first + last) / 2 + 1, spread back to the rows.
    starts = np.r_[0, np.nonzero(np.diff(sorted_s))[0] + 1]
    ends = np.r_[starts[1:] - 1, len(s) - 1]
    group_rank = (starts + ends) / 2.0 + 1.0
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(group_rank, ends - starts + 1)
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


def recall_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float = ANCHOR_FPR) -> float:
    """Highest recall of a threshold that flags at most `fpr` of the normal rows (ties flagged together)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    ends = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s) - 1]
    tp = np.cumsum(y_sorted)[ends]
    fp = (ends + 1) - tp
    ok = np.nonzero(fp <= fpr * neg)[0]
    return float(tp[ok[-1]] / pos) if len(ok) else 0.0


def bootstrap_interval(labels: np.ndarray, scores: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                       level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of AUPRC: rows resampled with replacement, `samples` times."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not y.any():
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    n = len(y)
    values = np.empty(samples)
    for i in range(samples):
        idx = rng.integers(0, n, n)
        values[i] = average_precision(y[idx], s[idx])
    values = values[np.isfinite(values)]
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Scorecard:
    """One model's figures on one set of labelled rows."""

    rows: int
    frauds: int
    auprc: float
    auprc_low: float  # bootstrap 95% interval
    auprc_high: float
    roc_auc: float
    recall_at_1pct_fpr: float
    precision_at_100: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Scorecard:
        return cls(**{k: (float("nan") if obj.get(k) is None else obj[k]) for k in cls.__dataclass_fields__})

    def describe(self) -> str:
        return (f"AUPRC {self.auprc:.3f} [{self.auprc_low:.3f}, {self.auprc_high:.3f}] ROC {self.roc_auc:.3f} "
                f"recall@1%FPR {self.recall_at_1pct_fpr:.3f} P@{TOP_K} {self.precision_at_100:.2f}")


def scorecard(labels: np.ndarray, scores: np.ndarray, samples: int = BOOTSTRAP_SAMPLES) -> Scorecard:
    y = np.asarray(labels).astype(bool)
    lo, hi = bootstrap_interval(y, scores, samples)
    return Scorecard(rows=int(len(y)), frauds=int(y.sum()), auprc=average_precision(y, scores), auprc_low=lo,
                     auprc_high=hi, roc_auc=roc_auc(y, scores), recall_at_1pct_fpr=recall_at_fpr(y, scores),
                     precision_at_100=precision_at_k(y, scores, TOP_K))
