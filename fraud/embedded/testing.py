"""Throwaway brokers and Connect workers for tests and benchmarks: free ports, a temporary state dir.

`tests/conftest.py` builds its session fixtures on these; `bench/` scripts use them the same way.
Processes started here die with the Python process that started them (PR_SET_PDEATHSIG), so a killed
test run leaves no JVM behind, and the context managers stop them cleanly on the normal path.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Mapping
from concurrent import futures
from pathlib import Path

from fraud.embedded.broker import BrokerConfig, KafkaBroker
from fraud.embedded.cluster import ClusterConfig, KafkaCluster
from fraud.embedded.connect import ConnectConfig, ConnectStandalone
from fraud.embedded.process import free_port
from fraud.errors import FraudError
from fraud.kafka_config import KafkaClientConfig, ensure_topics
from fraud.paths import load_paths
from fraud.topics import TopicSpec

TEST_BROKER_HEAP = "384m"
TEST_CONNECT_HEAP = "256m"


class EmbeddedKafka:
    """A running throwaway broker: `.bootstrap`, `.client_config`, `restart()`, `stop()`, `start()`."""

    def __init__(self, broker: KafkaBroker) -> None:
        self.broker = broker
        self.last_start_s: float | None = None

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def state_dir(self) -> Path:
        return self.broker.state_dir

    def client_config(self, client_id: str = "fraud-test") -> KafkaClientConfig:
        return KafkaClientConfig(bootstrap_servers=(self.bootstrap,), client_id=client_id)

    def start(self) -> float | None:
        self.last_start_s = self.broker.start(die_with_parent=True)
        return self.last_start_s

    def stop(self) -> str:
        return self.broker.stop()

    def restart(self) -> float | None:
        """Clean stop (controlled shutdown), then start again on the same ports and data."""
        self.stop()
        return self.start()

    def is_running(self) -> bool:
        return self.broker.is_running()


def broker_config_for_tests(state_dir: Path, **overrides: object) -> BrokerConfig:
    settings: dict = {
        "state_dir": state_dir,
        "jars_dir": load_paths().jars_dir,
        "port": free_port(),
        "controller_port": free_port(),
        "heap": TEST_BROKER_HEAP,
        # C1 only: the JVM starts and warms up faster on two shared cores; peak speed does not matter here.
        "jvm_opts": ("-XX:TieredStopAtLevel=1",),
    }
    settings.update(overrides)
    return BrokerConfig(**settings)


@contextlib.contextmanager
def temporary_broker(state_dir: Path, attempts: int = 3, **overrides: object) -> Iterator[EmbeddedKafka]:
    """Start a broker on free ports in `state_dir`; stop it when the block ends, however it ends."""
    kafka: EmbeddedKafka | None = None
    for attempt in range(attempts):
        kafka = EmbeddedKafka(KafkaBroker(broker_config_for_tests(state_dir, **overrides)))
        try:
            kafka.start()
            break
        except FraudError as exc:
            # Another process can take a "free" port between our check and the JVM's bind.
            port_race = "already taken" in str(exc) or "Address already in use" in str(exc)
            if not port_race or attempt == attempts - 1:
                raise
    assert kafka is not None
    try:
        yield kafka
    finally:
        kafka.stop()


#: Test clusters: a killed node's partitions fail over after 3 s without heartbeats (Kafka: 9 s).
TEST_HEARTBEAT_INTERVAL_MS = 500
TEST_SESSION_TIMEOUT_MS = 3000


class EmbeddedCluster:
    """A running throwaway cluster: `.bootstrap`, `.client_config()`, and one node at a time `kill(n)`,
    `stop_node(n)`, `start_node(n)`, `hard_bounce(n)`, `clean_bounce(n)`; `.cluster` is the KafkaCluster
    (leaders, ISR, `wait_fully_replicated`).

    Nodes are started from one thread that lives as long as this object, whichever thread asks for a
    (re)start: the JVMs die with the test process (PR_SET_PDEATHSIG), and Linux sends that signal when
    the thread that forked them exits, so a chaos thread that restarts a node and ends must not be it.
    """

    def __init__(self, cluster: KafkaCluster) -> None:
        self.cluster = cluster
        self._spawner = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-cluster-spawner")
        self.last_start_s: float | None = None

    def _on_spawner(self, fn, *args, **kwargs):  # noqa: ANN001, ANN202 - a thin trampoline
        return self._spawner.submit(fn, *args, die_with_parent=True, **kwargs).result()

    @property
    def bootstrap(self) -> str:
        return self.cluster.bootstrap

    @property
    def node_ids(self) -> tuple[int, ...]:
        return tuple(self.cluster.nodes)

    @property
    def state_dir(self) -> Path:
        return self.cluster.state_dir

    def client_config(self, client_id: str = "fraud-test") -> KafkaClientConfig:
        return KafkaClientConfig(bootstrap_servers=tuple(self.bootstrap.split(",")), client_id=client_id)

    def start(self) -> float | None:
        self.last_start_s = self._on_spawner(self.cluster.start)
        return self.last_start_s

    def stop(self) -> str:
        return self.cluster.stop()

    def kill(self, node_id: int) -> str:
        return self.cluster.kill(node_id)

    def stop_node(self, node_id: int) -> str:
        return self.cluster.stop_node(node_id)

    def start_node(self, node_id: int) -> float | None:
        return self._on_spawner(self.cluster.start_node, node_id)

    def hard_bounce(self, node_id: int, down_s: float = 0.0) -> float:
        """SIGKILL node `node_id`, leave it down `down_s`, restart it; seconds until it serves again."""
        return self._on_spawner(self.cluster.hard_bounce, node_id, down_s=down_s)

    def clean_bounce(self, node_id: int, down_s: float = 0.0) -> float:
        """Controlled shutdown of node `node_id`, restart it; seconds until it serves again."""
        return self._on_spawner(self.cluster.clean_bounce, node_id, down_s=down_s)

    def ensure_all_running(self) -> None:
        """Start any node a test left stopped (fixtures call this between tests)."""
        for nid in self.node_ids:
            if not self.cluster.node(nid).is_running():
                self.start_node(nid)

    def close(self) -> str:
        try:
            return self.stop()
        finally:
            self._spawner.shutdown(wait=True)


def cluster_config_for_tests(state_dir: Path, brokers: int = 3, **overrides: object) -> ClusterConfig:
    settings: dict = {
        "state_dir": state_dir,
        "jars_dir": load_paths().jars_dir,
        "brokers": brokers,
        "ports": tuple(free_port() for _ in range(brokers)),
        "controller_ports": tuple(free_port() for _ in range(brokers)),
        "heap": TEST_BROKER_HEAP,
        "jvm_opts": ("-XX:TieredStopAtLevel=1",),
        "heartbeat_interval_ms": TEST_HEARTBEAT_INTERVAL_MS,
        "session_timeout_ms": TEST_SESSION_TIMEOUT_MS,
    }
    settings.update(overrides)
    return ClusterConfig(**settings)


@contextlib.contextmanager
def temporary_cluster(state_dir: Path, n: int = 3, attempts: int = 3, **overrides: object) -> Iterator[EmbeddedCluster]:
    """Start an `n`-node cluster (replication factor min(3, n), min ISR 2 from 3 nodes) on free ports in
    `state_dir`; stop it when the block ends, however it ends."""
    kafka: EmbeddedCluster | None = None
    for attempt in range(attempts):
        attempt_dir = state_dir if attempt == 0 else state_dir / f"retry-{attempt}"
        kafka = EmbeddedCluster(KafkaCluster(cluster_config_for_tests(attempt_dir, n, **overrides)))
        try:
            kafka.start()
            break
        except FraudError as exc:
            kafka.close()
            # Another process can take a "free" port between our check and the JVM's bind; the ports are
            # part of the formatted quorum, so a retry is a new cluster in a new directory.
            port_race = "already taken" in str(exc) or "Address already in use" in str(exc)
            if not port_race or attempt == attempts - 1:
                raise
    assert kafka is not None
    try:
        yield kafka
    finally:
        kafka.close()


@contextlib.contextmanager
def given_or_temporary_broker(bootstrap: str | None, state_dir: Path) -> Iterator[str]:
    """The bootstrap address to use: `bootstrap` when given (a broker someone else runs), else that of a
    throwaway broker in `state_dir`, stopped when the block ends (benchmarks' `--bootstrap`)."""
    if bootstrap:
        yield bootstrap
        return
    with temporary_broker(state_dir) as kafka:
        yield kafka.bootstrap


def unique_topic_name(prefix: str = "test") -> str:
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in prefix)[:120]
    return f"{safe}.{uuid.uuid4().hex[:10]}"


def create_topic(
    config: KafkaClientConfig, name: str, partitions: int = 1, topic_config: Mapping[str, str] | None = None
) -> str:
    ensure_topics(config, [TopicSpec(name, partitions, dict(topic_config or {}))])
    return name


def delete_topics(config: KafkaClientConfig, names: list[str]) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**config.admin_kwargs())
    try:
        admin.delete_topics(names, raise_errors=False)
    finally:
        admin.close()


@contextlib.contextmanager
def temporary_connect(state_dir: Path, bootstrap: str, **overrides: object) -> Iterator[ConnectStandalone]:
    """Start a Connect standalone worker (REST on a free port) in `state_dir`; stop it when the block ends."""
    settings: dict = {
        "state_dir": state_dir,
        "jars_dir": load_paths().jars_dir,
        "bootstrap": bootstrap,
        "rest_port": free_port(),
        "heap": TEST_CONNECT_HEAP,
        "offset_flush_interval_ms": 1000,
        "jvm_opts": ("-XX:TieredStopAtLevel=1",),
    }
    settings.update(overrides)
    worker = ConnectStandalone(ConnectConfig(**settings))
    worker.start(die_with_parent=True)
    try:
        yield worker
    finally:
        worker.stop()
