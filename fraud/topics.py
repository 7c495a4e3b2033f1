"""The project's Kafka topics: names, partition counts and configs, declared once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)


#: CSV lines as Kafka Connect's FileStreamSource reads them (one record per line, header included).
INGEST_CSV = TopicSpec("fraud.ingest.csv", 1)
#: Raw transaction events (contract JSON with real card/customer ids), e.g. from `fraudctl replay`.
TRANSACTIONS_RAW = TopicSpec("fraud.transactions.raw", 4)
#: Clean, anonymized transaction events: what the bridge scores and what training exports read.
TRANSACTIONS = TopicSpec("fraud.transactions", 4)
#: One score event per transaction, keyed by transaction id.
SCORES = TopicSpec("fraud.scores", 4)
#: Delayed label feedback (chargebacks, analyst decisions), keyed by transaction id.
LABELS = TopicSpec("fraud.labels", 4)
#: Records the preprocessing job rejected, with Kafka Connect-style error headers.
DLQ_PREPROCESS = TopicSpec("fraud.dlq.preprocess", 1)
#: Events the bridge could not score, with Kafka Connect-style error headers.
DLQ_BRIDGE = TopicSpec("fraud.dlq.bridge", 1)
#: Score and label events the warehouse sink or the monitor could not parse, with Kafka Connect-style headers.
DLQ_MONITORING = TopicSpec("fraud.dlq.monitoring", 1)
#: Monitoring alerts (drift, alert-rate, precision/recall thresholds broken).
ALERTS = TopicSpec("fraud.alerts", 1)
#: The monitor's checkpoints (its windows and the offsets it read them up to), compacted by key. Small
#: segments and an eager cleaner, so a restarted monitor reads little more than the last checkpoint.
MONITOR_STATE = TopicSpec("fraud.monitor.state", 1, MappingProxyType({
    "cleanup.policy": "compact", "segment.ms": "600000", "min.cleanable.dirty.ratio": "0.1",
    "delete.retention.ms": "3600000"}))
#: Reference table for enrichment (the seed's users table), compacted by key.
USERS = TopicSpec("fraud.users", 1, MappingProxyType({"cleanup.policy": "compact"}))

ALL_TOPICS: tuple[TopicSpec, ...] = (
    INGEST_CSV,
    TRANSACTIONS_RAW,
    TRANSACTIONS,
    SCORES,
    LABELS,
    DLQ_PREPROCESS,
    DLQ_BRIDGE,
    DLQ_MONITORING,
    ALERTS,
    MONITOR_STATE,
    USERS,
)
