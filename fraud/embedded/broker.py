"""A single-node Apache Kafka 4.1 (KRaft, combined broker+controller) on 127.0.0.1, from Maven jars.

State directory layout (survives restarts; the broker keeps its data there):
    server.properties   written from BrokerConfig at every start
    data/               log.dirs (formatted once by StorageTool; meta.properties holds the cluster id)
    kafka.pid, kafka.json, logs/kafka.log, logs/kafka.out

Settings that make one node behave like a small cluster for the project: replication factor and min ISR
1 for the internal topics (consumer offsets, transaction state, share groups), so that consumer groups
and transactions (exactly-once) work; no initial rebalance delay; topics are not auto-created (they
come from fraud.topics via `fraudctl topics`).
"""

from __future__ import annotations

import re
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

    def __post_init__(self) -> None:
        for name in ("port", "controller_port"):
            value = getattr(self, name)
            if not 0 < value < 65536:
                raise FraudError(f"{name.replace('_', '-')} must be in 1..65535, got {value}")
        if self.port == self.controller_port:
            raise FraudError(f"broker port and controller port must differ (both {self.port})")
        if not _HEAP_RE.match(self.heap):
            raise FraudError(f"heap must look like 512m or 1g, got {self.heap!r}")

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def server_properties(self) -> dict[str, str]:
        rf_one = {
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
        }
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{self.host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.state_dir / "data"),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "offsets.topic.num.partitions": str(self.internal_topic_partitions),
            "transaction.state.log.num.partitions": str(self.internal_topic_partitions),
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true" if self.auto_create_topics else "false",
            **rf_one,
        }
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
        cfg = self.config
        with self._service.start_lock():
            status = self.status()
            if status.running:
                return None
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
                self._format_storage()
            cmd = jars.java_command(
                cfg.jars_dir,
                MAIN_CLASS,
                [str(self.properties_file)],
                heap=cfg.heap,
                logs_dir=self._service.logs_dir,
                log_name="kafka",
                jvm_opts=cfg.jvm_opts,
            )
            info = {"bootstrap": cfg.bootstrap, "port": cfg.port, "controller_port": cfg.controller_port, "host": cfg.host}
            return self._service.launch(
                cmd, info, self._ready, timeout_s=cfg.start_timeout_s, die_with_parent=die_with_parent
            )

    def _format_storage(self) -> None:
        cluster_id = jars.run_tool(self.config.jars_dir, STORAGE_TOOL, ["random-uuid"]).strip().splitlines()[-1]
        jars.run_tool(
            self.config.jars_dir,
            STORAGE_TOOL,
            ["format", "--standalone", "-t", cluster_id, "-c", str(self.properties_file)],
        )
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
            return bool(cluster.get("brokers"))
        finally:
            admin.close()

    def stop(self) -> str:
        return self._service.stop(self.config.stop_timeout_s)

    def restart(self) -> float | None:
        self.stop()
        return self.start()

    def log_summary(self) -> str:
        return self._service.log_summary()


def running_bootstrap(state_dir: Path) -> str | None:
    """The bootstrap address of the broker running from `state_dir`, or None."""
    status = JvmService("kafka", "Kafka broker", state_dir, MAIN_CLASS).status()
    if status.running and status.info:
        return status.info.get("bootstrap")
    return None
