"""The monitor's checkpoints.

Unit (no broker): the state of a monitor half-way through a stream, encoded, decoded and restored into a
new one, which then ends exactly where one that never stopped ends (windows, drift with its control
window, alerts, statistics); the archive holds no pickles.

Integration (real broker): `fraudctl monitor run` checkpointing every second, killed with SIGKILL three
times mid-stream and restarted: every restart resumes from a checkpoint instead of replaying history, the
final windows equal those of a monitor that read everything in one go, and every dead letter and alert is
on its topic exactly once (they are committed in the checkpoints' transactions).
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from fraud.contract import AlertEvent
from fraud.features import FEATURE_NAMES
from fraud.kafka_config import KafkaClientConfig
from fraud.paths import SAMPLE_CSV
from fraud.stream.reader import read_all
from fraud.stream.records import Record
from fraud.topics import MONITOR_STATE
from monitoring.checkpoint import CheckpointStore, decode, encode
from monitoring.config import MonitorConfig, Thresholds
from monitoring.drift import DriftChecker, TrainingStatistics
from monitoring.monitor import MonitorJob, load_schema
from monitoring.testing import produce, sample_transactions, synthetic_scores

HOUR = 3_600_000
BASE = 1_377_993_600_000


def stream(n_scores: int = 3000) -> list[Record]:
    """Scores over 3 h with their labels, transactions over 2 h, and a few records that break the contract."""
    data = synthetic_scores(n_scores, seed=4, span_ms=3 * HOUR, fraud_rate=0.05)
    rows = pd.read_csv(SAMPLE_CSV)[list(FEATURE_NAMES)].iloc[:2400].to_dict("records")
    txs = sample_transactions(rows, start_ms=BASE, span_ms=2 * HOUR)
    out = []
    for i, d in enumerate(data):
        out.append(Record("scores", i % 2, i // 2, None, d.score.to_json(), 0))
        if i % 3 == 0:
            out.append(Record("labels", 0, i, None, d.label.to_json(), 0))
        if i < len(txs):
            out.append(Record("tx", 0, i, None, txs[i].to_json(), 0))
        if i % 1000 == 7:
            out.append(Record("labels", 0, 10**6 + i, b"bad", b"[1]", 0))
    return out


@pytest.fixture(scope="module")
def checker():
    tfdv = pytest.importorskip("tensorflow_data_validation")
    train = pd.read_csv(SAMPLE_CSV).iloc[3000:6000]
    stats = TrainingStatistics(tfdv.generate_statistics_from_dataframe(train), "test", model_version=1)
    return DriftChecker(stats, load_schema(None), [f for f in FEATURE_NAMES if f != "Time"], 0.35, min_rows=500)


def new_job(tmp_path: Path, checker) -> MonitorJob:
    config = MonitorConfig(kafka=KafkaClientConfig(), snapshot_path=tmp_path / "snap.json",
                           metadata_path=tmp_path / "none.sqlite", scores_topic="scores", labels_topic="labels",
                           transactions_topic="tx", allowed_lateness_ms=0,
                           thresholds=Thresholds(max_alert_rate=0.01, min_events=100, min_precision=0.99))
    return MonitorJob(config, checker=checker, clock_ms=lambda: 1_700_000_000_000)


def feed(job: MonitorJob, records: list[Record]) -> list[str]:
    """What the loop does, in batches of 500 with a publish after each; returns the alert ids raised."""
    raised = []
    for i in range(0, len(records), 500):
        job.handle(records[i:i + 500])
        raised += [a.alert_id for a in job.evaluate()]
        job.publish()
    return raised


def test_a_restored_monitor_ends_where_one_that_never_stopped_ends(tmp_path: Path, checker):
    records = stream()
    half = len(records) // 2 // 500 * 500  # on a batch boundary, so both runs see the same batches
    whole = new_job(tmp_path, checker)
    whole_alerts = feed(whole, records)

    first = new_job(tmp_path, checker)
    first_alerts = feed(first, records[:half])
    assert first.drift_results and first.drift is not None and first.drift._control is not None
    blob = encode(*first.state())
    second = new_job(tmp_path, checker)
    second.restore(*decode(blob))
    second_alerts = feed(second, records[half:])

    assert first_alerts + second_alerts == whole_alerts and whole_alerts
    # The end of the stream closes every window (the second drift window needs it).
    assert [x.alert_id for x in second.evaluate(final=True)] == [x.alert_id for x in whole.evaluate(final=True)]
    a, b = whole.snapshot(), second.snapshot()
    assert b["windows"] == a["windows"]
    assert b["drift"] == a["drift"] and len(a["drift"]) == 2
    assert b["drift"][1]["control"] == f"window {BASE}"  # the control window came through the checkpoint
    assert b["alerts"] == a["alerts"]
    assert b["label_progress"] == a["label_progress"]
    assert {k: v for k, v in b["stats"].items()} == {k: v for k, v in a["stats"].items()}
    assert whole.evaluate(final=True) == second.evaluate(final=True) == []  # each alert raised once
    with np.load(io.BytesIO(zlib.decompress(blob.split(b"\n", 1)[1])), allow_pickle=False) as z:  # no pickles
        assert "windows/tx" in z.files and z["windows/tx"].dtype.kind == "U"


def test_checkpoints_are_chunked_and_verified(tmp_path: Path):
    """Staging cuts the state into chunks, writes the manifest last and tombstones chunks no longer used."""

    class Producer:
        def __init__(self) -> None:
            self.sent: list[tuple[str, bytes | None, bytes, list]] = []

        def send(self, topic, value, key=None, headers=None):
            self.sent.append((topic, value, key, list(headers or [])))

    store = CheckpointStore(KafkaClientConfig(), "state", "mon", chunk_bytes=1000)
    producer = Producer()
    store.stage(producer, bytes(range(256)) * 10, {("scores", 0): 5})
    keys = [k.decode() for _t, _v, k, _h in producer.sent]
    assert keys == [f"mon/chunk/{i:05d}" for i in range(3)] + ["mon/manifest"]
    manifest = orjson.loads(producer.sent[-1][1])
    assert manifest["chunks"] == 3 and manifest["offsets"] == {"scores": {"0": 5}}
    producer.sent.clear()
    store.stage(producer, b"small", {})
    assert [(k.decode(), v is None) for _t, v, k, _h in producer.sent] == [
        ("mon/chunk/00000", False), ("mon/manifest", False), ("mon/chunk/00001", True), ("mon/chunk/00002", True)]


# -- on the real broker ----------------------------------------------------------------------------


def monitor_command(bootstrap: str, topics: dict[str, str], snapshot: Path, group: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fraudctl.cli", "monitor", "run", "--bootstrap", bootstrap,
            "--scores-topic", topics["scores"], "--labels-topic", topics["labels"],
            "--transactions-topic", topics["transactions"], "--alerts-topic", topics["alerts"],
            "--dlq-topic", topics["dlq"], "--state-topic", topics["state"], "--snapshot-path", str(snapshot),
            "--group-id", group, "--drift", "0", "--max-alert-rate", "0.01", "--min-events", "50",
            "--min-precision", "off", "--min-recall", "off", "--max-latency-p99-ms", "off",
            "--allowed-lateness-s", "0", "--publish-interval-s", "0.5", *extra]


def log_events(text: str) -> list[dict]:
    return [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.integration
def test_monitor_killed_three_times_resumes_from_checkpoints(kafka_broker, kafka_topic, kafka_client_config,
                                                             tmp_path: Path):
    topics = {"scores": kafka_topic(partitions=4), "labels": kafka_topic(partitions=2),
              "transactions": kafka_topic(partitions=2), "alerts": kafka_topic(partitions=1),
              "dlq": kafka_topic(partitions=1), "state": kafka_topic(partitions=1, config=dict(MONITOR_STATE.config))}
    data = synthetic_scores(6000, seed=31, span_ms=6 * HOUR, fraud_rate=0.04)
    records = [(topics["scores"], d.score.transaction_id.encode(), d.score.to_json()) for d in data]
    records += [(topics["labels"], d.label.transaction_id.encode(), d.label.to_json()) for d in data[::2]]
    bad = [(topics["labels"], f"bad-{i}".encode(), b"[%d]" % i) for i in range(30)]
    records += bad
    random.Random(1).shuffle(records)
    feeder = threading.Thread(target=produce, args=(kafka_client_config, records), kwargs={"rate": 700})
    feeder.start()

    group = f"mon-{topics['scores']}"
    cmd = monitor_command(kafka_broker.bootstrap, topics, tmp_path / "snap.json", group, "--checkpoint-interval-s",
                          "1")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs = []
    try:
        for _ in range(3):
            log_path = tmp_path / f"monitor-{len(logs)}.log"
            with open(log_path, "w") as out:
                proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=out)
            deadline = time.monotonic() + 90
            while '"monitor_starting"' not in log_path.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log_path.read_text()[-2000:]
                time.sleep(0.1)
            time.sleep(random.Random(len(logs)).uniform(2.0, 4.0))  # reading and checkpointing meanwhile
            assert proc.poll() is None, log_path.read_text()[-2000:]
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            logs.append(log_path.read_text())
    finally:
        feeder.join(120)
    done = subprocess.run(cmd + ["--stop-when-idle-s", "3"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    logs.append(done.stderr)

    starts = [next(e for e in log_events(text) if e.get("event") == "monitor_starting") for text in logs]
    assert starts[0]["checkpoint"] is None
    assert all(s["checkpoint"] is not None for s in starts[1:]), starts  # every restart resumed from one
    final = next(e for e in log_events(done.stderr) if e.get("event") == "monitor_stopped")
    total = len(records)
    assert final["scores"] == 6000 and final["duplicate_scores"] == 0
    assert final["records_read"] < total  # the rest came from the checkpoints, not a replay
    # The same windows as one monitor reading everything at once (no checkpoints, another group).
    once = subprocess.run(monitor_command(kafka_broker.bootstrap, {**topics, "alerts": kafka_topic(), "dlq": kafka_topic()},
                                          tmp_path / "once.json", f"{group}-once", "--checkpoint-interval-s", "0",
                                          "--stop-when-idle-s", "3"),
                          env=env, capture_output=True, text=True, timeout=300)
    assert once.returncode == 0, once.stderr[-3000:]
    resumed = orjson.loads((tmp_path / "snap.json").read_bytes())
    whole = orjson.loads((tmp_path / "once.json").read_bytes())
    # Equal up to the order of float sums (the two read the partitions interleaved differently).
    for granularity, windows in whole["windows"].items():
        assert len(resumed["windows"][granularity]) == len(windows)
        for got, want in zip(resumed["windows"][granularity], windows, strict=True):
            assert got == {k: pytest.approx(v, rel=1e-12) if isinstance(v, float) else v for k, v in want.items()}
    # Dead letters and alerts: each exactly once, though the monitor died three times.
    dead = read_all(kafka_client_config, topics["dlq"], group_id=f"check-{topics['dlq']}")
    assert sorted(r.value for r in dead) == sorted(v for _t, _k, v in bad)
    alerts = [AlertEvent.from_json(r.value) for r in read_all(kafka_client_config, topics["alerts"],
                                                              group_id=f"check-{topics['alerts']}")]
    assert alerts and len({a.alert_id for a in alerts}) == len(alerts)
    assert {a.alert_id for a in alerts} == {a["alert_id"] for a in whole["alerts"]}
