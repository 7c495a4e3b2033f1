"""Unit tests of fraud.replay (no broker): ids, event times, the card pool, pacing and label scheduling."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from fraud import replay
from fraud.contract import LabelEvent, TransactionEvent
from fraud.dataset import Row, iter_rows
from fraud.errors import FraudError
from fraud.features import FEATURE_NAMES
from fraud.kafka_config import KafkaClientConfig
from fraud.paths import SAMPLE_CSV
from fraud.replay import CardPool, Clock, RateSchedule, ReplayConfig, luhn_check_digit, luhn_valid, replay_rows
from fraudctl import cli


class FakeTime:
    """A clock that only moves when the code under test sleeps (or the test says so)."""

    def __init__(self, wall_start_ms: int = 1_700_000_000_000) -> None:
        self.t = 0.0
        self.wall_start_ms = wall_start_ms
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def wall_ms(self) -> int:
        return self.wall_start_ms + int(round(self.t * 1000))

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.t += seconds

    def clock(self) -> Clock:
        return Clock(monotonic=self.monotonic, wall_ms=self.wall_ms, sleep=self.sleep)


class ListSink:
    def __init__(self, fake: FakeTime | None = None, cost_s: float = 0.0, interrupt_after: int | None = None):
        self.records: list[tuple[str, bytes, bytes, int, float]] = []
        self.fake = fake
        self.cost_s = cost_s
        self.interrupt_after = interrupt_after
        self.closed = False

    def send(self, topic: str, key: bytes, value: bytes, timestamp_ms: int) -> None:
        if self.interrupt_after is not None and len(self.records) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.records.append((topic, key, value, timestamp_ms, self.fake.t if self.fake else 0.0))
        if self.fake is not None:
            self.fake.t += self.cost_s

    def close(self) -> None:
        self.closed = True

    def on(self, topic: str) -> list[tuple[str, bytes, bytes, int, float]]:
        return [r for r in self.records if r[0] == topic]


def _rows(n: int, fraud_every: int = 3, start: int = 0) -> list[Row]:
    return [Row(start + i, {name: float(i) / 2 if name == "Time" else 0.1 * i for name in FEATURE_NAMES},
                int((start + i) % fraud_every == 0)) for i in range(n)]


CONFIG = ReplayConfig(topic="tx", labels_topic="lb")


# --- ids, times, cards ------------------------------------------------------------------------------


def test_transaction_ids_and_event_times_are_deterministic():
    assert replay.transaction_id(0) == "tx-000000"
    assert replay.transaction_id(123) == "tx-000123"
    assert replay.transaction_id(284_806) == "tx-284806"
    assert replay.event_time_ms(0.0) == replay.DEFAULT_BASE_TIME_MS
    assert replay.event_time_ms(172_792.0, 1_000) == 172_793_000
    assert replay.event_time_ms(1.5, 0) == 1_500


def test_luhn():
    assert luhn_check_digit("7992739871") == "3"  # the textbook example 79927398713
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert not luhn_valid("41111x1111111111")


def test_card_pool_is_seeded_valid_and_unique():
    pool = CardPool(2_000, seed=7)
    assert pool.cards == CardPool(2_000, seed=7).cards
    assert pool.cards != CardPool(2_000, seed=8).cards
    pans = [c.card_id for c in pool.cards]
    assert len(set(pans)) == len(pans) == 2_000
    assert all(len(p) == 16 and p.isdigit() and luhn_valid(p) for p in pans)
    per_customer = Counter(c.customer_id for c in pool.cards)
    assert len(per_customer) == 1_600
    assert max(per_customer.values()) >= 2  # some customers hold several cards


def test_same_row_always_gets_the_same_card():
    a, b = CardPool(500, seed=1), CardPool(500, seed=1)
    assert [a.card_for_row(i) for i in range(1000)] == [b.card_for_row(i) for i in reversed(range(1000))][::-1]
    assert [a.card_for_row(i) for i in range(100)] != [CardPool(500, seed=2).card_for_row(i) for i in range(100)]


def test_rows_spread_over_the_card_pool():
    pool = CardPool(100, seed=3)
    counts = Counter(pool.card_for_row(i).card_id for i in range(20_000))
    assert len(counts) == 100
    assert 120 < min(counts.values()) and max(counts.values()) < 280  # 200 expected per card


def test_transaction_event_has_no_label_and_validates():
    row = next(iter_rows(SAMPLE_CSV))
    event = replay.transaction_event(row, CardPool(10))
    parsed = TransactionEvent.from_json(event.to_json())
    assert parsed.label is None and b'"label"' not in event.to_json()
    assert parsed.transaction_id == "tx-000000"
    assert parsed.event_time_ms == replay.DEFAULT_BASE_TIME_MS + int(row.features["Time"]) * 1000
    assert parsed.features == row.features


# --- pacing ----------------------------------------------------------------------------------------


def test_rate_schedule_is_absolute():
    s = RateSchedule(100.0, start=10.0)
    assert s.delay(0, 10.0) == 0.0
    assert s.delay(50, 10.0) == pytest.approx(0.5)
    assert s.delay(50, 10.7) == pytest.approx(-0.2)  # behind: send now, no waiting
    assert RateSchedule(0.0, start=0.0).delay(10**6, 0.0) == 0.0


def test_rate_schedule_does_not_burst_after_a_stall():
    s = RateSchedule(100.0, start=0.0, max_lag_s=1.0)
    assert s.delay(10, 5.0) == pytest.approx(-1.0)  # 4.9 s late: caught up to at most 1 s of lag
    assert s.delay(110, 5.0) == pytest.approx(0.0)  # 100 events = 1 s later in the new schedule
    assert s.delay(160, 5.0) == pytest.approx(0.5)


def test_rate_limited_replay_takes_the_scheduled_time():
    fake = FakeTime()
    sink = ListSink(fake)
    stats = replay_rows(_rows(500), sink, ReplayConfig(topic="tx", labels_topic="lb", rate=250.0),
                        clock=fake.clock())
    assert stats.events == 500
    tx_times = [r[4] for r in sink.on("tx")]
    assert tx_times[-1] == pytest.approx(499 / 250, abs=0.002)
    assert stats.send_span_s == pytest.approx(499 / 250, abs=0.002)
    # every event waits for its slot: the n-th is never more than MIN_SLEEP_S early
    assert all(t >= n / 250 - replay.MIN_SLEEP_S for n, t in enumerate(tx_times))


def test_high_rate_does_not_sleep_per_message():
    fake = FakeTime()
    sink = ListSink(fake, cost_s=20e-6)  # each send costs 20 us
    replay_rows(_rows(5_000), sink, ReplayConfig(topic="tx", labels_topic="lb", rate=10_000.0), clock=fake.clock())
    assert len(fake.sleeps) < 5_000 / 10  # sleeps only when at least MIN_SLEEP_S ahead
    assert fake.t == pytest.approx(4_999 / 10_000, abs=0.002)


def test_unlimited_rate_never_sleeps():
    fake = FakeTime()
    replay_rows(_rows(100), ListSink(fake, cost_s=1e-4), CONFIG, clock=fake.clock())
    assert fake.sleeps == []


# --- labels ----------------------------------------------------------------------------------------


def test_events_and_labels_match_the_rows():
    rows = _rows(30)
    sink = ListSink()
    stats = replay_rows(rows, sink, CONFIG, clock=FakeTime().clock())
    assert (stats.events, stats.labels, stats.frauds) == (30, 30, 10)
    txs, labels = sink.on("tx"), sink.on("lb")
    assert [k for _, k, *_ in txs] == [f"tx-{i:06d}".encode() for i in range(30)]
    assert [k for _, k, *_ in labels] == [k for _, k, *_ in txs]
    for row, (_, key, value, ts, _) in zip(rows, labels, strict=True):
        label = LabelEvent.from_json(value)
        assert label.transaction_id == key.decode()
        assert label.label == row.label
        assert label.event_time_ms == replay.event_time_ms(row.features["Time"])
        assert label.labelled_at_ms == ts
    assert all(TransactionEvent.from_json(v).label is None for _, _, v, _, _ in txs)


def test_labels_wait_for_their_delay_and_the_end_waits_for_pending_labels():
    fake = FakeTime()
    sink = ListSink(fake)
    config = ReplayConfig(topic="tx", labels_topic="lb", rate=10.0, label_delay_s=2.0)
    done = []
    stats = replay_rows(_rows(40), sink, config, clock=fake.clock(), on_rows_done=lambda *a: done.append(a))
    assert stats.labels == 40
    assert done == [(20, pytest.approx(2.0, abs=0.002))]  # at 10/s, the last 2 s of labels are still pending
    tx_ts = {k: ts for _, k, _, ts, _ in sink.on("tx")}
    for _, key, _, ts, _ in sink.on("lb"):
        assert ts - tx_ts[key] >= 2_000
        assert ts - tx_ts[key] <= 2_000 + 2  # and no later than needed
    # labels interleave with transactions while the replay runs (not all sent at the end)
    order = [r[0] for r in sink.records]
    assert order.index("lb") < len(order) - 40
    assert stats.seconds == pytest.approx(3.9 + 2.0, abs=0.01)
    assert stats.sending_s == pytest.approx(3.9, abs=0.01)
    assert stats.events_per_s == pytest.approx(40 / 3.9, rel=0.01)


def test_flush_labels_sends_pending_labels_at_once():
    fake = FakeTime()
    sink = ListSink(fake)
    config = ReplayConfig(topic="tx", labels_topic="lb", label_delay_s=60.0, flush_labels=True)
    stats = replay_rows(_rows(10), sink, config, clock=fake.clock())
    assert stats.labels == 10
    assert fake.t == 0.0 and fake.sleeps == []
    assert [r[0] for r in sink.records] == ["tx"] * 10 + ["lb"] * 10


def test_interrupt_stops_and_reports_pending_labels():
    fake = FakeTime()
    sink = ListSink(fake, interrupt_after=15)
    config = ReplayConfig(topic="tx", labels_topic="lb", label_delay_s=60.0)
    stats = replay_rows(_rows(100), sink, config, clock=fake.clock())
    assert stats.interrupted and stats.events == 15 and stats.labels_dropped == 15
    assert "interrupted, 15 pending labels not sent" in stats.summary(config)


# --- run_replay and the CLI -----------------------------------------------------------------------


def test_run_replay_reads_the_file_window():
    sink = ListSink()
    config = ReplayConfig(topic="tx", labels_topic="lb", start_row=100, limit=25, progress=False)
    stats = replay.run_replay(config, sink=sink)
    expected = list(iter_rows(SAMPLE_CSV, start=100, limit=25))
    assert (stats.first_index, stats.last_index, stats.events) == (100, 124, 25)
    assert stats.frauds == sum(r.label for r in expected)
    assert [TransactionEvent.from_json(r[2]).features for r in sink.on("tx")] == [r.features for r in expected]
    assert "replayed 25 events (rows 100..124) to tx, 25 labels to lb" in stats.summary(config)


def test_run_replay_checks_the_file_before_connecting(tmp_path, monkeypatch):
    bad = tmp_path / "not-the-dataset.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    monkeypatch.setattr(replay, "KafkaSink", lambda *a, **k: pytest.fail("must not connect"))
    with pytest.raises(FraudError, match="not-the-dataset.csv:1: unexpected header"):
        replay.run_replay(ReplayConfig(file=bad, progress=False))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["replay", "--rate", "-5"], "--rate must be >= 0"),
        (["replay", "--label-delay", "-1"], "--label-delay must be >= 0"),
        (["replay", "--file", "/nonexistent/x.csv"], "no dataset file at /nonexistent/x.csv"),
        (["replay", "--topic", "same", "--labels-topic", "same"], "different topics"),
    ],
)
def test_cli_bad_input_is_one_line(argv, message, capsys):
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_data_info_of_the_sample(capsys):
    assert cli.main(["data", "info", "--sample"]) == 0
    out = capsys.readouterr().out
    assert "rows    9000" in out and "frauds  71" in out


def test_cli_data_fetch_refuses_a_wrong_file(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("FRAUD_HOME", str(tmp_path / "home"))
    assert cli.main(["data", "fetch", "--from", str(SAMPLE_CSV)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sha256 mismatch" in err and str(SAMPLE_CSV) in err
    assert not (tmp_path / "home" / "data" / "creditcard.csv.gz").exists()


def test_kafka_sink_reports_an_unreachable_broker_in_one_line():
    sink = replay.KafkaSink(KafkaClientConfig(bootstrap_servers=("127.0.0.1:1",)), timeout_s=1.0)
    with pytest.raises(FraudError, match="cannot reach Kafka at 127.0.0.1:1") as err:
        sink.check_topics(["fraud.transactions.raw"])
    assert "\n" not in str(err.value)
