"""The chaos harness's own logic on fakes (no broker, no service): the malformed corpus says what the contract
says, the reconciliation counts exactly-once, missing and repeated items and wrong reasons, and the fault plan
has every fault after 20% of the sending time. The harness itself runs with `make test-chaos`."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from chaos import corpus as c
from chaos.__main__ import work_directory
from chaos.run import Result, Settings, fault_plan
from chaos.verify import check_dead_letters, tally
from fraud.contract import ContractError, DeadLetter, LabelEvent, ScoreEvent, TransactionEvent
from fraud.stream.records import Record


def test_malformed_records_of_the_downstream_topics_break_the_contract_as_stated():
    parsers = {c.TRANSACTIONS: TransactionEvent.from_json, c.SCORES: ScoreEvent.from_json, c.LABELS: LabelEvent.from_json}
    bad = c.bad_records(2)
    assert len({b.key for b in bad}) == len(bad)
    assert Counter(b.topic for b in bad) == {c.RAW: 34, c.TRANSACTIONS: 12, c.SCORES: 6, c.LABELS: 6}
    for b in bad:
        if b.topic == c.RAW:
            continue
        with pytest.raises(ContractError) as err:
            if b.value is None:
                raise ContractError("malformed_json", "a tombstone (the sink and the monitor's reason)")
            parsers[b.topic](b.value)
        assert err.value.reason == b.reason, b.kind


def test_tally_counts_once_missing_duplicated_and_unexpected():
    t = tally(["a", "b", "c"], ["a", "b", "b", "x"])
    assert (t.expected, t.once, t.missing, t.duplicated, t.unexpected, t.extra) == (3, 1, ["c"], {"b": 2}, 1, 1)


def _dead(b: c.Bad, component: str, reason: str | None = None) -> Record:
    d = DeadLetter.from_error(ContractError(reason or b.reason, "x"), key=b.key, value=b.value, topic="t",
                              partition=0, offset=1, component=component, stage="VALUE_CONVERTER")
    return Record("dlq", 0, 0, d.key, d.value, 0, tuple(d.headers()))


def test_dead_letters_are_checked_per_job_with_their_reason():
    bad = [b for b in c.bad_records(1) if b.topic in (c.RAW, c.SCORES)][:3] + \
        [b for b in c.bad_records(1) if b.topic == c.SCORES][:1]
    raw = [b for b in bad if b.topic == c.RAW]
    score = next(b for b in bad if b.topic == c.SCORES)
    by_role = {
        c.DLQ_PREPROCESS: [_dead(raw[0], c.PREPROCESSING), _dead(raw[1], c.PREPROCESSING, "wrong_type")],
        c.DLQ_MONITORING: [_dead(score, c.SINK), _dead(score, c.SINK), _dead(score, c.MONITOR)],
    }
    check = check_dead_letters(bad, by_role)
    assert check.missing == 1  # raw[2] never arrived
    assert check.extra([c.SINK]) == 1 and check.extra([c.MONITOR, c.PREPROCESSING]) == 0
    assert [(comp, want, got) for comp, _k, want, got in check.wrong_reason] == [
        (c.PREPROCESSING, raw[1].reason, "wrong_type")]


def test_every_fault_comes_after_a_fifth_of_the_sending_time():
    s = Settings(events=1000, rate=10.0)
    plan = fault_plan(s, 100.0, (1, 2, 3), random.Random(1))
    assert Counter(f.kind for f in plan) == {"kill": 12, "hard_bounce": 3, "clean_bounce": 1, "server_outage": 1}
    assert Counter(f.target for f in plan if f.kind == "kill") == {"preprocess": 3, "bridge": 3, "sink": 3,
                                                                   "monitor": 3}
    assert {f.target for f in plan if f.kind == "hard_bounce"} == {"1", "2", "3"}
    assert all(20.0 <= f.at_s <= 90.0 for f in plan)
    assert [f.at_s for f in plan] == sorted(f.at_s for f in plan)


def test_a_run_is_clean_only_without_loss_duplicates_or_problems():
    assert Result(1, "exactly_once").clean
    assert not Result(1, "exactly_once", lost=1).clean
    assert not Result(1, "exactly_once", duplicated=1).clean
    assert Result(1, "at_least_once", duplicated=3).clean
    assert not Result(1, "at_least_once", problems=["x"]).clean


def test_the_work_directory_is_made_even_where_fraud_home_does_not_exist_yet(tmp_path):
    home = tmp_path / "fresh-checkout" / "var"
    made = work_directory(None, home)
    assert made.is_dir() and made.parent == home and made.name.startswith("chaos-")
    assert work_directory(None, home) != made  # a new one per run
    given = tmp_path / "given" / "deep"
    assert work_directory(given, home) == given and given.is_dir()
