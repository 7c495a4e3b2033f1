"""Event-time tumbling windows over score events, with precision, recall and AUPRC recomputed as labels arrive.

`WindowedMetrics` keeps one entry per scored transaction (its event time, score, decision, latency, model
version) and one per label, joined by transaction id, for `retention_ms` behind the newest event time.
A label may arrive long after its score, or (a lagging bridge) before it: either way it counts in the
window of the transaction's event time as soon as both are there. A window's statistics are recomputed
only when something in it changed (a score or a label), from the raw entries, so the numbers are exactly
what an offline computation over the same events gives:

- events, flagged (decision = fraud), alert rate, event rate per second of event time;
- score mean, median, p99 and a 20-bin histogram on [0, 1];
- scoring latency (transaction record timestamp -> score produced) p50, p95, p99, max;
- over the labelled events: the confusion matrix at the served decision, precision, recall, and AUPRC as
  average precision (the step-wise area scikit-learn's `average_precision_score` computes), plus the
  label coverage (labelled / events), which says how final those numbers are.

Duplicate score events for one transaction (an at-least-once bridge) count once, the first one, as in
the warehouse; a later label for a transaction replaces an earlier one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from fraud.contract import LabelEvent, ScoreEvent

SCORE_BINS = 20


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the precision-recall curve as the step-wise sum over distinct thresholds:
    AP = sum_n (R_n - R_{n-1}) P_n, the definition scikit-learn uses. None without a positive."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    positives = int(y.sum())
    if positives == 0 or y.size == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # Last index of each run of equal scores: a threshold lets all of a tie through or none of it.
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass
class WindowStats:
    granularity: str
    start_ms: int
    end_ms: int
    events: int
    flagged: int
    alert_rate: float
    event_rate_per_s: float
    score_mean: float
    score_p50: float
    score_p99: float
    score_hist: list[int]
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    labelled: int
    positives: int
    tp: int
    fp: int
    fn: int
    tn: int
    precision: float | None
    recall: float | None
    auprc: float | None
    label_coverage: float
    model_versions: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(vars(self))  # flat: numbers and lists of ints (dataclasses.asdict deep-copies, slowly)


def window_stats(granularity: str, start_ms: int, size_ms: int, scores: np.ndarray, decisions: np.ndarray,
                 latencies_ms: np.ndarray, labels: np.ndarray, versions: np.ndarray) -> WindowStats:
    """Statistics of one window's events; `labels` holds -1 where no label has arrived yet."""
    n = int(scores.size)
    flagged = int(decisions.sum())
    have = labels >= 0
    y = labels[have]
    d = decisions[have]
    tp = int(np.sum((y == 1) & d))
    fp = int(np.sum((y == 0) & d))
    fn = int(np.sum((y == 1) & ~d))
    tn = int(np.sum((y == 0) & ~d))
    hist = np.histogram(scores, bins=SCORE_BINS, range=(0.0, 1.0))[0]
    lat = np.percentile(latencies_ms, [50, 95, 99]) if n else np.zeros(3)
    return WindowStats(
        granularity=granularity,
        start_ms=start_ms,
        end_ms=start_ms + size_ms,
        events=n,
        flagged=flagged,
        alert_rate=flagged / n if n else 0.0,
        event_rate_per_s=n / (size_ms / 1000.0),
        score_mean=math.fsum(scores.tolist()) / n if n else 0.0,  # exact sum: the same in any arrival order
        score_p50=float(np.percentile(scores, 50)) if n else 0.0,
        score_p99=float(np.percentile(scores, 99)) if n else 0.0,
        score_hist=[int(x) for x in hist],
        latency_p50_ms=float(lat[0]),
        latency_p95_ms=float(lat[1]),
        latency_p99_ms=float(lat[2]),
        latency_max_ms=float(latencies_ms.max()) if n else 0.0,
        labelled=int(have.sum()),
        positives=int(y.sum()),
        tp=tp, fp=fp, fn=fn, tn=tn,
        precision=tp / (tp + fp) if tp + fp else None,
        recall=tp / (tp + fn) if tp + fn else None,
        auprc=average_precision(y, scores[have]),
        label_coverage=float(have.sum()) / n if n else 0.0,
        model_versions=sorted({int(v) for v in versions}),
    )


class WindowedMetrics:
    """Tumbling event-time windows of several sizes over the same events (e.g. {"1m": 60_000, "1h": 3_600_000})."""

    def __init__(self, granularities: dict[str, int], retention_ms: int) -> None:
        if not granularities:
            raise ValueError("at least one window size is needed")
        self.granularities = dict(granularities)
        self.retention_ms = retention_ms
        self.watermark_ms: int | None = None  # newest event time seen
        self._index: dict[str, int] = {}  # transaction id -> row in the columns below
        self._tx: list[str] = []
        self._t: list[int] = []
        self._score: list[float] = []
        self._decision: list[bool] = []
        self._latency: list[int] = []
        self._version: list[int] = []
        self._live: list[bool] = []
        self._labels: dict[str, tuple[int, int, int]] = {}  # tx -> (label, labelled_at_ms, event_time_ms)
        self._dirty: dict[str, set[int]] = {g: set() for g in self.granularities}
        self._cache: dict[str, dict[int, WindowStats]] = {g: {} for g in self.granularities}
        self.duplicates = 0

    # -- input ---------------------------------------------------------------------------------

    def _touch(self, event_time_ms: int) -> None:
        for g, size in self.granularities.items():
            self._dirty[g].add(event_time_ms // size)

    def add_score(self, e: ScoreEvent) -> bool:
        """False for a duplicate (the transaction was scored already) or an event older than the retention."""
        if e.transaction_id in self._index:
            self.duplicates += 1
            return False
        horizon = self._horizon()
        if horizon is not None and e.event_time_ms < horizon:
            return False
        self._index[e.transaction_id] = len(self._tx)
        self._tx.append(e.transaction_id)
        self._t.append(e.event_time_ms)
        self._score.append(e.score)
        self._decision.append(e.decision)
        self._latency.append(e.latency_ms)
        self._version.append(e.model_version)
        self._live.append(True)
        if self.watermark_ms is None or e.event_time_ms > self.watermark_ms:
            self.watermark_ms = e.event_time_ms
        self._touch(e.event_time_ms)
        return True

    def add_label(self, e: LabelEvent) -> bool:
        """False when an equal or newer label for the transaction is there already."""
        have = self._labels.get(e.transaction_id)
        if have is not None and (have[1], have[0]) >= (e.labelled_at_ms, e.label):
            return False
        self._labels[e.transaction_id] = (e.label, e.labelled_at_ms, e.event_time_ms)
        row = self._index.get(e.transaction_id)
        if row is not None:
            self._touch(self._t[row])  # the score's event time decides the window
        return True

    def _horizon(self) -> int | None:
        """Oldest event time kept, aligned to the largest window so windows expire whole."""
        if self.watermark_ms is None:
            return None
        largest = max(self.granularities.values())
        return ((self.watermark_ms - self.retention_ms) // largest) * largest

    def expire(self) -> int:
        """Drop entries older than the retention behind the watermark; returns how many scores went."""
        horizon = self._horizon()
        if horizon is None:
            return 0
        old = [i for i, t in enumerate(self._t) if t < horizon and self._live[i]]
        for tx in [tx for tx, (_l, _at, t) in self._labels.items() if t < horizon]:
            del self._labels[tx]
        if not old:
            return 0
        for i in old:
            self._live[i] = False
        keep = [i for i, live in enumerate(self._live) if live]
        self._tx = [self._tx[i] for i in keep]
        self._t = [self._t[i] for i in keep]
        self._score = [self._score[i] for i in keep]
        self._decision = [self._decision[i] for i in keep]
        self._latency = [self._latency[i] for i in keep]
        self._version = [self._version[i] for i in keep]
        self._live = [True] * len(keep)
        self._index = {tx: i for i, tx in enumerate(self._tx)}
        for g, size in self.granularities.items():
            for idx in [k for k in self._cache[g] if (k + 1) * size <= horizon]:
                del self._cache[g][idx]
        return len(old)

    # -- checkpoint ----------------------------------------------------------------------------

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """What a restarted monitor needs to carry on: (JSON-able fields, columns as arrays)."""
        live = [i for i, alive in enumerate(self._live) if alive]
        label_tx = list(self._labels)
        label_cols = np.asarray([self._labels[tx] for tx in label_tx], dtype=np.int64).reshape(-1, 3)
        arrays = {
            "tx": np.asarray([self._tx[i] for i in live], dtype=str),
            "t": np.asarray([self._t[i] for i in live], dtype=np.int64),
            "score": np.asarray([self._score[i] for i in live], dtype=np.float64),
            "decision": np.asarray([self._decision[i] for i in live], dtype=bool),
            "latency": np.asarray([self._latency[i] for i in live], dtype=np.int64),
            "version": np.asarray([self._version[i] for i in live], dtype=np.int64),
            "label_tx": np.asarray(label_tx, dtype=str),
            "labels": label_cols,
        }
        return {"watermark_ms": self.watermark_ms, "duplicates": self.duplicates}, arrays

    def restore(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        """Back to a `state()`; every window is recomputed on the next read."""
        self.watermark_ms = meta["watermark_ms"]
        self.duplicates = int(meta["duplicates"])
        self._tx = [str(x) for x in arrays["tx"]]
        self._t = [int(x) for x in arrays["t"]]
        self._score = [float(x) for x in arrays["score"]]
        self._decision = [bool(x) for x in arrays["decision"]]
        self._latency = [int(x) for x in arrays["latency"]]
        self._version = [int(x) for x in arrays["version"]]
        self._live = [True] * len(self._tx)
        self._index = {tx: i for i, tx in enumerate(self._tx)}
        self._labels = {str(tx): (int(row[0]), int(row[1]), int(row[2]))
                        for tx, row in zip(arrays["label_tx"], arrays["labels"], strict=True)}
        self._cache = {g: {} for g in self.granularities}
        self._dirty = {g: {t // size for t in self._t} for g, size in self.granularities.items()}

    # -- output --------------------------------------------------------------------------------

    @property
    def scored(self) -> int:
        return len(self._tx)

    @property
    def labelled(self) -> int:
        return sum(1 for tx in self._labels if tx in self._index)

    def windows(self, granularity: str) -> list[WindowStats]:
        """Every window of this size with events, oldest first; recomputes only windows that changed."""
        size = self.granularities[granularity]
        dirty = self._dirty[granularity]
        if dirty:
            t = np.asarray(self._t, dtype=np.int64)
            idx = t // size
            mask = np.isin(idx, np.fromiter(dirty, dtype=np.int64, count=len(dirty)))
            rows = np.flatnonzero(mask)
            if rows.size:
                scores = np.asarray(self._score, dtype=np.float64)[rows]
                decisions = np.asarray(self._decision, dtype=bool)[rows]
                latency = np.asarray(self._latency, dtype=np.float64)[rows]
                versions = np.asarray(self._version, dtype=np.int64)[rows]
                labels = np.fromiter((self._labels.get(self._tx[i], (-1,))[0] for i in rows), dtype=np.int64,
                                     count=rows.size)
                w = idx[rows]
                order = np.argsort(w, kind="stable")
                w, scores, decisions, latency, versions, labels = (
                    w[order], scores[order], decisions[order], latency[order], versions[order], labels[order])
                starts = np.r_[0, np.flatnonzero(np.diff(w)) + 1]
                ends = np.r_[starts[1:], w.size]
                for a, b in zip(starts, ends, strict=True):
                    k = int(w[a])
                    self._cache[granularity][k] = window_stats(
                        granularity, k * size, size, scores[a:b], decisions[a:b], latency[a:b], labels[a:b],
                        versions[a:b])
            dirty.clear()
        return [self._cache[granularity][k] for k in sorted(self._cache[granularity])]

    def closed_windows(self, granularity: str, lateness_ms: int) -> list[WindowStats]:
        """Windows whose end is at least `lateness_ms` behind the watermark."""
        if self.watermark_ms is None:
            return []
        return [w for w in self.windows(granularity) if w.end_ms + lateness_ms <= self.watermark_ms]

    def label_progress(self) -> dict:
        """Over every retained event: how many are labelled, and precision/recall/AUPRC over those."""
        rows = [i for i, tx in enumerate(self._tx) if tx in self._labels]
        y = np.fromiter((self._labels[self._tx[i]][0] for i in rows), dtype=np.int64, count=len(rows))
        d = np.asarray([self._decision[i] for i in rows], dtype=bool)
        s = np.asarray([self._score[i] for i in rows], dtype=np.float64)
        tp = int(np.sum((y == 1) & d))
        fp = int(np.sum((y == 0) & d))
        fn = int(np.sum((y == 1) & ~d))
        return {
            "scored": len(self._tx),
            "labelled": len(rows),
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
            "auprc": average_precision(y, s),
        }


def stats_by_start(windows: Iterable[WindowStats]) -> dict[int, WindowStats]:
    return {w.start_ms: w for w in windows}
