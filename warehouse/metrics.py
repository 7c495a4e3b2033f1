"""The Prometheus metrics of the warehouse sink, declared once on fraud.stream.metrics' typed interface.

Exported names are `fraud_sink_<name>`. The Grafana dashboard (monitoring/grafana_dashboard.json) only
queries names declared here or in monitoring.metrics.
"""

from __future__ import annotations

from fraud.stream.metrics import LATENCY_BUCKETS, SIZE_BUCKETS, Kind, MetricDef

SINK_NAMESPACE = "fraud_sink"

SINK_CONSUMED = MetricDef("records_consumed_total", Kind.COUNTER, "Records read from the input topics", ("topic",))
SINK_ROWS_WRITTEN = MetricDef("rows_written_total", Kind.COUNTER, "Rows inserted or updated in the warehouse",
                              ("table",))
SINK_ROWS_IGNORED = MetricDef("rows_ignored_total", Kind.COUNTER,
                              "Rows not applied because they were there already (duplicates, replays)", ("table",))
SINK_DEAD_LETTERS = MetricDef("dead_letters_total", Kind.COUNTER, "Records sent to the dead-letter topic",
                              ("reason",))
SINK_BATCH_SIZE = MetricDef("batch_size", Kind.HISTOGRAM, "Records per warehouse batch", buckets=SIZE_BUCKETS)
SINK_WRITE_SECONDS = MetricDef("write_seconds", Kind.HISTOGRAM, "Time of one atomic warehouse write",
                               buckets=LATENCY_BUCKETS)
SINK_RETRIES = MetricDef("retries_total", Kind.COUNTER, "Warehouse writes retried after a transient failure")
SINK_FENCED = MetricDef("fenced_batches_total", Kind.COUNTER,
                        "Batches refused because another sink had claimed one of their partitions since")
SINK_CLAIMED = MetricDef("partitions_owned", Kind.GAUGE, "Partitions this sink owns (assigned by its group)")
SINK_LAG = MetricDef("consumer_lag", Kind.GAUGE, "High watermark minus the next offset to read",
                     ("topic", "partition"))
SINK_LAST_COMMIT = MetricDef("last_commit_timestamp_seconds", Kind.GAUGE,
                             "Wall-clock time of the last committed warehouse batch")
SINK_METRICS: tuple[MetricDef, ...] = (
    SINK_CONSUMED, SINK_ROWS_WRITTEN, SINK_ROWS_IGNORED, SINK_DEAD_LETTERS, SINK_BATCH_SIZE, SINK_WRITE_SECONDS,
    SINK_RETRIES, SINK_FENCED, SINK_CLAIMED, SINK_LAG, SINK_LAST_COMMIT,
)
