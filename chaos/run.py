"""One chaos run: fresh topics, the services as processes, the events sent at a steady rate while faults are
injected, then everything read back until quiescent and reconciled.

Faults (after 20% of the sending time, spread to its end, in a seeded random order):

- kill -9 of each stream service (preprocessing, bridge, sink, monitor) `kills` times, each restarted at
  once with the same instance id (as a supervisor would);
- `hard_bounces` hard bounces of one broker at a time (SIGKILL, a few seconds down, restart), rotating
  over the nodes, and `clean_bounces` controlled restarts; before the next broker fault the cluster is
  back to full replication (min.insync.replicas 2 of 3 allows one node down, not two);
- the model server stopped for `server_outage_s`, then started again.

Broker faults run on a thread of their own, so services are killed while a broker is down too.
"""

from __future__ import annotations

import logging
import random
import shutil
import socket
import threading
import time
import uuid
from collections import Counter
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from chaos import corpus as c
from chaos.cluster import ChaosCluster
from chaos.services import Service, Supervisor, fraudctl, model_server
from chaos.verify import (
    AT_LEAST_ONCE_DEAD_LETTERS,
    EXACTLY_ONCE_DEAD_LETTERS,
    DeadLetterCheck,
    Tally,
    check_dead_letters,
    keys_of,
    read_until_quiescent,
    tally,
)
from fraud.logs import log_event
from fraud.replay import CardPool
from fraud.stream.admin import ensure_topics
from fraud.stream.reader import EventProducer
from fraud.topics import MONITOR_STATE, TopicSpec
from warehouse.store import open_readonly

log = logging.getLogger("chaos")

STREAM_SERVICES = ("preprocess", "bridge", "sink", "monitor")
ANONYMIZE_KEY = "chaos-run-anonymization-key-0123456789abcdef"


@dataclass(frozen=True)
class Settings:
    events: int = 100_000
    rate: float = 1000.0  # events per second
    per_kind: int = 20  # malformed records of each kind
    label_delay_s: float = 5.0
    kills: int = 3  # kill -9 per stream service
    hard_bounces: int = 3
    clean_bounces: int = 1
    broker_down_s: float = 3.0
    server_outage_s: float = 10.0
    settle_s: float = 20.0
    timeout_s: float = 1200.0  # to read everything back after the faults, before calling the rest lost
    delivery: str = "exactly_once"
    seed: int = 0


@dataclass(frozen=True)
class Fault:
    at_s: float
    kind: str  # "kill", "hard_bounce", "clean_bounce", "server_outage"
    target: str  # a service name or a broker node id


@dataclass
class Result:
    run: int
    delivery: str
    events_in: int = 0
    valid: int = 0
    malformed: int = 0
    scored: int = 0  # distinct valid transactions in the scores topic
    transactions_out: int = 0  # distinct valid transactions in the clean topic
    warehouse: int = 0  # valid transactions in the warehouse's scores table
    warehouse_labels: int = 0
    dead_lettered: int = 0  # malformed records found in every dead-letter topic they must reach
    dead_letter_paths: int = 0  # (record, job) pairs expected
    lost: int = 0
    duplicated: int = 0
    sink_dead_letter_repeats: int = 0  # at least once by design (see README)
    monitor_scores: int = 0
    monitor_duplicates: int = 0
    faults: list[str] = field(default_factory=list)
    leader_moves: int = 0
    unexpected_exits: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    read_back_s: float = 0.0

    @property
    def clean(self) -> bool:
        """Nothing lost, nothing duplicated (exactly-once), every check passed. Services that exited on their
        own and were restarted are reported, not held against the run: a supervisor restarts them."""
        return not self.problems and self.lost == 0 and (self.duplicated == 0 or self.delivery != "exactly_once")

    def line(self) -> str:
        return (f"run {self.run}: in {self.events_in} ({self.valid} valid, {self.malformed} malformed), "
                f"out {self.scored}, warehouse {self.warehouse}, dead-lettered {self.dead_lettered}/{self.malformed}, "
                f"lost {self.lost}, duplicated {self.duplicated} | {len(self.faults)} faults, "
                f"{self.leader_moves} leader moves, {self.seconds:.0f} s -> {'clean' if self.clean else 'NOT CLEAN'}")


class Topics:
    """The run's topic names, by role."""

    PARTITIONS = {c.RAW: 4, c.TRANSACTIONS: 4, c.SCORES: 4, c.LABELS: 4, c.DLQ_PREPROCESS: 1, c.DLQ_BRIDGE: 1,
                  c.DLQ_MONITORING: 1, "alerts": 1, "state": 1, "users": 1}

    def __init__(self, run: int) -> None:
        tag = f"chaos{run}.{uuid.uuid4().hex[:6]}"
        self.names = {role: f"{tag}.{role}" for role in self.PARTITIONS}
        self.tag = tag

    def __getitem__(self, role: str) -> str:
        return self.names[role]

    def specs(self) -> list[TopicSpec]:
        configs = {"state": dict(MONITOR_STATE.config), "users": {"cleanup.policy": "compact"}}
        return [TopicSpec(name, self.PARTITIONS[role], configs.get(role, {})) for role, name in self.names.items()]

    def role_of(self, topic: str) -> str:
        return next(role for role, name in self.names.items() if name == topic)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_services(cluster: ChaosCluster, topics: Topics, workdir: Path, model_base: Path, grpc_port: int,
                  delivery: str, spawner: futures.Executor) -> dict[str, Service]:
    common = {"FRAUD_KAFKA_BOOTSTRAP": cluster.bootstrap, "FRAUD_HOME": str(workdir / "home")}
    t = topics
    pre = {"FRAUD_PREPROCESS_RAW_TOPIC": t[c.RAW], "FRAUD_PREPROCESS_OUTPUT_TOPIC": t[c.TRANSACTIONS],
           "FRAUD_PREPROCESS_DLQ_TOPIC": t[c.DLQ_PREPROCESS], "FRAUD_PREPROCESS_USERS_TOPIC": t["users"],
           "FRAUD_PREPROCESS_DELIVERY": delivery, "FRAUD_PREPROCESS_GROUP_ID": f"{t.tag}.preprocess",
           "FRAUD_PREPROCESS_INSTANCE_ID": "pre-0", "FRAUD_PREPROCESS_STATIC_MEMBERSHIP": "1",
           "FRAUD_PREPROCESS_BATCH_MAX_SIZE": "500", "FRAUD_PREPROCESS_RETRY_BACKOFF_MAX_MS": "2000",
           "FRAUD_ANONYMIZE_KEY": ANONYMIZE_KEY}
    bridge = {"FRAUD_BRIDGE_INPUT_TOPIC": t[c.TRANSACTIONS], "FRAUD_BRIDGE_OUTPUT_TOPIC": t[c.SCORES],
              "FRAUD_BRIDGE_DLQ_TOPIC": t[c.DLQ_BRIDGE], "FRAUD_BRIDGE_SERVER": f"127.0.0.1:{grpc_port}",
              "FRAUD_BRIDGE_DELIVERY": delivery, "FRAUD_BRIDGE_GROUP_ID": f"{t.tag}.bridge",
              "FRAUD_BRIDGE_INSTANCE_ID": "bridge-0", "FRAUD_BRIDGE_STATIC_MEMBERSHIP": "1",
              "FRAUD_BRIDGE_HTTP_PORT": "-1", "FRAUD_BRIDGE_RETRY_BACKOFF_MAX_MS": "2000"}
    sink = {"FRAUD_SINK_SCORES_TOPIC": t[c.SCORES], "FRAUD_SINK_LABELS_TOPIC": t[c.LABELS],
            "FRAUD_SINK_DLQ_TOPIC": t[c.DLQ_MONITORING], "FRAUD_SINK_DUCKDB_PATH": str(workdir / "warehouse.duckdb"),
            "FRAUD_SINK_GROUP_ID": f"{t.tag}.sink", "FRAUD_SINK_INSTANCE_ID": "sink-0",
            "FRAUD_SINK_STATIC_MEMBERSHIP": "1", "FRAUD_SINK_RETRY_BACKOFF_MAX_MS": "2000"}
    monitor = {"FRAUD_MONITOR_SCORES_TOPIC": t[c.SCORES], "FRAUD_MONITOR_LABELS_TOPIC": t[c.LABELS],
               "FRAUD_MONITOR_TRANSACTIONS_TOPIC": t[c.TRANSACTIONS], "FRAUD_MONITOR_ALERTS_TOPIC": t["alerts"],
               "FRAUD_MONITOR_DLQ_TOPIC": t[c.DLQ_MONITORING], "FRAUD_MONITOR_STATE_TOPIC": t["state"],
               "FRAUD_MONITOR_SNAPSHOT_PATH": str(workdir / "monitor-snapshot.json"),
               "FRAUD_MONITOR_GROUP_ID": f"{t.tag}.monitor", "FRAUD_MONITOR_DRIFT": "0",
               "FRAUD_MONITOR_RETENTION_HOURS": "1000", "FRAUD_MONITOR_LOOKBACK_HOURS": "1",
               "FRAUD_MONITOR_CHECKPOINT_INTERVAL_S": "5", "FRAUD_MONITOR_PUBLISH_INTERVAL_S": "5"}
    logs = workdir / "logs"
    return {
        "server": Service("server", model_server(model_base, grpc_port), common, logs / "server.log", spawner),
        "preprocess": Service("preprocess", fraudctl("preprocess", "run", "--csv-topic", ""), {**common, **pre},
                              logs / "preprocess.log", spawner),
        "bridge": Service("bridge", fraudctl("bridge", "run"), {**common, **bridge}, logs / "bridge.log", spawner),
        "sink": Service("sink", fraudctl("sink", "run"), {**common, **sink}, logs / "sink.log", spawner),
        "monitor": Service("monitor", fraudctl("monitor", "run"), {**common, **monitor}, logs / "monitor.log",
                           spawner),
    }


def fault_plan(s: Settings, span_s: float, nodes: tuple[int, ...], rng: random.Random) -> list[Fault]:
    kinds = [("kill", svc) for svc in STREAM_SERVICES for _ in range(s.kills)]
    kinds += [("hard_bounce", str(nodes[i % len(nodes)])) for i in range(s.hard_bounces)]
    kinds += [("clean_bounce", str(nodes[(s.hard_bounces + i) % len(nodes)])) for i in range(s.clean_bounces)]
    if s.server_outage_s > 0:
        kinds.append(("server_outage", "server"))
    rng.shuffle(kinds)
    start, end = 0.2 * span_s, 0.9 * span_s
    step = (end - start) / max(1, len(kinds))
    return [Fault(start + i * step + rng.uniform(0, step * 0.5), kind, target) for i, (kind, target) in enumerate(kinds)]


class Feeder(threading.Thread):
    """Sends the corpus at its schedule (idempotent, acks=all); labels get their labelled_at_ms when sent."""

    def __init__(self, cluster: ChaosCluster, topics: Topics, corpus: c.Corpus) -> None:
        super().__init__(name="chaos-feeder", daemon=True)
        self.producer = EventProducer(cluster.client_config("chaos-feeder"))
        self.topics = topics
        self.corpus = corpus
        self.sent = 0
        self.error: BaseException | None = None
        self.started_at: float | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.started_at = start = time.monotonic()
            for send in self.corpus.schedule:
                delay = start + send.due - time.monotonic()
                if delay > 0.002:
                    self.producer.poll()
                    time.sleep(delay)
                value = send.value
                if send.label is not None:
                    tx = send.key.decode()
                    value = c.label_value(tx, send.label[0], send.label[1], int(time.time() * 1000))
                self.producer.send(self.topics[send.topic], value, send.key)
                self.sent += 1
            self.producer.flush(600)
        except BaseException as exc:  # noqa: BLE001 (reported in the result)
            self.error = exc
        finally:
            self.done.set()


class BrokerFaults(threading.Thread):
    """Runs the broker faults one after the other at their times, waiting for full replication in between."""

    def __init__(self, cluster: ChaosCluster, faults: list[Fault], t0: float, topics: list[str]) -> None:
        super().__init__(name="chaos-broker-faults", daemon=True)
        self.cluster = cluster
        self.faults = faults
        self.t0 = t0
        self.topics = topics
        self.done_faults: list[str] = []
        self.leader_moves = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for f in self.faults:
                delay = self.t0 + f.at_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                before = self.cluster.leaders(self.topics)
                node = int(f.target)
                if f.kind == "hard_bounce":
                    took = self.cluster.hard_bounce(node, 3.0)
                else:
                    took = self.cluster.clean_bounce(node, 1.0)
                healthy = self.cluster.wait_healthy(self.topics, 300)
                after = self.cluster.leaders(self.topics)
                moved = sum(1 for tp, leader in before.items() if after.get(tp) != leader)
                self.leader_moves += moved
                self.done_faults.append(f"{f.kind} of broker {node} at {f.at_s:.0f} s ({took:.0f} s to serve, "
                                        f"{healthy:.0f} s to full ISR, {moved} leaders moved)")
        except BaseException as exc:  # noqa: BLE001 (reported in the result)
            self.error = exc


def _wait_port(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.2)
    return False


def _last_event(text: str, event: str) -> dict | None:
    found = None
    for line in text.splitlines():
        if line.startswith("{") and f'"event":"{event}"' in line.replace(" ", ""):
            try:
                found = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
    return found


def run_once(cluster: ChaosCluster, s: Settings, workdir: Path, model_base: Path, corpus: c.Corpus, run: int,
             say=print) -> Result:  # noqa: ANN001
    started = time.monotonic()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    result = Result(run=run, delivery=s.delivery, valid=len(corpus.valid_ids), malformed=len(corpus.bad))
    result.events_in = result.valid + result.malformed
    topics = Topics(run)
    admin = cluster.client_config("chaos-admin")
    ensure_topics(admin, topics.specs())
    from preprocessing.users import load_users, synthetic_users  # the users table the rules enrich from

    load_users(admin, topics["users"], synthetic_users(CardPool()))
    grpc_port = free_port()
    spawner = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="chaos-spawner")
    services = make_services(cluster, topics, workdir, model_base, grpc_port, s.delivery, spawner)
    supervisor = Supervisor(services)
    rng = random.Random(s.seed * 1000 + run)
    span = s.events / s.rate
    plan = fault_plan(s, span, cluster.node_ids, rng)
    service_faults = [f for f in plan if f.kind in ("kill", "server_outage")]
    broker_faults = [f for f in plan if f.kind in ("hard_bounce", "clean_bounce")]
    try:
        services["server"].start()
        if not _wait_port(grpc_port, 180):
            result.problems.append("the model server did not open its port in 180 s")
            return result
        for name in STREAM_SERVICES:
            services[name].start()
        supervisor.start()
        feeder = Feeder(cluster, topics, corpus)
        feeder.start()
        while feeder.started_at is None and not feeder.done.is_set():
            time.sleep(0.01)
        t0 = feeder.started_at or time.monotonic()
        brokers = BrokerFaults(cluster, broker_faults, t0, list(topics.names.values()))
        brokers.start()
        server_back_at: float | None = None
        pending = list(service_faults)
        while pending or server_back_at is not None or brokers.is_alive():
            now = time.monotonic() - t0
            if server_back_at is not None and now >= server_back_at:
                services["server"].start()
                supervisor.release("server")
                server_back_at = None
                result.faults.append(f"model server started again at {now:.0f} s")
            if pending and now >= pending[0].at_s:
                f = pending.pop(0)
                if f.kind == "kill":
                    supervisor.hold(f.target)
                    services[f.target].kill()
                    services[f.target].start()
                    supervisor.release(f.target)
                    result.faults.append(f"kill -9 of {f.target} at {now:.0f} s")
                else:
                    supervisor.hold("server")
                    services["server"].stop(30)
                    server_back_at = now + s.server_outage_s
                    result.faults.append(f"model server stopped at {now:.0f} s for {s.server_outage_s:.0f} s")
            time.sleep(0.1)
        result.faults += brokers.done_faults
        result.leader_moves = brokers.leader_moves
        if brokers.error is not None:
            result.problems.append(f"broker fault failed: {brokers.error!r}")
        feeder.done.wait()
        if feeder.error is not None:
            result.problems.append(f"sending failed: {feeder.error!r}")
        say(f"  run {run}: {feeder.sent} records sent and {len(result.faults)} faults in "
            f"{time.monotonic() - t0:.0f} s; reading back until quiescent")
        _verify(cluster, s, topics, corpus, services, supervisor, workdir, result, say)
    finally:
        for name in services:
            supervisor.hold(name)
        if supervisor.is_alive():
            supervisor.close()
        for svc in services.values():
            svc.stop(60)
        spawner.shutdown(wait=True)
        result.unexpected_exits = list(supervisor.exits)
        result.seconds = time.monotonic() - started
    return result


class _Expect:
    """What the read-back waits for: every valid id in the clean and scores topics, every dead letter."""

    def __init__(self, topics: Topics, corpus: c.Corpus) -> None:
        self.topics = topics
        valid = set(corpus.valid_ids)
        self.need = {c.TRANSACTIONS: set(valid), c.SCORES: set(valid)}
        self.need_dead: set[tuple[str, str, bytes]] = {(role, comp, b.key) for b in corpus.bad
                                                       for role, comp in b.expected}

    def observe(self, records: list) -> None:
        from fraud.contract import DeadLetter

        for r in records:
            role = self.topics.role_of(r.topic)
            if role in self.need:
                if r.key is not None:
                    self.need[role].discard(r.key.decode("utf-8", "replace"))
            elif self.need_dead:
                d = DeadLetter.from_record(r.key, r.value, r.headers)
                self.need_dead.discard((role, d.component, d.key or b""))

    def complete(self) -> bool:
        return not any(self.need.values()) and not self.need_dead

    def left(self) -> str:
        return (f"{len(self.need[c.TRANSACTIONS])} clean, {len(self.need[c.SCORES])} scores, "
                f"{len(self.need_dead)} dead letters still missing")


def _verify(cluster: ChaosCluster, s: Settings, topics: Topics, corpus: c.Corpus, services: dict[str, Service],
            supervisor: Supervisor, workdir: Path, result: Result, say) -> None:  # noqa: ANN001
    expect = _Expect(topics, corpus)
    roles = [c.TRANSACTIONS, c.SCORES, c.DLQ_PREPROCESS, c.DLQ_BRIDGE, c.DLQ_MONITORING]
    q = read_until_quiescent(cluster.client_config("chaos-verify"), [topics[r] for r in roles],
                             observe=expect.observe, complete=expect.complete, settle_s=s.settle_s,
                             timeout_s=s.timeout_s, group_id=f"{topics.tag}.verify",
                             progress=lambda _b: say(f"  run {result.run}: reading back: {expect.left()}"))
    result.read_back_s = q.waited_s
    by_role = {topics.role_of(t): recs for t, recs in q.records.items()}
    valid = corpus.valid_ids

    tx: Tally = tally(valid, [k for k in keys_of(by_role[c.TRANSACTIONS]) if not k.startswith("bad-")])
    scores: Tally = tally(valid, [k for k in keys_of(by_role[c.SCORES]) if not k.startswith("bad-")])
    result.transactions_out = tx.once + len(tx.duplicated)
    result.scored = scores.once + len(scores.duplicated)
    dl: DeadLetterCheck = check_dead_letters(corpus.bad, by_role)
    complete_bad = {b.key for b in corpus.bad if all(
        b.key not in dl.tallies[(role, comp)].missing for role, comp in b.expected)}
    result.dead_lettered = len(complete_bad)
    result.dead_letter_paths = dl.expected
    result.sink_dead_letter_repeats = dl.extra(AT_LEAST_ONCE_DEAD_LETTERS)
    if dl.wrong_reason:
        sample = Counter((comp, want, got) for comp, _k, want, got in dl.wrong_reason).most_common(5)
        result.problems.append(f"{len(dl.wrong_reason)} dead letters with another reason than expected: {sample}")
    for (role, comp), t in dl.tallies.items():
        if t.unexpected:
            result.problems.append(f"{t.unexpected} unexpected dead letters from {comp} in {role}")
    if tx.unexpected or scores.unexpected:
        result.problems.append(f"records for unknown transactions: {tx.unexpected} clean, {scores.unexpected} scores")

    # Stop the stream services cleanly, then let the sink and the monitor finish what is left and exit.
    for name in services:
        supervisor.hold(name)
    for name in ("preprocess", "bridge"):
        code = services[name].stop(120)
        if code != 0:
            result.problems.append(f"{name} exited with {code} on SIGTERM")
    for name in ("sink", "monitor"):
        code = services[name].stop(120)
        if code != 0:
            result.problems.append(f"{name} exited with {code} on SIGTERM")
        code = services[name].run_to_end(["--stop-when-idle-s", "5"], timeout_s=900)
        if code != 0:
            result.problems.append(f"the final {name} run exited with {code}")
    services["server"].stop(30)

    con = open_readonly(workdir / "warehouse.duckdb")
    try:
        rows = [r[0] for r in con.execute("SELECT transaction_id FROM scores").fetchall()]
        label_rows = dict(con.execute("SELECT transaction_id, label FROM labels").fetchall())
    finally:
        con.close()
    wh = tally(valid, [r for r in rows if not r.startswith("bad-")])
    result.warehouse = wh.once + len(wh.duplicated)
    result.warehouse_labels = sum(1 for tx_id, label in corpus.labels.items() if label_rows.get(tx_id) == label)
    if len(label_rows) != len(corpus.labels) or result.warehouse_labels != len(corpus.labels):
        result.problems.append(f"warehouse labels: {len(label_rows)} rows, {result.warehouse_labels} of "
                               f"{len(corpus.labels)} right")

    stopped = _last_event(services["monitor"].log_text(), "monitor_stopped") or {}
    result.monitor_scores = int(stopped.get("scores", -1))
    result.monitor_duplicates = int(stopped.get("duplicate_scores", -1))
    monitor_bad = sum(1 for b in corpus.bad if (c.DLQ_MONITORING, c.MONITOR) in b.expected)
    if result.monitor_scores != len(valid):
        result.problems.append(f"the monitor counted {result.monitor_scores} scores, {len(valid)} expected")
    if stopped.get("labels") != len(valid):
        result.problems.append(f"the monitor counted {stopped.get('labels')} labels, {len(valid)} expected")
    if stopped.get("dead_letters") != monitor_bad:
        result.problems.append(f"the monitor counted {stopped.get('dead_letters')} dead letters, {monitor_bad} expected")
    try:
        snapshot = orjson.loads((workdir / "monitor-snapshot.json").read_bytes())
        in_windows = sum(w["events"] for w in snapshot["windows"]["1h"])
        if in_windows != len(valid):
            result.problems.append(f"the monitor's hourly windows hold {in_windows} events, {len(valid)} expected")
    except (OSError, KeyError, orjson.JSONDecodeError) as exc:
        result.problems.append(f"no monitor snapshot: {exc}")

    result.lost = len(tx.missing) + len(scores.missing) + len(wh.missing) + dl.missing
    result.duplicated = (tx.extra + scores.extra + dl.extra(EXACTLY_ONCE_DEAD_LETTERS)
                         + max(0, result.monitor_duplicates))
    details = {"clean_missing": len(tx.missing), "clean_extra": tx.extra, "scores_missing": len(scores.missing),
               "scores_extra": scores.extra, "warehouse_missing": len(wh.missing),
               "dead_letters_missing": dl.missing, "dead_letters_extra_eos": dl.extra(EXACTLY_ONCE_DEAD_LETTERS),
               "sink_dead_letter_repeats": result.sink_dead_letter_repeats}
    log_event(log, logging.INFO, "chaos_run_checked", run=result.run, **details)
    if not q.complete:
        result.problems.append(f"not everything arrived within {s.timeout_s:.0f} s: {expect.left()}")
    (workdir / "result.json").write_bytes(orjson.dumps({**vars(result), "details": details},
                                                       option=orjson.OPT_INDENT_2))
