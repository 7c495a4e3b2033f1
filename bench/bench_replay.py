"""How fast `fraudctl replay` produces to a real broker, and how exactly it holds a target rate.

Ratios against a baseline measured in the same run on the same broker: replay's own producer (fraud.stream's
EventProducer, confluent-kafka; acks=all, idempotent, linger 5 ms) sending ready-made records of the same size, two
per row like replay (transaction + label). That is the client's ceiling; replay adds reading the CSV,
building and validating-by-construction the events, card lookup and label scheduling.

    .venv/bin/python bench/bench_replay.py                      # throwaway embedded broker
    .venv/bin/python bench/bench_replay.py --bootstrap HOST:PORT  # an existing broker (makes 2 topics)
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from fraud.dataset import iter_rows
from fraud.embedded.testing import given_or_temporary_broker
from fraud.kafka_config import KafkaClientConfig
from fraud.paths import SAMPLE_CSV
from fraud.replay import CardPool, KafkaSink, ReplayConfig, run_replay, transaction_event
from fraud.stream.admin import ensure_topics
from fraud.topics import TopicSpec


def _baseline(kafka: KafkaClientConfig, topic: str, labels_topic: str, rows: int) -> float:
    row = next(iter_rows(SAMPLE_CSV))
    value = transaction_event(row, CardPool(10)).to_json()
    label = b'{"transaction_id":"tx-000000","label":0,"event_time_ms":1377993600000,"labelled_at_ms":1700000000000}'
    sink = KafkaSink(kafka)
    start = time.perf_counter()
    for i in range(rows):
        key = f"tx-{i:06d}".encode()
        sink.send(topic, key, value, int(time.time() * 1000))
        sink.send(labels_topic, key, label, int(time.time() * 1000))
    sink.close()
    return rows / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", help="use this broker instead of a throwaway embedded one")
    parser.add_argument("--file", type=Path, default=SAMPLE_CSV)
    parser.add_argument("--rows", type=int, default=9_000)
    parser.add_argument("--rate", type=float, default=1_000.0, help="target rate for the pacing check")
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-replay-")))
        bootstrap = stack.enter_context(given_or_temporary_broker(args.bootstrap, state))
        kafka = KafkaClientConfig(bootstrap_servers=(bootstrap,), client_id="bench-replay")
        suffix = str(int(time.time()))
        names = [f"bench.replay.{what}.{suffix}" for what in ("base", "base-labels", "tx", "labels", "paced", "paced-l")]
        ensure_topics(kafka, [TopicSpec(n, 4) for n in names])

        _baseline(kafka, names[0], names[1], 1_000)  # warm up the broker (JIT) before measuring
        base = _baseline(kafka, names[0], names[1], args.rows)
        stats = run_replay(ReplayConfig(file=args.file, topic=names[2], labels_topic=names[3], limit=args.rows,
                                        kafka=kafka, progress=False))
        fast = stats.events_per_s
        paced_rows = int(min(args.rows, args.rate * 3))
        paced = run_replay(ReplayConfig(file=args.file, topic=names[4], labels_topic=names[5], limit=paced_rows,
                                        rate=args.rate, kafka=kafka, progress=False))
        # n events at rate r span (n - 1) / r seconds from the first send to the last
        achieved = (paced.events - 1) / max(paced.send_span_s, 1e-9)

    print(f"broker {bootstrap}, {args.rows} rows of {args.file.name}, 2 records per row (transaction + label)")
    print(f"baseline  bare producer, ready-made records   {base:10,.0f} rows/s  1.00x")
    print(f"replay    as fast as possible                 {fast:10,.0f} rows/s  {fast / base:.2f}x baseline")
    print(f"replay    --rate {args.rate:g} over {paced_rows} rows        {achieved:10,.0f} rows/s  "
          f"{achieved / args.rate:.3f}x target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
