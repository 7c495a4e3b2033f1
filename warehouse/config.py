"""Settings of `fraudctl sink run`: declared once, parsed once into a frozen object.

Every flag can also be set as an environment variable (FRAUD_SINK_*; see fraud.stream.options); the
Kafka connection comes from fraud.kafka_config (FRAUD_KAFKA_*).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fraud.errors import FraudError
from fraud.kafka_config import KafkaClientConfig
from fraud.paths import Paths
from fraud.stream.config import default_instance_id
from fraud.stream.options import READER_SERVICE_OPTIONS, Option, add_options, parse_bool, parse_path, resolve_options
from fraud.topics import DLQ_MONITORING, LABELS, SCORES

SINK_ENV = "FRAUD_SINK_"
WAREHOUSES = ("duckdb", "bigquery")





SINK_OPTIONS: tuple[Option, ...] = (
    Option("warehouse", str, "duckdb", "where rows go", choices=WAREHOUSES),
    Option("duckdb_path", parse_path, None, "DuckDB file (default <FRAUD_HOME>/warehouse/fraud.duckdb)",
           metavar="PATH"),
    Option("bigquery_project", str, None, "BigQuery project id"),
    Option("bigquery_dataset", str, "fraud", "BigQuery dataset"),
    Option("bigquery_location", str, None, "BigQuery location of the dataset and jobs (e.g. EU)"),
    Option("bigquery_endpoint", str, None, "BigQuery API endpoint (an emulator; default Google's)", metavar="URL"),
    Option("bigquery_retry_deadline_s", float, 120.0, "how long the BigQuery client retries one call", minimum=0.1),
    Option("scores_topic", str, SCORES.name, "score events topic"),
    Option("labels_topic", str, LABELS.name, "label events topic"),
    Option("dlq_topic", str, DLQ_MONITORING.name, "dead-letter topic for records that cannot be parsed"),
    Option("group_id", str, "fraud-sink", "consumer group the sinks share the partitions in (offsets stay in "
           "the warehouse; the group's are advisory, for lag tools)"),
    Option("instance_id", str, default_instance_id(), "this sink's name: owner of the partitions it claims "
           "(and its static member id)"),
    Option("static_membership", parse_bool, False, "join the group as a static member (group.instance.id = "
           "instance id): a restart within the session timeout keeps the partitions without a rebalance"),
    Option("session_timeout_ms", int, 10_000, "consumer group session timeout", minimum=1),
    Option("max_poll_interval_ms", int, 300_000, "a sink that has not read for this long (a stuck write) leaves "
           "the group, and its partitions go to the others", minimum=1),
    Option("batch_max_size", int, 2000, "records per warehouse batch at most", minimum=1),
    Option("batch_max_wait_ms", int, 500, "longest wait to fill a batch", minimum=0),
    Option("retry_backoff_max_ms", int, 30_000, "longest backoff between retries of a failed write", minimum=1),
    *READER_SERVICE_OPTIONS,
)


@dataclass(frozen=True)
class BigQueryConfig:
    project: str
    dataset: str
    location: str | None = None
    api_endpoint: str | None = None
    #: How long the client library retries one call (HTTP 5xx, 429, connection errors) before the sink
    #: sees a transient failure and retries the whole batch itself.
    retry_deadline_s: float = 120.0


@dataclass(frozen=True)
class SinkConfig:
    kafka: KafkaClientConfig
    warehouse: str = "duckdb"
    duckdb_path: Path | None = None
    bigquery: BigQueryConfig | None = None
    scores_topic: str = SCORES.name
    labels_topic: str = LABELS.name
    dlq_topic: str = DLQ_MONITORING.name
    group_id: str = "fraud-sink"
    instance_id: str = "sink-0"
    static_membership: bool = False
    session_timeout_ms: int = 10_000
    max_poll_interval_ms: int = 300_000
    batch_max_size: int = 2000
    batch_max_wait_ms: int = 500
    retry_backoff_max_ms: int = 30_000
    stop_when_idle_s: float = 0.0
    #: 0 in code (tests, tools); the service's flag defaults to DEFAULT_FETCH_STALL_S (fraud.stream.watchdog)
    fetch_stall_s: float = 0.0
    http_host: str = "127.0.0.1"
    http_port: int | None = None
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.warehouse not in WAREHOUSES:
            raise FraudError(f"warehouse {self.warehouse!r} is not one of {', '.join(WAREHOUSES)}")
        if self.warehouse == "duckdb" and self.duckdb_path is None:
            raise FraudError("the DuckDB warehouse needs a file path")
        if self.warehouse == "bigquery" and self.bigquery is None:
            raise FraudError("the BigQuery warehouse needs --bigquery-project (or FRAUD_SINK_BIGQUERY_PROJECT)")
        if self.dlq_topic in (self.scores_topic, self.labels_topic):
            raise FraudError(f"dead-letter topic {self.dlq_topic} is also an input topic")
        if self.scores_topic == self.labels_topic:
            raise FraudError("scores and labels must be different topics")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_options(parser, SINK_OPTIONS, SINK_ENV, "warehouse sink")
        KafkaClientConfig.add_arguments(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace | None, environ: Mapping[str, str], paths: Paths) -> SinkConfig:
        v = resolve_options(SINK_OPTIONS, args, environ, SINK_ENV)
        kafka = KafkaClientConfig.from_env_and_args(args, environ, client_id="fraud-sink")
        bq = None
        if v["warehouse"] == "bigquery" and v["bigquery_project"]:
            bq = BigQueryConfig(v["bigquery_project"], v["bigquery_dataset"], v["bigquery_location"],
                                v["bigquery_endpoint"], v["bigquery_retry_deadline_s"])
        port = v["http_port"]
        return cls(kafka=kafka, warehouse=v["warehouse"],
                   duckdb_path=v["duckdb_path"] or paths.warehouse_dir / "fraud.duckdb", bigquery=bq,
                   scores_topic=v["scores_topic"], labels_topic=v["labels_topic"], dlq_topic=v["dlq_topic"],
                   group_id=v["group_id"], instance_id=v["instance_id"],
                   static_membership=v["static_membership"], session_timeout_ms=v["session_timeout_ms"],
                   max_poll_interval_ms=v["max_poll_interval_ms"],
                   batch_max_size=v["batch_max_size"],
                   batch_max_wait_ms=v["batch_max_wait_ms"], retry_backoff_max_ms=v["retry_backoff_max_ms"],
                   stop_when_idle_s=v["stop_when_idle_s"], fetch_stall_s=v["fetch_stall_s"], http_host=v["http_host"],
                   http_port=None if port < 0 else port, log_level=v["log_level"])
