"""Where an exactly-once commit's time goes: one Kafka transaction, step by step, beside the floor.

The bridge's producer settings (fraud.stream.confluent_client: idempotent, acks=all, its latency settings)
on a throwaway embedded broker. Each round, one record to each output partition:

- the floor: an idempotent producer, no transaction: produce -> visible to a read_committed reader;
- a transaction as the bridge commits one: produce -> acknowledged (the first records of a transaction
  wait for `AddPartitionsToTxn`), `send_offsets_to_transaction` (`AddOffsetsToTxn` + `TxnOffsetCommit`),
  `commit_transaction` (`EndTxn`), commit -> visible (the markers), and the whole produce -> visible.

It ends with the transaction's p50 as a ratio of the floor's, and with `--rtt` the broker round trip of
each request type (librdkafka's protocol debug log, collected in this process: nothing is printed raw).

    .venv/bin/python bench/bench_transactions.py
    .venv/bin/python bench/bench_transactions.py --partitions 1 --rtt
    .venv/bin/python bench/bench_transactions.py --broker-setting transaction.partition.verification.enable=false
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

IN, OUT = "bench.txn.in", "bench.txn.out"
_RTT = re.compile(r"Received (\w+)Response \(.*rtt ([0-9.]+)ms\)")


class _RttLog(logging.Handler):
    """librdkafka's protocol debug lines, reduced to round trips per request type."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.rtts: dict[str, list[float]] = defaultdict(list)

    def emit(self, record: logging.LogRecord) -> None:
        m = _RTT.search(record.getMessage())
        if m:
            self.rtts[m.group(1)].append(float(m.group(2)))


class _Reader:
    """A read_committed consumer in a thread: when each value became visible (perf_counter)."""

    def __init__(self, bootstrap: str, partitions: int) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from fraud.stream.confluent_client import CONSUMER_LATENCY_SETTINGS, rdkafka_log

        self.seen: dict[bytes, float] = {}
        self._stop = threading.Event()
        self._c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-txn-reader",
                            "isolation.level": "read_committed", "enable.auto.commit": False,
                            **CONSUMER_LATENCY_SETTINGS, "logger": rdkafka_log})
        self._c.assign([TopicPartition(OUT, p, 0) for p in range(partitions)])
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            m = self._c.poll(0.05)
            if m is not None and m.error() is None:
                self.seen[m.value()] = time.perf_counter()

    def visible(self, values: Sequence[bytes], timeout_s: float = 10.0) -> float:
        deadline = time.perf_counter() + timeout_s
        while any(v not in self.seen for v in values):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"not visible after {timeout_s:g} s: {[v for v in values if v not in self.seen]}")
            time.sleep(0.0002)
        return max(self.seen[v] for v in values)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._c.close()


def _producer(bootstrap: str, transactional_id: str | None, rtt: _RttLog | None) -> Any:
    from confluent_kafka import Producer

    from fraud.stream.confluent_client import PRODUCER_LATENCY_SETTINGS, rdkafka_log

    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                            **PRODUCER_LATENCY_SETTINGS, "logger": rdkafka_log}
    if transactional_id:
        conf["transactional.id"] = transactional_id
    if rtt is not None:  # its debug lines go to this handler only, not to the log file
        log = logging.getLogger("bench.transactions.rdkafka-debug")
        log.propagate = False
        log.setLevel(logging.DEBUG)
        log.addHandler(rtt)
        conf.update({"debug": "protocol", "logger": log})
    return Producer(conf)


def _line(name: str, values: list[float]) -> str:
    v = sorted(values)
    return (f"  {name:36s} {statistics.median(v):7.1f} {v[int(0.9 * (len(v) - 1))]:7.1f} "
            f"{v[int(0.99 * (len(v) - 1))]:7.1f} {v[-1]:7.1f}")


def measure(bootstrap: str, partitions: int, rounds: int, warmup: int, pause_s: float, rtt: bool,
            echo: Callable[[str], None]) -> None:
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    from fraud.stream.confluent_client import rdkafka_log

    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": rdkafka_log})
    for future in admin.create_topics([NewTopic(IN, partitions, 1), NewTopic(OUT, partitions, 1)]).values():
        future.result()
    group = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-txn", "enable.auto.commit": False,
                      "logger": rdkafka_log})
    group.assign([TopicPartition(IN, p, 0) for p in range(partitions)])
    group.poll(0.5)  # joins nothing (assign), but sets up the group metadata the transaction commits with
    reader = _Reader(bootstrap, partitions)
    floor_producer = _producer(bootstrap, None, None)
    rtt_log = _RttLog() if rtt else None
    txn_producer = _producer(bootstrap, "bench-txn", rtt_log)
    txn_producer.init_transactions(30)
    try:
        def floor(i: int) -> dict[str, float]:
            values = [f"f{i}-{p}".encode() for p in range(partitions)]
            t0 = time.perf_counter()
            for p, v in enumerate(values):
                floor_producer.produce(OUT, value=v, partition=p)
            floor_producer.flush(30)
            t1 = time.perf_counter()
            return {"acked": (t1 - t0) * 1e3, "visible": (reader.visible(values) - t0) * 1e3}

        def transaction(i: int) -> dict[str, float]:
            values = [f"t{i}-{p}".encode() for p in range(partitions)]
            txn_producer.begin_transaction()
            t0 = time.perf_counter()
            for p, v in enumerate(values):
                txn_producer.produce(OUT, value=v, partition=p)
            txn_producer.flush(30)
            t1 = time.perf_counter()
            txn_producer.send_offsets_to_transaction([TopicPartition(IN, p, i + 1) for p in range(partitions)],
                                                     group.consumer_group_metadata(), 30)
            t2 = time.perf_counter()
            txn_producer.commit_transaction(30)
            t3 = time.perf_counter()
            t4 = reader.visible(values)
            return {"acked": (t1 - t0) * 1e3, "offsets": (t2 - t1) * 1e3, "commit": (t3 - t2) * 1e3,
                    "markers": (t4 - t3) * 1e3, "visible": (t4 - t0) * 1e3}

        floors: dict[str, list[float]] = defaultdict(list)
        txns: dict[str, list[float]] = defaultdict(list)
        for i in range(warmup + rounds):  # interleaved: both see the broker as it is at that moment
            if i == warmup:
                floors.clear()
                txns.clear()
                if rtt_log is not None:
                    rtt_log.rtts.clear()
            for into, one in ((floors, floor), (txns, transaction)):
                for step, ms in one(i).items():
                    into[step].append(ms)
                time.sleep(pause_s)
    finally:
        reader.close()
        group.close()
        floor_producer.flush(10)
        with contextlib.suppress(Exception):
            txn_producer.abort_transaction(1)
        txn_producer.flush(10)

    echo(f"{rounds} rounds of one record to each of {partitions} partitions, interleaved (after {warmup} not counted)")
    echo(f"  {'ms':36s} {'p50':>7s} {'p90':>7s} {'p99':>7s} {'max':>7s}")
    echo("floor: idempotent producer, no transaction")
    echo(_line("produce -> acknowledged", floors["acked"]))
    echo(_line("produce -> visible (read_committed)", floors["visible"]))
    echo("transaction (the bridge's settings)")
    echo(_line("produce -> acknowledged", txns["acked"]))
    echo(_line("send_offsets_to_transaction", txns["offsets"]))
    echo(_line("commit_transaction", txns["commit"]))
    echo(_line("commit -> visible", txns["markers"]))
    echo(_line("produce -> visible", txns["visible"]))
    ratio = statistics.median(txns["visible"]) / statistics.median(floors["visible"])
    echo(f"transaction / floor, produce -> visible p50: {ratio:.1f}x")
    if rtt_log is not None:
        echo("transactional producer's round trips by request (ms)        n    mean     max")
        for name, values in sorted(rtt_log.rtts.items(), key=lambda kv: -statistics.fmean(kv[1])):
            echo(f"  {name:40s} {len(values):6d} {statistics.fmean(values):7.1f} {max(values):7.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=4, help="output partitions, one record each per round")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20, help="rounds of each first, not counted")
    parser.add_argument("--pause-ms", type=float, default=20.0, help="between rounds")
    parser.add_argument("--rtt", action="store_true", help="also each request type's broker round trip")
    parser.add_argument("--broker-setting", action="append", default=[], metavar="KEY=VALUE",
                        help="a server.properties setting of the throwaway broker (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true", help="library output on the terminal, not in the log")
    args = parser.parse_args(argv)
    for flag, value in (("--partitions", args.partitions), ("--rounds", args.rounds)):
        if value < 1:
            parser.error(f"{flag} {value}: must be at least 1")
    if args.warmup < 0 or args.pause_ms < 0:
        parser.error("--warmup and --pause-ms must not be negative")
    overrides = {}
    for item in args.broker_setting:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--broker-setting {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = value.strip()

    from fraud.console import quiet_output, timestamped_log
    from fraud.embedded.testing import temporary_broker
    from fraud.paths import load_paths

    log = timestamped_log(load_paths().home / "bench", "bench-transactions")
    with quiet_output(log, verbose=args.verbose) as console, \
            tempfile.TemporaryDirectory(prefix="bench-txn-") as state:
        started = time.perf_counter()
        # bench_bridge's broker: the full JIT (a long-running broker's), 1 GB of heap
        with temporary_broker(Path(state) / "kafka", heap="1g", jvm_opts=(), overrides=overrides) as kafka:
            console.echo(f"broker {kafka.bootstrap} (embedded, started in {time.perf_counter() - started:.0f} s"
                         + (f"; {', '.join(f'{k}={v}' for k, v in overrides.items())}" if overrides else "") + ")")
            measure(kafka.bootstrap, args.partitions, args.rounds, args.warmup, args.pause_ms / 1000.0, args.rtt,
                    console.echo)
        if not args.verbose:
            console.echo(f"library output: {log}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
