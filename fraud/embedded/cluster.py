"""A multi-node Apache Kafka 4.1 cluster on 127.0.0.1 (KRaft), from the same Maven jars as the single broker.

Every node is a combined broker+controller JVM (`fraud.embedded.broker.KafkaBroker` with a `quorum`), so
three nodes are a three-voter KRaft quorum and three brokers. Why combined rather than a separate
controller quorum: Kafka 4.1 supports both (combined mode is what upstream recommends for development and
small clusters, dedicated controllers for large production ones). On a 2-core machine three JVMs start
about twice as fast as six and leave the CPU to the tests; and a combined node killed with SIGKILL takes a
broker *and* a controller voter with it (the quorum keeps its 2-of-3 majority), which is the harsher
failure for the chaos tests. The quorum is dynamic (KIP-853, `controller.quorum.bootstrap.servers`),
formatted once with `--initial-controllers` naming all three voters and their metadata directory ids.

Replication: the internal topics (consumer offsets, transaction state, share-group state) get replication
factor 3 and min ISR 2 (for 3 or more nodes; a 2-node cluster gets 2 / 1), and so do new topics by default
(`default.replication.factor`, `min.insync.replicas`): with acks=all a write is acknowledged once two
replicas have it, and any one node can die without losing an acknowledged record or stopping writes.

State directory layout:
    cluster.json        cluster id, node ids, ports and metadata directory ids (fixed at first start:
                        the quorum's endpoints are written into its log, so ports never change)
    node-<id>/          one KafkaBroker state directory per node (server.properties, data/, logs/, pid)

Fault injection (the chaos tests): `kill(node)` is SIGKILL (no shutdown at all), `stop_node(node)` is
SIGTERM (controlled shutdown: leadership moves away first), `start_node(node)` brings it back on the same
ports and data; `hard_bounce` / `clean_bounce` do both and return the seconds until it serves again;
`wait_fully_replicated()` waits until every partition's ISR is complete again (before the next bounce).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fraud.embedded.broker import (
    _HEAP_RE,
    DEFAULT_CONTROLLER_PORT,
    DEFAULT_PORT,
    BrokerConfig,
    KafkaBroker,
    QuorumVoter,
)
from fraud.embedded.process import ServiceStatus
from fraud.errors import FraudError

LAYOUT_FILE = "cluster.json"
QUORUM_TOOL = "org.apache.kafka.tools.MetadataQuorumCommand"
MAX_NODES = 9


def kafka_uuid() -> str:
    """A random Kafka Uuid in its string form (URL-safe base64 of 16 bytes, no padding), as
    `StorageTool random-uuid` prints it: not the zero or metadata-topic id, not starting with '-'.
    Made here rather than by a JVM (about a second each on two shared cores)."""
    while True:
        raw = uuid.uuid4().bytes
        text = base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
        if not text.startswith("-") and int.from_bytes(raw, "big") > 1:
            return text


def default_ports(first: int, count: int) -> tuple[int, ...]:
    """Ports of `count` nodes from the single broker's: 9092, 9094, 9096 (controllers 9093, 9095, 9097)."""
    return tuple(first + 2 * i for i in range(count))


@dataclass(frozen=True)
class ClusterConfig:
    state_dir: Path
    jars_dir: Path
    brokers: int = 3
    host: str = "127.0.0.1"
    #: Client port of each node (default: 9092, 9094, ...).
    ports: tuple[int, ...] = ()
    #: KRaft controller port of each node (default: 9093, 9095, ...).
    controller_ports: tuple[int, ...] = ()
    heap: str = "512m"
    #: Replication factor of the internal topics and default of new topics (None: min(3, brokers)).
    replication_factor: int | None = None
    #: min.insync.replicas (None: 2 when the replication factor is 3 or more, else 1).
    min_insync_replicas: int | None = None
    internal_topic_partitions: int = 10
    #: broker.heartbeat.interval.ms / broker.session.timeout.ms: a SIGKILLed node's partitions get new
    #: leaders once the controller has missed its heartbeats for the session timeout (Kafka: 2 s / 9 s).
    heartbeat_interval_ms: int | None = None
    session_timeout_ms: int | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)
    jvm_opts: tuple[str, ...] = ()
    start_timeout_s: float = 180.0
    stop_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.brokers <= MAX_NODES:
            raise FraudError(f"brokers must be in 1..{MAX_NODES}, got {self.brokers}")
        ports = self.ports or default_ports(DEFAULT_PORT, self.brokers)
        controller_ports = self.controller_ports or default_ports(DEFAULT_CONTROLLER_PORT, self.brokers)
        for what, values in (("ports", ports), ("controller ports", controller_ports)):
            if len(values) != self.brokers:
                raise FraudError(f"{len(values)} {what} given for {self.brokers} brokers")
            for port in values:
                if not 0 < port < 65536:
                    raise FraudError(f"{what} must be in 1..65535, got {port}")
        every = [*ports, *controller_ports]
        if len(set(every)) != len(every):
            raise FraudError(f"the cluster's broker and controller ports must all differ, got {every}")
        if not _HEAP_RE.match(self.heap):
            raise FraudError(f"heap must look like 512m or 1g, got {self.heap!r}")
        rf = self.replication_factor if self.replication_factor is not None else min(3, self.brokers)
        isr = self.min_insync_replicas if self.min_insync_replicas is not None else (2 if rf >= 3 else 1)
        if not 1 <= rf <= self.brokers:
            raise FraudError(f"replication factor must be in 1..{self.brokers} (the number of brokers), got {rf}")
        if not 1 <= isr <= rf:
            raise FraudError(f"min.insync.replicas must be in 1..{rf} (the replication factor), got {isr}")
        object.__setattr__(self, "ports", tuple(ports))
        object.__setattr__(self, "controller_ports", tuple(controller_ports))
        object.__setattr__(self, "replication_factor", rf)
        object.__setattr__(self, "min_insync_replicas", isr)

    @property
    def node_ids(self) -> tuple[int, ...]:
        return tuple(range(1, self.brokers + 1))

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.host}:{port}" for port in self.ports)


@dataclass(frozen=True)
class ClusterLayout:
    """What is fixed when a cluster is first formatted (cluster.json)."""

    cluster_id: str
    host: str
    ports: tuple[int, ...]
    controller_ports: tuple[int, ...]
    directory_ids: tuple[str, ...]

    @classmethod
    def new(cls, config: ClusterConfig) -> ClusterLayout:
        return cls(kafka_uuid(), config.host, config.ports, config.controller_ports,
                   tuple(kafka_uuid() for _ in config.node_ids))

    @classmethod
    def read(cls, path: Path) -> ClusterLayout | None:
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise FraudError(f"{path} is not valid JSON ({exc}); remove the cluster's state directory") from None
        try:
            return cls(str(doc["cluster_id"]), str(doc["host"]), tuple(int(p) for p in doc["ports"]),
                       tuple(int(p) for p in doc["controller_ports"]), tuple(str(d) for d in doc["directory_ids"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise FraudError(f"{path} does not describe a cluster ({exc}); remove the cluster's state directory") from None

    def write(self, path: Path) -> None:
        doc = {"cluster_id": self.cluster_id, "host": self.host, "ports": list(self.ports),
               "controller_ports": list(self.controller_ports), "directory_ids": list(self.directory_ids)}
        path.write_text(json.dumps(doc, indent=2) + "\n")

    @property
    def quorum(self) -> tuple[QuorumVoter, ...]:
        return tuple(QuorumVoter(i + 1, self.host, port, self.directory_ids[i])
                     for i, port in enumerate(self.controller_ports))


def is_cluster_dir(state_dir: Path) -> bool:
    return (state_dir / LAYOUT_FILE).is_file()


class KafkaCluster:
    """Start, stop, inspect and fault-inject the nodes of one cluster state directory."""

    def __init__(self, config: ClusterConfig) -> None:
        layout = ClusterLayout.read(config.state_dir / LAYOUT_FILE)
        if layout is not None:
            given = (config.brokers, config.host, config.ports, config.controller_ports)
            formatted = (len(layout.ports), layout.host, layout.ports, layout.controller_ports)
            defaults = (config.ports == default_ports(DEFAULT_PORT, config.brokers)
                        and config.controller_ports == default_ports(DEFAULT_CONTROLLER_PORT, config.brokers))
            if given != formatted and not (defaults and config.brokers == len(layout.ports)):
                raise FraudError(
                    f"the cluster in {config.state_dir} was formatted with {len(layout.ports)} brokers on {layout.host} "
                    f"ports {list(layout.ports)} (controllers {list(layout.controller_ports)}); a KRaft quorum keeps "
                    f"its endpoints, so start it with those, or remove the directory for a new cluster")
            # Ports are the formatted ones (a restart with default flags reuses them).
            config = replace(config, ports=layout.ports, controller_ports=layout.controller_ports, host=layout.host)
        elif (config.state_dir / "data" / "meta.properties").is_file():
            raise FraudError(f"{config.state_dir} holds a single broker's data; stop it and give the cluster "
                             f"another --state-dir (or remove that directory)")
        self.config = config
        self._layout = layout
        self.nodes: dict[int, KafkaBroker] = {nid: KafkaBroker(self._node_config(nid, layout)) for nid in config.node_ids}
        self.last_start_s: dict[int, float] = {}

    def _node_config(self, node_id: int, layout: ClusterLayout | None) -> BrokerConfig:
        cfg = self.config
        i = node_id - 1
        return BrokerConfig(
            state_dir=cfg.state_dir / f"node-{node_id}",
            jars_dir=cfg.jars_dir,
            host=cfg.host,
            port=cfg.ports[i],
            controller_port=cfg.controller_ports[i],
            heap=cfg.heap,
            internal_topic_partitions=cfg.internal_topic_partitions,
            overrides=cfg.overrides,
            jvm_opts=cfg.jvm_opts,
            start_timeout_s=cfg.start_timeout_s,
            stop_timeout_s=cfg.stop_timeout_s,
            node_id=node_id,
            quorum=layout.quorum if layout is not None else (),
            replication_factor=cfg.replication_factor or 1,
            min_insync_replicas=cfg.min_insync_replicas or 1,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            session_timeout_ms=cfg.session_timeout_ms,
        )

    # -- properties ----------------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return self.config.state_dir

    @property
    def bootstrap(self) -> str:
        return self.config.bootstrap

    @property
    def cluster_id(self) -> str | None:
        return self._layout.cluster_id if self._layout is not None else None

    def node(self, node_id: int) -> KafkaBroker:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise FraudError(f"no node {node_id} in this cluster (nodes {sorted(self.nodes)})") from None

    def status(self) -> dict[int, ServiceStatus]:
        return {nid: node.status() for nid, node in self.nodes.items()}

    def running_nodes(self) -> list[int]:
        return [nid for nid, st in self.status().items() if st.running]

    # -- whole cluster -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".cluster.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def start(self, *, die_with_parent: bool = False) -> float | None:
        """Start every node that is not running and wait until each serves as an unfenced broker.

        Formats the cluster on first use. Returns the seconds taken, or None when all were running.
        With `die_with_parent`, call it from a thread that outlives the cluster (see BackgroundService.spawn).
        """
        started = time.monotonic()
        with self._lock():
            if self._layout is None:
                self._layout = ClusterLayout.new(self.config)
                self.nodes = {nid: KafkaBroker(self._node_config(nid, self._layout)) for nid in self.config.node_ids}
                self._layout.write(self.state_dir / LAYOUT_FILE)
            layout = self._layout
            # Formatting is one StorageTool JVM per node: in parallel (a thread only waits on a subprocess).
            with futures.ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
                prepared = dict(zip(self.nodes, pool.map(lambda n: n.prepare(layout.cluster_id), self.nodes.values()),
                                    strict=True))
            to_start = [nid for nid, ok in prepared.items() if ok]
            if not to_start:
                return None
            try:
                # Spawned from this thread (PR_SET_PDEATHSIG is per thread); a quorum needs a majority up
                # before any node can become ready, so all start before any is waited for.
                for nid in to_start:
                    self.nodes[nid].spawn(die_with_parent=die_with_parent)
                for nid in to_start:
                    self.nodes[nid].wait_ready(started)
                    self.last_start_s[nid] = time.monotonic() - started
            except BaseException:
                for nid in to_start:
                    self.nodes[nid].kill()
                raise
        return time.monotonic() - started

    def stop(self) -> str:
        """Controlled shutdown of every node, in parallel; returns what happened to each, in a few words.

        In parallel because a combined node's controlled shutdown needs a controller quorum: stopped one
        after another, the last node waits for a majority that is gone until its timeout.
        """
        with futures.ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            results = dict(zip(self.nodes, pool.map(lambda n: n.stop(), self.nodes.values()), strict=True))
        return "; ".join(f"node {nid} {what}" for nid, what in results.items())

    # -- one node at a time ---------------------------------------------------------------------

    def kill(self, node_id: int) -> str:
        """SIGKILL one node (a crash: no controlled shutdown, no flush)."""
        return self.node(node_id).kill()

    def stop_node(self, node_id: int) -> str:
        """SIGTERM one node: controlled shutdown (its partition leaderships move to the other replicas)."""
        return self.node(node_id).stop()

    def start_node(self, node_id: int, *, die_with_parent: bool = False) -> float | None:
        """Start one stopped or killed node on its ports and data; seconds until it is an unfenced broker."""
        if self._layout is None:
            raise FraudError(f"the cluster in {self.state_dir} was never started")
        node = self.node(node_id)
        started = time.monotonic()
        with self._lock():
            if not node.prepare(self._layout.cluster_id):
                return None
            node.spawn(die_with_parent=die_with_parent)
            took = node.wait_ready(started)
        self.last_start_s[node_id] = took
        return took

    def hard_bounce(self, node_id: int, *, down_s: float = 0.0, die_with_parent: bool = False) -> float:
        """SIGKILL one node, leave it down `down_s`, start it; seconds from the kill until it serves again."""
        started = time.monotonic()
        self.kill(node_id)
        if down_s > 0:
            time.sleep(down_s)
        self.start_node(node_id, die_with_parent=die_with_parent)
        return time.monotonic() - started

    def clean_bounce(self, node_id: int, *, down_s: float = 0.0, die_with_parent: bool = False) -> float:
        """Controlled shutdown of one node, then start it; seconds from the SIGTERM until it serves again."""
        started = time.monotonic()
        self.stop_node(node_id)
        if down_s > 0:
            time.sleep(down_s)
        self.start_node(node_id, die_with_parent=die_with_parent)
        return time.monotonic() - started

    # -- what the cluster says ------------------------------------------------------------------

    def _admin(self) -> Any:
        from kafka import KafkaAdminClient

        running = self.running_nodes() or list(self.nodes)
        bootstrap = [self.nodes[nid].bootstrap for nid in running]
        return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="fraud-embedded-cluster",
                                request_timeout_ms=10_000, bootstrap_timeout_ms=10_000)

    def describe(self, topics: list[str] | None = None, timeout_s: float = 30.0) -> dict[str, dict[int, dict]]:
        """topic -> partition -> {"leader", "replicas", "isr"} (every topic, internal ones too, when None).

        Asked of the running nodes; a node that dies while being asked is retried on the others.
        """
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                admin = self._admin()
                try:
                    described = admin.describe_topics(topics)
                finally:
                    admin.close()
                break
            except KafkaError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        out: dict[str, dict[int, dict]] = {}
        for topic in described:
            if topic.get("error_code", 0) != 0:
                continue
            # kafka-python 3 gives MetadataResponse field names (partition_index, leader_id, replica_nodes, isr_nodes)
            out[topic["name"]] = {
                p["partition_index"]: {"leader": p["leader_id"], "replicas": list(p["replica_nodes"]),
                                       "isr": list(p["isr_nodes"])}
                for p in topic["partitions"]
            }
        return out

    def leaders(self, topic: str) -> dict[int, int]:
        """partition -> leader node id (-1: none) of one topic."""
        return {p: info["leader"] for p, info in self.describe([topic]).get(topic, {}).items()}

    def under_replicated(self, topics: list[str] | None = None) -> list[tuple[str, int]]:
        """(topic, partition) whose in-sync replicas are fewer than its replicas, or that has no leader."""
        return sorted((t, p) for t, parts in self.describe(topics).items() for p, info in parts.items()
                      if info["leader"] < 0 or set(info["isr"]) != set(info["replicas"]))

    def wait_fully_replicated(self, topics: list[str] | None = None, timeout_s: float = 120.0) -> float:
        """Wait until every partition (of `topics`, default all) has a leader and a complete ISR; seconds taken.

        A restarted node rejoins the ISR only once it has caught up: bouncing the next node before that
        would leave a partition with one in-sync replica, below min.insync.replicas.
        """
        from kafka.errors import KafkaError

        started = time.monotonic()
        last: list[tuple[str, int]] | str = []
        while time.monotonic() - started < timeout_s:
            try:
                last = self.under_replicated(topics)
                if not last:
                    return time.monotonic() - started
            except KafkaError as exc:  # metadata moves while nodes restart: ask again
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.25)
        shown = last if isinstance(last, str) else f"{len(last)} partitions, e.g. {last[:5]}"
        raise FraudError(f"cluster {self.bootstrap} not fully replicated after {timeout_s:.0f} s: {shown}")

    def quorum_status(self) -> dict[str, Any]:
        """The KRaft quorum as `kafka-metadata-quorum describe --status` reports it (asked of the running
        controllers): {"leader_id": int, "leader_epoch": int, "voters": [node ids], "observers": [...]}.
        Runs the tool in a JVM (a few seconds): for tests and operators, not for a hot loop."""
        from fraud.embedded import jars

        running = self.running_nodes()
        if not running:
            raise FraudError(f"no node of the cluster in {self.state_dir} is running")
        controllers = ",".join(f"{self.config.host}:{self.config.controller_ports[nid - 1]}" for nid in running)
        out = jars.run_tool(self.config.jars_dir, QUORUM_TOOL, ["--bootstrap-controller", controllers, "describe", "--status"])
        fields = {}
        for line in out.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        try:
            return {
                "leader_id": int(fields["LeaderId"]),
                "leader_epoch": int(fields["LeaderEpoch"]),
                "voters": sorted(v["id"] for v in json.loads(fields["CurrentVoters"])),
                "observers": sorted(v["id"] for v in json.loads(fields.get("CurrentObservers") or "[]")),
            }
        except (KeyError, ValueError) as exc:
            raise FraudError(f"cannot read the quorum status from {QUORUM_TOOL}'s output ({exc}): {out[:300]!r}") from None

    def log_summary(self) -> str:
        return " | ".join(f"node {nid}: {node.log_summary()}" for nid, node in self.nodes.items())


def running_cluster_bootstrap(state_dir: Path) -> str | None:
    """The bootstrap servers of the running nodes of the cluster in `state_dir`, or None."""
    layout = ClusterLayout.read(state_dir / LAYOUT_FILE)
    if layout is None:
        return None
    servers = []
    for i, port in enumerate(layout.ports):
        node_dir = state_dir / f"node-{i + 1}"
        status = KafkaBroker(BrokerConfig(state_dir=node_dir, jars_dir=node_dir, port=port,
                                          controller_port=layout.controller_ports[i])).status()
        if status.running:
            servers.append(f"{layout.host}:{port}")
    return ",".join(servers) or None
