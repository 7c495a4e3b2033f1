"""Server-side batching with TF Serving's parameters (BatchingParameters / SharedBatchScheduler).

Concurrent requests for the same model version and signature whose inputs can be concatenated along
dimension 0 (same input names, dtypes and non-batch dimensions) are queued together, merged into one
graph call, and the outputs are split back per request. `num_batch_threads` threads are shared by all
queues, as TF Serving shares one batch thread pool between models.

- A batch is processed when it holds `max_batch_size` rows, or `batch_timeout_micros` after its first
  task arrived, or at once with a timeout of 0 as soon as a thread is free (so batches form only under
  load, which is the TF Serving default).
- A task larger than `max_batch_size` is refused (INVALID_ARGUMENT), unless `enable_large_batch_splitting`,
  which splits it into chunks of at most `max_execution_batch_size` rows.
- At most `max_enqueued_batches` batches wait per queue; beyond that requests get UNAVAILABLE.
- `allowed_batch_sizes` pads a batch up to the next allowed size with copies of its first row.
- A task whose deadline passes while queued is dropped with DEADLINE_EXCEEDED; the caller never waits
  past its deadline.
- A model whose outputs are not batch-major (dimension 0 != batch size) is run one request at a time
  instead of failing the batch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.errors import Code, ServingError
from serving.metrics import ServingMetrics

log = logging.getLogger("serving.batching")

Runner = Callable[[Mapping[str, Any]], dict[str, np.ndarray]]


def _concat(values: list[np.ndarray]) -> np.ndarray:
    """Concatenate inputs along dimension 0."""
    return values[0] if len(values) == 1 else np.concatenate(values)


def _repeat_first(value: np.ndarray, count: int) -> np.ndarray:
    return np.repeat(value[:1], count, axis=0)


@dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's BatchingParameters (session_bundle_config.proto), with its defaults."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = max(1, os.cpu_count() or 1)
    thread_pool_name: str = "model_server_batch_threads"
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int | None = None
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    @property
    def execution_batch_size(self) -> int:
        if self.enable_large_batch_splitting and self.max_execution_batch_size:
            return self.max_execution_batch_size
        return self.max_batch_size

    def validate(self) -> None:
        """Raise ValueError on settings TF Serving refuses."""
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be positive")
        if self.num_batch_threads < 1:
            raise ValueError("num_batch_threads must be positive")
        if self.max_enqueued_batches < 1:
            raise ValueError("max_enqueued_batches must be positive")
        if self.batch_timeout_micros < 0:
            raise ValueError("batch_timeout_micros must be non-negative")
        if self.max_execution_batch_size is not None and self.max_execution_batch_size > self.max_batch_size:
            raise ValueError("max_execution_batch_size must be <= max_batch_size")
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)) or sizes[0] < 1:
                raise ValueError("allowed_batch_sizes entries must be monotonically increasing")
            if sizes[-1] != self.execution_batch_size:
                raise ValueError("final entry in allowed_batch_sizes must equal max_batch_size "
                                 "(or max_execution_batch_size when splitting large batches)")


class _Task:
    __slots__ = ("inputs", "size", "deadline", "enqueued", "done", "result", "error", "abandoned")

    def __init__(self, inputs: Mapping[str, np.ndarray], size: int, deadline: float | None) -> None:
        self.inputs = inputs
        self.size = size
        self.deadline = deadline
        self.enqueued = time.monotonic()
        self.done = threading.Event()
        self.result: dict[str, np.ndarray] | None = None
        self.error: ServingError | None = None
        self.abandoned = False


class _Batch:
    __slots__ = ("tasks", "size", "opened")

    def __init__(self) -> None:
        self.tasks: list[_Task] = []
        self.size = 0
        self.opened = time.monotonic()


class _Queue:
    __slots__ = ("owner", "key", "runner", "model", "signature", "batches", "unbatchable")

    def __init__(self, owner: Any, key: tuple, runner: Runner, model: str, signature: str) -> None:
        self.owner = owner
        self.key = key
        self.runner = runner
        self.model = model
        self.signature = signature
        self.batches: deque[_Batch] = deque()
        self.unbatchable = False  # outputs seen without a batch dimension: run its requests one by one


class BatchScheduler:
    """Shared batch threads and one queue per (servable, batch key)."""

    def __init__(self, params: BatchingParameters, metrics: ServingMetrics | None = None) -> None:
        params.validate()
        self.params = params
        self._metrics = metrics
        self._cond = threading.Condition()
        self._queues: dict[tuple[int, tuple], _Queue] = {}
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{params.thread_pool_name}-{i}", daemon=True)
            for i in range(params.num_batch_threads)
        ]
        for t in self._threads:
            t.start()

    # -----------------------------------------------------------------------------------------
    # Submitting

    def submit(self, owner: Any, key: tuple, runner: Runner, inputs: Mapping[str, np.ndarray],
               deadline: float | None) -> dict[str, np.ndarray]:
        """Queue one request and wait for its slice of the batched result."""
        size = int(next(iter(inputs.values())).shape[0])
        limit = self.params.execution_batch_size
        if size > self.params.max_batch_size and not self.params.enable_large_batch_splitting:
            raise ServingError(Code.INVALID_ARGUMENT,
                               f"Task size {size} is larger than maximum input batch size {self.params.max_batch_size}")
        if size > limit:
            return self._submit_split(owner, key, runner, inputs, size, limit, deadline)
        task = _Task(inputs, size, deadline)
        self._enqueue(owner, key, runner, task)
        return self._wait(task)

    def _submit_split(self, owner: Any, key: tuple, runner: Runner, inputs: Mapping[str, np.ndarray], size: int,
                      limit: int, deadline: float | None) -> dict[str, np.ndarray]:
        tasks = []
        for start in range(0, size, limit):
            part = {k: v[start:start + limit] for k, v in inputs.items()}
            task = _Task(part, min(limit, size - start), deadline)
            self._enqueue(owner, key, runner, task)
            tasks.append(task)
        results = [self._wait(t) for t in tasks]
        return {k: np.concatenate([r[k] for r in results]) for k in results[0]}

    def _enqueue(self, owner: Any, key: tuple, runner: Runner, task: _Task) -> None:
        limit = self.params.execution_batch_size
        with self._cond:
            if self._stopping:
                raise ServingError(Code.UNAVAILABLE, "Server is shutting down")
            qkey = (id(owner), key)
            queue = self._queues.get(qkey)
            if queue is None:
                queue = _Queue(owner, key, runner, getattr(owner, "name", ""), key[0] if key else "")
                self._queues[qkey] = queue
            last = queue.batches[-1] if queue.batches else None
            if last is None or last.size + task.size > limit:
                if len(queue.batches) >= self.params.max_enqueued_batches:
                    raise ServingError(Code.UNAVAILABLE,
                                       "The batch scheduling queue to which this task was submitted is full")
                last = _Batch()
                queue.batches.append(last)
            last.tasks.append(task)
            last.size += task.size
            self._cond.notify()

    def _wait(self, task: _Task) -> dict[str, np.ndarray]:
        timeout = None if task.deadline is None else max(0.0, task.deadline - time.monotonic())
        if not task.done.wait(timeout):
            with self._cond:
                task.abandoned = True
            if not task.done.is_set():
                raise ServingError(Code.DEADLINE_EXCEEDED, "Deadline Exceeded")
        if task.error is not None:
            raise task.error
        assert task.result is not None
        return task.result

    # -----------------------------------------------------------------------------------------
    # Processing

    def _ready(self, now: float) -> tuple[_Queue | None, float | None]:
        """The queue whose head batch is ready and oldest, else the time the next one becomes ready."""
        timeout = self.params.batch_timeout_micros / 1e6
        best: _Queue | None = None
        best_opened = 0.0
        next_due: float | None = None
        for queue in self._queues.values():
            if not queue.batches:
                continue
            head = queue.batches[0]
            full = head.size >= self.params.execution_batch_size or len(queue.batches) > 1
            due = head.opened + timeout
            if full or now >= due or self._stopping:
                if best is None or head.opened < best_opened:
                    best, best_opened = queue, head.opened
            elif next_due is None or due < next_due:
                next_due = due
        return best, next_due

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    queue, next_due = self._ready(time.monotonic())
                    if queue is not None:
                        batch = queue.batches.popleft()
                        break
                    if self._stopping:
                        return
                    wait = None if next_due is None else max(0.0, next_due - time.monotonic())
                    self._cond.wait(wait)
            self._process(queue, batch)

    def _process(self, queue: _Queue, batch: _Batch) -> None:
        now = time.monotonic()
        live: list[_Task] = []
        for task in batch.tasks:
            if task.abandoned or (task.deadline is not None and now >= task.deadline):
                task.error = ServingError(Code.DEADLINE_EXCEEDED, "Deadline Exceeded")
                task.done.set()
            else:
                live.append(task)
        if not live:
            return
        size = sum(t.size for t in live)
        if self._metrics is not None:
            self._metrics.batch(model=queue.model, signature=queue.signature, size=size,
                                queue_latency_s=now - min(t.enqueued for t in live), pool=self.params.thread_pool_name)
        try:
            if queue.unbatchable:
                self._run_each(queue, live)
            elif len(live) == 1 and not self.params.allowed_batch_sizes:
                live[0].result = queue.runner(live[0].inputs)
            else:
                self._run_merged(queue, live, size)
        except ServingError as exc:
            for task in live:
                task.error = exc
        except Exception as exc:  # a bug must fail the requests, never kill the batch thread
            log.exception("batch failed")
            for task in live:
                task.error = ServingError(Code.INTERNAL, f"batch failed: {exc}")
        for task in live:
            task.done.set()

    def _run_merged(self, queue: _Queue, tasks: list[_Task], size: int) -> None:
        keys = list(tasks[0].inputs)
        merged = {k: _concat([t.inputs[k] for t in tasks]) for k in keys}
        padded = size
        for allowed in self.params.allowed_batch_sizes:
            if allowed >= size:
                padded = allowed
                break
        if padded > size:
            merged = {k: _concat([v, _repeat_first(v, padded - size)]) for k, v in merged.items()}
        outputs = queue.runner(merged)
        if any(np.ndim(v) == 0 or np.shape(v)[0] != padded for v in outputs.values()):
            log.warning("outputs of %s/%s are not batch-major; running its requests one by one",
                        queue.model, queue.signature)
            queue.unbatchable = True
            self._run_each(queue, tasks)
            return
        offset = 0
        for task in tasks:
            task.result = {k: v[offset:offset + task.size] for k, v in outputs.items()}
            offset += task.size

    @staticmethod
    def _run_each(queue: _Queue, tasks: list[_Task]) -> None:
        for task in tasks:
            try:
                task.result = queue.runner(task.inputs)
            except ServingError as exc:
                task.error = exc

    # -----------------------------------------------------------------------------------------
    # Lifecycle

    def remove_queues(self, owner: Any) -> None:
        """Forget the queues of an unloaded servable (called once its in-flight requests are done)."""
        with self._cond:
            for qkey in [k for k, q in self._queues.items() if q.owner is owner]:
                queue = self._queues.pop(qkey)
                for batch in queue.batches:
                    for task in batch.tasks:
                        task.error = ServingError(Code.UNAVAILABLE, "Servable was unloaded")
                        task.done.set()

    def close(self, timeout: float = 30.0) -> None:
        """Process what is queued, then stop the batch threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)
