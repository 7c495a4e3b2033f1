"""`fraudctl monitor run` against the real embedded Kafka broker.

- precision, recall and AUPRC per window, as the monitor publishes them, equal scikit-learn over the same
  events; the alerts it sends for windows below the precision threshold are exactly the offline ones;
- a replay of transactions with drift injected into V3, V10 and Amount raises a drift alert naming exactly
  those features; a clean replay raises no drift or skew alert.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, precision_score, recall_score

from fraud.contract import AlertEvent
from fraud.features import FEATURE_NAMES
from fraud.paths import SAMPLE_CSV
from fraud.stream.reader import read_all
from fraud.topics import MONITOR_STATE
from monitoring.testing import produce, sample_transactions, synthetic_scores

pytestmark = pytest.mark.integration

HOUR = 3_600_000


def monitor(bootstrap: str, topics: dict[str, str], snapshot: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fraudctl.cli", "monitor", "run", "--bootstrap", bootstrap,
           "--scores-topic", topics["scores"], "--labels-topic", topics["labels"],
           "--transactions-topic", topics["transactions"], "--alerts-topic", topics["alerts"],
           "--dlq-topic", topics["dlq"], "--state-topic", topics["state"], "--snapshot-path", str(snapshot),
           "--stop-when-idle-s", "4",
           "--group-id", f"mon-{topics['scores']}", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def make_topics(kafka_topic) -> dict[str, str]:
    return {"scores": kafka_topic(partitions=4), "labels": kafka_topic(partitions=2),
            "transactions": kafka_topic(partitions=2), "alerts": kafka_topic(partitions=1),
            "dlq": kafka_topic(partitions=1), "state": kafka_topic(partitions=1, config=dict(MONITOR_STATE.config))}


def alerts_of(kafka, topic: str) -> list[AlertEvent]:
    return [AlertEvent.from_json(r.value) for r in read_all(kafka, topic, group_id=f"check-{topic}")]


def test_precision_recall_per_window_equal_the_offline_computation(kafka_broker, kafka_topic, kafka_client_config,
                                                                   tmp_path: Path):
    topics = make_topics(kafka_topic)
    data = synthetic_scores(4000, seed=21, span_ms=4 * HOUR, fraud_rate=0.04, threshold=0.6)
    rng = random.Random(2)
    labelled = [d for d in data if rng.random() < 0.95]  # some labels never come
    records = [(topics["scores"], d.score.transaction_id.encode(), d.score.to_json()) for d in data]
    records += [(topics["scores"], d.score.transaction_id.encode(), d.score.to_json()) for d in data[::50]]
    labels = [(topics["labels"], d.label.transaction_id.encode(), d.label.to_json()) for d in labelled]
    rng.shuffle(labels)
    produce(kafka_client_config, records + labels + [(topics["labels"], b"x", b"[1, 2]")])

    snapshot = tmp_path / "snapshot.json"
    done = monitor(kafka_broker.bootstrap, topics, snapshot, "--drift", "0", "--min-precision", "0.82",
                   "--min-recall", "off", "--max-alert-rate", "off", "--max-latency-p99-ms", "off",
                   "--min-label-coverage", "0.9", "--min-positives", "5", "--min-events", "100")
    assert "4000 scores (80 duplicates)" in done.stdout

    snap = orjson.loads(snapshot.read_bytes())
    truth = {d.label.transaction_id: d.label.label for d in labelled}
    expected_alerts = set()
    for granularity, size in (("1h", HOUR), ("1m", 60_000)):
        frame = pd.DataFrame({"t": [d.score.event_time_ms for d in data], "s": [d.score.score for d in data],
                              "d": [d.score.decision for d in data],
                              "y": [truth.get(d.score.transaction_id, -1) for d in data]})
        frame["w"] = frame.t // size * size
        windows = {w["start_ms"]: w for w in snap["windows"][granularity]}
        assert sorted(windows) == sorted(frame.w.unique())
        for start, g in frame.groupby("w"):
            got = windows[start]
            lab = g[g.y >= 0]
            assert got["events"] == len(g) and got["labelled"] == len(lab)
            if lab.d.sum():
                assert got["precision"] == pytest.approx(precision_score(lab.y, lab.d), abs=1e-12)
            if lab.y.sum():
                assert got["recall"] == pytest.approx(recall_score(lab.y, lab.d), abs=1e-12)
                assert got["auprc"] == pytest.approx(average_precision_score(lab.y, lab.s), abs=1e-12)
            if granularity == "1h" and len(g) >= 100 and len(lab) / len(g) >= 0.9 and lab.y.sum() >= 5:
                if precision_score(lab.y, lab.d, zero_division=0) < 0.82:
                    expected_alerts.add(start)
    assert 0 < len(expected_alerts) < 4, "the threshold should make some windows alert, not all"
    sent = alerts_of(kafka_client_config, topics["alerts"])
    assert {a.window_start_ms for a in sent if a.kind == "precision"} == expected_alerts
    assert {a.kind for a in sent} == {"precision"}
    assert len({a.alert_id for a in sent}) == len(sent)
    dead = read_all(kafka_client_config, topics["dlq"], group_id="check-dlq")
    assert [r.value for r in dead] == [b"[1, 2]"]

    # A restart resumes from the checkpoint written at the idle stop: the same windows, no alert sent twice.
    monitor(kafka_broker.bootstrap, topics, snapshot, "--drift", "0", "--min-precision", "0.82",
            "--min-recall", "off", "--max-alert-rate", "off", "--max-latency-p99-ms", "off")
    again = orjson.loads(snapshot.read_bytes())
    assert again["windows"]["1h"] == snap["windows"]["1h"]
    assert len(alerts_of(kafka_client_config, topics["alerts"])) == len(sent)


@pytest.fixture(scope="module")
def drift_data(tmp_path_factory):
    import tensorflow_data_validation as tfdv

    frame = pd.read_csv(SAMPLE_CSV)
    order = np.random.default_rng(0).permutation(len(frame))
    train = frame.iloc[order[:6000]].reset_index(drop=True)
    held_out = frame.iloc[order[6000:]].reset_index(drop=True)[list(FEATURE_NAMES)]
    stats_dir = tmp_path_factory.mktemp("stats") / "Split-train"
    stats_dir.mkdir()
    (stats_dir / "FeatureStats.pb").write_bytes(tfdv.generate_statistics_from_dataframe(train).SerializeToString())
    return train, held_out, stats_dir.parent


@pytest.mark.parametrize("drifted", [False, True], ids=["clean", "drifted"])
def test_replay_with_drift_raises_an_alert_naming_the_features(kafka_broker, kafka_topic, kafka_client_config,
                                                               tmp_path: Path, drift_data, drifted: bool):
    train, held_out, stats = drift_data
    topics = make_topics(kafka_topic)
    first = held_out.iloc[:1500].to_dict("records")
    second = held_out.iloc[1500:3000].copy()
    if drifted:  # from the second hour on: V3 shifted by two standard deviations, V10 x4, Amount in cents
        second["V3"] += 2.0 * train["V3"].std()
        second["V10"] *= 4.0
        second["Amount"] *= 100.0
    base = 1_377_993_600_000
    events = sample_transactions(first, start_ms=base, span_ms=HOUR, prefix="a")
    events += sample_transactions(second.to_dict("records"), start_ms=base + HOUR, span_ms=HOUR, prefix="b")
    produce(kafka_client_config, [(topics["transactions"], e.transaction_id.encode(), e.to_json()) for e in events])

    snapshot = tmp_path / "snapshot.json"
    monitor(kafka_broker.bootstrap, topics, snapshot, "--training-stats", str(stats))
    sent = alerts_of(kafka_client_config, topics["alerts"])
    snap = orjson.loads(snapshot.read_bytes())
    assert len(snap["drift"]) == 2  # both hours were checked
    comparisons = {a.kind: a for a in sent if a.kind in ("drift", "skew")}
    if not drifted:
        assert comparisons == {}
        return
    assert set(comparisons) == {"drift", "skew"}
    for alert in comparisons.values():
        assert alert.features == ("V3", "V10", "Amount")
        assert alert.window_start_ms == base + HOUR
        assert alert.value > 0.35  # the default threshold
    assert snap["drift"][1]["control"] == f"window {base}"
