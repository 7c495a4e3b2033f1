"""Unit tests of the monitor's windows: every per-window number equals an offline computation (scikit-learn,
numpy) over the same events, however late and in whatever order the labels arrive."""

from __future__ import annotations

import random

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_score, recall_score

from monitoring.testing import synthetic_scores
from monitoring.windows import WindowedMetrics, average_precision

HOUR = 3_600_000
MINUTE = 60_000


def test_average_precision_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    for n in (5, 50, 2000):
        y = (rng.random(n) < 0.2).astype(int)
        y[0] = 1
        s = np.round(rng.random(n) * 0.5 + 0.4 * y, 2)  # rounding makes many ties
        assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert average_precision(np.zeros(4, int), np.ones(4)) is None


def offline(events, labels_seen: dict[str, int], size_ms: int) -> dict[int, dict]:
    """Per window start: precision, recall, AUPRC over the labelled events, with scikit-learn."""
    by_window: dict[int, list] = {}
    for e in events:
        by_window.setdefault((e.event_time_ms // size_ms) * size_ms, []).append(e)
    out = {}
    for start, evs in by_window.items():
        lab = [(labels_seen[e.transaction_id], e.decision, e.score) for e in evs if e.transaction_id in labels_seen]
        y = np.array([x[0] for x in lab], dtype=int)
        d = np.array([x[1] for x in lab], dtype=int)
        s = np.array([x[2] for x in lab])
        out[start] = {
            "events": len(evs),
            "flagged": sum(e.decision for e in evs),
            "labelled": len(lab),
            "precision": precision_score(y, d, zero_division=np.nan) if len(lab) else None,
            "recall": recall_score(y, d, zero_division=np.nan) if len(lab) else None,
            "auprc": average_precision_score(y, s) if y.sum() else None,
            "latency_p99": float(np.percentile([e.latency_ms for e in evs], 99)),
            "score_hist": np.histogram([e.score for e in evs], bins=20, range=(0, 1))[0].tolist(),
        }
    return out


def assert_same(window, expected: dict) -> None:
    assert window.events == expected["events"]
    assert window.flagged == expected["flagged"]
    assert window.labelled == expected["labelled"]
    assert window.latency_p99_ms == pytest.approx(expected["latency_p99"])
    assert window.score_hist == expected["score_hist"]
    for name in ("precision", "recall", "auprc"):
        want = expected[name]
        got = getattr(window, name)
        if want is None or (isinstance(want, float) and np.isnan(want)):
            assert got is None, (name, window.start_ms)
        else:
            assert got == pytest.approx(want, abs=1e-12), (name, window.start_ms)


@pytest.mark.parametrize("granularity,size", [("1m", MINUTE), ("1h", HOUR)])
def test_windows_equal_offline_computation_as_labels_arrive(granularity: str, size: int):
    data = synthetic_scores(3000, seed=3, span_ms=3 * HOUR, fraud_rate=0.05)
    events = [d.score for d in data]
    labels = [d.label for d in data]
    rng = random.Random(1)
    # Labels arrive late and out of order; a few arrive before their score; 10% never arrive.
    rng.shuffle(labels)
    labels = labels[: int(len(labels) * 0.9)]
    early, late = labels[:100], labels[100:]
    wm = WindowedMetrics({granularity: size}, retention_ms=48 * HOUR)
    seen: dict[str, int] = {}
    for lab in early:
        wm.add_label(lab)
        seen[lab.transaction_id] = lab.label
    for e in events:
        wm.add_score(e)
    for e in events[:50]:  # an at-least-once bridge re-sends some scores
        assert not wm.add_score(e)

    checkpoints = [len(late) // 3, 2 * len(late) // 3, len(late)]
    done = 0
    for stop in checkpoints:
        for lab in late[done:stop]:
            wm.add_label(lab)
            seen[lab.transaction_id] = lab.label
        done = stop
        expected = offline(events, seen, size)
        windows = wm.windows(granularity)
        assert [w.start_ms for w in windows] == sorted(expected)
        for w in windows:
            assert_same(w, expected[w.start_ms])
    assert wm.duplicates == 50
    hourly = wm.windows(granularity)
    assert sum(w.events for w in hourly) == 3000
    assert any(w.precision is not None and 0 < w.precision < 1 for w in hourly)


def test_a_newer_label_replaces_an_older_one_and_changes_the_window():
    data = synthetic_scores(200, seed=4, span_ms=HOUR - 1, fraud_rate=0.2)
    wm = WindowedMetrics({"1h": HOUR}, retention_ms=48 * HOUR)
    for d in data:
        wm.add_score(d.score)
        wm.add_label(d.label)
    before = wm.windows("1h")[0]
    target = next(d for d in data if d.label.label == 1 and d.score.decision)
    from fraud.contract import LabelEvent

    flipped = LabelEvent(target.label.transaction_id, 0, target.label.event_time_ms, target.label.labelled_at_ms + 1)
    stale = LabelEvent(target.label.transaction_id, 1, target.label.event_time_ms, target.label.labelled_at_ms - 1)
    assert wm.add_label(flipped)
    assert not wm.add_label(stale)
    after = wm.windows("1h")[0]
    assert (after.tp, after.fp) == (before.tp - 1, before.fp + 1)


def test_closed_windows_follow_the_watermark_and_old_windows_expire():
    data = synthetic_scores(600, seed=5, span_ms=6 * HOUR)
    wm = WindowedMetrics({"1m": MINUTE, "1h": HOUR}, retention_ms=2 * HOUR)
    for d in data:
        wm.add_score(d.score)
    newest = max(d.score.event_time_ms for d in data)
    closed = wm.closed_windows("1h", lateness_ms=60_000)
    assert all(w.end_ms + 60_000 <= newest for w in closed)
    assert len(closed) == len(wm.windows("1h")) - 1
    gone = wm.expire()
    assert gone > 0
    hours = wm.windows("1h")
    assert hours[0].start_ms >= ((newest - 2 * HOUR) // HOUR) * HOUR
    assert len(hours) <= 3
    assert sum(w.events for w in wm.windows("1m")) == sum(w.events for w in hours) == wm.scored
    # An event older than the retention is refused rather than resurrecting an expired window.
    assert not wm.add_score(data[0].score.__class__(**{**data[0].score.__dict__, "transaction_id": "late"}))


def test_rates_and_latency_of_a_window():
    data = synthetic_scores(500, seed=6, span_ms=HOUR - 1)
    wm = WindowedMetrics({"1h": HOUR}, retention_ms=48 * HOUR)
    for d in data:
        wm.add_score(d.score)
    (w,) = wm.windows("1h")
    lat = np.array([d.score.latency_ms for d in data])
    assert w.event_rate_per_s == pytest.approx(500 / 3600)
    assert w.alert_rate == pytest.approx(np.mean([d.score.decision for d in data]))
    assert w.latency_p50_ms == pytest.approx(np.percentile(lat, 50))
    assert w.latency_max_ms == lat.max()
    assert w.label_coverage == 0 and w.precision is None and w.auprc is None
    assert sum(w.score_hist) == 500
