"""The scoring bridge's speed, as ratios against a raw passthrough measured in the same run, same broker,
same Kafka client.

For each Kafka client (kafka-python, confluent-kafka):
1. passthrough: fraud.stream's processor with an identity process function (consume -> produce, no
   scoring), on a pre-filled topic: events/s (the baseline);
2. bridge, unthrottled, on a pre-filled topic: events/s and its ratio to the passthrough (goal >= 0.7);
3. bridge at offered rates (fractions of its maximum): latency from the transaction's produce time to
   the score being readable by a consumer, p50/p99 (goal p99 <= 50 ms at half the maximum rate).
Before that, one micro-benchmark: building a raw tf.Example per event by hand-encoding the wire format
(fraud.wire) against tf.train.Example + SerializeToString.

Throughput is counted from the output records' own timestamps (first to last), so process start-up
does not count. Each stage runs as its own process (broker, model server, worker, and the paced producer
of the latency stages); this script fills the throughput topics and reads.

    .venv/bin/python bench/bench_bridge.py                        # both clients, at-least-once
    .venv/bin/python bench/bench_bridge.py --delivery exactly_once --clients confluent-kafka --events 20000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from fraud.features import FEATURE_NAMES
from fraud.kafka_config import KafkaClientConfig, ensure_topics
from fraud.topics import TopicSpec

PARTITIONS = 4


def _event(i: int, rng: np.random.Generator) -> tuple[bytes, bytes]:
    from fraud.contract import TransactionEvent

    values = {n: float(v) for n, v in zip(FEATURE_NAMES, rng.normal(size=len(FEATURE_NAMES)), strict=True)}
    values["Time"], values["Amount"] = float(i), float(abs(values["Amount"]) * 40)
    ev = TransactionEvent(f"tx-{i:08d}", 1_700_000_000_000 + i, f"card-{i % 1000}", f"cust-{i % 700}", values)
    return ev.transaction_id.encode(), ev.to_json()


def bench_example_encoding(n: int = 2000) -> None:
    import tensorflow as tf

    from fraud.wire import ExampleEncoder

    rows = np.random.default_rng(0).normal(size=(n, len(FEATURE_NAMES))).tolist()
    t = time.perf_counter()
    for row in rows:
        ex = tf.train.Example()
        for name, v in zip(FEATURE_NAMES, row, strict=True):
            ex.features.feature[name].float_list.value.append(v)
        ex.SerializeToString()
    base = (time.perf_counter() - t) / n
    enc = ExampleEncoder()
    t = time.perf_counter()
    for _ in range(10):
        for row in rows:
            enc.encode(row)
    ours = (time.perf_counter() - t) / (10 * n)
    print(f"tf.Example per event: tf.train.Example {base * 1e6:.1f} us (baseline), hand-encoded "
          f"{ours * 1e6:.2f} us: {base / ours:.0f}x faster", flush=True)


class Producer:
    def __init__(self, bootstrap: str) -> None:
        from confluent_kafka import Producer as P

        self._p = P({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 1})

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                self._p.produce(topic, value, key)
                break
            except BufferError:
                self._p.poll(0.05)
        self._p.poll(0)

    def flush(self) -> None:
        assert self._p.flush(120) == 0

    def load_metadata(self, topic: str) -> None:
        self._p.list_topics(topic, timeout=30)


def fill(bootstrap: str, topic: str, events: Sequence[tuple[bytes, bytes]]) -> None:
    p = Producer(bootstrap)
    for key, value in events:
        p.send(topic, key, value)
    p.flush()


@contextlib.contextmanager
def reader(bootstrap: str, topic: str) -> Iterator[list]:
    """Reads `topic` from the start in a thread: appends (receive_ms, record timestamp_ms, value)."""
    from confluent_kafka import Consumer, TopicPartition

    out: list = []
    stop = threading.Event()
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-reader", "enable.auto.commit": False,
                  "isolation.level": "read_committed", "fetch.wait.max.ms": 5})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])

    def loop() -> None:
        while not stop.is_set():
            # consume(n, timeout) would wait to fill n: take what is there, else block for one record
            msgs = c.consume(1000, 0) or [m for m in [c.poll(0.05)] if m is not None]
            now = time.time() * 1000.0
            for m in msgs:
                if m.error() is None:
                    out.append((now, m.timestamp()[1], m.value()))

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield out
    finally:
        stop.set()
        t.join(10)
        c.close()


def wait_for(out: list, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    if len(out) < n:
        raise RuntimeError(f"only {len(out)} of {n} outputs after {timeout_s:.0f} s")


def rate_from_timestamps(out: list) -> float:
    ts = sorted(t for _, t, _ in out)
    return (len(ts) - 1) / max(1e-3, (ts[-1] - ts[0]) / 1000.0)


@contextlib.contextmanager
def worker(kind: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    args = [sys.executable, "-m", "kafka_bridge"] if kind == "bridge" else [sys.executable, __file__, "--worker"]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(args, env={**os.environ, **env}, stdout=fh, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def passthrough_worker() -> int:
    """Entry of the passthrough process: the same fraud.stream processor, identity process function."""
    from fraud.logs import configure_logging
    from fraud.stream.processor import StreamProcessor
    from fraud.stream.records import Output, ProcessResult
    from kafka_bridge.config import BridgeConfig

    config = BridgeConfig.from_env_and_args(None)
    configure_logging("WARNING")
    topic = config.output_topic

    def identity(records):  # noqa: ANN001, ANN202
        return ProcessResult(outputs=[Output(topic, r.value, r.key) for r in records])

    proc = StreamProcessor(config.stream, identity)
    proc.install_signal_handlers()
    proc.run()
    return 0


def pace(bootstrap: str, topic: str, rate: float, n: int) -> float:
    """Produce `n` events at `rate`/s (a schedule, not a sleep per event: late sends catch up), flush;
    returns the rate achieved. Entry of the `--pace` process.

    The producer is warmed up first on `<topic>.warmup` (connection, metadata, idempotent producer id):
    a record's timestamp is taken when it is produced, so records produced before that would carry the
    producer's own start-up (~0.5 s) into the bridge's latency."""
    rng = np.random.default_rng(2)
    events = [_event(i, rng) for i in range(min(n, 20_000))]
    p = Producer(bootstrap)
    for key, value in events[:10]:
        p.send(f"{topic}.warmup", key, value)
    p.flush()
    p.load_metadata(topic)
    start = time.monotonic()
    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        key, value = events[i % len(events)]
        p.send(topic, key, value)
    p.flush()
    return n / (time.monotonic() - start)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def run_client(client: str, args: argparse.Namespace, bootstrap: str, server_port: int, tmp: Path) -> dict:
    kafka = KafkaClientConfig(bootstrap_servers=(bootstrap,), client_id="bench")
    rng = np.random.default_rng(1)
    events = [_event(i, rng) for i in range(args.events)]
    results: dict = {"client": client}

    def topics(stage: str) -> dict[str, str]:
        base = f"bench_bridge.{client}.{stage}.{int(time.time() * 1000)}"
        names = {"in": base + ".in", "out": base + ".out", "dlq": base + ".dlq"}
        ensure_topics(kafka, [TopicSpec(names["in"], PARTITIONS), TopicSpec(names["out"], PARTITIONS),
                              TopicSpec(names["dlq"], 1), TopicSpec(names["in"] + ".warmup", 1)])
        return names

    def env(names: dict[str, str], stage: str) -> dict[str, str]:
        return {
            "FRAUD_KAFKA_BOOTSTRAP": bootstrap,
            "FRAUD_BRIDGE_INPUT_TOPIC": names["in"], "FRAUD_BRIDGE_OUTPUT_TOPIC": names["out"],
            "FRAUD_BRIDGE_DLQ_TOPIC": names["dlq"], "FRAUD_BRIDGE_SERVER": f"127.0.0.1:{server_port}",
            "FRAUD_BRIDGE_GROUP_ID": names["in"] + ".g", "FRAUD_BRIDGE_INSTANCE_ID": f"bench-{stage}",
            "FRAUD_BRIDGE_KAFKA_CLIENT": client, "FRAUD_BRIDGE_DELIVERY": args.delivery,
            "FRAUD_BRIDGE_BATCH_MAX_SIZE": str(args.batch_max_size),
            "FRAUD_BRIDGE_BATCH_MAX_WAIT_MS": str(args.batch_max_wait_ms),
            "FRAUD_BRIDGE_HTTP_PORT": "-1", "FRAUD_BRIDGE_LOG_LEVEL": "WARNING",
        }

    for stage, kind in (("passthrough", "passthrough"), ("bridge_max", "bridge")):
        names = topics(stage)
        fill(bootstrap, names["in"], events)
        with reader(bootstrap, names["out"]) as out, worker(kind, env(names, stage), tmp / f"{client}-{stage}.log"):
            wait_for(out, len(events), args.timeout)
        results[stage] = rate_from_timestamps(out)
        print(f"  [{client}] {stage}: {results[stage]:,.0f} events/s", flush=True)

    names = topics("latency")
    latencies: dict[float, tuple[float, float, float, float]] = {}
    from fraud.embedded.process import free_port

    metrics_port = free_port()
    lat_env = {**env(names, "latency"), "FRAUD_BRIDGE_HTTP_PORT": str(metrics_port)}
    with reader(bootstrap, names["out"]) as out, worker("bridge", lat_env, tmp / f"{client}-lat.log"):
        warm = [_event(10_000_000 + i, rng) for i in range(200)]
        fill(bootstrap, names["in"], warm)  # start-up, assignment and first Predict out of the way
        wait_for(out, len(warm), args.timeout)
        seen = len(out)
        # an unmeasured first stage at the lowest rate: JIT, caches and connection pools settle first
        for frac, measured in [(min(args.fractions), False)] + [(f, True) for f in args.fractions]:
            rate = frac * results["bridge_max"]
            n = max(200, int(rate * args.seconds))
            # the paced producer runs in its own process: in this one it would fight the reader thread
            # for the GIL, and the reader's receive times (the end of each latency) would wait for it
            paced = subprocess.run([sys.executable, __file__, "--pace", bootstrap, names["in"], str(rate), str(n)],
                                   capture_output=True, text=True, timeout=args.timeout)
            if paced.returncode != 0:
                raise RuntimeError(f"paced producer failed: {paced.stderr.strip()[-500:]}")
            achieved = float(paced.stdout.split()[-1])
            wait_for(out, seen + n, args.timeout)
            from fraud.contract import ScoreEvent

            lat = [recv - ScoreEvent.from_json(v).source_timestamp_ms for recv, _, v in out[seen:seen + n]]
            seen += n
            if not measured:
                continue
            latencies[frac] = (rate, achieved, percentile(lat, 50), percentile(lat, 99))
            print(f"  [{client}] offered {rate:,.0f}/s ({frac:.2f} x max), achieved {achieved:,.0f}/s: "
                  f"latency p50 {latencies[frac][2]:.1f} ms, p99 {latencies[frac][3]:.1f} ms", flush=True)
        results["breakdown"] = breakdown(metrics_port)
        print(f"  [{client}] where a batch's time goes (means over the latency stages): {results['breakdown']}",
              flush=True)
    results["latency"] = latencies
    return results


def breakdown(port: int) -> str:
    """Mean batch size and mean seconds per stage from the bridge's own Prometheus histograms."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("fraud_bridge_") and ("_sum " in line or "_count " in line):
            name, value = line.split(" ")
            values[name] = float(value)
    out = []
    for metric, label, scale in (("batch_size", "batch", 1), ("predict_batch_size", "predict batch", 1),
                                 ("batch_process_seconds", "process ms", 1000), ("predict_seconds", "predict ms", 1000),
                                 ("batch_deliver_seconds", "deliver ms", 1000)):
        count = values.get(f"fraud_bridge_{metric}_count", 0)
        if count:
            out.append(f"{label} {values[f'fraud_bridge_{metric}_sum'] / count * scale:.1f}")
    return ", ".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pace", nargs=4, metavar=("BOOTSTRAP", "TOPIC", "RATE", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--clients", nargs="+", default=["kafka-python", "confluent-kafka"])
    parser.add_argument("--delivery", default="at_least_once", choices=["at_least_once", "exactly_once"])
    parser.add_argument("--events", type=int, default=20_000, help="events per throughput stage")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each offered-rate stage")
    parser.add_argument("--batch-max-size", type=int, default=256)
    parser.add_argument("--batch-max-wait-ms", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    if args.worker:
        return passthrough_worker()
    if args.pace:
        bootstrap, topic, rate, n = args.pace
        print(f"achieved {pace(bootstrap, topic, float(rate), int(n)):.1f}")
        return 0

    bench_example_encoding()
    with contextlib.ExitStack() as stack:
        from fraud.embedded.process import free_port
        from fraud.embedded.testing import temporary_broker
        from serving.testing import save_examples_model

        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-bridge-")))
        # full JIT and a production-like heap (the test fixture's broker is tuned to start fast instead)
        bootstrap = stack.enter_context(temporary_broker(tmp / "kafka", heap="1g", jvm_opts=())).bootstrap
        save_examples_model(tmp / "models" / "fraud", 1)
        port = free_port()
        server_log = open(tmp / "server.log", "ab")  # noqa: SIM115
        server = subprocess.Popen([sys.executable, "-m", "serving", f"--port={port}", "--rest_api_port=0",
                                   "--model_name=fraud", f"--model_base_path={tmp / 'models' / 'fraud'}"],
                                  stdout=server_log, stderr=subprocess.STDOUT)
        stack.callback(lambda: (server.terminate(), server.wait(30)))
        from fraud.embedded.process import tcp_accepts

        deadline = time.monotonic() + 120
        while not tcp_accepts("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.2)
        print(f"broker {bootstrap}, model server 127.0.0.1:{port}, delivery {args.delivery}, "
              f"{args.events:,} events per throughput stage, batch <= {args.batch_max_size}, "
              f"wait <= {args.batch_max_wait_ms} ms", flush=True)
        all_results = []
        for client in args.clients:
            try:
                all_results.append(run_client(client, args, bootstrap, port, tmp))
            except RuntimeError as exc:  # e.g. a client that stalls: report it, go on with the next one
                print(f"  [{client}] FAILED: {exc} (worker logs in {tmp} were removed; rerun to inspect)",
                      flush=True)

    print("\nsummary (ratios against the passthrough of the same client, same run)")
    for r in all_results:
        ratio = r["bridge_max"] / r["passthrough"]
        half = r["latency"].get(0.5)
        print(f"  {r['client']:>15}: passthrough {r['passthrough']:,.0f}/s, bridge {r['bridge_max']:,.0f}/s = "
              f"{ratio:.2f}x passthrough (goal >= 0.70: {'met' if ratio >= 0.7 else 'NOT met'})"
              + (f"; p99 at half max {half[3]:.1f} ms (goal <= 50: {'met' if half[3] <= 50 else 'NOT met'})"
                 if half else ""))
    if len(all_results) == 2 and all(r.get("latency") for r in all_results):
        a, b = all_results
        print(f"  {b['client']} / {a['client']}: passthrough {b['passthrough'] / a['passthrough']:.2f}x, "
              f"bridge {b['bridge_max'] / a['bridge_max']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
