"""Deterministic score, label and transaction events for the monitoring tests and benchmarks.

Scores are drawn so that they carry signal (frauds score higher on average) but overlap, which makes
precision, recall and AUPRC per window non-trivial; labels are the ground truth of the same draw.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fraud.contract import LabelEvent, ScoreEvent, TransactionEvent
from fraud.kafka_config import KafkaClientConfig
from fraud.stream.reader import EventProducer

BASE_TIME_MS = 1_377_993_600_000  # 2013-09-01T00:00:00Z, as fraud.replay uses


@dataclass(frozen=True)
class Scored:
    score: ScoreEvent
    label: LabelEvent


def synthetic_scores(n: int, *, seed: int = 7, base_time_ms: int = BASE_TIME_MS, span_ms: int = 3 * 3_600_000,
                     fraud_rate: float = 0.03, threshold: float = 0.6, model_version: int = 1,
                     label_delay_ms: int = 600_000) -> list[Scored]:
    """`n` score events spread uniformly over `span_ms` of event time, each with its ground-truth label."""
    rng = np.random.default_rng(seed)
    times = np.sort(rng.integers(base_time_ms, base_time_ms + span_ms, size=n))
    labels = (rng.random(n) < fraud_rate).astype(int)
    # Beta-distributed scores: frauds ~ Beta(5, 2), normal ~ Beta(1.2, 6); some overlap on purpose.
    scores = np.where(labels == 1, rng.beta(5, 2, n), rng.beta(1.2, 6, n))
    scores = np.round(scores, 4)  # ties happen, as with real calibrated scores
    latencies = rng.gamma(2.0, 8.0, n).astype(int) + 1
    out = []
    for i in range(n):
        tx = f"tx-{i:07d}"
        src_ts = 1_700_000_000_000 + i * 3
        score = float(scores[i])
        event = ScoreEvent(transaction_id=tx, event_time_ms=int(times[i]), card_id=f"card-{i % 97}", score=score,
                           decision=score >= threshold, threshold=threshold, model_name="fraud",
                           model_version=model_version, source_timestamp_ms=src_ts,
                           scored_at_ms=src_ts + int(latencies[i]), reconstruction_error=score * 3.0,
                           explanation={"V14": round(score, 3)})
        label = LabelEvent(tx, int(labels[i]), int(times[i]), src_ts + label_delay_ms)
        out.append(Scored(event, label))
    return out


def sample_transactions(rows: Sequence[Mapping[str, float]], *, start_ms: int, span_ms: int,
                        drift: Mapping[str, tuple[float, float]] | None = None,
                        prefix: str = "tx") -> list[TransactionEvent]:
    """Transaction events of `rows` (feature dicts) spread evenly over [start_ms, start_ms + span_ms).

    `drift` maps a feature to (scale, shift): value -> value * scale + shift, the injected drift.
    """
    drift = dict(drift or {})
    n = len(rows)
    out = []
    for i, row in enumerate(rows):
        features = {k: float(v) for k, v in row.items()}
        for name, (scale, shift) in drift.items():
            features[name] = features[name] * scale + shift
        out.append(TransactionEvent(transaction_id=f"{prefix}-{i:07d}", event_time_ms=start_ms + (i * span_ms) // n,
                                    card_id=f"card-{i % 101}", customer_id=f"cust-{i % 89}", features=features))
    return out


def produce(kafka: KafkaClientConfig, records: Iterable[tuple[str, bytes | None, bytes | None]],
            *, rate: float = 0.0) -> int:
    """Produce (topic, key, value) records (acks=all, idempotent), optionally paced at `rate` per second."""
    producer = EventProducer(kafka)
    start = time.monotonic()
    sent = 0
    for topic, key, value in records:
        producer.send(topic, value, key)
        sent += 1
        if rate:
            due = start + sent / rate
            delay = due - time.monotonic()
            if delay > 0.002:
                producer.poll()
                time.sleep(delay)
    producer.flush(60)
    return sent
