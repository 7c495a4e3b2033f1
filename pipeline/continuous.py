"""Continuous training (`fraudctl train --watch`): export a span when enough arrived, train, push if better.

Every `poll_s` the watcher compares the topic's end offsets with where the last complete span ended.
A cycle starts when at least `min_new_events` records arrived since, or when `period_s` passed since the
last cycle and anything arrived at all. A cycle:

1. exports one new span (pipeline/export.py: bounded, read-committed, crash-safe);
2. runs the pipeline on the latest `window_spans` spans (a rolling window: exports are incremental);
   each Trainer warm-starts from the last blessed model of its kind (the pipeline's base_model_<kind>
   resolvers), the ModelSelector picks on validation, the Evaluator judges the choice against the
   serving model on the new eval split, and only a blessed model is pushed;
3. reports what happened from the run's own records (MLMD): selected kind, blessed or not, pushed
   version, which Trainers warm-started.

Records are counted by offsets (transaction markers included), so "new events" is an upper bound of the
labelled rows a span brings; the span's manifest has the exact counts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fraud import spans
from fraud.errors import FraudError
from fraud.paths import Paths
from pipeline.export import ExportSource, export_span


@dataclass(frozen=True)
class WatchPolicy:
    """When a cycle starts, and over how much data it trains."""

    min_new_events: int = 50_000
    period_s: float = 24 * 3600.0
    poll_s: float = 30.0
    window_spans: int = 3
    max_cycles: int | None = None  # stop after this many cycles (None: until stopped)

    def __post_init__(self) -> None:
        if self.min_new_events < 1:
            raise FraudError(f"min new events must be >= 1, got {self.min_new_events}")
        if self.period_s <= 0 or self.poll_s <= 0:
            raise FraudError("period and poll interval must be positive")
        if self.window_spans < 1:
            raise FraudError(f"window spans must be >= 1, got {self.window_spans}")


@dataclass(frozen=True)
class CycleResult:
    cycle: int
    trigger: str  # "events" or "period"
    span: int | None
    rows: int
    selected: str | None
    blessed: bool
    pushed_version: str | None
    warm_started: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0

    def describe(self) -> str:
        warm = ", ".join(f"{k}{'' if v else ' (cold)'}" for k, v in sorted(self.warm_started.items())) or "-"
        outcome = f"pushed version {self.pushed_version}" if self.pushed_version else "nothing pushed"
        return (f"cycle {self.cycle} ({self.trigger}): span {self.span}, {self.rows} rows; trained {warm}; "
                f"selected {self.selected}, {'blessed' if self.blessed else 'not blessed'}; {outcome} "
                f"({self.seconds:.0f}s)")


def pending_events(source: ExportSource, base: Path, topic: str) -> int:
    """Records in the topic after the end of the last complete span (all of it if there is none)."""
    last = spans.latest_complete_span(base)
    previous = spans.end_offsets(spans.read_manifest(last.path)) if last else {}
    partitions = source.partitions(topic)
    begin = source.beginning_offsets(topic, partitions)
    end = source.end_offsets(topic, partitions)
    return sum(max(0, end[p] - previous.get(p, begin[p])) for p in partitions)


def run_outcome(metadata_path: Path) -> dict[str, Any]:
    """What the latest pipeline run decided, read from MLMD (selected kind, blessing, push, warm starts)."""
    from pipeline.report import artifact_property, latest_run, model_infos

    record = latest_run(metadata_path)
    selected = record.outputs.get("ModelSelector", {}).get("model", [])
    verdict = record.outputs.get("Evaluator", {}).get("blessing", [])
    pushed = record.outputs.get("Pusher", {}).get("pushed_model", [])
    warm = {kind: bool(info.get("warm_started_from")) for kind, info in model_infos(record).items()}
    return {
        "selected": str(artifact_property(selected[0], "selected_model")) if selected else None,
        "blessed": bool(verdict) and bool(artifact_property(verdict[0], "blessed")),
        "pushed_version": (str(artifact_property(pushed[0], "pushed_version"))
                           if pushed and artifact_property(pushed[0], "pushed") else None),
        "warm_started": warm,
        "failed": [n for n, s in record.states.items() if s == "FAILED"],
    }


class ContinuousTrainer:
    """The watch loop (see the module docstring). `run_pipeline(window_spans)` runs one pipeline."""

    def __init__(self, paths: Paths, topic: str, policy: WatchPolicy, source: ExportSource,
                 run_pipeline: Callable[[int], None], log: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.paths = paths
        self.topic = topic
        self.policy = policy
        self.source = source
        self.run_pipeline = run_pipeline
        self.log = log
        self.clock = clock
        self.cycles = 0
        self._last_cycle_at = clock()

    def trigger(self) -> str | None:
        """"events", "period" or None (no cycle now)."""
        pending = pending_events(self.source, self.paths.exports_dir, self.topic)
        if pending >= self.policy.min_new_events:
            return "events"
        if pending > 0 and self.clock() - self._last_cycle_at >= self.policy.period_s:
            return "period"
        return None

    def step(self) -> CycleResult | None:
        """One poll: a cycle if the policy says so, else None."""
        why = self.trigger()
        if why is None:
            return None
        start = self.clock()
        self.cycles += 1
        exported = export_span(self.source, self.paths.exports_dir, self.topic)
        self.log(f"cycle {self.cycles}: span {exported.span} exported ({exported.rows} rows, "
                 f"{exported.unlabeled} without a label) in {exported.seconds:.1f}s; training")
        try:
            self.run_pipeline(self.policy.window_spans)
        finally:
            self._last_cycle_at = self.clock()
        outcome = run_outcome(self.paths.metadata_path)
        if outcome["failed"]:
            raise FraudError(f"cycle {self.cycles}: pipeline components failed: {', '.join(outcome['failed'])}")
        result = CycleResult(cycle=self.cycles, trigger=why, span=exported.span, rows=exported.rows,
                             selected=outcome["selected"], blessed=outcome["blessed"],
                             pushed_version=outcome["pushed_version"], warm_started=outcome["warm_started"],
                             seconds=self.clock() - start)
        self.log(result.describe())
        return result

    def run(self, stop: threading.Event | None = None) -> list[CycleResult]:
        """Polls until `stop` is set or `max_cycles` cycles ran; returns the cycles' results."""
        stop = stop or threading.Event()
        results: list[CycleResult] = []
        while not stop.is_set():
            result = self.step()
            if result is not None:
                results.append(result)
                if self.policy.max_cycles is not None and len(results) >= self.policy.max_cycles:
                    break
                continue
            stop.wait(self.policy.poll_s)
        return results
