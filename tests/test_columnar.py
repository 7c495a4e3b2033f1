"""fraud.columnar against the per-event contract: the batch decoder must accept exactly what
TransactionEvent.from_json accepts, with the same values, and refuse the rest with the same reason, field and
message; bulk score encoding must write the bytes ScoreEvent.to_json writes. Valid events, the bridge's
malformed corpus, hand-picked edge cases where JSON parsers differ, and random mutations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from bridge_helpers import malformed_corpus, transaction

from fraud.columnar import TOMBSTONE_MESSAGE, decode_transactions, encode_score_events
from fraud.contract import NOT_AN_OBJECT, ContractError, ScoreEvent, TransactionEvent
from fraud.features import FEATURE_NAMES


def _per_event(values: list[bytes | None]) -> list[TransactionEvent | tuple[str, str | None, str]]:
    out: list = []
    for v in values:
        try:
            if v is None:
                raise ContractError(NOT_AN_OBJECT, TOMBSTONE_MESSAGE)
            out.append(TransactionEvent.from_json(v))
        except ContractError as err:
            out.append((err.reason, err.field, str(err)))
    return out


def assert_same_as_contract(values: list[bytes | None]) -> None:
    cols = decode_transactions(values)
    expected = _per_event(values)
    valid = [i for i, e in enumerate(expected) if isinstance(e, TransactionEvent)]
    assert cols.rows == valid
    refused = {i: (err.reason, err.field, str(err)) for i, err in cols.refused}
    assert refused == {i: e for i, e in enumerate(expected) if not isinstance(e, TransactionEvent)}
    assert cols.features.shape == (len(valid), len(FEATURE_NAMES)) and cols.features.dtype == np.float64
    for k, i in enumerate(valid):
        ev = expected[i]
        assert (cols.transaction_ids[k], cols.event_times_ms[k], cols.card_ids[k], cols.customer_ids[k],
                cols.labels[k]) == (ev.transaction_id, ev.event_time_ms, ev.card_id, ev.customer_id, ev.label)
        np.testing.assert_array_equal(cols.features[k], np.array(ev.feature_vector(), dtype=np.float64))


def _mutate(base: dict, fn) -> bytes:  # noqa: ANN001
    d = json.loads(json.dumps(base))
    fn(d)
    return json.dumps(d).encode()  # not orjson: some cases are beyond what orjson writes (64-bit integers)


def _good() -> dict:
    return transaction(1).to_dict()


def test_valid_events_decode_to_the_contracts_values():
    values = [transaction(i, np.random.default_rng(i)).to_json() for i in range(200)]
    assert_same_as_contract(values)
    cols = decode_transactions(values)
    assert len(cols) == 200 and not cols.refused


def test_malformed_corpus_and_tombstones_are_refused_like_the_contract():
    values: list[bytes | None] = [v for _, v in malformed_corpus()] + [None]
    values += [transaction(i).to_json() for i in range(5)]
    assert_same_as_contract(values)


EDGE_CASES = [
    # numbers: integers for floats, exponents, -0, big integers (orjson reads > 64 bits as a float)
    lambda d: d["features"].update(V1=3),
    lambda d: d["features"].update(V2=-0.0, V3=1e-300, V4=1.7e308),
    lambda d: d.update(event_time_ms=0),
    lambda d: d.update(event_time_ms=-1),
    lambda d: d.update(event_time_ms=2**63 - 1),
    lambda d: d.update(event_time_ms=2**63),
    lambda d: d.update(event_time_ms=2**64 + 5),
    lambda d: d.update(event_time_ms=1.0),
    lambda d: d.update(event_time_ms=True),
    # labels: null, bool, float 1.0 (the contract accepts it), out of range
    lambda d: d.update(label=None),
    lambda d: d.update(label=True),
    lambda d: d.update(label=1.0),
    lambda d: d.update(label=2),
    lambda d: d.pop("label"),
    # ids: empty, too long, wrong type, unicode
    lambda d: d.update(transaction_id=""),
    lambda d: d.update(card_id="x" * 129),
    lambda d: d.update(customer_id="é" * 128),
    lambda d: d.update(transaction_id=7),
    # attributes: null, too many, non-string values, fine
    lambda d: d.update(attributes=None),
    lambda d: d.update(attributes={f"k{i}": "v" for i in range(33)}),
    lambda d: d.update(attributes={"a": 1}),
    lambda d: d.update(attributes={"a": "b"}),
    # features: ranges, booleans, null, nested
    lambda d: d["features"].update(Time=-0.5),
    lambda d: d["features"].update(Amount=0.0),
    lambda d: d["features"].update(V9=False),
    lambda d: d["features"].update(V9=None),
    lambda d: d["features"].update(V9=[1.0]),
    lambda d: d.update(features=[]),
    lambda d: d.update(features=None),
]


@pytest.mark.parametrize("case", range(len(EDGE_CASES)))
def test_edge_cases_agree_with_the_contract(case):
    assert_same_as_contract([_mutate(_good(), EDGE_CASES[case]), transaction(2).to_json()])


def test_raw_json_edge_cases_agree_with_the_contract():
    good = transaction(3).to_json()
    raw = [
        good.replace(b'"transaction_id"', b'"transaction_id":"dup","transaction_id"', 1),  # duplicate key: last wins
        b" \n" + good + b"\t ",  # whitespace around
        b"\xef\xbb\xbf" + good,  # a byte order mark
        good.replace(b'"card_id":"', b'"card_id":"\\ud800', 1),  # a lone surrogate escape
        good.replace(b'"card_id":"', b'"card_id":"\\u00e9\\n', 1),  # escapes
        good.replace(b'"V1":', b'"V1":1e400,"V1x":', 1),  # overflow
        good.replace(b'"V2":', b'"V2":NaN,"V2x":', 1),
        good.replace(b'"V3":', b'"V3":123456789012345678901234567890,"V3x":', 1),
        good.replace(b'"event_time_ms":', b'"event_time_ms":99999999999999999999999,"x":', 1),
        good + b"garbage",
        good[:-1],
        b"",
        b"null",
        b'"a string"',
        good.replace(b"{", b"[", 1),
    ]
    assert_same_as_contract(raw)


def test_random_mutations_agree_with_the_contract():
    rng = np.random.default_rng(13)
    base = [transaction(i).to_json() for i in range(40)]
    values: list[bytes | None] = []
    for i in range(600):
        v = bytearray(base[i % len(base)])
        for _ in range(int(rng.integers(0, 4))):
            pos = int(rng.integers(0, len(v)))
            op = int(rng.integers(0, 3))
            if op == 0:
                v[pos] = int(rng.choice(list(b'0123456789.-e"{}[],:tfn \\x')))
            elif op == 1:
                del v[pos]
            else:
                v.insert(pos, int(rng.integers(0, 256)))
        values.append(bytes(v))
    assert_same_as_contract(values)
    cols = decode_transactions(values)
    assert 0 < len(cols) < len(values)  # the mutations made both valid and invalid events


def test_unexpected_parser_exception_is_kept_for_the_caller(monkeypatch):
    def boom(data):
        raise RecursionError("deep")

    monkeypatch.setattr(TransactionEvent, "from_json", staticmethod(boom))
    cols = decode_transactions([b"{}", transaction(1).to_json()])
    assert cols.rows == [1] and isinstance(cols.refused[0][1], RecursionError)


# -- score events ------------------------------------------------------------------------------


@pytest.mark.parametrize("with_optional", [True, False])
def test_bulk_score_events_are_the_bytes_of_score_event_to_json(with_optional):
    rng = np.random.default_rng(5)
    n = 50
    scores = rng.random(n).astype(np.float32).astype(np.float64).tolist()
    scores[0], scores[1] = 1e-7, 0.0  # exponent notation, zero
    thresholds = [0.5] * n
    errors = (rng.random(n) * 1e-6).tolist()
    explanations = [{FEATURE_NAMES[j]: float(rng.normal()) for j in rng.choice(30, 3, replace=False)} for _ in range(n)]
    ids = [f"tx-{i}\u00e9\n\"q\"" for i in range(n)]  # escapes must not split lines
    kwargs = dict(transaction_ids=ids, event_times_ms=list(range(n)), card_ids=[f"card-{i}" for i in range(n)],
                  scores=scores, decisions=[s >= 0.5 for s in scores], thresholds=thresholds, model_name="fraud",
                  model_version=3, source_timestamps_ms=[1000 + i for i in range(n)], scored_at_ms=5000)
    if with_optional:
        got = encode_score_events(**kwargs, reconstruction_errors=errors, explanations=explanations)
    else:
        got = encode_score_events(**kwargs)
    assert len(got) == n
    for i, value in enumerate(got):
        want = ScoreEvent(ids[i], i, f"card-{i}", scores[i], scores[i] >= 0.5, 0.5, "fraud", 3, 1000 + i, 5000,
                          errors[i] if with_optional else None, explanations[i] if with_optional else {})
        assert ScoreEvent.from_json(value) == want
        assert value == want.to_json()
    assert encode_score_events(**{k: [] if isinstance(v, list) else v for k, v in kwargs.items()}) == []
    assert not math.isnan(ScoreEvent.from_json(got[0]).score)
