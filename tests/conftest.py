"""Shared pytest fixtures.

Kafka (fraud.embedded): `kafka_broker` is one real Apache Kafka broker for the whole session, on free
ports in a temporary directory, started on first use and always stopped at the end (and killed with the
test process if that dies). `kafka_topic` makes uniquely named topics per test, so tests that share the
broker do not see each other's records. `kafka_connect` is a Kafka Connect standalone worker against that
broker, started only when a test asks for it. `kafka_cluster` is a real 3-node KRaft cluster (replication
factor 3, min.insync.replicas 2) for the tests that bounce brokers, one per test module that uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import pytest

from fraud.embedded.testing import EmbeddedKafka, create_topic, delete_topics, temporary_broker, unique_topic_name
from fraud.kafka_config import KafkaClientConfig


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    """A running broker: `.bootstrap` ("127.0.0.1:<port>"), `.client_config()`, `.restart()`, `.stop()`, `.start()`.

    A test that stops or restarts it must leave it running (call `.start()` in a `finally`).
    """
    with temporary_broker(tmp_path_factory.mktemp("kafka")) as kafka:
        yield kafka


@pytest.fixture
def kafka_client_config(kafka_broker: EmbeddedKafka, request: pytest.FixtureRequest) -> KafkaClientConfig:
    """A KafkaClientConfig for the session broker, with the test's name as client id."""
    return kafka_broker.client_config(client_id=f"test-{request.node.name}"[:200])


@pytest.fixture
def kafka_topic(
    kafka_broker: EmbeddedKafka, request: pytest.FixtureRequest
) -> Iterator[Callable[..., str]]:
    """`kafka_topic(partitions=1, config=None, prefix=None) -> name`: a new topic only this test uses.

    The topics are deleted when the test ends.
    """
    admin_config = kafka_broker.client_config(client_id="test-topics")
    made: list[str] = []

    def make(partitions: int = 1, config: Mapping[str, str] | None = None, prefix: str | None = None) -> str:
        name = unique_topic_name(prefix or request.node.name)
        create_topic(admin_config, name, partitions, config)
        made.append(name)
        return name

    yield make
    if made and kafka_broker.is_running():
        delete_topics(admin_config, made)


@pytest.fixture(scope="module")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A running 3-node cluster (fraud.embedded.testing.EmbeddedCluster): `.bootstrap`, `.client_config()`,
    `.kill(n)`, `.start_node(n)`, `.hard_bounce(n)`, `.clean_bounce(n)`, `.cluster` (leaders, ISR).

    One per test module that asks for it, stopped when the module ends (three idle JVMs would otherwise
    hold 1.2 GB and a share of the CPU for the rest of the run). A test that stops nodes must leave all
    of them running (`ensure_all_running()` in a `finally`).
    """
    from fraud.embedded.testing import temporary_cluster

    with temporary_cluster(tmp_path_factory.mktemp("kafka-cluster"), n=3) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def kafka_connect(kafka_broker: EmbeddedKafka, tmp_path_factory: pytest.TempPathFactory):
    """A Kafka Connect standalone worker on the session broker (REST on a free port); see fraud.embedded.connect."""
    from fraud.embedded.testing import temporary_connect

    with temporary_connect(tmp_path_factory.mktemp("connect"), kafka_broker.bootstrap) as connect:
        yield connect


@pytest.fixture(scope="session")
def model_server(tmp_path_factory: pytest.TempPathFactory):
    """The model server for serving integration tests (see serving.testing.serving_target): this repo's
    server in process on tiny test models, or an external one (e.g. tensorflow/serving) named by
    FRAUD_SERVING_GRPC / FRAUD_SERVING_REST / FRAUD_SERVING_MODEL_DIR."""
    from serving.testing import serving_target

    with serving_target(tmp_path_factory.mktemp("serving")) as target:
        yield target
