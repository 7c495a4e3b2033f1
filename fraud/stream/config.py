"""`StreamConfig`: everything the consume-process-produce loop needs, frozen and validated once.

A service adds `stream_options(...)` to its parser (via fraud.stream.options) and builds the config with
`StreamConfig.from_options(values, kafka=..., ...)`; the Kafka connection (bootstrap, TLS, SASL) comes
from fraud.kafka_config.KafkaClientConfig.
"""

from __future__ import annotations

import enum
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fraud.errors import FraudError
from fraud.kafka_config import KafkaClientConfig
from fraud.stream.options import FETCH_STALL_OPTION, Option, parse_bool
from fraud.stream.watchdog import DEFAULT_FETCH_STALL_S


class Delivery(str, enum.Enum):
    """How input offsets are committed relative to the outputs."""

    #: produce outputs and dead letters; once they are acknowledged, commit the offsets. A crash before the
    #: commit replays those batches: outputs can be duplicated, never lost.
    AT_LEAST_ONCE = "at_least_once"
    #: outputs, dead letters and input offsets in one Kafka transaction (spanning the batches of up to
    #: `commit_interval_ms`); consumers of the outputs read with isolation.level=read_committed and see each
    #: output exactly once.
    EXACTLY_ONCE = "exactly_once"


class ClientKind(str, enum.Enum):
    KAFKA_PYTHON = "kafka-python"
    CONFLUENT = "confluent-kafka"


_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


@dataclass(frozen=True)
class StreamConfig:
    kafka: KafkaClientConfig
    input_topics: tuple[str, ...]
    group_id: str
    dlq_topic: str
    component: str  # names the job in dead-letter headers, logs and client ids
    delivery: Delivery = Delivery.AT_LEAST_ONCE
    client: ClientKind = ClientKind.CONFLUENT
    batch_max_size: int = 500
    #: 0 (default): a micro-batch is what is ready when the loop asks, never a wait while idle; batches grow
    #: only under load (while one is being scored the next fills). > 0 waits that long to fill one.
    batch_max_wait_ms: int = 0
    #: Exactly-once: a transaction spans the batches of up to this long (it also commits when the loop is
    #: idle), which bounds when read_committed consumers see an output. At-least-once: the longest offsets
    #: wait for their (background) commit.
    commit_interval_ms: int = 100
    #: Batches submitted to a staged process function (a Predict in flight) while the one before is
    #: delivered: 1 = pipelined, 0 = one batch at a time.
    pipeline_depth: int = 1
    #: Python's young-generation GC threshold once the loop runs (fraud.stream.processor.settle_heap); 0 leaves
    #: the interpreter's settings (700) as they are.
    gc_threshold: int = 100_000
    instance_id: str = field(default_factory=lambda: _default_instance_id())
    transactional_id_prefix: str = ""  # default: "<group_id>"
    static_membership: bool = False  # group.instance.id = instance_id (restart without a rebalance)
    auto_offset_reset: str = "earliest"
    session_timeout_ms: int = 10_000
    max_poll_interval_ms: int = 300_000
    transaction_timeout_ms: int = 60_000
    operation_timeout_s: float = 30.0  # flush, commit, transaction calls
    retry_backoff_initial_ms: int = 100
    retry_backoff_max_ms: int = 5_000
    http_host: str = "127.0.0.1"
    http_port: int | None = None  # /healthz, /readyz, /metrics; None = no HTTP endpoint
    lag_interval_s: float = 5.0
    stall_timeout_s: float = 60.0  # /healthz turns 503 when the loop has not turned for this long
    #: exit (status 75, to be restarted) when assigned partitions hold records and none was fetched for this
    #: long (fraud.stream.watchdog.FetchWatch; longer than upstream transaction timeouts); 0 = off
    fetch_stall_s: float = DEFAULT_FETCH_STALL_S
    client_overrides: Mapping[str, Any] = field(default_factory=dict)  # raw client settings (tuning)

    def __post_init__(self) -> None:
        object.__setattr__(self, "delivery", Delivery(self.delivery))
        object.__setattr__(self, "client", ClientKind(self.client))
        if not self.input_topics:
            raise FraudError("stream: at least one input topic is needed")
        if self.dlq_topic in self.input_topics:
            raise FraudError(f"stream: dead-letter topic {self.dlq_topic} is also an input topic")
        for what, value in (("group id", self.group_id), ("instance id", self.instance_id)):
            if not _ID_RE.match(value):
                raise FraudError(f"stream: {what} {value!r} must be 1-200 characters of A-Z a-z 0-9 . _ -")
        if self.transactional_id_prefix and not _ID_RE.match(self.transactional_id_prefix):
            raise FraudError(f"stream: transactional id prefix {self.transactional_id_prefix!r} has bad characters")
        if self.batch_max_size < 1 or self.batch_max_wait_ms < 0:
            raise FraudError("stream: batch max size must be >= 1 and batch max wait >= 0 ms")
        if self.commit_interval_ms < 1 or self.pipeline_depth < 0 or self.gc_threshold < 0:
            raise FraudError("stream: commit interval must be >= 1 ms, pipeline depth and GC threshold >= 0")
        if self.exactly_once and self.commit_interval_ms >= self.transaction_timeout_ms:
            raise FraudError(f"stream: commit interval {self.commit_interval_ms} ms must be shorter than the "
                             f"transaction timeout {self.transaction_timeout_ms} ms")
        if self.auto_offset_reset not in ("earliest", "latest"):
            raise FraudError(f"stream: auto offset reset {self.auto_offset_reset!r} is not earliest or latest")
        if self.http_port is not None and not 0 <= self.http_port < 65536:
            raise FraudError(f"stream: HTTP port {self.http_port} is not in 0..65535")
        if self.retry_backoff_initial_ms <= 0 or self.retry_backoff_max_ms < self.retry_backoff_initial_ms:
            raise FraudError("stream: retry backoff must be > 0 and max >= initial")

    @property
    def exactly_once(self) -> bool:
        return self.delivery is Delivery.EXACTLY_ONCE

    @property
    def transactional_id(self) -> str:
        """One per instance, stable across restarts: a restarted instance fences its own zombie."""
        return f"{self.transactional_id_prefix or self.group_id}-{self.instance_id}"

    @property
    def client_id(self) -> str:
        return f"{self.kafka.client_id}-{self.instance_id}"

    @classmethod
    def from_options(cls, values: Mapping[str, Any], *, kafka: KafkaClientConfig, input_topics: tuple[str, ...],
                     dlq_topic: str, component: str, **extra: Any) -> StreamConfig:
        """Build from `resolve_options(stream_options(...), ...)` values."""
        kwargs = {OPTION_FIELDS.get(opt.name, opt.name): values[opt.name]
                  for opt in stream_options() if opt.name in values}
        port = kwargs.pop("http_port", None)
        kwargs["http_port"] = None if port is None or port < 0 else port
        kwargs.update(extra)
        return cls(kafka=kafka, input_topics=input_topics, dlq_topic=dlq_topic, component=component, **kwargs)


def _default_instance_id() -> str:
    # Stable across restarts where the host name is (a Kubernetes StatefulSet pod, a VM); set it explicitly
    # when several instances share a host.
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:100]
    return name or "instance-0"


def stream_options(*, group_id: str = "", http_port: int = -1, batch_max_size: int = 500,
                   batch_max_wait_ms: int = 0, commit_interval_ms: int = 100) -> tuple[Option, ...]:
    """The flags every stream job has (defaults may differ per job)."""
    return (
        Option("delivery", str, Delivery.AT_LEAST_ONCE.value, "delivery guarantee",
               choices=[d.value for d in Delivery]),
        Option("kafka_client", str, ClientKind.CONFLUENT.value, "Kafka client library",
               choices=[c.value for c in ClientKind]),
        Option("group_id", str, group_id, "consumer group id"),
        Option("instance_id", str, _default_instance_id(), "this instance's id (transactional id, static member id)"),
        Option("transactional_id_prefix", str, "", "transactional id prefix (default: the group id)"),
        Option("static_membership", parse_bool, False, "join the group as a static member (group.instance.id)"),
        Option("batch_max_size", int, batch_max_size, "records per micro-batch at most", minimum=1),
        Option("batch_max_wait_ms", int, batch_max_wait_ms, "wait to fill a micro-batch (0: take what is ready, "
               "never wait)", minimum=0),
        Option("commit_interval_ms", int, commit_interval_ms, "longest a transaction stays open (exactly-once: "
               "bounds when read_committed readers see an output) or offsets wait to be committed", minimum=1),
        Option("pipeline_depth", int, 1, "batches in flight (e.g. Predict) while the one before is delivered",
               minimum=0),
        Option("gc_threshold", int, 100_000, "Python GC: tracked objects (net) between young collections once "
               "the loop runs, start-up's objects frozen (0: the interpreter's settings)", minimum=0),
        Option("auto_offset_reset", str, "earliest", "where a group without offsets starts",
               choices=["earliest", "latest"]),
        Option("session_timeout_ms", int, 10_000, "consumer group session timeout", minimum=1),
        Option("max_poll_interval_ms", int, 300_000, "consumer max poll interval", minimum=1),
        Option("transaction_timeout_ms", int, 60_000, "Kafka transaction timeout (exactly-once)", minimum=1),
        Option("operation_timeout_s", float, 30.0, "timeout of flush, commit and transaction calls", minimum=0.1),
        Option("retry_backoff_initial_ms", int, 100, "first retry backoff", minimum=1),
        Option("retry_backoff_max_ms", int, 5_000, "longest retry backoff", minimum=1),
        Option("http_host", str, "127.0.0.1", "bind address of /healthz, /readyz and /metrics"),
        Option("http_port", int, http_port, "port of /healthz, /readyz and /metrics (-1: off, 0: any free port)",
               minimum=-1),
        Option("lag_interval_s", float, 5.0, "how often consumer lag is measured", minimum=0.1),
        FETCH_STALL_OPTION,
    )


#: Option name -> StreamConfig field, where they differ.
OPTION_FIELDS = {"kafka_client": "client"}


def default_instance_id() -> str:
    """This host's name as an instance id (what a service without --instance-id calls itself)."""
    return _default_instance_id()
