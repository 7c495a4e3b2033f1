"""The bridge against a real Apache Kafka broker (tests/conftest.py) and the real model server (serving/)
with a real SavedModel (tests/bridge_helpers.py).

- round trip, each delivery mode and client: every transaction id appears in the scores topic, once;
- the malformed corpus: every bad event in the dead-letter topic with its reason, counts reconcile, the
  bridge keeps scoring afterwards;
- model server down: nothing committed, nothing lost, all scored once it is back;
- two bridges in one group, one joining and one leaving mid-stream: exactly once;
- chaos (bridge as a subprocess): kill -9 twice, a broker restart, the server stopped for seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from bridge_helpers import malformed_corpus, model_server, save_model, transaction

from fraud.contract import H_REASON, DeadLetter, ScoreEvent
from fraud.embedded.process import free_port
from kafka_bridge.config import BridgeConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("models") / "fraud"
    save_model(base, 1)
    return base


@pytest.fixture(scope="module")
def server(model_base: Path):
    with model_server(model_base) as srv:
        yield srv


def _topics(kafka_topic) -> dict[str, str]:
    return {"input": kafka_topic(partitions=4, prefix="tx"), "output": kafka_topic(partitions=4, prefix="scores"),
            "dlq": kafka_topic(partitions=1, prefix="dlq")}


def bridge_env(broker, server_port: int, topics: dict[str, str], **settings: str) -> dict[str, str]:
    env = {
        "FRAUD_KAFKA_BOOTSTRAP": broker.bootstrap,
        "FRAUD_BRIDGE_INPUT_TOPIC": topics["input"],
        "FRAUD_BRIDGE_OUTPUT_TOPIC": topics["output"],
        "FRAUD_BRIDGE_DLQ_TOPIC": topics["dlq"],
        "FRAUD_BRIDGE_SERVER": f"127.0.0.1:{server_port}",
        "FRAUD_BRIDGE_GROUP_ID": f"{topics['input']}.bridge",
        "FRAUD_BRIDGE_SESSION_TIMEOUT_MS": "6000",
        "FRAUD_BRIDGE_RETRY_BACKOFF_MAX_MS": "1000",
        "FRAUD_BRIDGE_HTTP_PORT": "0",
        "FRAUD_BRIDGE_LAG_INTERVAL_S": "0.5",
    }
    env.update({f"FRAUD_BRIDGE_{k.upper()}": v for k, v in settings.items()})
    return env


@contextlib.contextmanager
def running_bridge(env: dict[str, str]) -> Iterator:
    """The bridge in a thread of this process (signals are not installed); stopped and joined on exit."""
    from kafka_bridge.app import build

    processor, client = build(BridgeConfig.from_env_and_args(None, env))
    errors: list[BaseException] = []

    def target() -> None:
        try:
            processor.run()
        except BaseException as exc:  # noqa: BLE001 (re-raised in the test thread)
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield processor
    finally:
        processor.request_stop()
        thread.join(60)
        if thread.is_alive():  # say where it is stuck
            import traceback

            stacks = "\n".join(f"--- {t.name}\n" + "".join(traceback.format_stack(sys._current_frames()[t.ident]))
                               for t in threading.enumerate() if t.ident in sys._current_frames())
            raise AssertionError(f"bridge did not stop; threads:\n{stacks}")
        client.close()
        if errors:
            raise errors[0]


def produce(broker, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for key, value in records:
        while True:
            try:
                p.produce(topic, value, key)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    assert p.flush(60) == 0


def read_topic(broker, topic: str, until, timeout_s: float = 60.0) -> list:
    """Every committed record of `topic` from the start, polling until `until(records)` or the timeout."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "reader", "enable.auto.commit": False,
                  "isolation.level": "read_committed", "auto.offset.reset": "earliest"})
    meta = c.list_topics(topic, timeout=10).topics[topic]
    c.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    out: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not until(out):
            for m in c.consume(500, 0.5):
                if m.error() is None:
                    out.append(m)
    finally:
        c.close()
    return out


def score_ids(msgs) -> Counter:
    return Counter(ScoreEvent.from_json(m.value()).transaction_id for m in msgs)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize("delivery, client", [
    ("exactly_once", "confluent-kafka"),
    ("at_least_once", "kafka-python"),
    ("exactly_once", "kafka-python"),
])
def test_round_trip_every_transaction_scored_once(kafka_broker, kafka_topic, server, delivery, client):
    topics = _topics(kafka_topic)
    events = [transaction(i) for i in range(400)]
    produce(kafka_broker, topics["input"], [(e.transaction_id.encode(), e.to_json()) for e in events])
    env = bridge_env(kafka_broker, server.grpc_port, topics, delivery=delivery, kafka_client=client,
                     instance_id="rt-0", batch_max_size="64")
    with running_bridge(env) as processor:
        msgs = read_topic(kafka_broker, topics["output"], lambda out: len(out) >= len(events))
        for _ in range(50):
            if processor.http is not None:
                break
            time.sleep(0.1)
        status, body = _get(f"http://127.0.0.1:{processor.http.port}/healthz")
        assert status == 200 and json.loads(body)["delivery"] == delivery
        # the lag gauge appears once a lag interval has passed after a commit; the produced counter counts a
        # batch once its delivery is acknowledged, which can come after a reader already saw the records
        produced = f'fraud_bridge_records_produced_total{{topic="{topics["output"]}"}} 400.0'.encode()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            _, metrics = _get(f"http://127.0.0.1:{processor.http.port}/metrics")
            if b"fraud_bridge_consumer_lag{" in metrics and produced in metrics:
                break
            time.sleep(0.3)
    ids = score_ids(msgs)
    assert ids == Counter(e.transaction_id for e in events)  # each exactly once
    first = ScoreEvent.from_json(msgs[0].value())
    assert first.model_name == "fraud" and first.model_version == 1 and first.threshold == pytest.approx(0.7)
    assert all(m.key() == ScoreEvent.from_json(m.value()).transaction_id.encode() for m in msgs)
    text = metrics.decode()
    assert f'fraud_bridge_records_produced_total{{topic="{topics["output"]}"}} 400.0' in text
    assert 'fraud_bridge_records_consumed_total' in text and "fraud_bridge_predict_seconds_count" in text
    assert "fraud_bridge_consumer_lag{" in text
    assert read_topic(kafka_broker, topics["dlq"], lambda out: False, timeout_s=1) == []


def test_malformed_corpus_is_dead_lettered_with_reasons_and_the_bridge_keeps_running(kafka_broker, kafka_topic,
                                                                                     server):
    topics = _topics(kafka_topic)
    corpus = malformed_corpus()
    good = [transaction(i) for i in range(100, 160)]
    records = [(f"bad-{i}".encode(), value) for i, (_, value) in enumerate(corpus)]
    records += [(e.transaction_id.encode(), e.to_json()) for e in good]
    records += [(None, None)]  # a tombstone
    records.sort(key=lambda kv: hash(kv[1]))  # interleave bad and good
    produce(kafka_broker, topics["input"], records)
    env = bridge_env(kafka_broker, server.grpc_port, topics, delivery="exactly_once", instance_id="dlq-0")
    with running_bridge(env):
        dead = read_topic(kafka_broker, topics["dlq"], lambda out: len(out) >= len(corpus) + 1)
        later = [transaction(i) for i in range(500, 520)]  # after the corpus: still scoring
        produce(kafka_broker, topics["input"], [(e.transaction_id.encode(), e.to_json()) for e in later])
        scores = read_topic(kafka_broker, topics["output"], lambda out: len(out) >= len(good) + len(later))
    letters = [DeadLetter.from_record(m.key(), m.value(), m.headers()) for m in dead]
    got = Counter((dl.key, dl.reason) for dl in letters)
    want = Counter((f"bad-{i}".encode(), reason) for i, (reason, _) in enumerate(corpus))
    want[(None, "not_an_object")] += 1
    assert got == want
    for dl, m in zip(letters, dead, strict=True):
        assert dl.source_topic == topics["input"] and dl.component == "kafka_bridge"
        assert dict(m.headers())[H_REASON] == dl.reason.encode()
    assert score_ids(scores) == Counter(e.transaction_id for e in good + later)
    # counts reconcile: every input record is either a score or a dead letter
    assert len(scores) + len(dead) == len(records) + len(later)


def test_server_down_commits_nothing_and_loses_nothing(kafka_broker, kafka_topic, model_base):
    from confluent_kafka import Consumer, TopicPartition

    topics = _topics(kafka_topic)
    port = free_port()
    events = [transaction(i) for i in range(200)]
    env = bridge_env(kafka_broker, port, topics, delivery="at_least_once", instance_id="down-0")
    group = env["FRAUD_BRIDGE_GROUP_ID"]
    with running_bridge(env) as processor:
        produce(kafka_broker, topics["input"], [(e.transaction_id.encode(), e.to_json()) for e in events])
        time.sleep(4)  # no server listening: every attempt fails with UNAVAILABLE
        probe = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": group})
        committed = probe.committed([TopicPartition(topics["input"], p) for p in range(4)], timeout=10)
        probe.close()
        assert all(tp.offset < 0 for tp in committed)  # nothing committed
        assert processor.health()[1] is False  # not ready while retrying
        with model_server(model_base, port=port):
            msgs = read_topic(kafka_broker, topics["output"], lambda out: len(out) >= len(events))
    assert set(score_ids(msgs)) == {e.transaction_id for e in events}


def test_two_bridges_rebalance_exactly_once(kafka_broker, kafka_topic, server):
    topics = _topics(kafka_topic)
    events = [transaction(i) for i in range(3000)]
    base = dict(delivery="exactly_once", batch_max_size="50")
    env_a = bridge_env(kafka_broker, server.grpc_port, topics, instance_id="reb-a", **base)
    env_b = bridge_env(kafka_broker, server.grpc_port, topics, instance_id="reb-b", **base)
    chunks = [events[i:i + 500] for i in range(0, len(events), 500)]
    with running_bridge(env_a) as a:
        produce(kafka_broker, topics["input"], [(e.transaction_id.encode(), e.to_json()) for e in chunks[0]])
        with running_bridge(env_b) as b:  # B joins: partitions move while A is busy
            for chunk in chunks[1:4]:
                produce(kafka_broker, topics["input"], [(e.transaction_id.encode(), e.to_json()) for e in chunk])
                time.sleep(0.5)
            b_batches = b.batches_committed
        # B left (graceful): its partitions go back to A
        for chunk in chunks[4:]:
            produce(kafka_broker, topics["input"], [(e.transaction_id.encode(), e.to_json()) for e in chunk])
        msgs = read_topic(kafka_broker, topics["output"], lambda out: len(out) >= len(events), timeout_s=120)
        a_batches = a.batches_committed
    assert b_batches > 0 and a_batches > 0
    assert score_ids(msgs) == Counter(e.transaction_id for e in events)


def test_a_server_batching_fewer_rows_than_a_batch_gets_calls_it_takes(kafka_broker, kafka_topic, model_base,
                                                                       caplog):
    """The server's batching takes at most 16 rows per request (TF Serving refuses more with INVALID_ARGUMENT):
    the bridge learns the limit from the first refusal and sends calls of 16 rows; nothing is dead-lettered."""
    import logging

    topics = _topics(kafka_topic)
    caplog.set_level(logging.INFO, logger="kafka_bridge")
    events = [transaction(i) for i in range(300)]
    produce(kafka_broker, topics["input"], [(e.transaction_id.encode(), e.to_json()) for e in events])
    with model_server(model_base, max_batch_size=16) as srv:
        env = bridge_env(kafka_broker, srv.grpc_port, topics, delivery="exactly_once", instance_id="cap-0",
                         batch_max_size="256")
        with running_bridge(env) as processor:
            msgs = read_topic(kafka_broker, topics["output"], lambda out: len(out) >= len(events))
            assert processor._process.max_rows == 16
    assert score_ids(msgs) == Counter(e.transaction_id for e in events)
    assert read_topic(kafka_broker, topics["dlq"], lambda out: False, timeout_s=2) == []
    limited = [r.fields for r in caplog.records if r.getMessage() == "predict_rows_limited"]
    assert [f["max_rows"] for f in limited] == [16]


def test_features_signature_when_the_model_has_it_tf_examples_otherwise_rechecked_on_a_new_version(
        kafka_broker, kafka_topic, tmp_path, caplog):
    """Version 1 has only serving_default (tf.Example): the bridge falls back to it. Version 2 adds
    serving_features: the first response from version 2 makes the bridge read the metadata again and send
    the float32 matrix from then on. Scores are the model's either way."""
    import logging

    from bridge_helpers import THRESHOLD_VALUE, WEIGHTS

    base = tmp_path / "models" / "fraud"
    save_model(base, 1, features_signature=False)
    topics = _topics(kafka_topic)
    caplog.set_level(logging.INFO, logger="kafka_bridge")

    def expected(ev) -> float:
        import numpy as np

        x = np.array(ev.feature_vector(), dtype=np.float32)
        return float(1 / (1 + np.exp(-np.sum(np.tanh(x / np.float32(100.0)) * WEIGHTS))))

    def signatures_logged() -> list[tuple[int, str]]:
        return [(r.fields["version"], r.fields["signature"]) for r in caplog.records
                if r.getMessage() == "model_signature"]

    first = [transaction(i) for i in range(40)]
    with model_server(base) as srv:
        env = bridge_env(kafka_broker, srv.grpc_port, topics, delivery="at_least_once", instance_id="sig-0")
        with running_bridge(env):
            produce(kafka_broker, topics["input"], [(e.transaction_id.encode(), e.to_json()) for e in first])
            msgs = read_topic(kafka_broker, topics["output"], lambda out: len(out) >= len(first))
            assert signatures_logged() == [(1, "serving_default")]
            save_model(base, 2, features_signature=True)
            # a few events at a time until one is scored by version 2 (the server polls every second)
            later, i, deadline = [], 100, time.monotonic() + 90
            while time.monotonic() < deadline:
                chunk = [transaction(j) for j in range(i, i + 5)]
                i += 5
                later += chunk
                produce(kafka_broker, topics["input"], [(e.transaction_id.encode(), e.to_json()) for e in chunk])
                want = len(first) + len(later)
                msgs = read_topic(kafka_broker, topics["output"], lambda out, want=want: len(out) >= want)
                if ScoreEvent.from_json(msgs[-1].value()).model_version == 2:
                    break
            second = [transaction(j) for j in range(1000, 1040)]  # after the switch
            produce(kafka_broker, topics["input"], [(e.transaction_id.encode(), e.to_json()) for e in second])
            msgs = read_topic(kafka_broker, topics["output"],
                              lambda out: len(out) >= len(first) + len(later) + len(second))
    assert signatures_logged()[0] == (1, "serving_default")
    assert (2, "serving_features") in signatures_logged()
    by_id = {e.transaction_id: e for e in first + later + second}
    scores = [ScoreEvent.from_json(m.value()) for m in msgs]
    assert {s.model_version for s in scores} == {1, 2}
    assert {s.model_version for s in scores if s.transaction_id in {e.transaction_id for e in second}} == {2}
    for s in scores:
        assert s.score == pytest.approx(expected(by_id[s.transaction_id]), rel=1e-5, abs=1e-6)
        assert s.threshold == pytest.approx(THRESHOLD_VALUE)


# -- chaos ---------------------------------------------------------------------------------------


class BridgeProcess:
    """`python -m kafka_bridge` as a child process, killed with SIGKILL or stopped with SIGTERM."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child owns it)
        self.proc = subprocess.Popen([sys.executable, "-m", "kafka_bridge"], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        self.starts += 1

    def wait_started(self, timeout_s: float = 120.0) -> None:
        """Until this start has logged stream_starting (on a loaded machine the imports alone take seconds:
        a kill before that would test nothing)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            if text.count('"event":"stream_starting"') >= self.starts:
                return
            time.sleep(0.2)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def run_chaos(kafka_broker, kafka_topic, model_base: Path, tmp_path: Path, *, delivery: str, total: int,
              duration_s: float, kills: int, instances: int = 1, kafka_client: str = "confluent-kafka") -> None:
    """Stream `total` events over `duration_s` through `instances` bridge processes (one consumer group),
    kill -9 one of them `kills` times (round robin) and restart it, stop the model server for a while and
    restart the broker once; then check every id against the scores and dead-letter topics. With several
    instances, membership is dynamic, so every kill is a real rebalance (partitions move and come back)."""
    topics = _topics(kafka_topic)
    port = free_port()
    bad_every = 97
    records: list[tuple[bytes | None, bytes]] = []
    good_ids: list[str] = []
    bad_keys: list[bytes] = []
    for i in range(total):
        if i % bad_every == 5:
            key = f"bad-{i}".encode()
            bad_keys.append(key)
            records.append((key, b'{"transaction_id": broken'))
        else:
            e = transaction(i)
            good_ids.append(e.transaction_id)
            records.append((e.transaction_id.encode(), e.to_json()))
    bridges = [
        BridgeProcess(bridge_env(kafka_broker, port, topics, delivery=delivery, instance_id=f"chaos-{i}",
                                 kafka_client=kafka_client,
                                 static_membership="1" if instances == 1 else "0", batch_max_size="200",
                                 http_port="-1", log_level="INFO"), tmp_path / f"bridge-{i}.log")
        for i in range(instances)
    ]
    # the schedule, as fractions of the production time
    events = [(f, "kill") for f in [0.1 + 0.7 * k / max(1, kills - 1) for k in range(kills)]]
    events += [(0.2, "server_stop"), (0.35, "server_start"), (0.45, "broker_restart")]
    events.sort()
    server_cm = model_server(model_base, port=port)
    server_cm.__enter__()
    server_running = True
    producer_done = threading.Event()

    def producer() -> None:
        from confluent_kafka import Producer

        p = Producer({"bootstrap.servers": kafka_broker.bootstrap, "enable.idempotence": True, "linger.ms": 5,
                      "message.timeout.ms": 300_000})
        start = time.monotonic()
        for n, (key, value) in enumerate(records):
            target = start + duration_s * n / total
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            while True:
                try:
                    p.produce(topics["input"], value, key)
                    break
                except BufferError:
                    p.poll(0.1)
            p.poll(0)
        assert p.flush(300) == 0
        producer_done.set()

    feeder = threading.Thread(target=producer, daemon=True)
    kill_count = 0
    try:
        for bridge in bridges:
            bridge.start()
        started = time.monotonic()
        feeder.start()
        for frac, what in events:
            delay = started + frac * duration_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if what == "kill":
                victim = bridges[kill_count % instances]
                kill_count += 1
                victim.wait_started()
                victim.kill()
                victim.start()
            elif what == "server_stop":
                server_cm.__exit__(None, None, None)
                server_running = False
            elif what == "server_start":
                server_cm = model_server(model_base, port=port)
                server_cm.__enter__()
                server_running = True
            elif what == "broker_restart":
                kafka_broker.restart()
        feeder.join(600)
        assert producer_done.is_set(), "producer did not finish"
        scores = read_topic(kafka_broker, topics["output"], lambda out: len(set(score_ids(out))) >= len(good_ids),
                            timeout_s=240)
        dead = read_topic(kafka_broker, topics["dlq"], lambda out: len({m.key() for m in out}) >= len(bad_keys),
                          timeout_s=60)
        for bridge in bridges:
            assert bridge.terminate() == 0  # graceful shutdown: drain, commit, close, exit 0
    finally:
        for bridge in bridges:
            bridge.cleanup()
        if server_running:
            server_cm.__exit__(None, None, None)
        if not kafka_broker.is_running():
            kafka_broker.start()
    ids = score_ids(scores)
    dead_keys = Counter(m.key() for m in dead)
    print(f"chaos {delivery}: {total} events, {len(ids)} ids scored, {sum(ids.values()) - len(ids)} duplicate "
          f"scores, {len(dead)} dead letters ({len(bad_keys)} bad events), bridge starts {kills + instances}")
    log_text = "".join(b.log_path.read_text(errors="replace") for b in bridges)
    log_tail = log_text[-3000:]
    log_events = Counter(json.loads(line).get("event") for line in log_text.splitlines() if line.startswith("{"))
    assert log_events["stream_starting"] == kills + instances  # the chaos happened: every kill was a new process
    assert log_events["retrying"] >= 1 and '"stage":"process"' in log_text  # server down: retried, not skipped
    assert all(line.startswith("{") for line in log_text.splitlines() if line.strip()), "non-JSON log line"
    assert set(ids) == set(good_ids), f"missing {len(set(good_ids) - set(ids))} ids; log tail:\n{log_tail}"
    assert set(dead_keys) == set(bad_keys)
    if delivery == "exactly_once":
        dups = {k: v for k, v in ids.items() if v > 1}
        assert not dups, f"{len(dups)} duplicated ids, e.g. {list(dups.items())[:3]}"
        assert all(v == 1 for v in dead_keys.values())
        assert len(scores) + len(dead) == total


def test_chaos_exactly_once_small(kafka_broker, kafka_topic, model_base, tmp_path):
    """6,000 events over ~30 s: 2 kill -9 + restarts, a broker restart, the server down ~5 s."""
    run_chaos(kafka_broker, kafka_topic, model_base, tmp_path, delivery="exactly_once", total=6000,
              duration_s=30, kills=2)


@pytest.mark.slow
@pytest.mark.parametrize("delivery", ["exactly_once", "at_least_once"])
def test_chaos_full(kafka_broker, kafka_topic, model_base, tmp_path, delivery):
    """30,000 events over ~90 s: 4 kill -9 + restarts, a broker restart, the server down ~13 s."""
    run_chaos(kafka_broker, kafka_topic, model_base, tmp_path, delivery=delivery, total=30_000, duration_s=90,
              kills=4)


@pytest.mark.slow
def test_chaos_exactly_once_kafka_python(kafka_broker, kafka_topic, model_base, tmp_path):
    """The small chaos run on the kafka-python client: its transaction steps (bounded by the project, the
    library's own wait forever) must survive the broker restart and the kills like librdkafka's."""
    run_chaos(kafka_broker, kafka_topic, model_base, tmp_path, delivery="exactly_once", total=6000,
              duration_s=30, kills=2, kafka_client="kafka-python")


@pytest.mark.slow
def test_chaos_two_bridges_exactly_once(kafka_broker, kafka_topic, model_base, tmp_path):
    """Two bridges in one group (dynamic membership): 20,000 events over ~60 s, 4 kill -9 alternating
    between them (each a rebalance: partitions move to the survivor and back), a broker restart, the
    server down ~9 s; still every id exactly once."""
    run_chaos(kafka_broker, kafka_topic, model_base, tmp_path, delivery="exactly_once", total=20_000,
              duration_s=60, kills=4, instances=2)
