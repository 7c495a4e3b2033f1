"""The Prometheus metrics of the monitor, declared once on fraud.stream.metrics' typed interface.

Exported names are `<namespace>_<name>`: fraud_monitor_*. The Grafana dashboard
(grafana_dashboard.json) only queries names listed here; tests/test_monitor_report.py checks that.
"""

from __future__ import annotations

from fraud.stream.metrics import LATENCY_BUCKETS, Kind, MetricDef

MONITOR_NAMESPACE = "fraud_monitor"

# -- monitor: per event ----------------------------------------------------------------------
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
MON_SCORED = MetricDef("scored_events_total", Kind.COUNTER, "Score events seen", ("model_version",))
MON_FLAGGED = MetricDef("flagged_events_total", Kind.COUNTER, "Score events whose decision was fraud",
                        ("model_version",))
MON_LABELS = MetricDef("labels_total", Kind.COUNTER, "Label events seen", ("label",))
MON_TRANSACTIONS = MetricDef("transactions_total", Kind.COUNTER, "Transaction events seen (drift input)")
MON_SCORE = MetricDef("score", Kind.HISTOGRAM, "Distribution of fraud scores", buckets=SCORE_BUCKETS)
MON_LATENCY = MetricDef("scoring_latency_seconds", Kind.HISTOGRAM,
                        "Transaction record timestamp to score produced", buckets=LATENCY_BUCKETS)
MON_DEAD_LETTERS = MetricDef("dead_letters_total", Kind.COUNTER, "Records sent to the dead-letter topic",
                             ("reason",))
MON_LAG = MetricDef("consumer_lag", Kind.GAUGE, "High watermark minus the next offset to read",
                    ("topic", "partition"))
MON_CHECKPOINT_SECONDS = MetricDef("checkpoint_seconds", Kind.HISTOGRAM, "Time to encode, stage and commit one "
                                   "checkpoint", buckets=LATENCY_BUCKETS)
MON_CHECKPOINT_BYTES = MetricDef("checkpoint_bytes", Kind.GAUGE, "Size of the last checkpoint's encoded state")
MON_REWINDS = MetricDef("rewinds_total", Kind.COUNTER, "Transactions not committed: state back to the last checkpoint")

# -- monitor: per window (window = "1m" or "1h": the latest closed window of that size) -----------
WIN_EVENTS = MetricDef("window_events", Kind.GAUGE, "Score events in the latest closed window", ("window",))
WIN_EVENT_RATE = MetricDef("window_event_rate", Kind.GAUGE, "Score events per second (event time) in the latest "
                           "closed window", ("window",))
WIN_ALERT_RATE = MetricDef("window_alert_rate", Kind.GAUGE, "Fraction of events flagged as fraud in the latest "
                           "closed window", ("window",))
WIN_SCORE_MEAN = MetricDef("window_score_mean", Kind.GAUGE, "Mean score in the latest closed window", ("window",))
WIN_SCORE_P99 = MetricDef("window_score_p99", Kind.GAUGE, "99th percentile of scores in the latest closed window",
                          ("window",))
WIN_LATENCY = MetricDef("window_latency_seconds", Kind.GAUGE, "Scoring latency quantile in the latest closed window",
                        ("window", "quantile"))
WIN_PRECISION = MetricDef("window_precision", Kind.GAUGE, "Precision at the served threshold, latest window with "
                          "enough labels", ("window",))
WIN_RECALL = MetricDef("window_recall", Kind.GAUGE, "Recall at the served threshold, latest window with enough "
                       "labels", ("window",))
WIN_AUPRC = MetricDef("window_auprc", Kind.GAUGE, "Area under the precision-recall curve (average precision), "
                      "latest window with enough labels", ("window",))
WIN_LABEL_COVERAGE = MetricDef("window_label_coverage", Kind.GAUGE, "Fraction of the latest closed window's events "
                               "that have a label", ("window",))
WIN_END = MetricDef("window_end_timestamp_seconds", Kind.GAUGE, "Event-time end of the latest closed window",
                    ("window",))

# -- monitor: drift, skew, alerts ----------------------------------------------------------------
DRIFT_JSD = MetricDef("feature_drift_jsd", Kind.GAUGE, "Jensen-Shannon divergence of a feature in the latest "
                      "evaluated window against its control (previous window, or training data)", ("feature",))
SKEW_JSD = MetricDef("feature_skew_jsd", Kind.GAUGE, "Jensen-Shannon divergence of a feature in the latest "
                     "evaluated window against the served model's training data", ("feature",))
DRIFT_THRESHOLD = MetricDef("drift_jsd_threshold", Kind.GAUGE, "The configured Jensen-Shannon divergence threshold")
DRIFTED_FEATURES = MetricDef("drifted_features", Kind.GAUGE, "Features over the threshold in the latest evaluated "
                             "window", ("comparison",))
DRIFT_WINDOW_ROWS = MetricDef("drift_window_rows", Kind.GAUGE, "Transactions in the latest evaluated drift window")
ALERTS_RAISED = MetricDef("alerts_total", Kind.COUNTER, "Alerts sent to the alerts topic", ("kind", "severity"))
MONITOR_METRICS: tuple[MetricDef, ...] = (
    MON_SCORED, MON_FLAGGED, MON_LABELS, MON_TRANSACTIONS, MON_SCORE, MON_LATENCY, MON_DEAD_LETTERS, MON_LAG,
    MON_CHECKPOINT_SECONDS, MON_CHECKPOINT_BYTES, MON_REWINDS,
    WIN_EVENTS, WIN_EVENT_RATE, WIN_ALERT_RATE, WIN_SCORE_MEAN, WIN_SCORE_P99, WIN_LATENCY, WIN_PRECISION,
    WIN_RECALL, WIN_AUPRC, WIN_LABEL_COVERAGE, WIN_END,
    DRIFT_JSD, SKEW_JSD, DRIFT_THRESHOLD, DRIFTED_FEATURES, DRIFT_WINDOW_ROWS, ALERTS_RAISED,
)


def exported_names(namespace: str, defs: tuple[MetricDef, ...]) -> set[str]:
    """Every series name Prometheus will see for `defs` (counters get _total, histograms _bucket/_sum/_count)."""
    names: set[str] = set()
    for d in defs:
        base = f"{namespace}_{d.name}"
        if d.kind is Kind.COUNTER:
            names.add(base if base.endswith("_total") else base + "_total")
        elif d.kind is Kind.HISTOGRAM:
            names |= {base + "_bucket", base + "_sum", base + "_count"}
        else:
            names.add(base)
    return names
