"""The scoring bridge's speed on the model the pipeline ships, as ratios against baselines measured in the
same run on the same broker: throughput, a latency budget by stage, and CPU per event.

Stages (each worker is its own process: broker, model server, bridge or passthrough, paced producer):

1. throughput on a pre-filled topic, counted from the output records' own timestamps (first to last, so
   start-up does not count): the passthrough (fraud.stream's processor with an identity function: consume
   -> produce, the baseline), the bridge at-least-once and exactly-once on the served model, and the bridge
   on serving.testing's toy model (an extra row, labelled as such). CPU per event of each worker process
   (from /proc, over the same window), of the bridge's own work (its `bridge_cpu_seconds_total` metric:
   decode, validate, encode request and scores) and of the model server. The stages run in `--rounds`
   interleaved rounds (passthrough, at-least-once, exactly-once, then again), so that a shift in what else
   the shared machine does hits every kind alike: each figure is the median over the rounds, and each
   ratio the median of the ratios within a round;
2. latency at offered rates (200, 1,000 and 4,000 events/s and 1/4 and 1/2 of the bridge's maximum), each
   mode: a paced producer process sends transactions, a reader thread reads the scores (read_committed),
   latency = received - the transaction's produce time on one clock. Beside it the floor: a second reader
   on the input topic, i.e. a bare produce -> consume on the same broker, at the same moment. The bridge
   writes one line of stage timestamps per batch (--trace-file), so each event's latency is split into
   kafka in (produce -> the bridge's poll), decode (-> Predict sent), Predict (-> answered), emit (-> score
   events built, including any wait for the loop), kafka out (-> visible to the reader: produce, broker
   and, in exactly-once, the wait for the transaction's commit). And the stage's CPU split, in cores, over
   every process on the machine's shared cores: broker, bridge, model server, paced producer, readers;
3. one line per goal of issue 13, met or missed, with the figures.

`--pin` runs the environment (broker, paced producer, readers) on the first half of the CPUs and the system
under test (bridge or passthrough, model server) on the other half, as if they were separate machines: on
a small machine it shows what the bridge does with cores of its own, where the default run shows what the
whole stack does on shared ones. The environment's half is then the tighter one (the floor rises).

    .venv/bin/python bench/bench_bridge.py                          # the shipped model (trained once, cached)
    .venv/bin/python bench/bench_bridge.py --model-dir PUSHED_BASE  # any pushed model (a base path of versions)
    .venv/bin/python bench/bench_bridge.py --profile                # + a py-spy flame graph of the bridge
    .venv/bin/python bench/bench_bridge.py --pin                    # environment and bridge on separate CPUs
    .venv/bin/python bench/bench_bridge.py --clients kafka-python confluent-kafka --quick
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import orjson

from fraud.features import FEATURE_NAMES
from fraud.kafka_config import KafkaClientConfig, ensure_topics
from fraud.topics import TopicSpec

PARTITIONS = 4
_TICKS = os.sysconf("SC_CLK_TCK")
_console: list = []  # the fraud.console Console of this run (library output goes to a log file)


def echo(text: str = "", **_: object) -> None:
    """A result line on the terminal (through the console: stdout itself goes to the log file)."""
    if _console:
        _console[0].echo(text)
    else:
        print(text, flush=True)
STAGES = ("kafka_in", "decode", "predict", "emit", "kafka_out")


def _features(rng: np.random.Generator) -> dict[str, float]:
    values = {n: float(v) for n, v in zip(FEATURE_NAMES, rng.normal(size=len(FEATURE_NAMES)), strict=True)}
    values["Amount"] = float(abs(values["Amount"]) * 40)
    values["Time"] = float(abs(values["Time"]) * 40_000)  # the contract: Time >= 0, Amount >= 0
    return values


def _event(i: int, rng: np.random.Generator, prefix: str = "tx") -> tuple[bytes, bytes]:
    values = _features(rng)
    tid = f"{prefix}-{i:08d}"
    ev = {"transaction_id": tid, "event_time_ms": 1_700_000_000_000 + i, "card_id": f"card-{i % 1000}",
          "customer_id": f"cust-{i % 700}", "features": values}
    return tid.encode(), orjson.dumps(ev)


def proc_cpu(pid: int, main_thread: bool = False) -> float:
    """CPU seconds (user + system) the process has used so far: all its threads, or its main thread only."""
    with open(f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def runqueue_wait(pid: int) -> float:
    """Seconds the process's main thread has spent runnable but waiting for a CPU (the scheduler's count)."""
    with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


def _producer(bootstrap: str):  # noqa: ANN202
    from confluent_kafka import Producer

    from fraud.stream.confluent_client import PRODUCER_LATENCY_SETTINGS

    settings = {k: v for k, v in PRODUCER_LATENCY_SETTINGS.items() if k != "delivery.report.only.error"}
    return Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, **settings})


def fill(bootstrap: str, topic: str, events: Sequence[tuple[bytes, bytes]]) -> None:
    p = _producer(bootstrap)
    for key, value in events:
        while True:
            try:
                p.produce(topic, value, key)
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(120) == 0


class Reader:
    """Reads a topic from the start in a thread: `out` gets (receive ms, key, value, record timestamp ms)."""

    def __init__(self, bootstrap: str, topic: str, on_first: threading.Event | None = None) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from fraud.stream.confluent_client import CONSUMER_LATENCY_SETTINGS

        self.out: list[tuple[float, bytes, bytes, int]] = []
        self._stop = threading.Event()
        self._c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-reader", "enable.auto.commit": False,
                            "isolation.level": "read_committed", **CONSUMER_LATENCY_SETTINGS})
        self._c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        self._marks: list[tuple[int, threading.Event, list]] = []
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def mark_at(self, count: int, callback_out: list) -> threading.Event:
        """An event set (and `callback_out` appended the time) once `count` records were read."""
        ev = threading.Event()
        self._marks.append((count, ev, callback_out))
        return ev

    def _loop(self) -> None:
        c, out = self._c, self.out
        while not self._stop.is_set():
            # consume(n, timeout) would wait to fill n: take what is there, else block for one record
            msgs = c.consume(1000, 0) or [m for m in [c.poll(0.05)] if m is not None]
            now = time.time() * 1000.0
            for m in msgs:
                if m.error() is None:
                    out.append((now, m.key(), m.value(), m.timestamp()[1]))
            if self._marks:
                for mark in list(self._marks):
                    if len(out) >= mark[0]:
                        mark[2].append(time.monotonic())
                        mark[1].set()
                        self._marks.remove(mark)

    def wait_for(self, n: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.out) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        if len(self.out) < n:
            raise RuntimeError(f"only {len(self.out)} of {n} records after {timeout_s:.0f} s")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._c.close()


@contextlib.contextmanager
def worker(kind: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    args = [sys.executable, "-m", "kafka_bridge"] if kind == "bridge" else [sys.executable, __file__, "--worker"]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(args, env={**os.environ, **env}, stdout=fh, stderr=subprocess.STDOUT)
    pin_to_sut(proc.pid)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def passthrough_worker() -> int:
    """Entry of the passthrough process: the same fraud.stream processor, identity process function."""
    from fraud.logs import configure_logging
    from fraud.stream.processor import StreamProcessor, settle_heap
    from fraud.stream.records import Output, ProcessResult
    from kafka_bridge.config import BridgeConfig

    config = BridgeConfig.from_env_and_args(None)
    configure_logging("WARNING")
    topic = config.output_topic

    def identity(records):  # noqa: ANN001, ANN202
        return ProcessResult(outputs=[Output(topic, r.value, r.key) for r in records])

    proc = StreamProcessor(config.stream, identity)
    proc.install_signal_handlers()
    settle_heap(config.stream.gc_threshold)  # as the bridge does
    proc.run()
    return 0


#: The paced producer sleeps only when it is this far ahead of its schedule, so it sends the events due in
#: each millisecond as one burst. A sleep per event (100 us apart at 10,000/s) cost 0.84 of this machine's
#: 2 cores in the producer alone (0.23 with 1 ms bursts), taken from the bridge it measures.
PACE_TICK_S = 0.001


#: `--pin`: [(the environment's CPUs, the system under test's CPUs)], empty when nothing is pinned.
_PINNED: list[tuple[set[int], set[int]]] = []


def split_cpus() -> tuple[set[int], set[int]]:
    """The CPUs this process may use, in two halves: the first for the environment (broker, paced producer,
    readers: this process and what it starts), the rest for the system under test (the bridge or the
    passthrough, and the model servers). ValueError on a single CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise ValueError(f"--pin needs at least 2 CPUs, this process may use {len(cpus)}")
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


def _cpu_list(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def _set_affinity(pid: int | str, cpus: set[int]) -> None:
    """Move every thread a process has so far (`pid` or "self") to `cpus`; threads and children it starts
    later inherit the mask of the thread that starts them."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.sched_setaffinity(int(tid), cpus)


def pin_to_sut(pid: int) -> None:
    """Move a process just started to the system under test's CPUs, when `--pin` is on."""
    if _PINNED:
        _set_affinity(pid, _PINNED[0][1])


def pace(bootstrap: str, topic: str, rate: float, n: int, prefix: str) -> float:
    """Produce `n` events at `rate`/s (a schedule, not a sleep per event: late sends catch up, and events
    due within PACE_TICK_S go out together), flush; returns the rate achieved. Entry of the `--pace`
    process. Warmed up first on `<topic>.warmup` (connection, metadata, producer id), so no record carries
    the producer's own start-up. Latency counts from each record's own produce timestamp."""
    rng = np.random.default_rng(2)
    base = [_features(rng) for _ in range(1000)]
    events = []
    for i in range(n):  # unique ids: the latency budget joins the bridge's trace by transaction id
        tid = f"{prefix}-{i:08d}"
        events.append((tid.encode(), orjson.dumps({
            "transaction_id": tid, "event_time_ms": 1_700_000_000_000 + i, "card_id": f"card-{i % 1000}",
            "customer_id": f"cust-{i % 700}", "features": base[i % len(base)]})))
    p = _producer(bootstrap)
    for key, value in events[:10]:
        p.produce(f"{topic}.warmup", value, key)
    p.flush(60)
    p.list_topics(topic, timeout=30)
    start = time.monotonic()
    for i, (key, value) in enumerate(events):
        delay = start + i / rate - time.monotonic()
        if delay > PACE_TICK_S:
            time.sleep(delay)
        while True:
            try:
                p.produce(topic, value, key)
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)
    p.flush(120)
    return n / (time.monotonic() - start)


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def metrics_text(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        for prefix in ("fraud_bridge_", "fraud_stream_"):  # the bridge's and the passthrough's namespace
            if line.startswith(prefix):
                name, _, value = line[len(prefix):].rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
    return out


def _total(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


class Bench:
    def __init__(self, args: argparse.Namespace, bootstrap: str, logs: Path, broker_pid: int | None = None,
                 server_pid: int | None = None) -> None:
        self.args = args
        self.bootstrap = bootstrap
        self.broker_pid, self.server_pid = broker_pid, server_pid  # for the CPU split of the latency stages
        self.logs = logs  # the workers' logs and traces, kept
        self.kafka = KafkaClientConfig(bootstrap_servers=(bootstrap,), client_id="bench")
        self.results: dict[str, dict] = {}
        self.rounds: dict[str, list[dict]] = {}  # each throughput stage's result per round
        self._n = 0

    def topics(self, stage: str) -> dict[str, str]:
        self._n += 1
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in stage)
        base = f"bench_bridge.{self._n:02d}.{safe}.{int(time.time())}"
        names = {"in": base + ".in", "out": base + ".out", "dlq": base + ".dlq"}
        ensure_topics(self.kafka, [TopicSpec(names["in"], PARTITIONS), TopicSpec(names["out"], PARTITIONS),
                                   TopicSpec(names["dlq"], 1), TopicSpec(names["in"] + ".warmup", 1)])
        return names

    def env(self, names: dict[str, str], *, client: str, delivery: str, server_port: int,
            **extra: str) -> dict[str, str]:
        a = self.args
        env = {
            "FRAUD_KAFKA_BOOTSTRAP": self.bootstrap,
            "FRAUD_BRIDGE_INPUT_TOPIC": names["in"], "FRAUD_BRIDGE_OUTPUT_TOPIC": names["out"],
            "FRAUD_BRIDGE_DLQ_TOPIC": names["dlq"], "FRAUD_BRIDGE_SERVER": f"127.0.0.1:{server_port}",
            "FRAUD_BRIDGE_GROUP_ID": names["in"] + ".g", "FRAUD_BRIDGE_INSTANCE_ID": f"bench-{self._n}",
            "FRAUD_BRIDGE_KAFKA_CLIENT": client, "FRAUD_BRIDGE_DELIVERY": delivery,
            "FRAUD_BRIDGE_COMMIT_INTERVAL_MS": str(a.commit_interval_ms),
            "FRAUD_BRIDGE_HTTP_PORT": "-1", "FRAUD_BRIDGE_LOG_LEVEL": "WARNING",
        }
        if a.batch_max_size:
            env["FRAUD_BRIDGE_BATCH_MAX_SIZE"] = str(a.batch_max_size)
        env.update(extra)
        return env

    # -- throughput ---------------------------------------------------------------------------

    def throughput(self, label: str, kind: str, *, client: str, delivery: str, server_port: int,
                   server_pid: int | None, profile: Path | None = None, round_no: int = 1) -> dict:
        """One round of a throughput stage; `results[label]` becomes the median over its rounds so far."""
        from fraud.embedded.process import free_port

        a = self.args
        names = self.topics(label)
        rng = np.random.default_rng(1)
        events = [_event(i, rng) for i in range(a.events)]
        fill(self.bootstrap, names["in"], events)
        port = free_port()
        env = self.env(names, client=client, delivery=delivery, server_port=server_port,
                       FRAUD_BRIDGE_HTTP_PORT=str(port))
        reader = Reader(self.bootstrap, names["out"])
        first_t: list[float] = []
        # the CPU window starts once the first outputs are out (start-up, imports and the group join excluded)
        start_at = max(1, a.events // 20)
        started = reader.mark_at(start_at, first_t)
        try:
            with worker(kind, env, self.logs / f"{names['in']}.log") as proc:
                if not started.wait(a.timeout):
                    raise RuntimeError(f"{label}: no output after {a.timeout:.0f} s (log {self.logs / names['in']}.log)")
                cpu0 = self._cpu(proc.pid, server_pid)
                m0 = metrics_text(port)
                spy = None
                if profile is not None:
                    spy = subprocess.Popen(["py-spy", "record", "--pid", str(proc.pid), "--rate", "250",
                                            "--output", str(profile), "--format", "flamegraph", "--nonblocking"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                end_at = a.events - max(1, a.events // 50)
                reader.wait_for(end_at, a.timeout)
                cpu1 = self._cpu(proc.pid, server_pid)
                m1 = metrics_text(port)
                if spy is not None:
                    spy.send_signal(2)  # SIGINT: py-spy writes the flame graph and exits
                    _, err = spy.communicate(timeout=120)
                    if spy.returncode not in (0, -2) or not profile.exists():  # type: ignore[union-attr]
                        echo(f"  py-spy failed: {err.decode(errors='replace').strip()[-300:]}")
                reader.wait_for(len(events), a.timeout)
        finally:
            reader.close()
        out = reader.out
        ts = sorted(t for _, _, _, t in out)
        rate = (len(ts) - 1) / max(1e-3, (ts[-1] - ts[0]) / 1000.0)
        # per event of what the worker itself consumed in the CPU window (the reader's count lags under
        # exactly-once, where outputs become visible a transaction at a time)
        window = _total(m1, "records_consumed_total") - _total(m0, "records_consumed_total")
        # empty when the worker had consumed everything before the first outputs were visible (a short stage
        # under exactly-once): no CPU figure rather than a division by zero
        per_event = 1e6 / window if window else float("nan")
        used = {k: cpu1[k] - cpu0[k] for k in cpu1}
        wall, loop, waiting = used.pop("wall"), used.pop("loop"), used.pop("loop waiting")
        res = {"label": label, "rate": rate, "cpu_us": used["bridge"] * per_event,
               # one thread: it can use one core at most
               "loop_cpu_us": loop * per_event, "loop_busy": loop / wall if wall > 0 else float("nan"),
               "loop_waiting": waiting / wall if wall > 0 else float("nan"),
               # the whole machine in the same window: the ratio's denominator and numerator share its cores
               "broker_cpu_us": used["broker"] * per_event, "readers_cpu_us": used["readers"] * per_event,
               "cores": sum(used.values()) / wall if wall > 0 else float("nan")}
        if server_pid:
            res["server_cpu_us"] = used["model server"] * per_event
        if kind == "bridge":
            res["own_cpu_us"] = (_total(m1, "bridge_cpu_seconds_total") - _total(m0, "bridge_cpu_seconds_total")) \
                * per_event
        batches = _total(m1, "batch_size_count") - _total(m0, "batch_size_count")
        res["batch"] = window / batches if batches else float("nan")
        extra = "".join(f", {k.replace('_cpu_us', '')} CPU {res[k]:.1f} us/event" for k in ("own_cpu_us", "server_cpu_us")
                        if k in res)
        of = f" (round {round_no} of {self.args.rounds})" if self.args.rounds > 1 and round_no else ""
        echo(f"  {label}{of}: {rate:,.0f} events/s, process CPU {res['cpu_us']:.1f} us/event{extra}"
              + (f", mean batch {res['batch']:.0f}" if "batch" in res else "")
              + f"; its loop thread {res['loop_cpu_us']:.1f} us/event, busy {res['loop_busy']:.0%}, waiting for a "
                f"CPU {res['loop_waiting']:.0%}; broker {res['broker_cpu_us']:.1f}, readers "
                f"{res['readers_cpu_us']:.1f} us/event; {res['cores']:.2f} cores busy"
              + ("" if window else " (no CPU window: every event was consumed before the first outputs were "
                                   "visible; use more --events)"))
        self.rounds.setdefault(label, []).append(res)
        self.results[label] = combine_rounds(self.rounds[label])
        return res

    # -- latency ------------------------------------------------------------------------------

    def latency(self, label: str, *, client: str, delivery: str, server_port: int, rates: Sequence[float]) -> dict:
        a = self.args
        names = self.topics(label)
        trace = self.logs / f"{names['in']}.trace.jsonl"
        env = self.env(names, client=client, delivery=delivery, server_port=server_port,
                       FRAUD_BRIDGE_TRACE_FILE=str(trace))
        out_reader = Reader(self.bootstrap, names["out"])
        in_reader = Reader(self.bootstrap, names["in"])
        rows: dict[float, dict] = {}
        try:
            with worker("bridge", env, self.logs / f"{names['in']}.log") as bridge:
                rng = np.random.default_rng(3)
                warm = [_event(i, rng, prefix="warm") for i in range(300)]
                fill(self.bootstrap, names["in"], warm)  # start-up, assignment and first Predicts out of the way
                out_reader.wait_for(len(warm), a.timeout)
                seen_out, seen_in = len(out_reader.out), len(in_reader.out)
                # an unmeasured first stage at the median rate: caches, pools and the broker's JIT settle (its C2
                # compiler threads took 0.5 of the 2 cores for the first ~15 s of small requests)
                warm_rate = sorted(rates)[len(rates) // 2]
                for k, (rate, measured) in enumerate([(warm_rate, False)] + [(r, True) for r in rates]):
                    n = max(300, int(rate * a.seconds))
                    prefix = f"s{k:02d}"
                    cpu0 = self._cpu(bridge.pid, self.server_pid)
                    paced = subprocess.run([sys.executable, __file__, "--pace", self.bootstrap, names["in"], str(rate),
                                            str(n), prefix], capture_output=True, text=True, timeout=a.timeout)
                    if paced.returncode != 0:
                        raise RuntimeError(f"paced producer failed: {paced.stderr.strip()[-500:]}")
                    achieved = float(paced.stdout.split()[-1])
                    out_reader.wait_for(seen_out + n, a.timeout)
                    in_reader.wait_for(seen_in + n, a.timeout)
                    cpu = {k: v - cpu0[k] for k, v in self._cpu(bridge.pid, self.server_pid).items()}
                    outs = out_reader.out[seen_out:seen_out + n]
                    ins = in_reader.out[seen_in:seen_in + n]
                    seen_out += n
                    seen_in += n
                    if not measured:
                        continue
                    rows[rate] = self._budget(outs, ins, trace, rate, achieved)
                    wall = cpu.pop("wall")
                    cpu.pop("loop")  # inside "bridge"
                    cpu.pop("loop waiting")
                    rows[rate]["cores"] = {k: v / wall for k, v in cpu.items()}
        finally:
            out_reader.close()
            in_reader.close()
        self.results[label] = {"rows": rows}
        return rows

    def _cpu(self, bridge_pid: int, server_pid: int | None) -> dict[str, float]:
        """CPU seconds used so far by each process of a stage, and the wall clock: the stage's CPU split (the
        machine's cores are shared by all of them, load generator included). `bridge` is the worker (the
        bridge or the passthrough); `server_pid` None: no model server in the stage."""
        me = os.times()
        return {"wall": time.monotonic(),
                "loop": proc_cpu(bridge_pid, main_thread=True),  # the worker's loop: part of "bridge"
                "loop waiting": runqueue_wait(bridge_pid),  # not CPU time: ready to run, no CPU free
                "broker": proc_cpu(self.broker_pid) if self.broker_pid else 0.0,
                "bridge": proc_cpu(bridge_pid),
                "model server": proc_cpu(server_pid) if server_pid else 0.0,
                "producer": me.children_user + me.children_system,  # the paced producer: the child waited for
                "readers": me.user + me.system}  # this process: the two reader threads

    def _budget(self, outs: list, ins: list, trace: Path, rate: float, achieved: float) -> dict:
        stamps: dict[bytes, tuple[float, float, float | None, float]] = {}
        for line in trace.read_bytes().splitlines():
            t = orjson.loads(line)
            entry = (t["polled"] * 1000, t["sent"] * 1000, (t["answered"] or t["emitted"]) * 1000, t["emitted"] * 1000)
            for key in t["keys"]:
                stamps[key.encode()] = entry
        total, parts = [], {s: [] for s in STAGES}
        for recv, key, value, _ in outs:
            src = orjson.loads(value)["source_timestamp_ms"]
            total.append(recv - src)
            st = stamps.get(key)
            if st is None:
                continue
            polled, sent, answered, emitted = st
            for name, v in zip(STAGES, (polled - src, sent - polled, answered - sent, emitted - answered,
                                        recv - emitted), strict=True):
                parts[name].append(v)
        floor = [recv - ts for recv, _, _, ts in ins]
        row = {"rate": rate, "achieved": achieved, "p50": pct(total, 50), "p99": pct(total, 99),
               "floor_p50": pct(floor, 50), "floor_p99": pct(floor, 99),
               "stages": {s: (pct(v, 50), pct(v, 99)) for s, v in parts.items()}}
        # where the slowest 1% spend their time: mean of each stage over events at or above the p99
        cut = row["p99"]
        tail = [i for i, v in enumerate(total) if v >= cut]
        if parts["kafka_in"] and len(parts["kafka_in"]) == len(total):
            row["tail"] = {s: float(np.mean([parts[s][i] for i in tail])) for s in STAGES}
        return row


def print_latency(label: str, rows: dict[float, dict]) -> None:
    echo(f"  {label}: latency produce -> score visible, ms (floor: bare produce -> consume, same broker, same moment)")
    echo(f"    {'offered/s':>9} {'achieved':>9} {'p50':>7} {'p99':>7} {'floor p50':>9} {'floor p99':>9}   "
          + "  ".join(f"{s + ' p50/p99':>18}" for s in STAGES))
    for rate, r in rows.items():
        stages = "  ".join(f"{r['stages'][s][0]:>8.1f}/{r['stages'][s][1]:<9.1f}" for s in STAGES)
        echo(f"    {rate:>9,.0f} {r['achieved']:>9,.0f} {r['p50']:>7.1f} {r['p99']:>7.1f} {r['floor_p50']:>9.1f} "
              f"{r['floor_p99']:>9.1f}   {stages}")
        if "tail" in r:
            echo(f"    {'':>9} slowest 1%, mean ms per stage: "
                  + ", ".join(f"{s} {r['tail'][s]:.1f}" for s in STAGES))
        if "cores" in r:
            echo(f"    {'':>9} CPU, cores of {os.cpu_count()}: "
                 + ", ".join(f"{k} {v:.2f}" for k, v in r["cores"].items())
                 + f" (all {sum(r['cores'].values()):.2f})")


def serve(model_base: Path, logs: Path, name: str, stack: contextlib.ExitStack) -> tuple[int, int]:
    from fraud.embedded.process import free_port, tcp_accepts

    port = free_port()
    log = open(logs / f"server-{name}.log", "ab")  # noqa: SIM115
    server = subprocess.Popen([sys.executable, "-m", "serving", f"--port={port}", "--rest_api_port=0",
                               "--model_name=fraud", f"--model_base_path={model_base}"], stdout=log,
                              stderr=subprocess.STDOUT)
    pin_to_sut(server.pid)
    stack.callback(lambda: (server.terminate(), server.wait(30)))
    deadline = time.monotonic() + 300
    while not tcp_accepts("127.0.0.1", port):
        if time.monotonic() > deadline or server.poll() is not None:
            raise RuntimeError(f"model server {name} did not start (log {logs / f'server-{name}.log'})")
        time.sleep(0.2)
    # ready when the model answers its metadata (loaded), not when the port accepts
    from kafka_bridge.predict import PredictClient

    client = PredictClient(f"127.0.0.1:{port}", model_name="fraud")
    while True:
        try:
            signature = client.choose_signature()
            break
        except Exception:  # noqa: BLE001
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    client.close()
    echo(f"model server {name}: 127.0.0.1:{port}, {model_base}, the bridge sends to {signature}")
    return port, server.pid


def model_base_of(path: Path) -> Path:
    """A model base path (numbered versions) for `path`: itself, or a temporary base around one version dir."""
    if (path / "saved_model.pb").is_file():
        base = Path(tempfile.mkdtemp(prefix="bench-bridge-model-"))
        (base / "1").symlink_to(path.resolve(), target_is_directory=True)
        return base
    if not path.is_dir() or not any(p.name.isdigit() for p in path.iterdir()):
        from fraud.errors import FraudError

        raise FraudError(f"--model-dir {path}: neither a SavedModel nor a base path of numbered versions")
    return path


#: the CPU figures print_medians shows beside the process's
_MEDIAN_CPU = ("own_cpu_us", "server_cpu_us", "loop_cpu_us", "broker_cpu_us", "readers_cpu_us")


def print_medians(b: Bench, client: str) -> None:
    echo(f"  medians over {b.args.rounds} rounds:")
    for label, r in b.results.items():
        if label.startswith(client) and "rates" in r:
            extra = "".join(f", {k.replace('_cpu_us', '')} CPU {r[k]:.1f}" for k in _MEDIAN_CPU if k in r)
            echo(f"    {label}: {r['rate']:,.0f} events/s (rounds: {', '.join(f'{x:,.0f}' for x in r['rates'])}), "
                 f"process CPU {r['cpu_us']:.1f}{extra} us/event")


def _median(values: Sequence[float]) -> float:
    known = [v for v in values if not np.isnan(v)]
    return float(np.median(known)) if known else float("nan")


#: a throughput stage's figures that combine_rounds takes the median of
_ROUND_FIGURES = ("rate", "cpu_us", "server_cpu_us", "own_cpu_us", "loop_cpu_us", "loop_busy", "loop_waiting",
                  "broker_cpu_us", "readers_cpu_us", "cores", "batch")


def combine_rounds(rounds: Sequence[dict]) -> dict:
    """A throughput stage over its rounds: each figure the median of the rounds' (NaN ignored); `rates` keeps
    each round's rate, in order, for the ratios within a round."""
    out = {k: _median([r[k] for r in rounds if k in r]) for k in _ROUND_FIGURES if any(k in r for r in rounds)}
    out["rates"] = [r["rate"] for r in rounds]
    return out


def round_ratio(num: dict, den: dict) -> tuple[float, str]:
    """num / den within each round (stages of one round ran next to each other), and its median: (median, text)."""
    ratios = [a / b for a, b in zip(num["rates"], den["rates"], strict=False)]  # a failed stage ends its round
    med = _median(ratios)
    if len(ratios) == 1:
        return med, f"{med:.3f}"
    return med, f"median {med:.3f} of {len(ratios)} rounds ({', '.join(f'{x:.3f}' for x in ratios)})"


def loop_budget(pt: dict, alo: dict, goal: float) -> str:
    """Where bridge / passthrough comes from: each worker is one loop thread (one core at most) beside the
    client's and the Predict threads; its events/s = its busy share / its CPU per event. At the bridge's
    busy share, the goal fixes the CPU per event its loop may spend."""
    budget = alo["loop_busy"] * 1e6 / (goal * pt["rate"])

    def share(r: dict) -> str:
        return (f"{r['loop_cpu_us']:.1f} us/event, busy {r['loop_busy']:.0%}, waiting for a CPU "
                f"{r['loop_waiting']:.0%}")

    return (f"loop threads: passthrough {share(pt)}; bridge {share(alo)}; cores busy {pt['cores']:.2f} / "
            f"{alo['cores']:.2f} of {os.cpu_count()}. At this busy share, {goal:g} needs the bridge's loop <= "
            f"{budget:.1f} us/event (now {alo['loop_cpu_us']:.1f})")


def goal_lines(b: Bench, args: argparse.Namespace, client: str) -> list[str]:
    r = b.results
    lines = []

    def line(ok: bool, text: str) -> None:
        lines.append(f"  [{'met' if ok else 'MISSED'}] {text}")

    pt, alo, eos = r.get(f"{client} passthrough"), r.get(f"{client} bridge at-least-once"), \
        r.get(f"{client} bridge exactly-once")
    if pt and alo:
        ratio, text = round_ratio(alo, pt)
        line(ratio >= 0.7, f"bridge / passthrough (at-least-once) >= 0.7: {alo['rate']:,.0f} / {pt['rate']:,.0f} "
                           f"events/s = {text}")
        if "loop_busy" in pt and "loop_busy" in alo:
            lines.append("         " + loop_budget(pt, alo, 0.7))
    lat = r.get(f"{client} latency at-least-once", {}).get("rows", {})
    if alo and lat:
        for frac in (0.5, 0.25):
            rate = frac * alo["rate"]
            row = lat.get(rate)
            if row:
                line(row["p50"] <= 10 and row["p99"] <= 50,
                     f"latency at {frac:g} x max ({rate:,.0f}/s) p50 <= 10 ms, p99 <= 50 ms: p50 {row['p50']:.1f}, "
                     f"p99 {row['p99']:.1f} ms (floor p50 {row['floor_p50']:.1f}, p99 {row['floor_p99']:.1f})")
    if alo and eos:
        ratio, text = round_ratio(eos, alo)
        line(ratio >= 0.9, f"exactly-once / at-least-once throughput >= 0.9: {eos['rate']:,.0f} / {alo['rate']:,.0f} "
                           f"= {text}")
    elat = r.get(f"{client} latency exactly-once", {}).get("rows", {})
    if elat:
        bound = args.commit_interval_ms + 50
        worst = max(elat.values(), key=lambda row: row["p99"])
        line(worst["p99"] <= bound, f"exactly-once p99 <= commit interval + 50 ms = {bound} ms at every rate: worst "
                                    f"{worst['p99']:.1f} ms at {worst['rate']:,.0f}/s")
    if alo and "own_cpu_us" in alo:
        line(alo["own_cpu_us"] <= 15, f"bridge CPU (its own work: decode, validate, encode) <= 15 us/event: "
                                      f"{alo['own_cpu_us']:.1f} us (whole bridge process {alo['cpu_us']:.1f} us, of "
                                      f"which the Kafka client ~ the passthrough's {pt['cpu_us'] if pt else float('nan'):.1f} us)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pace", nargs=5, metavar=("BOOTSTRAP", "TOPIC", "RATE", "N", "PREFIX"), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help="serve this model (a pushed base path of numbered versions, "
                        "or one version) instead of the shipped one")
    parser.add_argument("--clients", nargs="+", default=["confluent-kafka"], choices=["confluent-kafka", "kafka-python"])
    parser.add_argument("--events", type=int, default=200_000, help="events per throughput stage and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the throughput stages")
    parser.add_argument("--rates", type=float, nargs="+", default=[200, 1000, 4000],
                        help="fixed offered rates (events/s), besides --fractions of the maximum")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each offered-rate stage")
    parser.add_argument("--commit-interval-ms", type=int, default=100)
    parser.add_argument("--batch-max-size", type=int, default=0, help="0: the bridge's default")
    parser.add_argument("--no-toy", action="store_true", help="skip the toy-model row")
    parser.add_argument("--profile", nargs="?", const="var/bench/bridge-profile.svg", type=Path,
                        help="write a py-spy flame graph of the bridge under load (default %(const)s), from an "
                             "at-least-once stage of its own after the measured rounds (not counted)")
    parser.add_argument("--quick", action="store_true", help="fewer events and shorter stages (a smoke run)")
    parser.add_argument("--pin", action="store_true",
                        help="run the environment (broker, paced producer, readers) on the first half of the CPUs and "
                             "the system under test (bridge or passthrough, model server) on the other half, as if "
                             "they were separate machines")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("-v", "--verbose", action="store_true", help="library output on the terminal, not in the log")
    args = parser.parse_args(argv)
    if args.worker:
        return passthrough_worker()
    if args.pace:
        bootstrap, topic, rate, n, prefix = args.pace
        print(f"achieved {pace(bootstrap, topic, float(rate), int(n), prefix):.1f}")
        return 0
    if args.quick:
        args.events, args.seconds, args.rounds = min(args.events, 15_000), min(args.seconds, 3.0), 1
    if args.rounds < 1 or args.events < 100:
        parser.error(f"--rounds {args.rounds}, --events {args.events}: need at least 1 round of 100 events")
    if args.pin:
        try:
            _PINNED.append(split_cpus())
        except ValueError as exc:
            parser.error(str(exc))
    if args.profile is not None and shutil.which("py-spy") is None and not Path(sys.executable).with_name("py-spy").exists():
        parser.error("--profile needs py-spy (pinned in requirements.lock: make setup)")
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    from fraud.console import quiet_output, timestamped_log
    from fraud.paths import load_paths

    run_dir = load_paths().home / "bench" / time.strftime("bridge-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    log = timestamped_log(run_dir, "bench-bridge")
    with quiet_output(log, verbose=args.verbose) as console:
        _console.append(console)
        try:
            return _run(args, run_dir)
        finally:
            _console.clear()
            if not args.verbose:
                console.echo(f"library output: {log}; workers' logs and traces: {run_dir}")


def _run(args: argparse.Namespace, run_dir: Path) -> int:
    if _PINNED:  # this process and everything it starts from now on (broker, producers, reader threads)
        env_cpus, sut_cpus = _PINNED[0]
        _set_affinity("self", env_cpus)
        echo(f"pinned: broker, paced producer and readers on CPU {_cpu_list(env_cpus)}; bridge or passthrough and "
             f"model servers on CPU {_cpu_list(sut_cpus)}")
    with contextlib.ExitStack() as stack:
        from fraud.embedded.testing import temporary_broker

        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-bridge-")))
        if args.model_dir is not None:
            model, model_label = model_base_of(args.model_dir), f"--model-dir {args.model_dir}"
        else:
            from shipped_model import shipped_model_base

            model, model_label = shipped_model_base(), "the shipped model (pipeline on the shipped sample)"
        # full JIT and a production-like heap (the test fixture's broker is tuned to start fast instead)
        kafka = stack.enter_context(temporary_broker(tmp / "kafka", heap="1g", jvm_opts=()))
        bootstrap = kafka.bootstrap
        port, server_pid = serve(model, run_dir, "model", stack)
        toy_port = None
        if not args.no_toy:
            subprocess.run([sys.executable, "-c", "import sys; from serving.testing import save_examples_model; "
                            "save_examples_model(sys.argv[1], 1, features_signature=True)", str(tmp / "toy" / "fraud")],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            toy_port, _ = serve(tmp / "toy" / "fraud", run_dir, "toy", stack)
        echo(f"broker {bootstrap}; model: {model_label}; {args.events:,} events per throughput stage; commit "
             f"interval {args.commit_interval_ms} ms; load average {os.getloadavg()[0]:.1f}")
        b = Bench(args, bootstrap, run_dir, broker_pid=kafka.broker.pid, server_pid=server_pid)
        for client in args.clients:
            try:
                profile = args.profile if client == "confluent-kafka" else None
                if profile is not None:
                    profile.parent.mkdir(parents=True, exist_ok=True)
                for n in range(1, args.rounds + 1):
                    b.throughput(f"{client} passthrough", "passthrough", client=client, delivery="at_least_once",
                                 server_port=port, server_pid=None, round_no=n)
                    b.throughput(f"{client} bridge at-least-once", "bridge", client=client, delivery="at_least_once",
                                 server_port=port, server_pid=server_pid, round_no=n)
                    b.throughput(f"{client} bridge exactly-once", "bridge", client=client, delivery="exactly_once",
                                 server_port=port, server_pid=server_pid, round_no=n)
                    if toy_port is not None:
                        b.throughput(f"{client} bridge at-least-once, toy model (serving.testing)", "bridge",
                                     client=client, delivery="at_least_once", server_port=toy_port, server_pid=None,
                                     round_no=n)
                if args.rounds > 1:
                    print_medians(b, client)
                if profile is not None:  # a stage of its own: py-spy's sampling slows what it samples
                    b.throughput(f"{client} bridge at-least-once under py-spy (not counted)", "bridge", client=client,
                                 delivery="at_least_once", server_port=port, server_pid=server_pid, profile=profile,
                                 round_no=0)
                alo = b.results[f"{client} bridge at-least-once"]
                rates = sorted(set(args.rates) | {f * alo["rate"] for f in args.fractions})
                for delivery in ("at-least-once", "exactly-once"):
                    label = f"{client} latency {delivery}"
                    rows = b.latency(label, client=client, delivery=delivery.replace("-", "_"), server_port=port,
                                     rates=rates)
                    print_latency(label, rows)
            except RuntimeError as exc:  # e.g. a client that stalls: report it, go on with the next one
                echo(f"  [{client}] FAILED: {exc}")
            pinned = f", pinned (bridge and model server on CPU {_cpu_list(_PINNED[0][1])})" if _PINNED else ""
            echo(f"\ngoals (issue 13), {client}, one run{pinned}, load average {os.getloadavg()[0]:.1f}:")
            for text in goal_lines(b, args, client):
                echo(text)
        if args.profile is not None and args.profile.exists():
            echo(f"\nflame graph of the bridge (at-least-once, under full load): {args.profile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
