"""How fast the warehouse sink and the monitor keep up, as ratios against reading the same records.

One run, one broker, one set of topics holding N score events and N label events:

- baseline: the sink's own reader (fraud.stream.reader.PartitionReader, confluent-kafka, manual assignment)
  reads every record and does nothing else: the ceiling for anything consuming these topics here;
- sink: `SinkJob` into a fresh DuckDB file (parse, batch, one transaction per batch with the offsets);
- monitor: `MonitorJob` (parse, join labels, windows, gauges, snapshot), drift off;
- windows: recomputing every 1-minute and 1-hour window after all labels (in process, no Kafka).

    .venv/bin/python bench/bench_monitoring.py                      # throwaway embedded broker
    .venv/bin/python bench/bench_monitoring.py --events 100000 --bootstrap HOST:PORT
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

from fraud.embedded.testing import given_or_temporary_broker
from fraud.kafka_config import KafkaClientConfig
from fraud.logs import configure_logging
from fraud.stream.admin import ensure_topics
from fraud.stream.reader import PartitionReader
from fraud.topics import TopicSpec
from monitoring.config import GRANULARITIES, MonitorConfig, Thresholds
from monitoring.monitor import MonitorJob
from monitoring.testing import produce, synthetic_scores
from monitoring.windows import WindowedMetrics
from warehouse.config import SinkConfig
from warehouse.sink import SinkJob
from warehouse.store import DuckDBWarehouse


def read_all_records(kafka: KafkaClientConfig, topics: list[str], total: int) -> float:
    reader = PartitionReader(kafka, topics, group_id=f"bench-read-{time.time()}")
    start = time.perf_counter()
    seen = 0
    while seen < total:
        seen += len(reader.poll(2000, 0.5))
    elapsed = time.perf_counter() - start
    reader.close()
    return total / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", help="use this broker instead of a throwaway embedded one")
    parser.add_argument("--events", type=int, default=40_000, help="score events (as many labels)")
    args = parser.parse_args(argv)
    configure_logging("ERROR")  # the alert log lines of the synthetic data are not the point here

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-monitoring-")))
        bootstrap = stack.enter_context(given_or_temporary_broker(args.bootstrap, tmp / "kafka"))
        kafka = KafkaClientConfig(bootstrap_servers=(bootstrap,), client_id="bench-monitoring")
        suffix = str(int(time.time()))
        scores, labels, tx, alerts, dlq = (f"bench.mon.{w}.{suffix}" for w in ("scores", "labels", "tx", "alerts",
                                                                             "dlq"))
        ensure_topics(kafka, [TopicSpec(scores, 4), TopicSpec(labels, 4), TopicSpec(tx, 1), TopicSpec(alerts, 1),
                              TopicSpec(dlq, 1)])
        data = synthetic_scores(args.events, seed=1, span_ms=24 * 3_600_000)
        t0 = time.perf_counter()
        produce(kafka, [(scores, d.score.transaction_id.encode(), d.score.to_json()) for d in data]
                + [(labels, d.label.transaction_id.encode(), d.label.to_json()) for d in data])
        print(f"produced {2 * args.events} records in {time.perf_counter() - t0:.1f} s")
        total = 2 * args.events

        baseline = read_all_records(kafka, [scores, labels], total)

        sink_config = SinkConfig(kafka=kafka, duckdb_path=tmp / "wh.duckdb", scores_topic=scores, labels_topic=labels,
                                 dlq_topic=dlq, stop_when_idle_s=1.0)
        t0 = time.perf_counter()
        stats = SinkJob(sink_config, DuckDBWarehouse(tmp / "wh.duckdb")).run()
        sink_rate = stats.records / (time.perf_counter() - t0 - sink_config.stop_when_idle_s)
        assert stats.scores_inserted == args.events, stats

        mon_config = MonitorConfig(kafka=kafka, snapshot_path=tmp / "snap.json", metadata_path=tmp / "none",
                                   scores_topic=scores, labels_topic=labels, transactions_topic=tx,
                                   alerts_topic=alerts, dlq_topic=dlq, drift=False, stop_when_idle_s=1.0,
                                   thresholds=Thresholds())
        t0 = time.perf_counter()
        mstats = MonitorJob(mon_config).run()
        mon_rate = (mstats.scores + mstats.labels) / (time.perf_counter() - t0 - mon_config.stop_when_idle_s)
        assert mstats.scores == args.events, mstats

        wm = WindowedMetrics(GRANULARITIES, 48 * 3_600_000)
        for d in data:
            wm.add_score(d.score)
            wm.add_label(d.label)
        t0 = time.perf_counter()
        n_windows = sum(len(wm.windows(g)) for g in GRANULARITIES)
        recompute = time.perf_counter() - t0

        print(f"records: {total} ({args.events} scores + {args.events} labels), 4 + 4 partitions")
        print(f"baseline read (PartitionReader only): {baseline:,.0f} records/s")
        print(f"sink into DuckDB:                     {sink_rate:,.0f} records/s  = {sink_rate / baseline:.2f}x baseline")
        print(f"monitor (windows, gauges, snapshot):  {mon_rate:,.0f} records/s  = {mon_rate / baseline:.2f}x baseline")
        print(f"recompute all {n_windows} windows after every label: {recompute * 1000:.0f} ms "
              f"({recompute / n_windows * 1e6:.0f} us per window)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
