"""Unit tests of the monitoring records in the event contract: AlertEvent round trip and strict parsing."""

from __future__ import annotations

import orjson
import pytest

from fraud import contract
from fraud.contract import AlertEvent, ContractError


def make_alert(**overrides) -> dict:
    alert = {
        "alert_id": "drift/1h/1378000000000/fraud-model/3",
        "kind": "drift",
        "severity": "critical",
        "metric": "jensen_shannon_divergence",
        "value": 0.41,
        "threshold": 0.2,
        "window_start_ms": 1_378_000_000_000,
        "window_end_ms": 1_378_003_600_000,
        "raised_at_ms": 1_700_000_000_000,
        "message": "3 features drifted",
        "features": ["V3", "V10", "Amount"],
        "details": {"V3": 0.41, "V10": 0.3, "Amount": 0.25},
        "model_name": "fraud-model",
        "model_version": 3,
    }
    alert.update(overrides)
    return alert


def test_alert_round_trip_keeps_every_field():
    alert = AlertEvent.from_json(orjson.dumps(make_alert()))
    assert alert.features == ("V3", "V10", "Amount")
    assert alert.details["V10"] == 0.3
    assert AlertEvent.from_json(alert.to_json()) == alert


def test_optional_fields_may_be_left_out():
    raw = make_alert()
    for name in ("features", "details", "model_name", "model_version"):
        raw.pop(name)
    alert = AlertEvent.from_json(orjson.dumps(raw))
    assert alert.features == () and alert.model_version is None
    assert set(orjson.loads(alert.to_json())) == set(raw)


@pytest.mark.parametrize(
    "mutate, reason, field",
    [
        (lambda a: a.pop("kind"), contract.MISSING_FIELD, "kind"),
        (lambda a: a.update(kind="weather"), contract.OUT_OF_RANGE, "kind"),
        (lambda a: a.update(severity="meh"), contract.OUT_OF_RANGE, "severity"),
        (lambda a: a.update(value="0.4"), contract.WRONG_TYPE, "value"),
        (lambda a: a.update(window_end_ms=a["window_start_ms"]), contract.OUT_OF_RANGE, "window_end_ms"),
        (lambda a: a.update(features="V3"), contract.WRONG_TYPE, "features"),
        (lambda a: a.update(features=["V3", "V99"]), contract.OUT_OF_RANGE, "features[1]"),
        (lambda a: a.update(features=["V3", "V3"]), contract.OUT_OF_RANGE, "features"),
        (lambda a: a.update(features=[3]), contract.WRONG_TYPE, "features[0]"),
        (lambda a: a.update(details={"V3": "high"}), contract.WRONG_TYPE, "details.V3"),
        (lambda a: a.update(model_version=-1), contract.OUT_OF_RANGE, "model_version"),
        (lambda a: a.update(extra=True), contract.UNKNOWN_FIELD, "extra"),
        (lambda a: a.update(message=""), contract.OUT_OF_RANGE, "message"),
    ],
)
def test_bad_alerts_are_refused_naming_the_field(mutate, reason, field):
    raw = make_alert()
    mutate(raw)
    with pytest.raises(ContractError) as err:
        AlertEvent.from_json(orjson.dumps(raw))
    assert err.value.reason == reason
    assert err.value.field == field


def test_non_finite_values_are_refused():
    text = orjson.dumps(make_alert()).replace(b'"value":0.41', b'"value":NaN')
    with pytest.raises(ContractError) as err:
        AlertEvent.from_json(text)
    assert err.value.reason == contract.NOT_FINITE
