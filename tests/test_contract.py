"""Unit tests of the event contract: round trips, and that every kind of bad record is named precisely."""

from __future__ import annotations

import math

import orjson
import pytest

from fraud import contract
from fraud.contract import ContractError, DeadLetter, LabelEvent, ScoreEvent, TransactionEvent
from fraud.features import FEATURE_NAMES


def make_event(**overrides) -> dict:
    event = {
        "transaction_id": "tx-000001",
        "event_time_ms": 1_378_000_000_000,
        "card_id": "4000123412341234",
        "customer_id": "C00000001",
        "features": {name: float(i) for i, name in enumerate(FEATURE_NAMES)},
    }
    event.update(overrides)
    return event


def test_transaction_round_trip_keeps_every_field():
    event = TransactionEvent.from_dict(make_event(label=1, attributes={"segment": "gold"}))
    again = TransactionEvent.from_json(event.to_json())
    assert again == event
    assert again.label == 1
    assert again.feature_vector() == [float(i) for i in range(len(FEATURE_NAMES))]
    assert again.without_label().label is None
    assert "label" not in orjson.loads(again.without_label().to_json())


def test_integer_feature_values_are_accepted_as_numbers():
    raw = make_event()
    raw["features"]["V1"] = 3
    assert TransactionEvent.from_dict(raw).features["V1"] == 3.0


@pytest.mark.parametrize(
    "mutate, reason, field",
    [
        (lambda e: e.pop("card_id"), contract.MISSING_FIELD, "card_id"),
        (lambda e: e["features"].pop("V17"), contract.MISSING_FIELD, "features.V17"),
        (lambda e: e.update(extra=1), contract.UNKNOWN_FIELD, "extra"),
        (lambda e: e["features"].update(V29=1.0), contract.UNKNOWN_FIELD, "features.V29"),
        (lambda e: e["features"].update(V3="1.5"), contract.WRONG_TYPE, "features.V3"),
        (lambda e: e["features"].update(V3=True), contract.WRONG_TYPE, "features.V3"),
        (lambda e: e["features"].update(Amount=-1.0), contract.OUT_OF_RANGE, "features.Amount"),
        (lambda e: e.update(event_time_ms=1.5), contract.WRONG_TYPE, "event_time_ms"),
        (lambda e: e.update(event_time_ms=-1), contract.OUT_OF_RANGE, "event_time_ms"),
        (lambda e: e.update(transaction_id=""), contract.OUT_OF_RANGE, "transaction_id"),
        (lambda e: e.update(transaction_id=7), contract.WRONG_TYPE, "transaction_id"),
        (lambda e: e.update(label=2), contract.OUT_OF_RANGE, "label"),
        (lambda e: e.update(label="1"), contract.WRONG_TYPE, "label"),
        (lambda e: e.update(features=[1, 2]), contract.WRONG_TYPE, "features"),
        (lambda e: e.update(attributes={"a": 1}), contract.WRONG_TYPE, "attributes.a"),
    ],
)
def test_bad_transaction_names_reason_and_field(mutate, reason, field):
    raw = make_event()
    mutate(raw)
    with pytest.raises(ContractError) as info:
        TransactionEvent.from_json(orjson.dumps(raw))
    assert info.value.reason == reason
    assert info.value.field == field
    assert str(info.value).startswith(field + ": ")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_literals_are_reported_as_not_finite(literal):
    text = orjson.dumps(make_event()).decode().replace('"V5":5.0', f'"V5":{literal}')
    with pytest.raises(ContractError) as info:
        TransactionEvent.from_json(text)
    assert info.value.reason == contract.NOT_FINITE
    assert info.value.field == "features.V5"


def test_huge_exponent_is_not_finite():
    text = orjson.dumps(make_event()).decode().replace('"V5":5.0', '"V5":1e999')
    with pytest.raises(ContractError) as info:
        TransactionEvent.from_json(text)
    assert info.value.reason == contract.NOT_FINITE


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"{not json", contract.MALFORMED_JSON),
        (b"", contract.MALFORMED_JSON),
        (b"[1, 2]", contract.NOT_AN_OBJECT),
        (b'"a string"', contract.NOT_AN_OBJECT),
        (b"\xff\xfe{}", contract.BAD_ENCODING),
        (b'{"pad": "' + b"x" * contract.MAX_EVENT_BYTES + b'"}', contract.OVERSIZE),
    ],
)
def test_undecodable_records(data, reason):
    with pytest.raises(ContractError) as info:
        TransactionEvent.from_json(data)
    assert info.value.reason == reason


def test_score_event_round_trip_and_range():
    score = ScoreEvent(
        transaction_id="tx-1", event_time_ms=5, card_id="c", score=0.9, decision=True, threshold=0.5,
        model_name="fraud", model_version=3, source_timestamp_ms=100, scored_at_ms=130,
        reconstruction_error=4.2, explanation={"V14": 2.5}, outputs={"supervised": 0.8},
    )
    again = ScoreEvent.from_json(score.to_json())
    assert again == score
    assert again.latency_ms == 30
    bad = orjson.loads(score.to_json())
    bad["score"] = 1.5
    with pytest.raises(ContractError) as info:
        ScoreEvent.from_json(orjson.dumps(bad))
    assert (info.value.reason, info.value.field) == (contract.OUT_OF_RANGE, "score")


def test_label_event_round_trip_and_strictness():
    label = LabelEvent("tx-1", 1, 10, 20)
    assert LabelEvent.from_json(label.to_json()) == label
    with pytest.raises(ContractError) as info:
        LabelEvent.from_json(b'{"transaction_id": "tx-1", "label": 1, "event_time_ms": 1}')
    assert (info.value.reason, info.value.field) == (contract.MISSING_FIELD, "labelled_at_ms")


def test_dead_letter_headers_use_connect_names_and_round_trip():
    try:
        TransactionEvent.from_json(b"{oops")
    except ContractError as exc:
        error = exc
    letter = DeadLetter.from_error(error, key=b"k", value=b"{oops", topic="fraud.transactions", partition=2,
                                   offset=41, component="kafka_bridge", stage="VALUE_CONVERTER")
    headers = dict(letter.headers())
    assert headers["__connect.errors.topic"] == b"fraud.transactions"
    assert headers["__connect.errors.partition"] == b"2"
    assert headers["__connect.errors.offset"] == b"41"
    assert headers["fraud.errors.reason"] == b"malformed_json"
    assert DeadLetter.from_record(b"k", b"{oops", letter.headers()) == letter
    with pytest.raises(ContractError):
        DeadLetter.from_record(None, None, [("__connect.errors.topic", b"t")])


def test_feature_values_survive_json_exactly():
    raw = make_event()
    raw["features"]["V1"] = -1.3598071336738  # a value from the dataset
    event = TransactionEvent.from_json(orjson.dumps(raw))
    assert event.features["V1"] == -1.3598071336738
    assert all(math.isfinite(v) for v in event.features.values())
