"""The live monitor: score, label and transaction events in; windowed metrics, drift/skew, alerts and a
snapshot for the report out.

State survives restarts through checkpoints (monitoring.checkpoint): every `checkpoint_interval_s` the
windows, the drift collector, the alerts raised and the offsets read so far are written to a compacted
topic, in one Kafka transaction with the dead letters and alerts produced since the previous checkpoint.
A restarted monitor (kill -9 included) loads the last checkpoint and reads on from its offsets, so it
neither replays hours of history nor produces an alert or a dead letter twice. If a transaction cannot be
committed (a broker bounce), the monitor goes back to its last checkpoint and reads from there again.

Without a checkpoint (the first start, or `--checkpoint-interval-s 0`) state is rebuilt instead: the
reader starts every partition at the first record of `lookback` ago (Kafka time) and replays it through
the same code, and alerts raised before are read back from the alerts topic so they are not raised
again (alert ids are deterministic).

Every `publish_interval_s` (and at exit): closed drift windows are checked, alert rules run over closed
windows, new alerts are produced, Prometheus gauges are set from the latest closed windows, entries older
than the retention are dropped, and the report's snapshot is written (atomically).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from fraud.contract import (
    MALFORMED_JSON,
    AlertEvent,
    ContractError,
    DeadLetter,
    LabelEvent,
    ScoreEvent,
    TransactionEvent,
)
from fraud.errors import FraudError
from fraud.logs import log_event
from fraud.stream.health import Lifecycle
from fraud.stream.metrics import Metrics, PrometheusMetrics
from fraud.stream.reader import EventProducer, PartitionReader, TransactionalProducer, read_all
from fraud.stream.records import Record, RetriableError
from fraud.stream.signals import install_stop_handlers
from monitoring import metrics as m
from monitoring.alerts import AlertBook, drift_alerts, window_alerts
from monitoring.checkpoint import Checkpoint, CheckpointStore, Part, decode, encode
from monitoring.config import DRIFT_WINDOWS, GRANULARITIES, MonitorConfig
from monitoring.drift import DriftChecker, DriftResult, DriftWindows, find_training_statistics
from monitoring.windows import WindowedMetrics

log = logging.getLogger("monitoring.monitor")
COMPONENT = "monitor"
SNAPSHOT_VERSION = 1


@dataclass
class MonitorStats:
    scores: int = 0
    duplicate_scores: int = 0
    labels: int = 0
    transactions: int = 0
    dead_letters: int = 0
    drift_windows_checked: int = 0
    alerts: int = 0
    checkpoints: int = 0  # written by this process
    rewinds: int = 0  # transactions that failed: back to the last checkpoint
    records_read: int = 0  # by this process (the rest of the state came from a checkpoint)

    #: Counters of this process, not of the state: never checkpointed or restored.
    PROCESS_LOCAL = ("checkpoints", "rewinds", "records_read")

    def summary(self) -> str:
        return (f"{self.scores} scores ({self.duplicate_scores} duplicates), {self.labels} labels, "
                f"{self.transactions} transactions, {self.drift_windows_checked} drift windows checked, "
                f"{self.alerts} alerts raised, {self.dead_letters} dead letters")


def load_schema(path: Path | None) -> Any:
    import tensorflow_data_validation as tfdv

    from schema import SCHEMA_FILE

    path = Path(path) if path is not None else SCHEMA_FILE
    if not path.is_file():
        raise FraudError(f"schema {path} does not exist")
    return tfdv.load_schema_text(str(path))


class MonitorJob:
    def __init__(self, config: MonitorConfig, *, checker: DriftChecker | None = None, metrics: Metrics | None = None,
                 reader_factory: Callable[..., Any] | None = None, producer: Any = None,
                 clock_ms: Callable[[], int] | None = None,
                 alert_history: Callable[[int], list[str]] | None = None,
                 checkpoints: CheckpointStore | None = None) -> None:
        """`alert_history(since_ms)` gives the ids of alerts raised before (default: read the alerts topic);
        `checkpoints` where checkpoints go (default: the state topic, when `checkpoint_interval_s` > 0)."""
        self.config = config
        if checkpoints is None and config.checkpoint_interval_s > 0:
            checkpoints = CheckpointStore(config.kafka, config.state_topic, config.group_id)
        self.checkpoints = checkpoints
        self.restored: Checkpoint | None = None  # the checkpoint this run started from
        self._last_checkpoint: Checkpoint | None = None
        self._alert_history = alert_history or self._alerts_on_topic
        self.checker = checker
        self.metrics: Metrics = metrics if metrics is not None else PrometheusMetrics(m.MONITOR_NAMESPACE,
                                                                                      m.MONITOR_METRICS)
        self._reader_factory = reader_factory or PartitionReader
        self._producer = producer
        self._now_ms = clock_ms or (lambda: int(time.time() * 1000))
        self.windows = WindowedMetrics(GRANULARITIES, config.retention_ms)
        self.drift = (DriftWindows(checker, DRIFT_WINDOWS[config.drift_window], config.allowed_lateness_ms)
                      if checker is not None else None)
        self.drift_results: list[DriftResult] = []
        self.book = AlertBook()
        self.label_progress: list[dict] = []
        self.stats = MonitorStats()
        self.model_name: str | None = None
        self._stop = threading.Event()
        self.life = Lifecycle("monitor", log)

    @classmethod
    def from_config(cls, config: MonitorConfig, **kwargs: Any) -> MonitorJob:
        checker = None
        if config.drift:
            training = find_training_statistics(stats_path=config.training_stats, metadata_path=config.metadata_path)
            t = config.thresholds
            checker = DriftChecker(training, load_schema(config.schema_path), config.drift_features, t.drift_jsd,
                                   t.min_drift_rows)
            log_event(log, logging.INFO, "training_statistics", source=training.source,
                      model_version=training.model_version, quantile_buckets=checker.buckets)
        return cls(config, checker=checker, **kwargs)

    # -- control -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT only set the stop flag (call from the main thread)."""
        install_stop_handlers(self._stop, logger=log)

    def health(self) -> tuple[bool, bool, dict[str, Any]]:
        return self.life.alive(), self.life.ready(), {"state": self.life.state, **vars(self.stats)}

    @property
    def http_port(self) -> int | None:
        """The bound port of /healthz and /metrics, once it listened."""
        return self.life.port

    # -- checkpoints ---------------------------------------------------------------------------

    def state(self) -> tuple[dict, dict[str, Part]]:
        """Everything a restarted monitor needs: (fields, parts with arrays), for monitoring.checkpoint."""
        meta = {
            "model_name": self.model_name,
            "stats": {k: v for k, v in vars(self.stats).items() if k not in MonitorStats.PROCESS_LOCAL},
            "drift_results": [r.to_dict() for r in self.drift_results[-500:]],
            "alerts_seen": sorted(self.book._seen),
            "alerts_raised": [orjson.loads(a.to_json()) for a in self.book.raised[-1000:]],
            "label_progress": self.label_progress,
        }
        parts: dict[str, Part] = {"windows": self.windows.state()}
        if self.drift is not None:
            parts["drift"] = self.drift.state()
        return meta, parts

    def restore(self, meta: dict, parts: dict[str, Part]) -> None:
        self._reset()
        self.model_name = meta["model_name"]
        for k, v in meta["stats"].items():
            setattr(self.stats, k, v)
        self.drift_results = [DriftResult.from_dict(d) for d in meta["drift_results"]]
        self.book = AlertBook(meta["alerts_seen"])
        self.book.raised = [AlertEvent.from_json(orjson.dumps(a)) for a in meta["alerts_raised"]]
        self.label_progress = list(meta["label_progress"])
        self.windows.restore(*parts["windows"])
        if self.drift is not None and "drift" in parts:
            self.drift.restore(*parts["drift"])

    def _reset(self) -> None:
        """Empty state, as at a first start."""
        c = self.config
        self.windows = WindowedMetrics(GRANULARITIES, c.retention_ms)
        if self.checker is not None:
            self.drift = DriftWindows(self.checker, DRIFT_WINDOWS[c.drift_window], c.allowed_lateness_ms)
        self.drift_results = []
        self.book = AlertBook()
        self.label_progress = []
        self.model_name = None
        kept = {k: getattr(self.stats, k) for k in MonitorStats.PROCESS_LOCAL}
        self.stats = MonitorStats(**kept)

    def _checkpoint(self, reader: Any, producer: Any) -> None:
        """Stage the state and offsets and commit them with everything produced since the last checkpoint."""
        assert self.checkpoints is not None
        t0 = time.monotonic()
        blob = encode(*self.state())
        staged = self.checkpoints.stage(producer, blob, reader.positions())
        producer.commit()  # RetriableError: nothing of this interval happened; the caller rewinds
        self._last_checkpoint = staged
        self.stats.checkpoints += 1
        self.metrics.observe(m.MON_CHECKPOINT_SECONDS, time.monotonic() - t0)
        self.metrics.gauge(m.MON_CHECKPOINT_BYTES, len(blob))
        log_event(log, logging.DEBUG, "checkpoint", id=staged.id, bytes=len(blob),
                  seconds=round(time.monotonic() - t0, 3))

    def _start_state(self, since: int) -> dict:
        """Restore the last checkpoint, or get ready to rebuild from `since`; returns the start offsets."""
        checkpoint = self._last_checkpoint
        if checkpoint is None:
            self._reset()
            self.book = AlertBook(self._alert_history(since))
            return {}
        self.restore(*decode(checkpoint.blob))
        return dict(checkpoint.offsets)

    def _alerts_on_topic(self, since_ms: int) -> list[str]:
        c = self.config
        return [AlertEvent.from_json(r.value).alert_id
                for r in read_all(c.kafka, c.alerts_topic, group_id=c.group_id, since_ms=since_ms, idle_s=1.0)
                if r.value is not None and _parses(r.value)]

    # -- input ---------------------------------------------------------------------------------

    def handle(self, records: list[Record]) -> list[DeadLetter]:
        """Feed a batch of records into the windows and drift collector; returns the dead letters."""
        c = self.config
        dead: list[DeadLetter] = []
        # Labelled counters are summed per batch: a labelled child lookup costs more than the event itself.
        scored: Counter[str] = Counter()
        flagged: Counter[str] = Counter()
        labels: Counter[str] = Counter()
        transactions = 0
        for r in records:
            try:
                if r.value is None:
                    raise ContractError(MALFORMED_JSON, "record has no value (a tombstone?)")
                if r.topic == c.scores_topic:
                    e = ScoreEvent.from_json(r.value)
                    if self._on_score(e):
                        scored[str(e.model_version)] += 1
                        flagged[str(e.model_version)] += e.decision
                elif r.topic == c.labels_topic:
                    label = LabelEvent.from_json(r.value)
                    labels[str(label.label)] += 1
                    self.windows.add_label(label)
                elif r.topic == c.transactions_topic:
                    tx = TransactionEvent.from_json(r.value)
                    transactions += 1
                    if self.drift is not None:
                        self.drift.add(tx)
            except ContractError as exc:
                dead.append(DeadLetter.from_error(exc, key=r.key, value=r.value, topic=r.topic, partition=r.partition,
                                                  offset=r.offset, component=COMPONENT, stage="VALUE_CONVERTER"))
        for version, n in scored.items():
            self.metrics.increment(m.MON_SCORED, n, model_version=version)
            if flagged[version]:
                self.metrics.increment(m.MON_FLAGGED, flagged[version], model_version=version)
        for value, n in labels.items():
            self.metrics.increment(m.MON_LABELS, n, label=value)
        if transactions:
            self.metrics.increment(m.MON_TRANSACTIONS, transactions)
        self.stats.labels += sum(labels.values())
        self.stats.transactions += transactions
        return dead

    def _on_score(self, e: ScoreEvent) -> bool:
        if not self.windows.add_score(e):
            self.stats.duplicate_scores += 1
            return False
        self.stats.scores += 1
        self.model_name = e.model_name
        self.metrics.observe(m.MON_SCORE, e.score)
        self.metrics.observe(m.MON_LATENCY, max(0, e.latency_ms) / 1000.0)
        return True

    # -- periodic work -------------------------------------------------------------------------

    def evaluate(self, *, final: bool = False) -> list[AlertEvent]:
        """Check closed drift windows and closed metric windows; returns the alerts not raised before."""
        c = self.config
        now = self._now_ms()
        candidates: list[AlertEvent] = []
        if self.drift is not None:
            for result in self.drift.close_due(everything=final):
                self.drift_results.append(result)
                self.stats.drift_windows_checked += 1
                self._publish_drift(result)
                version = self.checker.training.model_version if self.checker is not None else None
                candidates += drift_alerts(result, c.drift_window, now, self.model_name, version)
        g = c.thresholds.alert_granularity
        closed = self.windows.windows(g) if final else self.windows.closed_windows(g, c.allowed_lateness_ms)
        for w in closed:
            candidates += window_alerts(w, c.thresholds, now, self.model_name)
        fresh = self.book.new(candidates)
        self.stats.alerts += len(fresh)
        for a in fresh:
            self.metrics.increment(m.ALERTS_RAISED, kind=a.kind, severity=a.severity)
            log_event(log, logging.WARNING, "alert", alert_id=a.alert_id, kind=a.kind, features=list(a.features),
                      value=a.value, threshold=a.threshold, message=a.message)
        return fresh

    def _publish_drift(self, r: DriftResult) -> None:
        met = self.metrics
        for name, value in r.drift_jsd.items():
            met.gauge(m.DRIFT_JSD, value, feature=name)
        for name, value in r.skew_jsd.items():
            met.gauge(m.SKEW_JSD, value, feature=name)
        met.gauge(m.DRIFTED_FEATURES, len(r.drifted), comparison="drift")
        met.gauge(m.DRIFTED_FEATURES, len(r.skewed), comparison="skew")
        met.gauge(m.DRIFT_WINDOW_ROWS, r.rows)
        met.gauge(m.DRIFT_THRESHOLD, r.threshold)

    def publish(self, *, final: bool = False) -> None:
        """Set window gauges from the latest closed windows, record label progress, expire old entries."""
        met = self.metrics
        c = self.config
        for g in GRANULARITIES:
            closed = self.windows.windows(g) if final else self.windows.closed_windows(g, c.allowed_lateness_ms)
            if not closed:
                continue
            w = closed[-1]
            met.gauge(m.WIN_EVENTS, w.events, window=g)
            met.gauge(m.WIN_EVENT_RATE, w.event_rate_per_s, window=g)
            met.gauge(m.WIN_ALERT_RATE, w.alert_rate, window=g)
            met.gauge(m.WIN_SCORE_MEAN, w.score_mean, window=g)
            met.gauge(m.WIN_SCORE_P99, w.score_p99, window=g)
            met.gauge(m.WIN_LABEL_COVERAGE, w.label_coverage, window=g)
            met.gauge(m.WIN_END, w.end_ms / 1000.0, window=g)
            for q, value in (("0.5", w.latency_p50_ms), ("0.95", w.latency_p95_ms), ("0.99", w.latency_p99_ms)):
                met.gauge(m.WIN_LATENCY, value / 1000.0, window=g, quantile=q)
            settled = [x for x in closed if x.label_coverage >= c.thresholds.min_label_coverage and x.labelled]
            if settled:
                s = settled[-1]
                for metric, value in ((m.WIN_PRECISION, s.precision), (m.WIN_RECALL, s.recall),
                                      (m.WIN_AUPRC, s.auprc)):
                    if value is not None:
                        met.gauge(metric, value, window=g)
        progress = self.windows.label_progress()
        progress["at_ms"] = self._now_ms()
        if not self.label_progress or (progress["labelled"], progress["scored"]) != (
                self.label_progress[-1]["labelled"], self.label_progress[-1]["scored"]):
            self.label_progress.append(progress)
            del self.label_progress[:-2000]
        self.windows.expire()

    def snapshot(self) -> dict:
        c = self.config
        return {
            "version": SNAPSHOT_VERSION,
            "generated_at_ms": self._now_ms(),
            "model_name": self.model_name,
            "training_statistics": None if self.checker is None else self.checker.training.source,
            "thresholds": vars(c.thresholds),
            "drift_window": c.drift_window,
            "drift_features": list(c.drift_features),
            "windows": {g: [w.to_dict() for w in self.windows.windows(g)] for g in GRANULARITIES},
            "drift": [r.to_dict() for r in self.drift_results[-500:]],
            "drift_skipped": [] if self.drift is None else [
                {"window_start_ms": s, "rows": n} for s, n in self.drift.skipped[-500:]],
            "alerts": [a.to_dict() for a in self.book.raised[-1000:]],
            "label_progress": self.label_progress,
            "stats": vars(self.stats),
        }

    def write_snapshot(self) -> None:
        path = self.config.snapshot_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(orjson.dumps(self.snapshot(), option=orjson.OPT_SERIALIZE_NUMPY))
        os.replace(tmp, path)

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> MonitorStats:
        c = self.config
        with self.life.lifetime(lambda: vars(self.stats)):
            self.life.serve(c.http_host, c.http_port, self.health, getattr(self.metrics, "exposition", None))
            since = self._now_ms() - c.lookback_ms
            producer = self._producer
            reader = None
            try:
                if self.checkpoints is not None:
                    self.restored = self._last_checkpoint = self.checkpoints.load()
                    if producer is None:
                        producer = TransactionalProducer(c.kafka, f"{c.group_id}.monitor")
                producer = producer or EventProducer(c.kafka)
                start = self._start_state(since)
                reader = self._open_reader(start, since)
                log_event(log, logging.INFO, "monitor_starting", lookback_ms=c.lookback_ms,
                          known_alerts=len(self.book._seen), drift=self.checker is not None,
                          checkpoint=None if self.restored is None else self.restored.id,
                          checkpoint_age_s=None if self.restored is None else
                          round((self._now_ms() - self.restored.created_ms) / 1000, 1),
                          scores=self.stats.scores)
                self.life.state = "running"
                reader = self._loop(reader, producer, since)
                self.life.state = "stopping"
            finally:
                if reader is not None:
                    reader.close()
                if producer is not None and self._producer is None:
                    producer.close()
        return self.stats

    def _open_reader(self, start: dict, since: int) -> Any:
        c = self.config
        return self._reader_factory(c.kafka, [c.scores_topic, c.labels_topic, c.transactions_topic],
                                    group_id=c.group_id, start=start, default_start=since,
                                    fetch_stall_s=c.fetch_stall_s)

    def _loop(self, reader: Any, producer: Any, since: int) -> Any:
        """Poll, handle, publish and checkpoint until stopped or idle; returns the reader (a rewind makes a
        new one)."""
        c = self.config
        last_publish = 0.0
        last_checkpoint = time.monotonic()
        last_record = time.monotonic()
        while True:
            stopping = self._stop.is_set()
            idle = False
            if not stopping:
                self.life.beat()
                records = reader.poll(2000, 0.2)
                if records:
                    self.stats.records_read += len(records)
                    last_record = time.monotonic()
                    dead = self.handle(records)
                    for d in dead:
                        producer.send_dead_letter(c.dlq_topic, d)
                        self.metrics.increment(m.MON_DEAD_LETTERS, reason=d.reason)
                    self.stats.dead_letters += len(dead)
                idle = bool(c.stop_when_idle_s and time.monotonic() - last_record >= c.stop_when_idle_s
                            and (not hasattr(reader, "caught_up") or reader.caught_up()))
            if stopping or idle or time.monotonic() - last_publish >= c.publish_interval_s:
                last_publish = time.monotonic()
                self._emit(producer, final=idle)
                for (t, p), lag in reader.lag().items():
                    self.metrics.gauge(m.MON_LAG, lag, topic=t, partition=str(p))
            if self.checkpoints is not None and (
                    stopping or idle or time.monotonic() - last_checkpoint >= c.checkpoint_interval_s):
                last_checkpoint = time.monotonic()
                try:
                    self._checkpoint(reader, producer)
                except RetriableError as exc:
                    reader = self._rewind(reader, since, exc)
                    if stopping:
                        return reader  # the next start resumes from the last checkpoint
                    continue
            if idle:
                log_event(log, logging.INFO, "idle_stop", idle_s=c.stop_when_idle_s)
                return reader
            if stopping:
                return reader

    def _rewind(self, reader: Any, since: int, exc: BaseException) -> Any:
        """A transaction failed: what it held was not committed. Back to the last checkpoint's state and
        offsets (or to the start when there is none), with a new reader."""
        self.stats.rewinds += 1
        self.metrics.increment(m.MON_REWINDS)
        log_event(log, logging.WARNING, "rewind_to_checkpoint", error=str(exc),
                  checkpoint=None if self._last_checkpoint is None else self._last_checkpoint.id)
        reader.close()
        start = self._start_state(since)
        return self._open_reader(start, since)

    def _emit(self, producer: Any, *, final: bool) -> None:
        fresh = self.evaluate(final=final)
        for a in fresh:
            producer.send(self.config.alerts_topic, a.to_json(), a.alert_id.encode())
        producer.flush()
        self.publish(final=final)
        self.write_snapshot()


def _parses(value: bytes) -> bool:
    try:
        AlertEvent.from_json(value)
        return True
    except ContractError:
        return False

