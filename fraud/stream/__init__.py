"""The Kafka access layer of every job, and the consume-process-produce machinery of the stream jobs (the
scoring bridge, preprocessing). No module outside fraud/stream opens a Kafka client of its own.

A job supplies a process function (records in -> outputs + dead letters out) and a `StreamConfig`;
`StreamProcessor` does the rest: micro-batching, at-least-once or exactly-once delivery, dead letters with
Kafka Connect's `__connect.errors.*` headers, retries without skipping, rebalances, metrics, the health
endpoint and graceful shutdown. Modules:

- records: Record, Output, ProcessResult, RetriableError/FatalError
- config, options: StreamConfig, Delivery, ClientKind; flag+environment settings parsed once
- clients (+ confluent_client, kafka_python_client): the small Kafka client interface, two implementations
- processor: StreamProcessor
- metrics, health, logs: Prometheus metrics behind a typed interface, /healthz /readyz /metrics, JSON logs
- reader: readers with explicit start offsets or consumer-group ownership (sink, monitor, export, users
  table, scans), `read_to_end`, producers for records outside the loop (EventProducer, TransactionalProducer)
- admin: topics (create, check, grow, delete), offsets (start, end, a group's, caught up), the cluster
"""

from fraud.stream.config import ClientKind, Delivery, StreamConfig
from fraud.stream.processor import StreamProcessor
from fraud.stream.records import FatalError, Output, ProcessFn, ProcessResult, Record, RetriableError

__all__ = [
    "ClientKind",
    "Delivery",
    "FatalError",
    "Output",
    "ProcessFn",
    "ProcessResult",
    "Record",
    "RetriableError",
    "StreamConfig",
    "StreamProcessor",
]
