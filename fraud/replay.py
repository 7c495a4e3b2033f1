"""`fraudctl replay`: dataset rows become transaction events on Kafka, with delayed label feedback.

Everything an event carries is deterministic, so two replays of the same file produce the same
records (only Kafka timestamps and `labelled_at_ms` follow the wall clock):

- transaction id from the row index: row 123 -> "tx-000123";
- event time: a fixed base epoch plus the row's `Time` (seconds since the dataset's first
  transaction); the Kafka record timestamp stays the wall clock at send time, so the broker's
  retention and end-to-end latency measurements see real time;
- card and customer ids: a seeded pool of 16-digit PAN-like card numbers (valid Luhn check digit),
  each belonging to one customer; the card of a row depends only on the seed and the row index.

The label is never part of the transaction event: a LabelEvent for every row goes to the labels
topic `label_delay_s` (wall clock) after its transaction was sent. When the rows run out, the
labels still pending are sent at their due time (or at once with `flush_labels`).

Sending is paced by an absolute schedule (event n is due n / rate after the first was sent), so the average rate
is exact even when a single sleep overshoots, and no sleep happens per message at high rates.
"""

from __future__ import annotations

import random
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from fraud.contract import LabelEvent, TransactionEvent
from fraud.dataset import Row, count_rows, iter_rows
from fraud.errors import FraudError
from fraud.kafka_config import KafkaClientConfig
from fraud.paths import SAMPLE_CSV
from fraud.topics import LABELS, TRANSACTIONS_RAW

#: 2013-09-01T00:00:00Z. The dataset covers two days of September 2013; its exact dates are not published.
DEFAULT_BASE_TIME_MS = 1_377_993_600_000
DEFAULT_CARDS = 10_000
DEFAULT_SEED = 2013
CLIENT_ID = "fraudctl-replay"
#: Sleeping is skipped when the next event is due sooner than this: a sleep costs ~60 us anyway, and
#: the absolute schedule makes up for being early by less than this on the next events.
MIN_SLEEP_S = 0.001
#: After a stall (GC, broker back-pressure) the schedule catches up at most this much, so a pause is
#: not followed by an unbounded burst.
MAX_LAG_S = 1.0


# ---------------------------------------------------------------------------------------------
# Deterministic ids, times and cards


def transaction_id(index: int) -> str:
    """Transaction id of data row `index` (0-based)."""
    return f"tx-{index:06d}"


def event_time_ms(time_s: float, base_time_ms: int = DEFAULT_BASE_TIME_MS) -> int:
    """Event time of a row whose dataset `Time` is `time_s` seconds."""
    return base_time_ms + round(time_s * 1000)


def luhn_check_digit(payload: str) -> str:
    """The digit that makes `payload + digit` pass the Luhn check."""
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch)
        if i % 2 == 0:  # these get doubled once the check digit is appended
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    return len(number) > 1 and number.isdigit() and luhn_check_digit(number[:-1]) == number[-1]


def _mix64(x: int) -> int:
    """splitmix64 finalizer: a fixed, well-spread hash of an integer (stable across Python versions)."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


@dataclass(frozen=True)
class Card:
    card_id: str  # 16-digit PAN-like number with a valid Luhn digit (synthetic: no real issuer ranges)
    customer_id: str


class CardPool:
    """A seeded pool of synthetic cards; each card belongs to one customer, some customers hold several.

    About 4 in 5 cards have a customer of their own; the rest are second cards of random customers.
    """

    def __init__(self, size: int = DEFAULT_CARDS, seed: int = DEFAULT_SEED) -> None:
        if size < 1:
            raise FraudError(f"the card pool needs at least 1 card, got {size}")
        rng = random.Random(seed)
        self.seed = seed
        pans: list[str] = []
        seen: set[str] = set()
        while len(pans) < size:
            # "9" is the ISO/IEC 7812 major industry identifier of no real card network.
            payload = "9" + "".join(rng.choices("0123456789", k=14))
            pan = payload + luhn_check_digit(payload)
            if pan not in seen:
                seen.add(pan)
                pans.append(pan)
        customers = max(1, (size * 4) // 5)
        owner = list(range(customers)) + [rng.randrange(customers) for _ in range(size - customers)]
        rng.shuffle(owner)
        self.cards: tuple[Card, ...] = tuple(Card(pan, f"cust-{c:06d}") for pan, c in zip(pans, owner, strict=True))
        self._salt = _mix64(seed)

    def __len__(self) -> int:
        return len(self.cards)

    def card_for_row(self, index: int) -> Card:
        return self.cards[_mix64(self._salt ^ index) % len(self.cards)]


def transaction_event(row: Row, cards: CardPool, base_time_ms: int = DEFAULT_BASE_TIME_MS) -> TransactionEvent:
    """The transaction event of a dataset row (no label: that goes to the feedback topic)."""
    card = cards.card_for_row(row.index)
    return TransactionEvent(transaction_id=transaction_id(row.index),
                            event_time_ms=event_time_ms(row.features["Time"], base_time_ms),
                            card_id=card.card_id, customer_id=card.customer_id, features=row.features)


# ---------------------------------------------------------------------------------------------
# Pacing


class RateSchedule:
    """When the next event is due for a target rate (events/s); rate 0 means as fast as possible."""

    def __init__(self, rate: float, start: float, max_lag_s: float = MAX_LAG_S) -> None:
        if rate < 0:
            raise FraudError(f"rate must be >= 0 events/s, got {rate}")
        self.rate = rate
        self.max_lag_s = max_lag_s
        self._start = start
        self._base = 0  # events counted before _start

    def delay(self, sent: int, now: float) -> float:
        """Seconds to wait before sending event number `sent` (0-based); <= 0 means send now."""
        if self.rate <= 0:
            return 0.0
        due = self._start + (sent - self._base) / self.rate
        if now - due > self.max_lag_s:
            self._start, self._base = now - self.max_lag_s, sent
            due = now - self.max_lag_s
        return due - now


# ---------------------------------------------------------------------------------------------
# The replay loop


class Sink(Protocol):
    """Where records go: a Kafka producer in production, a list in unit tests."""

    def send(self, topic: str, key: bytes, value: bytes, timestamp_ms: int) -> None: ...

    def close(self) -> None:
        """Deliver everything sent so far (raise FraudError if some records could not be delivered)."""


@dataclass(frozen=True)
class ReplayConfig:
    file: Path = SAMPLE_CSV
    topic: str = TRANSACTIONS_RAW.name
    labels_topic: str = LABELS.name
    rate: float = 0.0  # events per second, 0 = as fast as possible
    limit: int | None = None
    start_row: int = 0
    label_delay_s: float = 0.0
    flush_labels: bool = False  # at the end, send pending labels now instead of at their due time
    kafka: KafkaClientConfig = field(default_factory=lambda: KafkaClientConfig(client_id=CLIENT_ID))
    base_time_ms: int = DEFAULT_BASE_TIME_MS
    cards: int = DEFAULT_CARDS
    seed: int = DEFAULT_SEED
    progress: bool = True

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise FraudError(f"--rate must be >= 0 events/s, got {self.rate:g}")
        if self.limit is not None and self.limit < 0:
            raise FraudError(f"--limit must be >= 0, got {self.limit}")
        if self.start_row < 0:
            raise FraudError(f"--start-row must be >= 0, got {self.start_row}")
        if self.label_delay_s < 0:
            raise FraudError(f"--label-delay must be >= 0 s, got {self.label_delay_s:g}")
        if self.cards < 1:
            raise FraudError(f"--cards must be >= 1, got {self.cards}")
        if self.topic == self.labels_topic:
            raise FraudError(f"transactions and labels must go to different topics, both are {self.topic}")


@dataclass
class ReplayStats:
    events: int = 0
    labels: int = 0
    frauds: int = 0
    labels_dropped: int = 0  # pending when interrupted
    seconds: float = 0.0  # the whole run: sending, waiting for pending labels, delivering the last batches
    sending_s: float = 0.0  # from the start to the last transaction sent
    interrupted: bool = False
    first_index: int | None = None
    last_index: int | None = None
    send_span_s: float = 0.0  # from the first transaction sent to the last (what pacing controls)

    @property
    def events_per_s(self) -> float:
        """Transactions per second while sending them (a wait for pending labels at the end not counted)."""
        return self.events / self.sending_s if self.sending_s > 0 else 0.0

    def summary(self, config: ReplayConfig) -> str:
        rows = "" if self.first_index is None else f" (rows {self.first_index}..{self.last_index})"
        text = (f"replayed {self.events} events{rows} to {config.topic}, {self.labels} labels to "
                f"{config.labels_topic}, {self.frauds} frauds, in {self.seconds:.2f} s "
                f"({self.events_per_s:,.0f} events/s)")
        if self.interrupted:
            text += f"; interrupted, {self.labels_dropped} pending labels not sent"
        return text


@dataclass(frozen=True)
class Clock:
    """The clocks the loop reads: monotonic for pacing, wall (ms) for record timestamps and label due times."""

    monotonic: Callable[[], float] = time.monotonic
    wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000
    sleep: Callable[[float], None] = time.sleep


def replay_rows(rows: Iterable[Row], sink: Sink, config: ReplayConfig, *, clock: Clock | None = None,
                on_event: Callable[[], None] | None = None,
                on_rows_done: Callable[[int, float], None] | None = None) -> ReplayStats:
    """Send the transaction events of `rows` and their delayed labels to `sink`; return the counts.

    `on_event()` is called after each transaction; `on_rows_done(pending_labels, seconds_to_wait)` once
    the rows are sent, before waiting for the pending labels.
    """
    clock = clock or Clock()
    cards = CardPool(config.cards, config.seed)
    delay_ms = round(config.label_delay_s * 1000)
    pending: deque[tuple[int, str, int, int]] = deque()  # (due wall ms, transaction id, label, event time)
    stats = ReplayStats()
    started = clock.monotonic()
    schedule: RateSchedule | None = None  # anchored at the first send (which also waits for metadata)
    topic, labels_topic = config.topic, config.labels_topic
    first_sent_at: float | None = None

    def send_label(tx_id: str, label: int, event_ms: int) -> None:
        now_ms = clock.wall_ms()
        value = LabelEvent(tx_id, label, event_ms, now_ms).to_json()
        sink.send(labels_topic, tx_id.encode(), value, now_ms)
        stats.labels += 1

    def send_due_labels() -> None:
        if pending:
            now_ms = clock.wall_ms()
            while pending and pending[0][0] <= now_ms:
                _, tx_id, label, event_ms = pending.popleft()
                send_label(tx_id, label, event_ms)

    def wait(seconds: float) -> None:
        """Sleep up to `seconds`, waking for labels that fall due meanwhile."""
        end = clock.monotonic() + seconds
        while True:
            send_due_labels()
            left = end - clock.monotonic()
            if left < MIN_SLEEP_S:
                return
            if pending:
                left = min(left, max((pending[0][0] - clock.wall_ms()) / 1000, 0.0) + 0.0005)
            clock.sleep(left)

    try:
        for row in rows:
            if schedule is not None:
                ahead = schedule.delay(stats.events, clock.monotonic())
                if ahead >= MIN_SLEEP_S:
                    wait(ahead)
            send_due_labels()
            event = transaction_event(row, cards, config.base_time_ms)
            now_ms = clock.wall_ms()
            sink.send(topic, event.transaction_id.encode(), event.to_json(), now_ms)
            sent_at = clock.monotonic()
            if first_sent_at is None:
                first_sent_at = sent_at
                if config.rate > 0:
                    schedule = RateSchedule(config.rate, sent_at)
            stats.send_span_s = sent_at - first_sent_at
            pending.append((now_ms + delay_ms, event.transaction_id, row.label, event.event_time_ms))
            stats.events += 1
            stats.frauds += row.label
            if stats.first_index is None:
                stats.first_index = row.index
            stats.last_index = row.index
            if on_event is not None:
                on_event()
        stats.sending_s = clock.monotonic() - started
        if on_rows_done is not None:
            wait_s = 0.0 if config.flush_labels or not pending else max(pending[-1][0] - clock.wall_ms(), 0) / 1000
            on_rows_done(len(pending), wait_s)
        if config.flush_labels:
            while pending:
                _, tx_id, label, event_ms = pending.popleft()
                send_label(tx_id, label, event_ms)
        while pending:
            wait(max((pending[0][0] - clock.wall_ms()) / 1000, 0.0) + 0.0005)
    except KeyboardInterrupt:
        stats.interrupted = True
        stats.labels_dropped = len(pending)
        if not stats.sending_s:
            stats.sending_s = clock.monotonic() - started
    stats.seconds = clock.monotonic() - started
    return stats


# ---------------------------------------------------------------------------------------------
# Kafka


class KafkaSink:
    """fraud.stream's idempotent acks=all producer, batched for throughput; delivery failures counted."""

    def __init__(self, kafka: KafkaClientConfig, *, timeout_s: float = 10.0, **settings: object) -> None:
        from fraud.stream.reader import EventProducer

        self.bootstrap = kafka.bootstrap
        self._kafka = kafka
        self._timeout_s = timeout_s
        # Larger batches than the default: replay sends as fast as it may, and a label is sent with each event.
        self._producer = EventProducer(kafka, **{"linger.ms": 5, "batch.size": 256 * 1024, **settings})

    def check_topics(self, names: Iterable[str]) -> None:
        """Fail fast, in one line, if a topic is missing (a send would otherwise wait for its metadata)."""
        from fraud.stream.admin import KafkaAdmin

        names = list(names)
        with KafkaAdmin(self._kafka, timeout_s=self._timeout_s) as admin:
            found = set(admin.describe(names))
        missing = [n for n in names if n not in found]
        if missing:
            raise FraudError(f"topic {', '.join(missing)} does not exist on {self.bootstrap} "
                             f"(`fraudctl topics` creates the project's topics)")

    def send(self, topic: str, key: bytes, value: bytes, timestamp_ms: int) -> None:
        self._producer.send(topic, value, key, timestamp_ms=timestamp_ms)

    def close(self) -> None:
        from fraud.stream.records import RetriableError

        try:
            self._producer.flush(120)
        except RetriableError as exc:
            raise FraudError(f"records were not delivered to {self.bootstrap}: {exc}") from None


def _progress_bar(total: int | None, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, unit="ev", desc="replay", file=sys.stderr, smoothing=0.1,
                dynamic_ncols=True)


def run_replay(config: ReplayConfig, sink: Sink | None = None) -> ReplayStats:
    """Replay `config.file` to Kafka (or to `sink`): the `fraudctl replay` command without argument parsing."""
    if not config.file.is_file():
        raise FraudError(f"no dataset file at {config.file}")
    show = config.progress and sys.stderr.isatty()
    total: int | None = None
    if show:
        available = max(count_rows(config.file) - config.start_row, 0)
        total = available if config.limit is None else min(config.limit, available)
    list(iter_rows(config.file, limit=0))  # a file that is not the dataset fails here, before connecting
    rows: Iterator[Row] = iter_rows(config.file, start=config.start_row, limit=config.limit)
    own_sink = sink is None
    if sink is None:
        kafka_sink = KafkaSink(config.kafka)
        try:
            kafka_sink.check_topics([config.topic, config.labels_topic])
        except FraudError:
            kafka_sink.close()
            raise
        sink = kafka_sink
    bar = _progress_bar(total, show)

    def rows_done(pending: int, wait_s: float) -> None:
        bar.close()
        if wait_s >= 0.5:
            print(f"replay: waiting {wait_s:.1f} s for {pending} pending labels (--flush-labels sends them at once)",
                  file=sys.stderr, flush=True)

    started = time.monotonic()
    try:
        stats = replay_rows(rows, sink, config, on_event=lambda: bar.update(1), on_rows_done=rows_done)
    except BaseException:
        bar.close()
        if own_sink:
            try:
                sink.close()  # deliver what was sent; the first error is the one to report
            except FraudError:
                pass
        raise
    bar.close()
    if own_sink:
        sink.close()
    stats.seconds = time.monotonic() - started  # delivery of the last batches included
    return stats
