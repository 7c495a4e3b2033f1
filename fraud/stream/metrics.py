"""Metrics through one small typed interface: `Metrics.increment / gauge / observe` on declared names.

Every metric a job emits is declared once as a `MetricDef` (name, kind, help, label names, buckets);
`STREAM_METRICS` are the processor's, a job adds its own. `PrometheusMetrics` exposes them on its own
registry (served at /metrics by fraud.stream.health), `RecordingMetrics` keeps every call for unit tests.
Using an undeclared name or the wrong labels raises at once, in tests as in production.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


class Kind(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


@dataclass(frozen=True)
class MetricDef:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None


# The processor's metrics (a job's namespace is prefixed in Prometheus, e.g. fraud_bridge_records_consumed_total).
CONSUMED = MetricDef("records_consumed_total", Kind.COUNTER, "Records consumed", ("topic",))
PRODUCED = MetricDef("records_produced_total", Kind.COUNTER, "Records produced and acknowledged/committed", ("topic",))
DEAD_LETTERED = MetricDef("dead_letters_total", Kind.COUNTER, "Records sent to the dead-letter topic", ("reason",))
BATCH_SIZE = MetricDef("batch_size", Kind.HISTOGRAM, "Records per micro-batch", buckets=SIZE_BUCKETS)
PROCESS_SECONDS = MetricDef("batch_process_seconds", Kind.HISTOGRAM, "Time in the process function per batch",
                            buckets=LATENCY_BUCKETS)
DELIVER_SECONDS = MetricDef("batch_deliver_seconds", Kind.HISTOGRAM,
                            "Time to hand a batch's outputs to the producer (or the open transaction)",
                            buckets=LATENCY_BUCKETS)
COMMIT_SECONDS = MetricDef("commit_wait_seconds", Kind.HISTOGRAM,
                           "From a batch handed to the producer to its offsets committed (at-least-once: "
                           "acknowledged and committed in the background; exactly-once: its transaction committed)",
                           buckets=LATENCY_BUCKETS)
RECORD_AGE_SECONDS = MetricDef("record_age_at_commit_seconds", Kind.HISTOGRAM,
                               "Age of each batch's oldest record (since its Kafka timestamp) when committed",
                               buckets=LATENCY_BUCKETS)
COMMITS = MetricDef("commits_total", Kind.COUNTER, "Batches committed (their offsets, or in a transaction)")
ABORTS = MetricDef("transactions_aborted_total", Kind.COUNTER, "Transactions aborted")
RETRIES = MetricDef("retries_total", Kind.COUNTER, "Batches retried after a transient failure", ("stage",))
REBALANCES = MetricDef("rebalances_total", Kind.COUNTER, "Partition assignment changes", ("event",))
ASSIGNED = MetricDef("assigned_partitions", Kind.GAUGE, "Partitions currently assigned")
LAG = MetricDef("consumer_lag", Kind.GAUGE, "High watermark minus the next offset to process",
                ("topic", "partition"))
STREAM_METRICS: tuple[MetricDef, ...] = (
    CONSUMED, PRODUCED, DEAD_LETTERED, BATCH_SIZE, PROCESS_SECONDS, DELIVER_SECONDS, COMMIT_SECONDS,
    RECORD_AGE_SECONDS,
    COMMITS, ABORTS, RETRIES, REBALANCES, ASSIGNED, LAG,
)


class Metrics(Protocol):
    def increment(self, metric: MetricDef, value: float = 1.0, **labels: str) -> None: ...

    def gauge(self, metric: MetricDef, value: float, **labels: str) -> None: ...

    def observe(self, metric: MetricDef, value: float, **labels: str) -> None: ...


def _check(defs: dict[str, MetricDef], metric: MetricDef, kind: Kind, labels: dict[str, str]) -> None:
    if defs.get(metric.name) is not metric:
        raise KeyError(f"metric {metric.name} is not declared for this job")
    if metric.kind is not kind:
        raise TypeError(f"metric {metric.name} is a {metric.kind.value}, not a {kind.value}")
    if tuple(labels) != metric.labels and set(labels) != set(metric.labels):
        raise ValueError(f"metric {metric.name} takes labels {metric.labels}, got {tuple(labels)}")


class PrometheusMetrics:
    """Metrics on a private prometheus_client registry (so several jobs or tests never collide)."""

    def __init__(self, namespace: str, defs: Iterable[MetricDef] = STREAM_METRICS) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self._defs: dict[str, MetricDef] = {}
        self._impl: dict[str, object] = {}
        for d in defs:
            if d.name in self._defs:
                raise ValueError(f"metric {d.name} declared twice")
            self._defs[d.name] = d
            name = f"{namespace}_{d.name}"
            if d.kind is Kind.COUNTER:
                # prometheus_client appends _total itself
                self._impl[d.name] = Counter(name.removesuffix("_total"), d.help, d.labels, registry=self.registry)
            elif d.kind is Kind.GAUGE:
                self._impl[d.name] = Gauge(name, d.help, d.labels, registry=self.registry)
            else:
                self._impl[d.name] = Histogram(name, d.help, d.labels, registry=self.registry,
                                               buckets=d.buckets or LATENCY_BUCKETS)

    def _get(self, metric: MetricDef, kind: Kind, labels: dict[str, str]):  # noqa: ANN202
        _check(self._defs, metric, kind, labels)
        impl = self._impl[metric.name]
        return impl.labels(**labels) if labels else impl  # type: ignore[attr-defined]

    def increment(self, metric: MetricDef, value: float = 1.0, **labels: str) -> None:
        self._get(metric, Kind.COUNTER, labels).inc(value)

    def gauge(self, metric: MetricDef, value: float, **labels: str) -> None:
        self._get(metric, Kind.GAUGE, labels).set(value)

    def observe(self, metric: MetricDef, value: float, **labels: str) -> None:
        self._get(metric, Kind.HISTOGRAM, labels).observe(value)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class RecordingMetrics:
    """The fake for unit tests: keeps (kind, name, value, labels) of every call, with the same checks."""

    def __init__(self, defs: Iterable[MetricDef] = STREAM_METRICS) -> None:
        self._defs = {d.name: d for d in defs}
        self.calls: list[tuple[Kind, str, float, dict[str, str]]] = []
        self._lock = threading.Lock()

    def _record(self, kind: Kind, metric: MetricDef, value: float, labels: dict[str, str]) -> None:
        _check(self._defs, metric, kind, labels)
        with self._lock:
            self.calls.append((kind, metric.name, value, labels))

    def increment(self, metric: MetricDef, value: float = 1.0, **labels: str) -> None:
        self._record(Kind.COUNTER, metric, value, labels)

    def gauge(self, metric: MetricDef, value: float, **labels: str) -> None:
        self._record(Kind.GAUGE, metric, value, labels)

    def observe(self, metric: MetricDef, value: float, **labels: str) -> None:
        self._record(Kind.HISTOGRAM, metric, value, labels)

    def total(self, metric: MetricDef, **labels: str) -> float:
        """Sum of a counter's increments (matching the given labels)."""
        return sum(v for _, name, v, ls in self.calls if name == metric.name and _match(ls, labels))

    def values(self, metric: MetricDef, **labels: str) -> list[float]:
        return [v for _, name, v, ls in self.calls if name == metric.name and _match(ls, labels)]

    def last(self, metric: MetricDef, **labels: str) -> float | None:
        vals = self.values(metric, **labels)
        return vals[-1] if vals else None


def _match(have: dict[str, str], want: dict[str, str]) -> bool:
    return all(have.get(k) == v for k, v in want.items())
