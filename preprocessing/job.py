"""The preprocessing stream job: raw records -> clean, anonymized transaction events, on fraud.stream.

Inputs: CSV lines that Kafka Connect wrote to fraud.ingest.csv and raw contract JSON on
fraud.transactions.raw (e.g. from `fraudctl replay`). Outputs: clean events on fraud.transactions
(keyed by transaction id) and dead letters on fraud.dlq.preprocess. What happens to each record is
`preprocessing.transform.Preprocessor` under the rules file; consuming, producing, delivery guarantees
(at-least-once or exactly-once with Kafka transactions), retries, rebalances, metrics, /healthz and
graceful shutdown are `fraud.stream.StreamProcessor`'s, shared with the scoring bridge.

Privacy: dead letters keep their shape for operators but not raw ids. Connect's own DLQ keeps the
original bytes; this one stores `Anonymizer.redact_record` of them (id fields replaced by the same
pseudonyms as in the clean events, card-number-like digit runs too), because the issue asks that no raw
card or customer id appears in any topic after preprocessing. The record key is replaced when it is a
raw id, and messages and field names are scrubbed of the record's raw ids before they reach headers and
logs. Nothing this module logs carries a raw id or the key; the key's fingerprint identifies it.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fraud.contract import DeadLetter
from fraud.errors import FraudError
from fraud.kafka_config import KafkaClientConfig
from fraud.logs import log_event
from fraud.stream import metrics as sm
from fraud.stream.config import StreamConfig, stream_options
from fraud.stream.metrics import Kind, MetricDef, Metrics, PrometheusMetrics
from fraud.stream.options import Option, add_options, resolve_options
from fraud.stream.processor import StreamProcessor
from fraud.stream.records import Output, ProcessResult, Record, RetriableError
from fraud.stream.signals import install_stop_handlers
from fraud.topics import DLQ_PREPROCESS, INGEST_CSV, TRANSACTIONS, TRANSACTIONS_RAW, USERS
from preprocessing.anonymize import AnonymizeKey, Anonymizer, load_key, redact_key
from preprocessing.rules import DEFAULT_RULES, SOURCE_CSV, SOURCE_RAW, Rules, load_rules
from preprocessing.transform import STAGE_RULES, Clean, Filtered, Preprocessor, Rejected

log = logging.getLogger("preprocessing")

COMPONENT = "preprocessing"
ENV_PREFIX = "FRAUD_PREPROCESS_"
DEFAULT_GROUP = "fraud-preprocess"
CLIENT_ID = "fraud-preprocess"
PROGRESS_LOG_S = 10.0
#: Dead-letter reason for a record the job failed on unexpectedly (a bug, not bad data).
INTERNAL_ERROR = "internal_error"

CLEAN = MetricDef("records_clean_total", Kind.COUNTER, "Clean events produced", ("source",))
FILTERED = MetricDef("records_filtered_total", Kind.COUNTER, "Records dropped on purpose (header, blank, filters)",
                     ("reason",))
USERS_ROWS = MetricDef("users_table_rows", Kind.GAUGE, "Entries in the users reference table")
PREPROCESS_METRICS: tuple[MetricDef, ...] = (*sm.STREAM_METRICS, CLEAN, FILTERED, USERS_ROWS)


def job_options() -> tuple[Option, ...]:
    """The job's own settings (besides the stream and Kafka connection ones)."""
    return (
        Option("rules", Path, DEFAULT_RULES, "rules file (filters, masks, defaults, projection, enrichment)",
               metavar="FILE"),
        Option("csv_topic", str, INGEST_CSV.name, "topic of CSV lines from Kafka Connect ('' = none)"),
        Option("raw_topic", str, TRANSACTIONS_RAW.name, "topic of raw transaction events ('' = none)"),
        Option("output_topic", str, TRANSACTIONS.name, "topic of clean, anonymized events"),
        Option("dlq_topic", str, DLQ_PREPROCESS.name, "dead-letter topic"),
        Option("users_topic", str, USERS.name, "compacted users topic (when the rules enrich)"),
        Option("users_timeout_s", float, 60.0, "how long to wait for the users table at start", minimum=0.1),
        Option("key_file", Path, None, "file holding the anonymization key (else FRAUD_ANONYMIZE_KEY[_FILE])",
               metavar="FILE"),
        Option("log_level", str, "INFO", "log level", choices=["DEBUG", "INFO", "WARNING", "ERROR"]),
    )


def all_options() -> tuple[Option, ...]:
    return job_options() + stream_options(group_id=DEFAULT_GROUP)


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything the job needs, parsed and checked once (the rules compiled, the key loaded)."""

    stream: StreamConfig
    rules: Rules
    key: AnonymizeKey = field(repr=False)
    sources: Mapping[str, str]  # input topic -> SOURCE_CSV | SOURCE_RAW
    output_topic: str = TRANSACTIONS.name
    users_topic: str = USERS.name
    users_timeout_s: float = 60.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not self.sources:
            raise FraudError("preprocess: no input topic (both --csv-topic and --raw-topic are empty)")
        if self.output_topic in self.sources or self.output_topic == self.stream.dlq_topic:
            raise FraudError(f"preprocess: output topic {self.output_topic} is also an input or the dead-letter topic")

    @classmethod
    def build(cls, *, kafka: KafkaClientConfig, rules: Rules, key: AnonymizeKey, csv_topic: str | None = INGEST_CSV.name,
              raw_topic: str | None = TRANSACTIONS_RAW.name, output_topic: str = TRANSACTIONS.name,
              dlq_topic: str = DLQ_PREPROCESS.name, users_topic: str = USERS.name, users_timeout_s: float = 60.0,
              log_level: str = "INFO", **stream: Any) -> PreprocessConfig:
        """For code and tests: `stream` holds StreamConfig fields (group_id, delivery, ...)."""
        sources = {t: s for t, s in ((csv_topic, SOURCE_CSV), (raw_topic, SOURCE_RAW)) if t}
        if not sources:
            raise FraudError("preprocess: no input topic (both --csv-topic and --raw-topic are empty)")
        stream.setdefault("group_id", DEFAULT_GROUP)
        sc = StreamConfig(kafka=kafka, input_topics=tuple(sources), dlq_topic=dlq_topic, component=COMPONENT, **stream)
        return cls(stream=sc, rules=rules, key=key, sources=sources, output_topic=output_topic,
                   users_topic=users_topic, users_timeout_s=users_timeout_s, log_level=log_level)

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> PreprocessConfig:
        values = resolve_options(all_options(), args, environ, ENV_PREFIX)
        kafka = KafkaClientConfig.from_env_and_args(args, environ, client_id=CLIENT_ID)
        rules = load_rules(values["rules"])
        key = load_key(environ, values["key_file"], dev_insecure=bool(getattr(args, "dev_insecure_key", False)))
        sources = {t: s for t, s in ((values["csv_topic"], SOURCE_CSV), (values["raw_topic"], SOURCE_RAW)) if t}
        if not sources:
            raise FraudError("preprocess: no input topic (both --csv-topic and --raw-topic are empty)")
        sc = StreamConfig.from_options(values, kafka=kafka, input_topics=tuple(sources), dlq_topic=values["dlq_topic"],
                                       component=COMPONENT)
        return cls(stream=sc, rules=rules, key=key, sources=sources, output_topic=values["output_topic"],
                   users_topic=values["users_topic"], users_timeout_s=values["users_timeout_s"],
                   log_level=values["log_level"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, job_options(), ENV_PREFIX, "Preprocessing")
    parser.add_argument("--dev-insecure-key", action="store_true",
                        help="run with the public development key when no key is configured (demo only: its "
                             "pseudonyms can be reversed by anyone who has the card numbers)")
    add_options(parser, stream_options(group_id=DEFAULT_GROUP), ENV_PREFIX, "Stream processing")
    KafkaClientConfig.add_arguments(parser)


@dataclass
class PreprocessResult(ProcessResult):
    """A batch's result with what the job counts itself; the processor hands it back in `on_committed`
    (batches are pipelined, so the counts must travel with their batch)."""

    clean: Counter = field(default_factory=Counter)  # by source
    filtered: Counter = field(default_factory=Counter)  # by reason


@dataclass
class JobStats:
    """Counts of committed batches: every consumed record is clean, filtered (with a reason) or dead-lettered."""

    consumed: Counter = field(default_factory=Counter)  # by topic
    clean: Counter = field(default_factory=Counter)  # by source
    filtered: Counter = field(default_factory=Counter)  # by reason
    dead: Counter = field(default_factory=Counter)  # by reason

    @property
    def total(self) -> int:
        return sum(self.consumed.values())

    def as_dict(self) -> dict[str, Any]:
        return {"consumed": sum(self.consumed.values()), "clean": sum(self.clean.values()),
                "filtered": dict(self.filtered), "dead_lettered": dict(self.dead)}


class PreprocessJob:
    """The job: `run()` blocks until `request_stop()` (or SIGTERM/SIGINT when the caller installs handlers)."""

    def __init__(self, config: PreprocessConfig, *, users: Mapping[str, Mapping[str, str]] | None = None,
                 metrics: Metrics | None = None, client: Any = None) -> None:
        self.config = config
        self.anonymizer = Anonymizer(config.key)
        self._users_given = users
        self._users_table: Any = None
        self.preprocessor = Preprocessor(config.rules, self.anonymizer, users)
        self.metrics: Metrics = metrics if metrics is not None else PrometheusMetrics("fraud_preprocess",
                                                                                        PREPROCESS_METRICS)
        self._client = client
        self.processor: StreamProcessor | None = None
        self.stats = JobStats()
        self._stop = threading.Event()
        self._last_progress = time.monotonic()

    # -- the process function --------------------------------------------------------------------

    def process(self, batch: Sequence[Record]) -> PreprocessResult:
        """Records in, clean events and dead letters out; filtered records are counted (after commit)."""
        table = self._users_table
        if table is not None and not table.loaded.is_set():
            if table.load_error is not None:
                raise FraudError(f"users table: {table.load_error}")
            # Joining against half a table would silently miss users: hold the batch back (nothing is
            # committed; the processor retries it after a backoff).
            raise RetriableError(f"the users table ({self.config.users_topic}) is still loading")
        result = PreprocessResult()
        filtered, clean = result.filtered, result.clean
        sources = self.config.sources
        out_topic = self.config.output_topic
        pre = self.preprocessor
        for rec in batch:
            source = sources[rec.topic]
            try:
                outcome = pre.process(source, rec.value)
            except Exception as exc:
                # A bug met by one record must not stop the stream on it (a restart would meet it again):
                # dead-letter it and say so. Only the exception's class: its text may quote the record.
                log_event(log, logging.ERROR, "internal_error", error=type(exc).__name__, topic=rec.topic,
                          partition=rec.partition, offset=rec.offset)
                outcome = Rejected(INTERNAL_ERROR, f"{type(exc).__name__} while preprocessing", STAGE_RULES)
            if isinstance(outcome, Clean):
                result.outputs.append(Output(out_topic, outcome.value, outcome.key))
                clean[source] += 1
            elif isinstance(outcome, Filtered):
                filtered[outcome.reason] += 1
            else:
                result.dead_letters.append(self.dead_letter(rec, outcome))
        return result

    def dead_letter(self, rec: Record, outcome: Rejected) -> DeadLetter:
        """A dead letter that is safe to keep: redacted value, key, message and field (see the module doc)."""
        anon = self.anonymizer
        raw_ids = {k: v for k, v in outcome.raw_ids.items() if isinstance(v, str) and v}
        return DeadLetter(
            key=redact_key(rec.key, raw_ids, anon),
            value=anon.redact_record(rec.value, raw_ids),
            source_topic=rec.topic, source_partition=rec.partition, source_offset=rec.offset,
            reason=outcome.reason, message=anon.redact_text(outcome.message, raw_ids),
            component=COMPONENT, stage=outcome.stage,
            field=None if outcome.field is None else anon.redact_text(outcome.field, raw_ids),
            exception_class="preprocessing.transform.Rejected",
        )

    def _on_committed(self, batch: Sequence[Record], result: ProcessResult) -> None:
        assert isinstance(result, PreprocessResult)
        s = self.stats
        s.consumed.update(Counter(r.topic for r in batch))
        s.clean.update(result.clean)
        s.filtered.update(result.filtered)
        s.dead.update(Counter(d.reason for d in result.dead_letters))
        for source, n in result.clean.items():
            self.metrics.increment(CLEAN, n, source=source)
        for reason, n in result.filtered.items():
            self.metrics.increment(FILTERED, n, reason=reason)
        if self._users_table is not None:
            self.metrics.gauge(USERS_ROWS, len(self._users_table))
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_LOG_S:
            self._last_progress = now
            log_event(log, logging.INFO, "progress", **s.as_dict())

    # -- running ---------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()
        if self.processor is not None:
            self.processor.request_stop()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the job (call from the main thread)."""
        install_stop_handlers(self.request_stop, logger=log)

    def run(self) -> JobStats:
        """Load the users table (if the rules enrich), then process until stopped; returns the counts."""
        c = self.config
        key = c.key
        log_event(log, logging.INFO, "preprocess_starting", rules=c.rules.summary(), key_source=key.source,
                  key_fingerprint=key.fingerprint, inputs=dict(c.sources), output=c.output_topic,
                  dlq=c.stream.dlq_topic)
        if key.insecure:
            log_event(log, logging.WARNING, "insecure_key",
                      detail="running with the public development key: pseudonyms can be reversed; demo only")
        table = None
        if c.rules.enrich is not None and self._users_given is None:
            from preprocessing.users import UsersTable

            # Loaded in the background: /healthz answers meanwhile and records wait (retried) until it is complete.
            table = UsersTable(c.stream.kafka, c.users_topic, c.rules.enrich.fields).start_background(
                c.users_timeout_s)
            self._users_table = table
            self.preprocessor.users = table
        try:
            self.processor = StreamProcessor(c.stream, self.process, client=self._client, metrics=self.metrics,
                                             on_committed=self._on_committed)
            if self._stop.is_set():
                self.processor.request_stop()
            self.processor.run()
        finally:
            if table is not None:
                table.close()
            log_event(log, logging.INFO, "preprocess_stopped", **self.stats.as_dict())
        return self.stats
