"""The embedded 3-node Kafka cluster: formation, replication settings, and writes across broker failures.

Unit tests start no JVM. `integration` tests use the session `kafka_cluster` (3 combined broker+controller
nodes, replication factor 3, min.insync.replicas 2, a killed node fenced after 3 s): a KRaft quorum of
three voters that survives losing one; acks=all writes that lose nothing acknowledged while a leader is
SIGKILLed and restarted; a transactional producer that keeps committing across a bounce of its
transaction coordinator. The slow test bounces every node three times (hard) and once (clean) under load.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest

from fraud.embedded.broker import BrokerConfig, QuorumVoter
from fraud.embedded.cluster import ClusterConfig, ClusterLayout, KafkaCluster, kafka_uuid
from fraud.embedded.testing import unique_topic_name
from fraud.errors import FraudError
from fraud.kafka_config import KafkaClientConfig, ensure_topics
from fraud.topics import TopicSpec

# -- no JVM needed -----------------------------------------------------------------------------


def test_cluster_config_defaults_follow_the_node_count(tmp_path):
    three = ClusterConfig(state_dir=tmp_path, jars_dir=tmp_path)
    assert three.ports == (9092, 9094, 9096) and three.controller_ports == (9093, 9095, 9097)
    assert (three.replication_factor, three.min_insync_replicas) == (3, 2)
    assert three.bootstrap == "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096"
    two = ClusterConfig(state_dir=tmp_path, jars_dir=tmp_path, brokers=2)
    assert (two.replication_factor, two.min_insync_replicas) == (2, 1)
    five = ClusterConfig(state_dir=tmp_path, jars_dir=tmp_path, brokers=5)
    assert (five.replication_factor, five.min_insync_replicas) == (3, 2)


@pytest.mark.parametrize("settings, message", [
    ({"brokers": 0}, "brokers must be in 1..9"),
    ({"replication_factor": 4}, "replication factor must be in 1..3"),
    ({"min_insync_replicas": 4}, "min.insync.replicas must be in 1..3"),
    ({"ports": (1, 2)}, "2 ports given for 3 brokers"),
    ({"ports": (1, 2, 3), "controller_ports": (3, 4, 5)}, "must all differ"),
    ({"heap": "lots"}, "heap must look like"),
])
def test_cluster_config_refuses_what_cannot_work(tmp_path, settings, message):
    with pytest.raises(FraudError, match=message):
        ClusterConfig(state_dir=tmp_path, jars_dir=tmp_path, **settings)


def test_a_cluster_node_gets_the_quorum_and_replicated_internal_topics(tmp_path):
    voters = tuple(QuorumVoter(i, "127.0.0.1", 19093 + 2 * i, kafka_uuid()) for i in (1, 2, 3))
    props = BrokerConfig(state_dir=tmp_path, jars_dir=tmp_path, port=19094, controller_port=19095, node_id=2,
                         quorum=voters, replication_factor=3, min_insync_replicas=2,
                         heartbeat_interval_ms=500, session_timeout_ms=3000).server_properties()
    assert props["node.id"] == "2" and props["process.roles"] == "broker,controller"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19095,127.0.0.1:19097,127.0.0.1:19099"
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "share.coordinator.state.topic.replication.factor", "default.replication.factor"):
        assert props[key] == "3", key
    for key in ("transaction.state.log.min.isr", "share.coordinator.state.topic.min.isr", "min.insync.replicas"):
        assert props[key] == "2", key
    assert props["broker.session.timeout.ms"] == "3000" and props["broker.heartbeat.interval.ms"] == "500"
    assert str(voters[0]).startswith("1@127.0.0.1:19095:")
    single = BrokerConfig(state_dir=tmp_path, jars_dir=tmp_path).server_properties()
    assert single["offsets.topic.replication.factor"] == "1" and single["controller.quorum.bootstrap.servers"] == "127.0.0.1:9093"
    with pytest.raises(FraudError, match="not one of the quorum's voters"):
        BrokerConfig(state_dir=tmp_path, jars_dir=tmp_path, node_id=7, quorum=voters)


def test_kafka_uuid_is_what_kafka_parses():
    ids = {kafka_uuid() for _ in range(200)}
    assert len(ids) == 200
    for text in ids:
        assert len(text) == 22 and not text.startswith("-")
        assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_a_formatted_cluster_keeps_its_ports_and_a_broker_dir_is_not_a_cluster(tmp_path):
    config = ClusterConfig(state_dir=tmp_path / "c", jars_dir=tmp_path, ports=(20001, 20003, 20005),
                           controller_ports=(20002, 20004, 20006))
    (tmp_path / "c").mkdir()
    ClusterLayout.new(config).write(tmp_path / "c" / "cluster.json")
    # restarted with default flags: the formatted ports are used
    assert KafkaCluster(ClusterConfig(state_dir=tmp_path / "c", jars_dir=tmp_path)).bootstrap == config.bootstrap
    with pytest.raises(FraudError, match="formatted with 3 brokers"):
        KafkaCluster(ClusterConfig(state_dir=tmp_path / "c", jars_dir=tmp_path, ports=(30001, 30003, 30005),
                                   controller_ports=(30002, 30004, 30006)))
    (tmp_path / "b" / "data").mkdir(parents=True)
    (tmp_path / "b" / "data" / "meta.properties").write_text("cluster.id=x\n")
    with pytest.raises(FraudError, match="holds a single broker's data"):
        KafkaCluster(ClusterConfig(state_dir=tmp_path / "b", jars_dir=tmp_path))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cluster.json").write_text("{")
    with pytest.raises(FraudError, match="not valid JSON"):
        KafkaCluster(ClusterConfig(state_dir=tmp_path / "bad", jars_dir=tmp_path))


def test_cli_cluster_status_and_flags(tmp_path, capsys):
    from fraudctl.cli import main

    config = ClusterConfig(state_dir=tmp_path, jars_dir=tmp_path, ports=(20001, 20003, 20005),
                           controller_ports=(20002, 20004, 20006))
    ClusterLayout.new(config).write(tmp_path / "cluster.json")
    assert main(["kafka", "status", "--state-dir", str(tmp_path)]) == 3
    assert "Kafka cluster not running" in capsys.readouterr().out
    assert main(["kafka", "start", "--state-dir", str(tmp_path)]) == 1
    assert "holds a Kafka cluster; start it with --brokers N" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["kafka", "start", "--brokers", "0", "--state-dir", str(tmp_path)])
    assert exc.value.code == 2 and "brokers must be in 1..9" in capsys.readouterr().err


def test_replication_settings_come_from_flags_over_environment():
    import argparse

    parser = argparse.ArgumentParser()
    KafkaClientConfig.add_arguments(parser)
    env = {"FRAUD_KAFKA_REPLICATION_FACTOR": "3", "FRAUD_KAFKA_MIN_INSYNC_REPLICAS": "2"}
    config = KafkaClientConfig.from_env_and_args(parser.parse_args([]), env)
    assert (config.replication_factor, config.min_insync_replicas) == (3, 2)
    config = KafkaClientConfig.from_env_and_args(parser.parse_args(["--replication-factor", "1", "--min-insync-replicas", "1"]), env)
    assert (config.replication_factor, config.min_insync_replicas) == (1, 1)
    default = KafkaClientConfig.from_env_and_args(parser.parse_args([]), {})
    assert (default.replication_factor, default.min_insync_replicas) == (None, None)  # the cluster's defaults
    with pytest.raises(FraudError, match="FRAUD_KAFKA_REPLICATION_FACTOR='three': expected a whole number"):
        KafkaClientConfig.from_env_and_args(parser.parse_args([]), {"FRAUD_KAFKA_REPLICATION_FACTOR": "three"})
    with pytest.raises(FraudError, match=r"min.insync.replicas \(3\) must not exceed the replication factor \(2\)"):
        KafkaClientConfig(replication_factor=2, min_insync_replicas=3)
    with pytest.raises(FraudError, match="replication factor must be a whole number >= 1"):
        KafkaClientConfig(replication_factor=0)


# -- a real cluster ------------------------------------------------------------------------------


def _java_string_hash(text: str) -> int:
    h = 0
    data = text.encode("utf-16-be")  # Java hashes UTF-16 code units
    for k in range(0, len(data), 2):
        h = (31 * h + int.from_bytes(data[k:k + 2], "big")) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def _transaction_partition(transactional_id: str, partitions: int) -> int:
    """Kafka's TransactionStateManager.partitionFor: Utils.abs(id.hashCode) % partitions."""
    h = _java_string_hash(transactional_id)
    return (0 if h == -(1 << 31) else abs(h)) % partitions  # Utils.abs(MIN_VALUE) is 0


@pytest.fixture
def cluster(kafka_cluster) -> Iterator:
    """The session cluster, all nodes running and every partition fully replicated before and after."""
    kafka_cluster.ensure_all_running()
    kafka_cluster.cluster.wait_fully_replicated()
    yield kafka_cluster
    kafka_cluster.ensure_all_running()
    kafka_cluster.cluster.wait_fully_replicated()


def _topic(cluster, prefix: str, partitions: int = 3) -> str:
    name = unique_topic_name(prefix)
    ensure_topics(cluster.client_config("test-topics"), [TopicSpec(name, partitions)])
    return name


def _read_all(config: KafkaClientConfig, topic: str, *, committed_only: bool = False, timeout_s: float = 60.0) -> list[bytes]:
    """Every record of `topic` from the beginning to the end offsets as of now (last stable offset under
    read_committed), values in partition order."""
    import confluent_kafka

    consumer = confluent_kafka.Consumer(config.confluent(**{
        "group.id": f"{topic}.reader", "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "isolation.level": "read_committed" if committed_only else "read_uncommitted"}))
    try:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        partitions = [confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in meta.partitions]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=30)[1] for tp in partitions}
        consumer.assign(partitions)
        position = dict.fromkeys(ends, 0)
        values: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while any(position[p] < ends[p] for p in ends) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                # under read_committed, control records (commit markers) advance the position silently
                for tp in consumer.position([confluent_kafka.TopicPartition(topic, p) for p in ends]):
                    if tp.offset >= 0:
                        position[tp.partition] = max(position[tp.partition], tp.offset)
                continue
            if msg.error():
                continue
            values.append(msg.value())
            position[msg.partition()] = msg.offset() + 1
        assert all(position[p] >= ends[p] for p in ends), f"read stopped short: {position} of {ends}"
        return values
    finally:
        consumer.close()


@pytest.mark.integration
def test_three_nodes_form_a_quorum_with_replicated_internal_and_project_topics(cluster):
    import confluent_kafka
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    from fraud.topics import ALL_TOPICS

    quorum = cluster.cluster.quorum_status()
    assert quorum["voters"] == [1, 2, 3] and quorum["leader_id"] in (1, 2, 3)
    config = cluster.client_config("test-cluster-formation")
    admin = KafkaAdminClient(**config.admin_kwargs())
    try:
        brokers = admin.describe_cluster()["brokers"]
        assert sorted(b["broker_id"] for b in brokers if not b["is_fenced"]) == [1, 2, 3]
    finally:
        admin.close()

    # the project's topics on the cluster: the cluster's defaults (RF 3, min ISR 2) with no setting ...
    results = ensure_topics(config, ALL_TOPICS)
    assert {r.action for r in results} <= {"created", "exists"}
    described = cluster.cluster.describe([t.name for t in ALL_TOPICS])
    assert all(len(info["replicas"]) == 3 and len(info["isr"]) == 3
               for parts in described.values() for info in parts.values())
    # ... and an explicit setting is checked against what exists
    with pytest.raises(FraudError, match="exists with 3 replicas per partition, but the replication factor is configured as 2"):
        ensure_topics(KafkaClientConfig(bootstrap_servers=config.bootstrap_servers, replication_factor=2), ALL_TOPICS[:1])
    explicit = _topic(cluster, "explicit")
    ensure_topics(KafkaClientConfig(bootstrap_servers=config.bootstrap_servers, replication_factor=3, min_insync_replicas=2),
                  [TopicSpec(explicit, 3)])
    with pytest.raises(FraudError, match="replication factor 4"):
        ensure_topics(KafkaClientConfig(bootstrap_servers=config.bootstrap_servers, replication_factor=4),
                      [TopicSpec(unique_topic_name("too-many"), 1)])

    # internal topics appear on first use: a group commit and a transactional producer
    topic = _topic(cluster, "internal")
    tx = confluent_kafka.Producer(config.confluent(**{"transactional.id": f"{topic}.tx"}))
    tx.init_transactions(60)
    tx.begin_transaction()
    tx.produce(topic, b"v")
    tx.commit_transaction(60)
    consumer = confluent_kafka.Consumer(config.confluent(**{"group.id": f"{topic}.g", "enable.auto.commit": False,
                                                           "auto.offset.reset": "earliest"}))
    consumer.subscribe([topic])
    deadline = time.monotonic() + 60
    msg = None
    while msg is None and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
    assert msg is not None and not msg.error()
    consumer.commit(message=msg, asynchronous=False)
    consumer.close()
    internal = cluster.cluster.describe(["__consumer_offsets", "__transaction_state"])
    assert set(internal) == {"__consumer_offsets", "__transaction_state"}
    assert {len(info["replicas"]) for parts in internal.values() for info in parts.values()} == {3}
    admin = KafkaAdminClient(**config.admin_kwargs())
    try:
        names = ["__consumer_offsets", "__transaction_state", explicit, ALL_TOPICS[0].name]
        got = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n, ["min.insync.replicas"]) for n in names],
                                     config_filter="all")["topic"]
    finally:
        admin.close()
    assert {n: got[n]["min.insync.replicas"]["value"] for n in names} == dict.fromkeys(names, "2")


@pytest.mark.integration
def test_acks_all_loses_nothing_while_a_leader_is_killed_and_restarted(cluster):
    """SIGKILL the leader of partition 0 mid-stream: its partitions move to the survivors, writes with
    acks=all go on (2 in-sync replicas = min.insync.replicas), the node comes back and catches up, and
    every acknowledged record is in the topic exactly once."""
    import confluent_kafka

    topic = _topic(cluster, "acks-all")
    config = cluster.client_config("test-acks-all")
    producer = confluent_kafka.Producer(config.confluent(**{
        "acks": "all", "enable.idempotence": True, "linger.ms": 5, "message.timeout.ms": 120_000}))
    acked: list[bytes] = []
    failed: list[str] = []
    stop = threading.Event()
    sent = 0

    def on_delivery(err, msg) -> None:  # noqa: ANN001 - librdkafka callback
        (failed.append(str(err)) if err is not None else acked.append(msg.value()))

    def produce() -> None:  # about 2,000 records/s: enough to be mid-write at the kill, light on 2 cores
        nonlocal sent
        while not stop.is_set():
            for _ in range(40):
                producer.produce(topic, key=str(sent % 97).encode(), value=str(sent).encode(), on_delivery=on_delivery)
                sent += 1
            producer.poll(0)
            time.sleep(0.02)

    thread = threading.Thread(target=produce, name="acks-all-producer")
    thread.start()
    try:
        time.sleep(1.0)
        victim = cluster.cluster.leaders(topic)[0]
        acked_before_kill = len(acked)
        killed_at = time.monotonic()
        cluster.kill(victim)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            leaders = cluster.cluster.leaders(topic)
            if victim not in leaders.values() and all(leader >= 0 for leader in leaders.values()):
                break
            time.sleep(0.2)
        failover_s = time.monotonic() - killed_at
        assert victim not in cluster.cluster.leaders(topic).values(), "leadership never left the killed node"
        time.sleep(1.0)
        acked_while_down = len(acked)
        restart_s = cluster.start_node(victim)
        cluster.cluster.wait_fully_replicated([topic])
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join()
        remaining = producer.flush(120)
    print(f"acks=all across SIGKILL of node {victim}: {sent} sent, {len(acked)} acknowledged, {len(failed)} failed; "
          f"leaders moved {failover_s:.1f} s after the kill, node back in {restart_s:.1f} s")
    assert remaining == 0 and failed == []
    assert acked_while_down > acked_before_kill, "no write was acknowledged while the node was down"
    assert len(acked) == sent
    stored = _read_all(config, topic)
    assert len(stored) == len(set(stored)), "duplicates in the topic"
    missing = set(acked) - set(stored)
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {sorted(missing)[:5]}"


def _transactions(producer, topic: str, committed: list[int], errors: list[str], stop: threading.Event,
                  batch: int = 20) -> None:
    """Transactions of `batch` records each until `stop`; a batch is recorded once its commit returns.

    Retriable errors retry the commit; abortable ones abort and redo the batch (the aborted records stay
    invisible to read_committed readers); anything else ends the loop with the error recorded.
    """
    from confluent_kafka import KafkaException

    n = 0
    while not stop.is_set():
        try:
            producer.begin_transaction()
            for i in range(batch):
                producer.produce(topic, key=str(i).encode(), value=json.dumps([n, i]).encode())
            while True:
                try:
                    producer.commit_transaction(30)
                    break
                except KafkaException as exc:
                    if not exc.args[0].retriable():
                        raise
                    errors.append(f"retried commit: {exc.args[0].str()}")
            committed.append(n)
            n += 1
        except KafkaException as exc:
            err = exc.args[0]
            if not err.txn_requires_abort():
                errors.append(f"FATAL {err.str()}")
                return
            errors.append(f"aborted: {err.str()}")
            producer.abort_transaction(30)


@pytest.mark.integration
def test_a_transactional_producer_keeps_committing_across_a_coordinator_bounce(cluster):
    """Hard-bounce the node that is the transaction coordinator of the producer's id while it commits
    transactions: the coordinator moves, the producer goes on, read_committed sees each committed
    transaction exactly once and nothing of an aborted one."""
    import confluent_kafka

    topic = _topic(cluster, "tx-bounce")
    config = cluster.client_config("test-tx-bounce")
    transactional_id = f"{topic}.tx"
    producer = confluent_kafka.Producer(config.confluent(**{"transactional.id": transactional_id,
                                                            "transaction.timeout.ms": 30_000, "linger.ms": 2}))
    producer.init_transactions(60)
    partition = _transaction_partition(transactional_id, cluster.cluster.config.internal_topic_partitions)
    coordinator = cluster.cluster.leaders("__transaction_state")[partition]
    committed: list[int] = []
    errors: list[str] = []
    stop = threading.Event()
    thread = threading.Thread(target=_transactions, args=(producer, topic, committed, errors, stop), name="tx-producer")
    thread.start()
    try:
        time.sleep(1.5)
        before = len(committed)
        bounce_s = cluster.hard_bounce(coordinator)
        moved = cluster.cluster.leaders("__transaction_state")[partition]
        cluster.cluster.wait_fully_replicated([topic, "__transaction_state"])
        after_bounce = len(committed)
        deadline = time.monotonic() + 60
        while len(committed) <= after_bounce + 2 and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(120)
    producer.flush(30)
    print(f"transactions across a hard bounce of coordinator node {coordinator} ({bounce_s:.1f} s): "
          f"{len(committed)} committed ({before} before), {len(errors)} errors handled: {errors[:3]}")
    assert not thread.is_alive()
    assert not [e for e in errors if e.startswith("FATAL")], errors
    # Commits may stall while the coordinator moves (none needs to complete during the bounce), but must
    # go on after it.
    assert before > 0, "no transaction committed before the bounce"
    assert len(committed) > after_bounce + 2, "the producer did not keep committing after the bounce"
    assert moved >= 0
    stored = [tuple(json.loads(v)) for v in _read_all(config, topic, committed_only=True)]
    expected = {(n, i) for n in committed for i in range(20)}
    assert len(stored) == len(set(stored)), "a committed transaction is visible twice"
    assert set(stored) == expected


@pytest.mark.integration
@pytest.mark.slow
def test_every_node_bounced_three_times_under_load_loses_nothing(cluster):
    """transactions_test.py's shape: each node hard-bounced 3 times and one clean bounce, while an
    idempotent acks=all producer and a transactional producer write; ISR complete before each bounce.
    About 3-4 minutes."""
    import confluent_kafka

    topic = _topic(cluster, "bounce-all", partitions=6)
    tx_topic = _topic(cluster, "bounce-all-tx", partitions=3)
    config = cluster.client_config("test-bounce-all")
    producer = confluent_kafka.Producer(config.confluent(**{
        "acks": "all", "enable.idempotence": True, "linger.ms": 5, "message.timeout.ms": 300_000}))
    tx = confluent_kafka.Producer(config.confluent(**{"transactional.id": f"{tx_topic}.tx", "linger.ms": 2}))
    tx.init_transactions(60)
    acked: list[bytes] = []
    failed: list[str] = []
    committed: list[int] = []
    errors: list[str] = []
    stop = threading.Event()
    sent = 0

    def produce() -> None:
        nonlocal sent
        while not stop.is_set():
            for _ in range(20):
                producer.produce(topic, value=str(sent).encode(),
                                 on_delivery=lambda err, msg: failed.append(str(err)) if err else acked.append(msg.value()))
                sent += 1
            producer.poll(0)
            time.sleep(0.02)

    threads = [threading.Thread(target=produce), threading.Thread(target=_transactions,
                                                                  args=(tx, tx_topic, committed, errors, stop))]
    for t in threads:
        t.start()
    timings = []
    try:
        for _round in range(3):
            for node in cluster.node_ids:
                time.sleep(1.0)
                timings.append(cluster.hard_bounce(node))
                cluster.cluster.wait_fully_replicated([topic, tx_topic, "__transaction_state", "__consumer_offsets"])
        timings.append(cluster.clean_bounce(1))
        cluster.cluster.wait_fully_replicated()
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    remaining = producer.flush(300)
    print(f"10 bounces (median {sorted(timings)[len(timings) // 2]:.1f} s): {sent} sent, {len(acked)} acknowledged, "
          f"{len(failed)} failed; {len(committed)} transactions committed, {len(errors)} errors handled")
    assert remaining == 0 and failed == [] and len(acked) == sent
    stored = _read_all(config, topic)
    assert len(stored) == len(set(stored)) and not set(acked) - set(stored)
    assert not [e for e in errors if e.startswith("FATAL")], errors
    got = [tuple(json.loads(v)) for v in _read_all(config, tx_topic, committed_only=True)]
    assert len(got) == len(set(got)) and set(got) == {(n, i) for n in committed for i in range(20)}


@pytest.mark.integration
@pytest.mark.slow
def test_fraudctl_kafka_start_brokers_3(tmp_path, capsys):
    """`fraudctl kafka start --brokers 3` / status / stop on fixed ports, then status says stopped.
    Slow: three more JVMs with full JIT, 25-55 s on two shared cores."""
    from fraud.embedded.process import free_port
    from fraudctl.cli import main

    state = tmp_path / "cluster"
    # six ports in two runs of three, as the CLI lays them out (port + 2i, controller + 2i)
    base = _free_run(6)
    code = main(["kafka", "start", "--brokers", "3", "--state-dir", str(state), "--port", str(base),
                 "--controller-port", str(base + 1), "--heap", "384m"])
    out = capsys.readouterr().out
    try:
        assert code == 0 and "Kafka cluster started in" in out and "3 nodes" in out
        assert "replication factor 3, min.insync.replicas 2" in out
        assert main(["kafka", "status", "--state-dir", str(state)]) == 0
        status = capsys.readouterr().out
        assert status.count("running, pid") == 3 and f"127.0.0.1:{base + 4}" in status
        from fraud.embedded.broker import running_bootstrap

        assert running_bootstrap(state) == f"127.0.0.1:{base},127.0.0.1:{base + 2},127.0.0.1:{base + 4}"
        assert free_port()  # the machine still hands out ports
    finally:
        assert main(["kafka", "stop", "--state-dir", str(state)]) == 0
    assert capsys.readouterr().out.count("stopped (pid") == 3
    assert main(["kafka", "status", "--state-dir", str(state)]) == 3
    assert json.loads((state / "cluster.json").read_text())["ports"] == [base, base + 2, base + 4]


def _free_run(count: int) -> int:
    """A port p such that p .. p+count-1 are all free right now."""
    import socket

    from fraud.embedded.process import port_in_use

    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            start = s.getsockname()[1]
        if start + count < 65535 and not any(port_in_use("127.0.0.1", start + i) for i in range(count)):
            return start
    raise AssertionError("no run of free ports")


def test_transaction_partition_follows_java_string_hash_code():
    # "my-tx".hashCode() in Java: ((((109*31+121)*31+45)*31+116)*31+120) = 104315461
    assert _java_string_hash("my-tx") == 104315461
    assert _transaction_partition("my-tx", 50) == 104315461 % 50
    # overflow wraps to a negative int, whose absolute value picks the partition
    assert _java_string_hash("polygenelubricants") == -(1 << 31)  # the famous Integer.MIN_VALUE hash
    assert 0 <= _transaction_partition("polygenelubricants", 50) < 50
