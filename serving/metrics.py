"""Server metrics: one small typed interface, a Prometheus implementation and a recording fake.

`PrometheusMetrics` exposes the series TF Serving exports (same names, labels and microsecond
histograms, rendered the way its PrometheusExporter renders them, so dashboards work against either
server) plus `fraud_serving_*` series that add the version and signature TF Serving leaves out:

- `:tensorflow:serving:request_count{model_name,status}` and `...:request_latency{model_name,API,entrypoint}`
- `:tensorflow:serving:runtime_latency{model_name,API,runtime}`, `...:request_example_counts{model}`
- `:tensorflow:cc:saved_model:load_attempt_count{model_path,status}`, `...:load_latency{model_path}`
- `:tensorflow:serving:model_warmup_latency{model_path,status}`
- `:tensorflow:serving:batching_session:queuing_latency{thread_pool_name}`
- `fraud_serving_requests_total`, `fraud_serving_request_latency_seconds` (model, version, signature, API,
  entrypoint[, status]), `fraud_serving_model_loads_total{model_name,version,status}`,
  `fraud_serving_model_version_state{model_name,version,state}`, `fraud_serving_batch_size{model_name,signature_name}`
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field
from typing import Protocol

from serving.errors import Code


class ServingMetrics(Protocol):
    """What the server reports. Latencies are in seconds; implementations convert as they need."""

    def request(self, *, model: str, version: int | None, signature: str, api: str, entrypoint: str,
                code: Code, latency_s: float, examples: int | None = None) -> None: ...

    def runtime(self, *, model: str, api: str, latency_s: float) -> None: ...

    def load(self, *, model: str, version: int, path: str, ok: bool, latency_s: float) -> None: ...

    def warmup(self, *, model: str, version: int, path: str, ok: bool, latency_s: float, records: int) -> None: ...

    def version_state(self, *, model: str, version: int, state: str) -> None: ...

    def batch(self, *, model: str, signature: str, size: int, queue_latency_s: float, pool: str) -> None: ...


def _exponential(scale: float, growth: float, count: int) -> tuple[float, ...]:
    return tuple(scale * growth**i for i in range(count))


#: TF Serving's latency buckets (microseconds): Buckets::Exponential(10, 1.8, 33).
LATENCY_BUCKETS_US = _exponential(10, 1.8, 33)
#: TF Serving's example-count buckets: Buckets::Exponential(1, 2, 15).
EXAMPLE_BUCKETS = _exponential(1, 2, 15)
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _fmt(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e15):
        return str(int(value))
    return repr(float(value))


class _Family:
    def __init__(self, name: str, kind: str, labels: tuple[str, ...], help_text: str = "",
                 buckets: tuple[float, ...] = ()) -> None:
        self.name = name
        self.kind = kind
        self.labels = labels
        self.help = help_text
        self.buckets = buckets
        self.values: dict[tuple[str, ...], float] = {}
        self.hist: dict[tuple[str, ...], list[float]] = {}  # bucket counts..., sum, count

    def _key(self, values: tuple[str, ...]) -> tuple[str, ...]:
        assert len(values) == len(self.labels), (self.name, values)
        return tuple(str(v) for v in values)

    def inc(self, values: tuple[str, ...], amount: float = 1.0) -> None:
        key = self._key(values)
        self.values[key] = self.values.get(key, 0.0) + amount

    def set(self, values: tuple[str, ...], value: float) -> None:
        self.values[self._key(values)] = value

    def observe(self, values: tuple[str, ...], value: float) -> None:
        key = self._key(values)
        cells = self.hist.get(key)
        if cells is None:
            cells = [0.0] * (len(self.buckets) + 3)
            self.hist[key] = cells
        cells[bisect.bisect_left(self.buckets, value)] += 1  # first bucket with value <= limit; last is +Inf
        cells[-2] += value
        cells[-1] += 1

    def render(self, lines: list[str]) -> None:
        if self.help:
            lines.append(f"# HELP {self.name} {self.help}")
        lines.append(f"# TYPE {self.name} {self.kind}")
        if self.kind == "histogram":
            for key, cells in sorted(self.hist.items()):
                labels = [f'{n}="{_escape(v)}"' for n, v in zip(self.labels, key, strict=False)]
                prefix = ",".join(labels)
                sep = "," if prefix else ""
                cumulative = 0.0
                for i, limit in enumerate(self.buckets):
                    cumulative += cells[i]
                    lines.append(f'{self.name}_bucket{{{prefix}{sep}le="{_fmt(limit)}"}} {_fmt(cumulative)}')
                cumulative += cells[len(self.buckets)]
                lines.append(f'{self.name}_bucket{{{prefix}{sep}le="+Inf"}} {_fmt(cumulative)}')
                lines.append(f"{self.name}_sum{{{prefix}}} {_fmt(cells[-2])}")
                lines.append(f"{self.name}_count{{{prefix}}} {_fmt(cells[-1])}")
        else:
            for key, value in sorted(self.values.items()):
                labels = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(self.labels, key, strict=False))
                lines.append(f"{self.name}{{{labels}}} {_fmt(value)}")


class PrometheusMetrics:
    """Thread-safe in-memory metrics rendered in the Prometheus text format."""

    CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
    _STATES = ("START", "LOADING", "AVAILABLE", "UNLOADING", "END")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        f = _Family
        self._request_count = f(":tensorflow:serving:request_count", "counter", ("model_name", "status"))
        self._request_latency = f(":tensorflow:serving:request_latency", "histogram",
                                  ("model_name", "API", "entrypoint"), buckets=LATENCY_BUCKETS_US)
        self._runtime_latency = f(":tensorflow:serving:runtime_latency", "histogram",
                                  ("model_name", "API", "runtime"), buckets=LATENCY_BUCKETS_US)
        self._example_counts = f(":tensorflow:serving:request_example_counts", "histogram", ("model",),
                                 buckets=EXAMPLE_BUCKETS)
        self._example_total = f(":tensorflow:serving:request_example_count_total", "counter", ("model",))
        self._load_attempts = f(":tensorflow:cc:saved_model:load_attempt_count", "counter", ("model_path", "status"))
        self._load_latency = f(":tensorflow:cc:saved_model:load_latency", "counter", ("model_path",))
        self._warmup_latency = f(":tensorflow:serving:model_warmup_latency", "histogram", ("model_path", "status"),
                                 buckets=LATENCY_BUCKETS_US)
        self._queuing_latency = f(":tensorflow:serving:batching_session:queuing_latency", "histogram",
                                  ("thread_pool_name",), buckets=LATENCY_BUCKETS_US)
        self._requests = f("fraud_serving_requests_total", "counter",
                           ("model_name", "version", "signature_name", "API", "entrypoint", "status"),
                           "Requests by model, version, signature, API, entrypoint and status code.")
        self._latency = f("fraud_serving_request_latency_seconds", "histogram",
                          ("model_name", "version", "signature_name", "API", "entrypoint"),
                          "Request latency in seconds (successful requests).", SECONDS_BUCKETS)
        self._loads = f("fraud_serving_model_loads_total", "counter", ("model_name", "version", "status"),
                        "Model version load attempts (status: success or fail).")
        self._state = f("fraud_serving_model_version_state", "gauge", ("model_name", "version", "state"),
                        "1 for the state each model version is in, 0 for the others.")
        self._batch_size = f("fraud_serving_batch_size", "histogram", ("model_name", "signature_name"),
                             "Rows per graph call formed by server-side batching.", BATCH_BUCKETS)
        self._families = [self._request_count, self._request_latency, self._runtime_latency, self._example_counts,
                          self._example_total, self._load_attempts, self._load_latency, self._warmup_latency,
                          self._queuing_latency, self._requests, self._latency, self._loads, self._state,
                          self._batch_size]

    def request(self, *, model: str, version: int | None, signature: str, api: str, entrypoint: str,
                code: Code, latency_s: float, examples: int | None = None) -> None:
        v = "" if version is None else str(version)
        with self._lock:
            self._request_count.inc((model, code.name))
            self._requests.inc((model, v, signature, api, entrypoint, code.name))
            if code == Code.OK:
                self._request_latency.observe((model, api, entrypoint), latency_s * 1e6)
                self._latency.observe((model, v, signature, api, entrypoint), latency_s)
            if examples is not None:
                self._example_counts.observe((model,), examples)
                self._example_total.inc((model,), examples)

    def runtime(self, *, model: str, api: str, latency_s: float) -> None:
        with self._lock:
            self._runtime_latency.observe((model, api, "TF2"), latency_s * 1e6)

    def load(self, *, model: str, version: int, path: str, ok: bool, latency_s: float) -> None:
        with self._lock:
            self._load_attempts.inc((path, "success" if ok else "fail"))
            if ok:
                self._load_latency.inc((path,), round(latency_s * 1e6))
            self._loads.inc((model, str(version), "success" if ok else "fail"))

    def warmup(self, *, model: str, version: int, path: str, ok: bool, latency_s: float, records: int) -> None:
        with self._lock:
            self._warmup_latency.observe((path, "OK" if ok else "ERROR"), latency_s * 1e6)

    def version_state(self, *, model: str, version: int, state: str) -> None:
        with self._lock:
            for s in self._STATES:
                self._state.set((model, str(version), s), 1.0 if s == state else 0.0)

    def batch(self, *, model: str, signature: str, size: int, queue_latency_s: float, pool: str) -> None:
        with self._lock:
            self._batch_size.observe((model, signature), size)
            self._queuing_latency.observe((pool,), queue_latency_s * 1e6)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for family in self._families:
                if family.values or family.hist:
                    family.render(lines)
        return "\n".join(lines) + "\n"


@dataclass
class RecordingMetrics:
    """A fake that keeps every call, for tests: `events` is a list of (method name, kwargs)."""

    events: list[tuple[str, dict]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _add(self, kind: str, **kwargs: object) -> None:
        with self._lock:
            self.events.append((kind, kwargs))

    def of(self, kind: str) -> list[dict]:
        with self._lock:
            return [kw for k, kw in self.events if k == kind]

    def request(self, **kwargs: object) -> None:
        self._add("request", **kwargs)

    def runtime(self, **kwargs: object) -> None:
        self._add("runtime", **kwargs)

    def load(self, **kwargs: object) -> None:
        self._add("load", **kwargs)

    def warmup(self, **kwargs: object) -> None:
        self._add("warmup", **kwargs)

    def version_state(self, **kwargs: object) -> None:
        self._add("version_state", **kwargs)

    def batch(self, **kwargs: object) -> None:
        self._add("batch", **kwargs)
