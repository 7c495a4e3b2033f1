"""Settings of `fraudctl monitor run`: declared once, parsed once into frozen objects.

Every flag can also be set as an environment variable (FRAUD_MONITOR_*; see
fraud.stream.options); the Kafka connection comes from fraud.kafka_config (FRAUD_KAFKA_*).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fraud.errors import FraudError
from fraud.features import FEATURE_NAMES
from fraud.kafka_config import KafkaClientConfig
from fraud.paths import Paths
from fraud.stream.options import (
    READER_SERVICE_OPTIONS,
    Option,
    add_options,
    parse_bool,
    parse_csv,
    parse_path,
    resolve_options,
)
from fraud.topics import ALERTS, DLQ_MONITORING, LABELS, MONITOR_STATE, SCORES, TRANSACTIONS

MONITOR_ENV = "FRAUD_MONITOR_"



def _opt_float(text: str) -> float | None:
    return None if text.strip().lower() in ("", "off", "none") else float(text)


# ---------------------------------------------------------------------------------------------
# Monitor


MINUTE_MS = 60_000
HOUR_MS = 3_600_000
#: Window sizes the monitor keeps, by the label used in metrics and reports.
GRANULARITIES: dict[str, int] = {"1m": MINUTE_MS, "1h": HOUR_MS}
#: Window sizes of the drift and skew checks. Longer windows average out time-of-day effects (see README).
DRIFT_WINDOWS: dict[str, int] = {"1h": HOUR_MS, "6h": 6 * HOUR_MS, "1d": 24 * HOUR_MS}


@dataclass(frozen=True)
class Thresholds:
    """When the monitor raises an alert. None switches a check off.

    Label-based checks (precision, recall, AUPRC) wait until `min_label_coverage` of a window's events are
    labelled and the window has `min_positives` frauds, so a half-labelled window does not cry wolf.
    Drift and skew: see monitoring/README.md for how the Jensen-Shannon threshold was chosen.
    """

    alert_granularity: str = "1h"
    max_alert_rate: float | None = 0.02
    min_events: int = 200
    min_precision: float | None = 0.3
    min_recall: float | None = 0.5
    min_auprc: float | None = None
    min_positives: int = 5
    min_label_coverage: float = 0.9
    max_latency_p99_ms: float | None = 1000.0
    drift_jsd: float = 0.35
    min_drift_rows: int = 1000

    def __post_init__(self) -> None:
        if self.alert_granularity not in GRANULARITIES:
            raise FraudError(f"alert granularity {self.alert_granularity!r} is not one of {', '.join(GRANULARITIES)}")
        for name in ("max_alert_rate", "min_precision", "min_recall", "min_auprc", "min_label_coverage"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise FraudError(f"threshold {name}={value} must be in [0, 1]")
        if not 0.0 < self.drift_jsd <= 1.0:
            raise FraudError(f"drift threshold {self.drift_jsd} must be in (0, 1] (a Jensen-Shannon divergence)")


MONITOR_OPTIONS: tuple[Option, ...] = (
    Option("scores_topic", str, SCORES.name, "score events topic"),
    Option("labels_topic", str, LABELS.name, "label events topic"),
    Option("transactions_topic", str, TRANSACTIONS.name, "clean transactions topic (serving features for drift)"),
    Option("alerts_topic", str, ALERTS.name, "where alerts go"),
    Option("dlq_topic", str, DLQ_MONITORING.name, "dead-letter topic for records that cannot be parsed"),
    Option("group_id", str, "fraud-monitor", "consumer group the monitor reports its offsets to (advisory only)"),
    Option("lookback_hours", float, 48.0, "on start, rebuild windows from this much history (Kafka time)",
           minimum=0),
    Option("retention_hours", float, 48.0, "keep per-event state this long behind the newest event time",
           minimum=0.01),
    Option("allowed_lateness_s", float, 60.0, "a window closes this long (event time) after its end", minimum=0),
    Option("training_stats", parse_path, None, "training statistics (FeatureStats.pb, or a StatisticsGen "
           "artifact dir); default: the latest pushed model's, from the pipeline's MLMD", metavar="PATH"),
    Option("metadata_path", parse_path, None, "MLMD sqlite of the pipeline (default <FRAUD_HOME>/tfx/"
           "metadata.sqlite)", metavar="PATH"),
    Option("schema_path", parse_path, None, "schema.pbtxt (default: the curated schema/schema.pbtxt)",
           metavar="PATH"),
    Option("drift_features", parse_csv, tuple(n for n in FEATURE_NAMES if n != "Time"),
           "features checked for drift and skew (Time is a counter since the first transaction: always 'drifts')"),
    Option("drift_window", str, "1h", "event-time window of the drift and skew checks", choices=list(DRIFT_WINDOWS)),
    Option("drift", parse_bool, True, "check drift and skew against the training statistics (0: off, and no "
           "statistics needed)"),
    Option("drift_jsd", float, 0.35, "Jensen-Shannon divergence threshold of drift and skew", minimum=0.0001),
    Option("min_drift_rows", int, 1000, "windows with fewer transactions are not checked for drift", minimum=1),
    Option("alert_granularity", str, "1h", "window size the metric thresholds apply to", choices=list(GRANULARITIES)),
    Option("max_alert_rate", _opt_float, 0.02, "alert when a window flags more than this fraction ('off')"),
    Option("min_events", int, 200, "windows with fewer events are not checked", minimum=1),
    Option("min_precision", _opt_float, 0.3, "alert when precision falls below ('off')"),
    Option("min_recall", _opt_float, 0.5, "alert when recall falls below ('off')"),
    Option("min_auprc", _opt_float, None, "alert when AUPRC falls below ('off')"),
    Option("min_positives", int, 5, "label-based checks need this many frauds in a window", minimum=1),
    Option("min_label_coverage", float, 0.9, "label-based checks need this fraction of events labelled",
           minimum=0),
    Option("max_latency_p99_ms", _opt_float, 1000.0, "alert when p99 scoring latency exceeds ('off')"),
    Option("publish_interval_s", float, 5.0, "how often gauges and the report snapshot are refreshed", minimum=0.1),
    Option("state_topic", str, MONITOR_STATE.name, "compacted topic of the monitor's checkpoints"),
    Option("checkpoint_interval_s", float, 10.0, "how often the windows are checkpointed, with the offsets read, "
           "in one Kafka transaction with the alerts and dead letters since the last (0: never; a restart then "
           "replays --lookback-hours)", minimum=0),
    Option("snapshot_path", parse_path, None, "where the report's data is written (default <FRAUD_HOME>/"
           "monitor/snapshot.json)", metavar="PATH"),
    *READER_SERVICE_OPTIONS,
)


@dataclass(frozen=True)
class MonitorConfig:
    kafka: KafkaClientConfig
    snapshot_path: Path
    metadata_path: Path
    scores_topic: str = SCORES.name
    labels_topic: str = LABELS.name
    transactions_topic: str = TRANSACTIONS.name
    alerts_topic: str = ALERTS.name
    dlq_topic: str = DLQ_MONITORING.name
    group_id: str = "fraud-monitor"
    lookback_ms: int = 48 * HOUR_MS
    retention_ms: int = 48 * HOUR_MS
    allowed_lateness_ms: int = 60_000
    training_stats: Path | None = None
    schema_path: Path | None = None
    drift: bool = True
    drift_features: tuple[str, ...] = tuple(n for n in FEATURE_NAMES if n != "Time")
    drift_window: str = "1h"
    thresholds: Thresholds = Thresholds()
    publish_interval_s: float = 5.0
    #: 0 (the default in code, e.g. tests on fakes): no checkpoints; `fraudctl monitor run` defaults to 10 s.
    checkpoint_interval_s: float = 0.0
    state_topic: str = MONITOR_STATE.name
    stop_when_idle_s: float = 0.0
    #: 0 in code (tests, tools); the service's flag defaults to DEFAULT_FETCH_STALL_S (fraud.stream.watchdog)
    fetch_stall_s: float = 0.0
    http_host: str = "127.0.0.1"
    http_port: int | None = None
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        unknown = [f for f in self.drift_features if f not in FEATURE_NAMES]
        if unknown:
            raise FraudError(f"drift features {unknown} are not features of fraud.features")
        if self.drift_window not in DRIFT_WINDOWS:
            raise FraudError(f"drift window {self.drift_window!r} is not one of {', '.join(DRIFT_WINDOWS)}")
        inputs = {self.scores_topic, self.labels_topic, self.transactions_topic}
        if len(inputs) != 3:
            raise FraudError("scores, labels and transactions must be three different topics")
        for out in (self.alerts_topic, self.dlq_topic, self.state_topic):
            if out in inputs:
                raise FraudError(f"output topic {out} is also an input topic")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_options(parser, MONITOR_OPTIONS, MONITOR_ENV, "monitor")
        KafkaClientConfig.add_arguments(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace | None, environ: Mapping[str, str], paths: Paths,
                  **overrides: Any) -> MonitorConfig:
        v = resolve_options(MONITOR_OPTIONS, args, environ, MONITOR_ENV)
        kafka = KafkaClientConfig.from_env_and_args(args, environ, client_id="fraud-monitor")
        thresholds = Thresholds(
            alert_granularity=v["alert_granularity"], max_alert_rate=v["max_alert_rate"], min_events=v["min_events"],
            min_precision=v["min_precision"], min_recall=v["min_recall"], min_auprc=v["min_auprc"],
            min_positives=v["min_positives"], min_label_coverage=v["min_label_coverage"],
            max_latency_p99_ms=v["max_latency_p99_ms"], drift_jsd=v["drift_jsd"], min_drift_rows=v["min_drift_rows"],
        )
        port = v["http_port"]
        kwargs: dict[str, Any] = dict(
            kafka=kafka,
            snapshot_path=v["snapshot_path"] or paths.monitor_snapshot,
            metadata_path=v["metadata_path"] or paths.metadata_path,
            scores_topic=v["scores_topic"], labels_topic=v["labels_topic"],
            transactions_topic=v["transactions_topic"], alerts_topic=v["alerts_topic"], dlq_topic=v["dlq_topic"],
            group_id=v["group_id"], lookback_ms=int(v["lookback_hours"] * HOUR_MS),
            retention_ms=int(v["retention_hours"] * HOUR_MS), allowed_lateness_ms=int(v["allowed_lateness_s"] * 1000),
            training_stats=v["training_stats"], schema_path=v["schema_path"], drift=v["drift"],
            drift_features=tuple(v["drift_features"]), drift_window=v["drift_window"], thresholds=thresholds,
            publish_interval_s=v["publish_interval_s"], checkpoint_interval_s=v["checkpoint_interval_s"],
            state_topic=v["state_topic"], stop_when_idle_s=v["stop_when_idle_s"], fetch_stall_s=v["fetch_stall_s"],
            http_host=v["http_host"], http_port=None if port < 0 else port, log_level=v["log_level"],
        )
        kwargs.update(overrides)
        return cls(**kwargs)
