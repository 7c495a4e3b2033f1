"""An Apache Kafka 4.1 node (KRaft, combined broker+controller) on 127.0.0.1, from Maven jars: a single-node
broker on its own, or one member of `fraud.embedded.cluster.KafkaCluster`.

State directory layout (survives restarts; the broker keeps its data there):
    server.properties   written from BrokerConfig at every start
    data/               log.dirs (formatted once by StorageTool; meta.properties holds the cluster id)
    kafka.pid, kafka.json, logs/kafka.log, logs/kafka.out

Settings that make one node behave like a small cluster for the project: replication factor and min ISR
1 for the internal topics (consumer offsets, transaction state, share groups), so that consumer groups
and transactions (exactly-once) work; no initial rebalance delay; topics are not auto-created (they
come from fraud.topics via `fraudctl topics`). A cluster member (`quorum` set) instead gets the
cluster's replication factor and min ISR for the internal topics and as the topic defaults, and is
formatted with the whole controller quorum (`--initial-controllers`) rather than `--standalone`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fraud.embedded import jars
from fraud.embedded.process import JvmService, ServiceStatus, tcp_accepts
from fraud.errors import FraudError

MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
DEFAULT_PORT = 9092
DEFAULT_CONTROLLER_PORT = 9093
_HEAP_RE = re.compile(r"^\d+[kKmMgG]?$")


@dataclass(frozen=True)
class QuorumVoter:
    """One KRaft controller of a cluster: node id, controller endpoint and its metadata directory id
    (a Kafka Uuid, fixed when the cluster is formatted: `--initial-controllers id@host:port:dir-id`)."""

    node_id: int
    host: str
    port: int
    directory_id: str

    def __str__(self) -> str:
        return f"{self.node_id}@{self.host}:{self.port}:{self.directory_id}"


@dataclass(frozen=True)
class BrokerConfig:
    state_dir: Path
    jars_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    controller_port: int = DEFAULT_CONTROLLER_PORT
    heap: str = "512m"
    #: Partitions of __consumer_offsets and __transaction_state (upstream: 50; 10 starts faster on one node).
    internal_topic_partitions: int = 10
    auto_create_topics: bool = False
    #: Extra server.properties entries (they win over the ones above).
    overrides: Mapping[str, str] = field(default_factory=dict)
    jvm_opts: tuple[str, ...] = ()
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 60.0
    #: KRaft node id (each member of a cluster has its own).
    node_id: int = 1
    #: The controller quorum when this node is a cluster member: every voter, this node included.
    #: Empty: a single node that is its own quorum (formatted `--standalone`).
    quorum: tuple[QuorumVoter, ...] = ()
    #: Replication factor of the internal topics and the default for new topics (default.replication.factor).
    replication_factor: int = 1
    #: min.insync.replicas of the internal transaction log and the default for topics.
    min_insync_replicas: int = 1
    #: broker.heartbeat.interval.ms / broker.session.timeout.ms (None: Kafka's 2000 / 9000). The session
    #: timeout is how long the partitions led by a killed node stay leaderless before the controller
    #: fences it and elects new leaders.
    heartbeat_interval_ms: int | None = None
    session_timeout_ms: int | None = None

    def __post_init__(self) -> None:
        for name in ("port", "controller_port"):
            value = getattr(self, name)
            if not 0 < value < 65536:
                raise FraudError(f"{name.replace('_', '-')} must be in 1..65535, got {value}")
        if self.port == self.controller_port:
            raise FraudError(f"broker port and controller port must differ (both {self.port})")
        if not _HEAP_RE.match(self.heap):
            raise FraudError(f"heap must look like 512m or 1g, got {self.heap!r}")
        if self.quorum and self.node_id not in {v.node_id for v in self.quorum}:
            raise FraudError(f"node {self.node_id} is not one of the quorum's voters {[v.node_id for v in self.quorum]}")
        if not 1 <= self.min_insync_replicas <= self.replication_factor:
            raise FraudError(f"min.insync.replicas must be in 1..replication factor ({self.replication_factor}), "
                             f"got {self.min_insync_replicas}")

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def server_properties(self) -> dict[str, str]:
        rf, isr = str(self.replication_factor), str(self.min_insync_replicas)
        replication = {
            "offsets.topic.replication.factor": rf,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
        }
        quorum = ",".join(f"{v.host}:{v.port}" for v in self.quorum) or f"{self.host}:{self.controller_port}"
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.bootstrap.servers": quorum,
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.state_dir / "data"),
            "num.partitions": "1",
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "num.network.threads": "2",
            "num.io.threads": "4",
            "offsets.topic.num.partitions": str(self.internal_topic_partitions),
            "transaction.state.log.num.partitions": str(self.internal_topic_partitions),
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true" if self.auto_create_topics else "false",
            **replication,
        }
        if self.heartbeat_interval_ms is not None:
            props["broker.heartbeat.interval.ms"] = str(self.heartbeat_interval_ms)
        if self.session_timeout_ms is not None:
            props["broker.session.timeout.ms"] = str(self.session_timeout_ms)
        props.update(self.overrides)
        return props


def write_properties(path: Path, props: Mapping[str, str], header: str) -> None:
    lines = [f"# {header}"] + [f"{key}={_escape(value)}" for key, value in props.items()]
    path.write_text("\n".join(lines) + "\n")


def _escape(value: str) -> str:
    # java.util.Properties treats backslashes as escapes; paths and values here are plain otherwise.
    return value.replace("\\", "\\\\")


class KafkaBroker:
    """Start, stop and inspect the embedded broker of one state directory."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self._service = JvmService("kafka", "Kafka broker", config.state_dir, MAIN_CLASS)

    @property
    def bootstrap(self) -> str:
        return self.config.bootstrap

    @property
    def state_dir(self) -> Path:
        return self.config.state_dir

    @property
    def properties_file(self) -> Path:
        return self.config.state_dir / "server.properties"

    @property
    def log_file(self) -> Path:
        return self._service.log_file

    @property
    def data_dir(self) -> Path:
        return self.config.state_dir / "data"

    def status(self) -> ServiceStatus:
        return self._service.status()

    def is_running(self) -> bool:
        return self.status().running

    def is_formatted(self) -> bool:
        return (self.data_dir / "meta.properties").is_file()

    def cluster_id(self) -> str | None:
        meta = self.data_dir / "meta.properties"
        if not meta.is_file():
            return None
        for line in meta.read_text().splitlines():
            if line.startswith("cluster.id="):
                return line.split("=", 1)[1].strip()
        return None

    def start(self, *, die_with_parent: bool = False) -> float | None:
        """Start the broker and wait until a Kafka client gets metadata from it.

        Returns the seconds it took, or None if this state directory's broker was already running (a no-op).
        Raises FraudError on a stale pid file, a taken port, a broker that dies or never becomes ready.
        """
        started = time.monotonic()
        with self._service.start_lock():  # held until ready: a concurrent start returns once this one serves
            if not self.prepare():
                return None
            self.spawn(die_with_parent=die_with_parent)
            return self.wait_ready(started)

    def prepare(self, cluster_id: str | None = None) -> bool:
        """Everything before the JVM starts: checks, jars, server.properties, storage format (first time).

        False when this state directory's broker is already running. `cluster_id` is the id a cluster
        member is formatted with (None: a new random one).
        """
        cfg = self.config
        status = self.status()
        if status.running:
            return False
        if status.state != "stopped":
            raise self._service.stale_error(status, f"fraudctl kafka stop --state-dir {cfg.state_dir}")
        self._service.check_ports_free(
            {"broker": (cfg.host, cfg.port), "controller": (cfg.host, cfg.controller_port)},
            {"broker": "--port", "controller": "--controller-port"},
        )
        jars.ensure_jars(cfg.jars_dir)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        write_properties(self.properties_file, cfg.server_properties(), "written by fraud.embedded.broker at every start")
        if not self.is_formatted():
            self._format_storage(cluster_id)
        return True

    def spawn(self, *, die_with_parent: bool = False) -> int:
        """Start the prepared JVM without waiting (see BackgroundService.spawn for `die_with_parent`)."""
        cfg = self.config
        cmd = jars.java_command(
            cfg.jars_dir,
            MAIN_CLASS,
            [str(self.properties_file)],
            heap=cfg.heap,
            logs_dir=self._service.logs_dir,
            log_name="kafka",
            jvm_opts=cfg.jvm_opts,
        )
        info = {"bootstrap": cfg.bootstrap, "port": cfg.port, "controller_port": cfg.controller_port,
                "host": cfg.host, "node_id": cfg.node_id}
        return self._service.spawn(cmd, info, die_with_parent=die_with_parent)

    def wait_ready(self, started: float) -> float:
        """Wait until the spawned broker serves metadata that lists it as a live broker."""
        return self._service.wait_ready(self._ready, started, timeout_s=self.config.start_timeout_s)

    def _format_storage(self, cluster_id: str | None = None) -> None:
        cfg = self.config
        if cluster_id is None:
            cluster_id = jars.run_tool(cfg.jars_dir, STORAGE_TOOL, ["random-uuid"]).strip().splitlines()[-1]
        if cfg.quorum:
            quorum = ["--initial-controllers", ",".join(str(v) for v in cfg.quorum)]
        else:
            quorum = ["--standalone"]
        jars.run_tool(cfg.jars_dir, STORAGE_TOOL, ["format", *quorum, "-t", cluster_id, "-c", str(self.properties_file)])
        if not self.is_formatted():
            raise FraudError(f"StorageTool format left no meta.properties in {self.data_dir}")

    def _ready(self) -> bool:
        if not tcp_accepts(self.config.host, self.config.port):
            return False
        from kafka import KafkaAdminClient  # lazy: `fraudctl --help` stays fast

        admin = KafkaAdminClient(
            bootstrap_servers=self.config.bootstrap,
            client_id="fraud-embedded-readiness",
            request_timeout_ms=5000,
            bootstrap_timeout_ms=5000,
        )
        try:
            cluster = admin.describe_cluster()
            # Metadata lists live (unfenced) brokers; a cluster member is ready when it is one of them.
            return any(_broker_id(b) == self.config.node_id and not b.get("is_fenced", False)
                       for b in cluster.get("brokers", ()))
        finally:
            admin.close()

    def stop(self) -> str:
        """SIGTERM: a controlled shutdown (leadership moves to the other replicas first), SIGKILL after the timeout."""
        return self._service.stop(self.config.stop_timeout_s)

    def kill(self) -> str:
        """SIGKILL: the node dies as in a crash; its partitions fail over after the session timeout."""
        return self._service.kill()

    @property
    def pid(self) -> int | None:
        status = self.status()
        return status.pid if status.running else None

    def restart(self) -> float | None:
        self.stop()
        return self.start()

    def log_summary(self) -> str:
        return self._service.log_summary()


def _broker_id(broker: Mapping) -> int | None:
    """The id in one entry of kafka-python's describe_cluster() (DescribeCluster: broker_id; Metadata: node_id)."""
    value = broker.get("broker_id", broker.get("node_id"))
    return int(value) if value is not None else None


def running_bootstrap(state_dir: Path) -> str | None:
    """The bootstrap address of the broker (or the running nodes of the cluster) of `state_dir`, or None."""
    from fraud.embedded.cluster import is_cluster_dir, running_cluster_bootstrap  # same package; cluster imports us

    if is_cluster_dir(state_dir):
        return running_cluster_bootstrap(state_dir)
    status = JvmService("kafka", "Kafka broker", state_dir, MAIN_CLASS).status()
    if status.running and status.info:
        return status.info.get("bootstrap")
    return None
