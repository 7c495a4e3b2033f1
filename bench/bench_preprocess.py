"""How fast ingestion and the preprocessing job are, as ratios against baselines measured in the same run.

1. Rules in process (no broker): `Preprocessor.process` per record, CSV lines and raw events, against the
   least any stage that validates and re-emits an event must do: the contract's parse + validation +
   serialization (`TransactionEvent.from_json(...).to_json()`).
2. The job on a real broker: records/s through `PreprocessJob` (at-least-once and exactly-once) against a
   pass-through process function on the same `StreamProcessor` and client (copy each value to the output):
   what the rules cost on top of the shared machinery.
3. Ingestion: lines/s through Kafka Connect (`ingest_file`) against a bare producer (fraud.stream.reader.EventProducer) sending
   the same lines; then the job on those CSV lines (2. again, CSV source).

    .venv/bin/python bench/bench_preprocess.py                # the sample; throwaway embedded broker and Connect
    .venv/bin/python bench/bench_preprocess.py --file /path/to/creditcard.csv.gz   # the full dataset
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import threading
import time
from pathlib import Path

from fraud.contract import TransactionEvent
from fraud.dataset import iter_rows
from fraud.embedded.testing import given_or_temporary_broker
from fraud.kafka_config import KafkaClientConfig
from fraud.paths import SAMPLE_CSV
from fraud.replay import CardPool, transaction_event
from fraud.stream.config import StreamConfig
from fraud.stream.processor import StreamProcessor
from fraud.stream.records import Output, ProcessResult
from preprocessing.anonymize import AnonymizeKey, Anonymizer
from preprocessing.job import PreprocessConfig, PreprocessJob
from preprocessing.rules import DEFAULT_RULES, SOURCE_CSV, SOURCE_RAW, load_rules
from preprocessing.transform import Preprocessor

KEY = AnonymizeKey(b"bench-key-0123456789abcdef", "bench")


def _interleaved(fns: dict, repeat: int = 5) -> dict:
    """Best time of each function over `repeat` rounds, the functions taking turns within each round (so a
    burst of load from other processes hits all of them alike)."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def bench_rules(rows: int) -> None:
    lines = SAMPLE_CSV.read_bytes().splitlines()[1:rows + 1]
    cards = CardPool()
    raws = [transaction_event(r, cards).to_json() for r in iter_rows(SAMPLE_CSV, limit=rows)]
    pre = Preprocessor(load_rules(DEFAULT_RULES), Anonymizer(KEY), {})
    t = _interleaved({
        "base": lambda: [TransactionEvent.from_json(v).to_json() for v in raws],
        "csv": lambda: [pre.process(SOURCE_CSV, v) for v in lines],
        "raw": lambda: [pre.process(SOURCE_RAW, v) for v in raws],
    })
    n = len(raws)
    base = t["base"] / n
    print(f"[rules] baseline contract parse+validate+serialize: {1 / base:,.0f} rec/s ({base * 1e6:.1f} us/rec)")
    print(f"[rules] CSV lines : {len(lines) / t['csv']:,.0f} rec/s  = {t['csv'] / len(lines) / base:.2f}x the baseline time")
    print(f"[rules] raw events: {n / t['raw']:,.0f} rec/s  = {t['raw'] / n / base:.2f}x the baseline time")


def _produce(kafka: KafkaClientConfig, topic: str, values: list[bytes]) -> float:
    from fraud.stream.reader import EventProducer

    producer = EventProducer(kafka, **{"batch.size": 256 * 1024})
    t0 = time.perf_counter()
    for i, v in enumerate(values):
        producer.send(topic, v, f"k{i}".encode())
    producer.flush(120)
    return time.perf_counter() - t0


def _run_until(processor_run, stop, done, n: int, timeout_s: float = 600.0) -> float:
    """Records/s in steady state: from the first committed batch to the last (start-up and group join left out)."""
    thread = threading.Thread(target=processor_run, daemon=True)
    t0 = time.perf_counter()
    thread.start()
    first: tuple[float, int] | None = None
    while (count := done()) < n:
        if first is None and count > 0:
            first = (time.perf_counter(), count)
        if time.perf_counter() - t0 > timeout_s:
            raise SystemExit(f"only {count} of {n} records in {timeout_s} s")
        time.sleep(0.01)
    end = time.perf_counter()
    stop()
    thread.join(60)
    assert first is not None
    return (n - first[1]) / (end - first[0])


def bench_job(kafka: KafkaClientConfig, src: str, n: int, source: str, make_topic) -> None:
    """The job (source = SOURCE_CSV or SOURCE_RAW) on `src` against a pass-through, in both delivery modes."""
    rules = load_rules(DEFAULT_RULES)
    for delivery in ("at_least_once", "exactly_once"):
        out_b, dlq_b = make_topic(f"pass-{source}-{delivery}", 4), make_topic(f"pass-dlq-{source}-{delivery}", 1)
        count = [0]

        def passthrough(batch, out=out_b):
            return ProcessResult(outputs=[Output(out, r.value, r.key) for r in batch])

        sc = StreamConfig(kafka=kafka, input_topics=(src,), group_id=f"bench-pass-{delivery}-{time.time_ns()}",
                          dlq_topic=dlq_b, component="bench", delivery=delivery, batch_max_size=500)
        proc = StreamProcessor(sc, passthrough,
                               on_committed=lambda b, r, c=count: c.__setitem__(0, c[0] + len(b)))
        base = _run_until(proc.run, proc.request_stop, lambda c=count: c[0], n)

        out, dlq = make_topic(f"pp-{source}-{delivery}", 4), make_topic(f"pp-dlq-{source}-{delivery}", 1)
        topics = {"csv_topic": src, "raw_topic": None} if source == SOURCE_CSV else {"csv_topic": None, "raw_topic": src}
        config = PreprocessConfig.build(kafka=kafka, rules=rules, key=KEY, output_topic=out, dlq_topic=dlq,
                                        group_id=f"bench-pp-{delivery}-{time.time_ns()}", delivery=delivery,
                                        batch_max_size=500, **topics)
        job = PreprocessJob(config, users={})
        rate = _run_until(job.run, job.request_stop, lambda j=job: j.stats.total, n)
        print(f"[job {source}] {delivery:13s}: pass-through {base:,.0f} rec/s, preprocessing {rate:,.0f} rec/s "
              f"= {base / rate:.2f}x the pass-through time per record (steady state, {n:,} records, "
              f"batches of 500; clean {sum(job.stats.clean.values()):,}, filtered {dict(job.stats.filtered)})")


def bench_ingest(kafka: KafkaClientConfig, bootstrap: str, file: Path, make_topic, state: Path) -> tuple[str, int]:
    """Connect ingestion of `file` against a bare producer of the same lines; returns (topic, lines)."""
    from fraud.embedded.testing import temporary_connect
    from preprocessing.ingest import check_file, ingest_file

    checked = check_file(file, state / "staging")
    lines = checked.path.read_bytes().splitlines()
    base = _produce(kafka, make_topic("ingest-base", 1), lines)
    topic = make_topic("ingest", 1)
    with temporary_connect(state / "connect", bootstrap) as worker:
        result = ingest_file(worker, kafka, checked.path, topic, staging_dir=state / "staging", timeout_s=1800)
    print(f"[ingest] {len(lines):,} lines: bare producer (fraud.stream, confluent-kafka) {len(lines) / base:,.0f} lines/s, Connect "
          f"FileStreamSource {result.lines_per_s:,.0f} lines/s = {result.seconds / base:.2f}x the producer time "
          f"(connector start included)")
    return topic, result.sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", help="use this broker instead of a throwaway embedded one")
    parser.add_argument("--rows", type=int, default=9_000, help="sample rows for the rules and raw-event runs")
    parser.add_argument("--repeat", type=int, default=3, help="the raw-event job run sends the rows this many times")
    parser.add_argument("--file", type=Path, default=SAMPLE_CSV,
                        help="CSV (or .csv.gz) to ingest through Connect and preprocess (default: the sample)")
    parser.add_argument("--no-broker", action="store_true", help="only the in-process rules benchmark")
    args = parser.parse_args(argv)
    bench_rules(args.rows)
    if args.no_broker:
        return 0
    with contextlib.ExitStack() as stack:
        state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-preprocess-")))
        bootstrap = stack.enter_context(given_or_temporary_broker(args.bootstrap, state / "kafka"))
        kafka = KafkaClientConfig(bootstrap_servers=(bootstrap,), client_id="bench-preprocess")
        suffix = str(time.time_ns())

        def make_topic(name: str, partitions: int) -> str:
            from fraud.embedded.testing import create_topic

            return create_topic(kafka, f"bench.pp.{name}.{suffix}", partitions)

        csv_topic, lines = bench_ingest(kafka, bootstrap, args.file, make_topic, state)
        bench_job(kafka, csv_topic, lines, SOURCE_CSV, make_topic)
        cards = CardPool()
        values = [transaction_event(r, cards).to_json() for r in iter_rows(SAMPLE_CSV, limit=args.rows)] * args.repeat
        raw_topic = make_topic("raw", 4)
        _produce(kafka, raw_topic, values)
        bench_job(kafka, raw_topic, len(values), SOURCE_RAW, make_topic)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
