"""`fraudctl kafka start|stop|status`, `fraudctl connect start|stop|status`, `fraudctl topics`.

State directories default to `load_paths().kafka_dir` and `.connect_dir` (FRAUD_HOME); the jars live in
`load_paths().jars_dir` (FRAUD_CACHE) and are fetched from Maven Central on the first start.
`kafka start --brokers N` (N > 1) starts an N-node KRaft cluster (fraud.embedded.cluster) in the state
directory instead of a single broker; `stop` and `status` see which of the two a directory holds.
`status` exits 0 when running, 3 when stopped (as init scripts do), 1 on a stale pid file or a cluster
with some nodes down.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fraud.embedded.broker import BrokerConfig, KafkaBroker, running_bootstrap
from fraud.embedded.connect import ConnectConfig, ConnectStandalone
from fraud.embedded.jars import jars_ready
from fraud.errors import FraudError
from fraud.kafka_config import KafkaClientConfig, ensure_topics, parse_bootstrap
from fraud.paths import load_paths
from fraud.topics import ALL_TOPICS

EXIT_NOT_RUNNING = 3


def _positive_port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {port}")
    return port


def _broker_count(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of brokers: {value!r}") from None
    if not 1 <= count <= 9:
        raise argparse.ArgumentTypeError(f"brokers must be in 1..9, got {count}")
    return count


def register(subparsers: argparse._SubParsersAction) -> None:
    kafka = subparsers.add_parser("kafka", help="the embedded Apache Kafka broker (single node, KRaft)")
    kafka_sub = kafka.add_subparsers(dest="kafka_command", metavar="ACTION", required=True)
    for action, text in (("start", "start the broker (a no-op if running)"),
                         ("stop", "stop the broker cleanly"),
                         ("status", "is the broker running?")):
        p = kafka_sub.add_parser(action, help=text)
        p.add_argument("--state-dir", type=Path, help="data, logs and pid file (default: FRAUD_HOME/kafka)")
        if action == "start":
            p.add_argument("--brokers", type=_broker_count, default=1,
                           help="nodes (default 1); N > 1 starts a KRaft cluster of N broker+controller nodes, "
                                "replication factor min(3, N), min.insync.replicas 2 from 3 nodes")
            p.add_argument("--port", type=_positive_port, default=9092,
                           help="client port on 127.0.0.1 (default 9092; node i of a cluster: port + 2(i-1))")
            p.add_argument("--controller-port", type=_positive_port, default=9093,
                           help="KRaft controller port on 127.0.0.1 (default 9093; node i of a cluster: port + 2(i-1))")
            p.add_argument("--heap", default="512m", help="JVM heap (default 512m)")
            p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait until it serves clients")
        p.set_defaults(func=_kafka)

    connect = subparsers.add_parser("connect", help="Kafka Connect standalone worker (FileStreamSource ingestion)")
    connect_sub = connect.add_subparsers(dest="connect_command", metavar="ACTION", required=True)
    for action, text in (("start", "start the worker (a no-op if running)"),
                         ("stop", "stop the worker"),
                         ("status", "is the worker running, and its connectors' states")):
        p = connect_sub.add_parser(action, help=text)
        p.add_argument("--state-dir", type=Path, help="offsets, logs and pid file (default: FRAUD_HOME/connect)")
        if action == "start":
            p.add_argument("connector_files", nargs="*", type=Path, metavar="CONNECTOR.properties",
                           help="connector configs to run (properties or JSON)")
            p.add_argument("--rest-port", type=_positive_port, default=8083,
                           help="REST API port on 127.0.0.1 (default 8083)")
            p.add_argument("--bootstrap", help="Kafka to connect to (default: the running embedded broker, "
                                               "else FRAUD_KAFKA_BOOTSTRAP, else 127.0.0.1:9092)")
            p.add_argument("--heap", default="256m", help="JVM heap (default 256m)")
            p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait until its REST API answers")
        p.set_defaults(func=_connect)

    topics = subparsers.add_parser("topics", help="create the project's Kafka topics (idempotent)")

    KafkaClientConfig.add_arguments(topics)
    topics.add_argument("--increase-partitions", action="store_true",
                        help="add partitions to existing topics that have fewer than declared")
    topics.set_defaults(func=_topics)


def _paths():
    return load_paths()


def _broker(args: argparse.Namespace):
    paths = _paths()
    settings = {"state_dir": (args.state_dir or paths.kafka_dir).expanduser().resolve(), "jars_dir": paths.jars_dir}
    if args.kafka_command == "start":
        settings.update(port=args.port, controller_port=args.controller_port, heap=args.heap,
                        start_timeout_s=args.timeout)
    return KafkaBroker(BrokerConfig(**settings))


def _announce_fetch(jars_dir: Path) -> None:
    if not jars_ready(jars_dir):
        print(f"fetching the Kafka jars from Maven Central into {jars_dir} (once) ...", file=sys.stderr, flush=True)


def _cluster(args: argparse.Namespace, state_dir: Path):
    from fraud.embedded.cluster import ClusterConfig, ClusterLayout, KafkaCluster, default_ports

    paths = _paths()
    if args.kafka_command == "start":
        settings = dict(state_dir=state_dir, jars_dir=paths.jars_dir, brokers=args.brokers, heap=args.heap,
                        ports=default_ports(args.port, args.brokers),
                        controller_ports=default_ports(args.controller_port, args.brokers),
                        start_timeout_s=args.timeout)
    else:
        layout = ClusterLayout.read(state_dir / "cluster.json")
        assert layout is not None
        settings = dict(state_dir=state_dir, jars_dir=paths.jars_dir, brokers=len(layout.ports))
    return KafkaCluster(ClusterConfig(**settings))


def _kafka_cluster(args: argparse.Namespace, state_dir: Path) -> int:
    cluster = _cluster(args, state_dir)
    where = f"state dir {state_dir}"
    n = len(cluster.nodes)
    if args.kafka_command == "start":
        running = cluster.running_nodes()
        if len(running) == n:
            print(f"Kafka cluster already running, {n} nodes, bootstrap {cluster.bootstrap} ({where})")
            return 0
        _announce_fetch(cluster.config.jars_dir)
        took = cluster.start()
        cfg = cluster.config
        print(f"Kafka cluster started in {took:.1f} s: {n} nodes, bootstrap {cluster.bootstrap}, replication factor "
              f"{cfg.replication_factor}, min.insync.replicas {cfg.min_insync_replicas} ({where})")
        return 0
    if args.kafka_command == "stop":
        print(f"Kafka cluster: {cluster.stop()} ({where})")
        return 0
    statuses = cluster.status()
    stale = [st for st in statuses.values() if st.state == "stale"]
    if stale:
        raise FraudError(f"stale pid file: {stale[0].detail}")
    up = [nid for nid, st in statuses.items() if st.running]
    if not up:
        print(f"Kafka cluster not running ({where})")
        return EXIT_NOT_RUNNING
    for nid, node in cluster.nodes.items():
        st = statuses[nid]
        state = f"running, pid {st.pid}" if st.running else "NOT running"
        print(f"  node {nid}: {state}, bootstrap {node.bootstrap}")
    if len(up) < n:
        print(f"Kafka cluster degraded: {len(up)} of {n} nodes running ({where})")
        return 1
    print(f"Kafka cluster running, {n} nodes, bootstrap {cluster.bootstrap} ({where})")
    return 0


def _kafka(args: argparse.Namespace) -> int:
    from fraud.embedded.cluster import is_cluster_dir

    state_dir = (args.state_dir or _paths().kafka_dir).expanduser().resolve()
    brokers = getattr(args, "brokers", 1)
    if is_cluster_dir(state_dir) or brokers > 1:
        if args.kafka_command == "start" and brokers == 1:
            raise FraudError(f"{state_dir} holds a Kafka cluster; start it with --brokers N "
                             f"or give the single broker another --state-dir")
        return _kafka_cluster(args, state_dir)
    broker = _broker(args)
    where = f"state dir {broker.state_dir}"
    if args.kafka_command == "start":
        status = broker.status()
        if status.running:
            print(f"Kafka broker already running, pid {status.pid}, bootstrap {status.info.get('bootstrap')} ({where})")
            return 0
        _announce_fetch(broker.config.jars_dir)
        took = broker.start()
        print(f"Kafka broker started in {took:.1f} s: bootstrap {broker.bootstrap} ({where}, log {broker.log_file})")
        return 0
    if args.kafka_command == "stop":
        print(f"Kafka broker {broker.stop()} ({where})")
        return 0
    status = broker.status()
    if status.running:
        print(f"Kafka broker running, pid {status.pid}, bootstrap {status.info.get('bootstrap')} ({where})")
        return 0
    if status.state == "stale":
        raise FraudError(f"stale pid file: {status.detail}")
    print(f"Kafka broker not running ({where})")
    return EXIT_NOT_RUNNING


def _connect(args: argparse.Namespace) -> int:
    paths = _paths()
    settings = {"state_dir": (args.state_dir or paths.connect_dir).expanduser().resolve(), "jars_dir": paths.jars_dir}
    if args.connect_command == "start":
        settings.update(rest_port=args.rest_port, heap=args.heap, start_timeout_s=args.timeout,
                        bootstrap=_connect_bootstrap(args.bootstrap))
    worker = ConnectStandalone(ConnectConfig(**settings))
    where = f"state dir {worker.state_dir}"
    if args.connect_command == "start":
        status = worker.status()
        if status.running:
            print(f"Kafka Connect already running, pid {status.pid}, REST {worker.rest_url} ({where})")
            return 0
        _announce_fetch(worker.config.jars_dir)
        took = worker.start(args.connector_files)
        print(f"Kafka Connect started in {took:.1f} s: REST {worker.rest_url}, Kafka {worker.config.bootstrap} "
              f"({where}, log {worker.log_file})")
        return 0
    if args.connect_command == "stop":
        print(f"Kafka Connect {worker.stop()} ({where})")
        return 0
    status = worker.status()
    if status.state == "stale":
        raise FraudError(f"stale pid file: {status.detail}")
    if not status.running:
        print(f"Kafka Connect not running ({where})")
        return EXIT_NOT_RUNNING
    print(f"Kafka Connect running, pid {status.pid}, REST {worker.rest_url} ({where})")
    for name in worker.connectors():
        st = worker.connector_status(name)
        tasks = ", ".join(f"task {t['id']} {t['state']}" for t in st.get("tasks", [])) or "no tasks"
        print(f"  connector {name}: {st['connector']['state']} ({tasks})")
    return 0


def _connect_bootstrap(flag: str | None) -> str:
    if flag:
        return ",".join(parse_bootstrap(flag, "--bootstrap"))

    return running_bootstrap(_paths().kafka_dir) or KafkaClientConfig.from_env_and_args().bootstrap


def _topics(args: argparse.Namespace) -> int:
    config = KafkaClientConfig.from_env_and_args(args, client_id="fraudctl-topics")
    results = ensure_topics(config, ALL_TOPICS, increase_partitions=args.increase_partitions)
    width = max(len(r.name) for r in results)
    for r in results:
        unit = "partition " if r.partitions == 1 else "partitions"
        print(f"{r.name:<{width}}  {r.partitions:>2} {unit}  {r.action}")
    return 0
