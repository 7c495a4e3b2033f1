"""What the harness needs of a Kafka cluster, for the embedded 3-node cluster and, while developing, the
single embedded broker (where a "bounce" is a full outage).

Nodes are (re)started from one long-lived thread: the embedded brokers die with the thread that forked
them (PR_SET_PDEATHSIG), and broker faults run on a thread of their own.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent import futures
from pathlib import Path
from typing import Any, Protocol

from fraud.kafka_config import KafkaClientConfig


class ChaosCluster(Protocol):
    """A running cluster the harness can break one node at a time."""

    description: str

    @property
    def bootstrap(self) -> str: ...

    @property
    def node_ids(self) -> tuple[int, ...]: ...

    def client_config(self, client_id: str) -> KafkaClientConfig: ...

    def hard_bounce(self, node_id: int, down_s: float) -> float:
        """SIGKILL the node, leave it down `down_s`, start it; seconds until it serves again."""

    def clean_bounce(self, node_id: int, down_s: float) -> float:
        """Controlled shutdown of the node, then start it; seconds until it serves again."""

    def wait_healthy(self, topics: list[str], timeout_s: float) -> float:
        """Wait until every partition of `topics` has a leader and all its replicas in sync."""

    def leaders(self, topics: list[str]) -> dict[tuple[str, int], int]:
        """(topic, partition) -> leader node."""


class SingleBroker:
    """The single embedded broker (fraud.embedded.testing.temporary_broker) behind the cluster interface."""

    def __init__(self, kafka: Any) -> None:
        self.kafka = kafka
        self.description = "1 broker (a bounce is a full outage)"
        self._spawner = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="chaos-broker-spawner")

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def node_ids(self) -> tuple[int, ...]:
        return (1,)

    def client_config(self, client_id: str) -> KafkaClientConfig:
        return self.kafka.client_config(client_id)

    def _start(self) -> None:
        self._spawner.submit(self.kafka.start).result()

    def hard_bounce(self, node_id: int, down_s: float) -> float:
        started = time.monotonic()
        pid = self.kafka.broker.status().pid
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            while Path(f"/proc/{pid}").exists() and _state(pid) not in ("Z", None):
                time.sleep(0.05)
        self.kafka.stop()  # forgets the pid file of the killed process
        time.sleep(down_s)
        self._start()
        return time.monotonic() - started

    def clean_bounce(self, node_id: int, down_s: float) -> float:
        started = time.monotonic()
        self.kafka.stop()
        time.sleep(down_s)
        self._start()
        return time.monotonic() - started

    def wait_healthy(self, topics: list[str], timeout_s: float) -> float:
        return 0.0  # one replica: in sync whenever the broker is up

    def leaders(self, topics: list[str]) -> dict[tuple[str, int], int]:
        return {}

    def close(self) -> None:
        self._spawner.shutdown(wait=True)


class EmbeddedClusterAdapter:
    """The embedded multi-node cluster (fraud.embedded.testing.temporary_cluster)."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.description = f"{len(cluster.node_ids)} brokers"

    @property
    def bootstrap(self) -> str:
        return self.cluster.bootstrap

    @property
    def node_ids(self) -> tuple[int, ...]:
        return tuple(self.cluster.node_ids)

    def client_config(self, client_id: str) -> KafkaClientConfig:
        return self.cluster.client_config(client_id)

    def hard_bounce(self, node_id: int, down_s: float) -> float:
        return self.cluster.hard_bounce(node_id, down_s=down_s)

    def clean_bounce(self, node_id: int, down_s: float) -> float:
        return self.cluster.clean_bounce(node_id, down_s=down_s)

    def wait_healthy(self, topics: list[str], timeout_s: float) -> float:
        return self.cluster.cluster.wait_fully_replicated(topics, timeout_s=timeout_s)

    def leaders(self, topics: list[str]) -> dict[tuple[str, int], int]:
        described = self.cluster.cluster.describe(topics)
        return {(t, p): info["leader"] for t, parts in described.items() for p, info in parts.items()}

    def close(self) -> None:
        pass


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return None
