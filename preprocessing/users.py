"""The users reference table (the seed's users table): a compacted topic, read into memory for enrichment.

Records of the topic (fraud.topics.USERS): key = the raw customer id (UTF-8), value = a JSON object of
the customer's attributes (`{"name": ..., "country": ..., "segment": ...}`), or null to delete the entry
(a tombstone; compaction keeps the latest value per key). The topic is upstream data, like the raw
transactions: it holds raw ids and never leaves the ingestion side.

`UsersTable` reads the whole topic at start (up to the end offsets seen then, so the first transactions
are joined against a complete table) and follows updates in a background thread: the join is
as-of-processing-time, like a ksqlDB stream-table join. The job loads it in the background
(`start_background`) and holds its records back until it is complete, so a large table does not keep
the health endpoint from answering. `synthetic_users` makes a table for the
customers of replay's synthetic card pool (what the demo loads with `fraudctl preprocess users`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from fraud.errors import FraudError
from fraud.kafka_config import KafkaClientConfig
from fraud.logs import log_event
from fraud.replay import CardPool
from fraud.stream.admin import KafkaAdmin
from fraud.stream.reader import EventProducer, PartitionReader
from fraud.stream.records import Record, RetriableError, TopicPartition

log = logging.getLogger("preprocessing.users")

_FIRST = ("Ana", "Bram", "Chloe", "Dirk", "Elena", "Femke", "Gilles", "Hanna", "Ines", "Jonas", "Karin", "Lucas",
          "Marie", "Noah", "Olga", "Pieter", "Quinten", "Rosa", "Sven", "Tess", "Ugo", "Vera", "Wout", "Yara")
_LAST = ("Peeters", "Janssens", "Maes", "Jacobs", "Mertens", "Willems", "Claes", "Goossens", "Wouters", "De Smet",
         "Dubois", "Lambert", "Martin", "Dupont", "Leroy", "Moreau", "Simon", "Laurent", "Lefebvre", "Michel")
_COUNTRIES = (("BE", 50), ("NL", 15), ("FR", 12), ("DE", 10), ("LU", 5), ("GB", 4), ("US", 2), ("ES", 2))
_SEGMENTS = (("retail", 70), ("premium", 20), ("business", 10))


def synthetic_users(cards: CardPool) -> dict[str, dict[str, str]]:
    """customer id -> {name, country, segment} for every customer of `cards` (deterministic per pool seed)."""
    rng = random.Random(cards.seed * 7919 + 1)
    countries = [c for c, _ in _COUNTRIES]
    country_w = [w for _, w in _COUNTRIES]
    segments = [s for s, _ in _SEGMENTS]
    segment_w = [w for _, w in _SEGMENTS]
    out: dict[str, dict[str, str]] = {}
    for customer in sorted({c.customer_id for c in cards.cards}):
        out[customer] = {
            "name": f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
            "country": rng.choices(countries, country_w)[0],
            "segment": rng.choices(segments, segment_w)[0],
        }
    return out


def parse_user(value: bytes | None, fields: tuple[str, ...]) -> dict[str, str] | None:
    """The fields of one users record (None for a tombstone); ValueError if it is not a JSON object.

    Numbers and booleans become strings; other values (lists, objects, null) are left out.
    """
    if value is None:
        return None
    obj = orjson.loads(value)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    out: dict[str, str] = {}
    for name in fields:
        v = obj.get(name)
        if isinstance(v, str):
            out[name] = v
        elif isinstance(v, bool):
            out[name] = "true" if v else "false"
        elif isinstance(v, (int, float)):
            out[name] = str(v)
    return out


class UsersTable(Mapping[str, Mapping[str, str]]):
    """The users topic as a read-only mapping (raw key -> fields), kept current by a background reader."""

    def __init__(self, kafka: KafkaClientConfig, topic: str, fields: tuple[str, ...], *,
                 poll_timeout_s: float = 0.5) -> None:
        self.kafka = kafka
        self.topic = topic
        self.fields = fields
        self._rows: dict[str, dict[str, str]] = {}
        self._reader: PartitionReader | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._poll_timeout_s = poll_timeout_s
        self._end: dict[TopicPartition, int] = {}
        self.loaded = threading.Event()
        self.load_error: str | None = None
        self.bad_records = 0
        self.updates = 0
        self.error: str | None = None

    # -- Mapping ---------------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Mapping[str, str]:
        return self._rows[key]

    def get(self, key: str, default: Any = None) -> Any:  # the hot path: one dict lookup, no exception
        return self._rows.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._rows))

    def __len__(self) -> int:
        return len(self._rows)

    # -- loading ---------------------------------------------------------------------------------

    def _apply(self, records: list[Record]) -> None:
        for rec in records:
            if rec.key is None:
                self.bad_records += 1
                continue
            key = rec.key.decode("utf-8", "replace")
            try:
                row = parse_user(rec.value, self.fields)
            except ValueError:
                # The key is a raw customer id: never logged. The offset finds the record.
                self.bad_records += 1
                log_event(log, logging.WARNING, "users_bad_record", topic=rec.topic, partition=rec.partition,
                          offset=rec.offset)
                continue
            if row is None:
                self._rows.pop(key, None)
            else:
                self._rows[key] = row
            self.updates += 1

    def open(self, timeout_s: float = 60.0) -> UsersTable:
        """Connect and position at the start of the topic (FraudError at once if it does not exist)."""
        try:
            with KafkaAdmin(self.kafka, timeout_s=timeout_s) as admin:
                if not admin.describe([self.topic]):
                    raise FraudError(f"users topic {self.topic} does not exist on {self.kafka.bootstrap} "
                                     f"(`fraudctl topics` creates it, `fraudctl preprocess users` fills it)")
                self._end = admin.end_offsets([self.topic])
        except FraudError as exc:
            if "users topic" in str(exc):
                raise
            raise FraudError(f"cannot reach Kafka at {self.kafka.bootstrap} for the users table: {exc}") from None
        self._reader = PartitionReader(self.kafka, [self.topic], group_id=f"{self.kafka.client_id}-users",
                                       default_start="earliest", timeout_s=timeout_s)
        return self

    def _load(self, timeout_s: float) -> None:
        """Read up to the end offsets seen at `open`."""
        reader, end = self._reader, self._end
        started = time.monotonic()
        while True:
            positions = reader.positions()
            if all(positions.get(tp, -1) >= o for tp, o in end.items() if o > 0):
                break
            if time.monotonic() - started > timeout_s:
                have = sum(max(0, positions.get(tp, 0)) for tp in end)
                raise FraudError(f"users topic {self.topic}: read {have} of {sum(end.values())} records in "
                                 f"{timeout_s:g} s")
            self._apply(reader.poll(5000, self._poll_timeout_s))
        log_event(log, logging.INFO, "users_table_loaded", topic=self.topic, rows=len(self._rows),
                  bad_records=self.bad_records, seconds=round(time.monotonic() - started, 3))
        self.loaded.set()

    def start(self, timeout_s: float = 60.0) -> UsersTable:
        """Read the topic up to its current end (blocking), then follow it in a daemon thread."""
        self.open(timeout_s)
        try:
            self._load(timeout_s)
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._follow, name="users-table", daemon=True)
        self._thread.start()
        return self

    def start_background(self, timeout_s: float = 60.0) -> UsersTable:
        """`open` now, then load and follow in a daemon thread: `loaded` is set when the table is complete,
        `load_error` says why it could not be (a service can answer health checks meanwhile)."""
        self.open(timeout_s)

        def run() -> None:
            try:
                self._load(timeout_s)
            except Exception as exc:
                self.load_error = str(exc) if isinstance(exc, FraudError) else f"{type(exc).__name__}: {exc}"
                log_event(log, logging.ERROR, "users_table_load_failed", error=self.load_error)
                return
            self._follow()

        self._thread = threading.Thread(target=run, name="users-table", daemon=True)
        self._thread.start()
        return self

    def _follow(self) -> None:
        reader = self._reader
        while not self._stop.is_set():
            try:
                self._apply(reader.poll(5000, self._poll_timeout_s))
            except Exception as exc:  # the table stays as it was; the job keeps running and says so
                self.error = f"{type(exc).__name__}: {exc}"
                log_event(log, logging.ERROR, "users_table_error", error=self.error)
                self._stop.wait(1.0)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def load_users(kafka: KafkaClientConfig, topic: str, users: Mapping[str, Mapping[str, str]]) -> int:
    """Write `users` to the users topic (key = customer id); returns how many were sent."""
    producer = EventProducer(kafka)
    for customer, row in users.items():
        producer.send(topic, orjson.dumps(dict(row)), customer.encode("utf-8"))
    try:
        producer.flush(120)
    except RetriableError as exc:
        raise FraudError(f"users records were not delivered to {topic} on {kafka.bootstrap}: {exc}") from None
    return len(users)
