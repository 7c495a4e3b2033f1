"""What the embedded Kafka costs: jar fetch, jar cache size, broker cold start, warm restart, stop; and
with --brokers N, what an N-node cluster costs: formation, a node's failover and restart, bounces.

Times are printed in seconds and as ratios against a baseline measured in the same run: one short
Kafka tool on the same classpath (`StorageTool random-uuid`: a JVM start plus loading Kafka's classes),
the floor any Kafka process pays here. Two settings are measured: the `fraudctl kafka start` defaults
(512m heap, full JIT) and the test fixture's (384m heap, C1 only). The cluster runs with the test
fixture's settings (fraud.embedded.testing.temporary_cluster: also a 3 s broker session timeout).

    .venv/bin/python bench/bench_embedded_kafka.py [--repeats 3] [--fetch] [--brokers 3]

--fetch also times a first-time fetch from Maven Central (an empty Maven repository in a temp dir;
downloads about 55 MB).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from fraud.embedded import jars
from fraud.embedded.broker import BrokerConfig, KafkaBroker
from fraud.embedded.process import free_port
from fraud.paths import load_paths

SETTINGS = {
    "fraudctl defaults": {"heap": "512m", "jvm_opts": ()},
    "test fixture": {"heap": "384m", "jvm_opts": ("-XX:TieredStopAtLevel=1",)},
}


def _du(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def _baseline(jars_dir: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jars.run_tool(jars_dir, "kafka.tools.StorageTool", ["random-uuid"])
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _broker_times(jars_dir: Path, name: str, settings: dict, repeats: int) -> dict[str, float]:
    cold, warm, stop = [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench-kafka-") as tmp:
            broker = KafkaBroker(BrokerConfig(state_dir=Path(tmp), jars_dir=jars_dir, port=free_port(),
                                              controller_port=free_port(), **settings))
            try:
                t = time.perf_counter()
                broker.start(die_with_parent=True)  # format + start + first client metadata
                cold.append(time.perf_counter() - t)
                t = time.perf_counter()
                broker.stop()
                stop.append(time.perf_counter() - t)
                t = time.perf_counter()
                broker.start(die_with_parent=True)
                warm.append(time.perf_counter() - t)
            finally:
                broker.stop()
    return {"cold start": statistics.median(cold), "warm restart": statistics.median(warm),
            "clean stop": statistics.median(stop)}


def _cluster_times(brokers: int, repeats: int) -> dict[str, float]:
    """Medians over `repeats` clusters of `brokers` nodes (test fixture settings)."""
    from fraud.embedded.testing import temporary_cluster, unique_topic_name
    from fraud.kafka_config import ensure_topics
    from fraud.topics import TopicSpec

    rows: dict[str, list[float]] = {}

    def note(what: str, secs: float) -> None:
        rows.setdefault(what, []).append(secs)

    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench-kafka-cluster-") as tmp:
            t = time.perf_counter()
            with temporary_cluster(Path(tmp), n=brokers) as kafka:
                note("cold start (format + all nodes ready)", time.perf_counter() - t)
                topic = unique_topic_name("bench")
                ensure_topics(kafka.client_config("bench"), [TopicSpec(topic, 3)])
                victim = kafka.cluster.leaders(topic)[0]
                t = time.perf_counter()
                kafka.kill(victim)
                while victim in kafka.cluster.leaders(topic).values():
                    time.sleep(0.05)
                note("SIGKILL -> leaders moved", time.perf_counter() - t)
                t = time.perf_counter()
                kafka.start_node(victim)
                note("killed node restart -> serving", time.perf_counter() - t)
                note("... -> back in every ISR", kafka.cluster.wait_fully_replicated())
                note("hard bounce (kill + restart)", kafka.hard_bounce(victim))
                kafka.cluster.wait_fully_replicated()
                note("clean bounce (controlled)", kafka.clean_bounce(victim))
                kafka.cluster.wait_fully_replicated()
                t = time.perf_counter()
                kafka.stop()
                note("clean stop of all nodes", time.perf_counter() - t)
                note("warm restart of all nodes", kafka.start())
    return {what: statistics.median(v) for what, v in rows.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fetch", action="store_true", help="also time a first-time fetch from Maven Central")
    parser.add_argument("--brokers", type=int, default=1, help="also time a cluster of this many nodes (> 1)")
    args = parser.parse_args(argv)

    jars_dir = load_paths().jars_dir
    jars.ensure_jars(jars_dir)
    if args.fetch:
        with tempfile.TemporaryDirectory(prefix="bench-m2-") as tmp:
            t = time.perf_counter()
            jars.ensure_jars(Path(tmp) / "jars", maven_repo=Path(tmp) / "m2")
            fetch_s = time.perf_counter() - t
            m2_bytes, _ = _du(Path(tmp) / "m2")
        print(f"first fetch from Maven Central: {fetch_s:.1f} s (Maven repository grew by {m2_bytes / 2**20:.0f} MiB)")
    size, count = _du(jars_dir)
    print(f"jar cache {jars_dir}: {size / 2**20:.1f} MiB in {count} files")
    subprocess.run(["java", "-version"], capture_output=True)  # warm the page cache for the JDK itself

    base = _baseline(jars_dir, args.repeats)
    print(f"baseline (StorageTool random-uuid, median of {args.repeats}): {base:.2f} s")
    for name, settings in SETTINGS.items():
        for what, secs in _broker_times(jars_dir, name, settings, args.repeats).items():
            print(f"{name:>17} {what:<13} {secs:6.2f} s  = {secs / base:5.1f} x baseline")
    if args.brokers > 1:
        for what, secs in _cluster_times(args.brokers, args.repeats).items():
            print(f"{args.brokers}-node cluster {what:<38} {secs:6.2f} s  = {secs / base:5.1f} x baseline")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
