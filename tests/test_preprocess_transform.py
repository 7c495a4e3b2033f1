"""Unit tests of the record transformation and anonymization (no broker): every outcome, ids, masks, redaction."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest

from fraud.contract import MISSING_FIELD, NOT_FINITE, OUT_OF_RANGE, UNKNOWN_FIELD, WRONG_TYPE, TransactionEvent
from fraud.dataset import iter_rows
from fraud.errors import FraudError
from fraud.features import CSV_COLUMNS, FEATURE_NAMES
from fraud.paths import SAMPLE_CSV
from fraud.replay import CardPool, event_time_ms, transaction_event, transaction_id
from preprocessing.anonymize import (
    DEV_INSECURE_KEY,
    KEY_ENV,
    KEY_FILE_ENV,
    AnonymizeKey,
    Anonymizer,
    MaskChars,
    limit_visible,
    load_key,
    mask,
    redact_key,
)
from preprocessing.rules import DEFAULT_RULES, SOURCE_CSV, SOURCE_RAW, load_rules, parse_rules
from preprocessing.transform import (
    BLANK_LINE,
    CSV_COLUMNS_REASON,
    CSV_HEADER,
    ENRICH_NO_MATCH,
    STAGE_PARSE,
    STAGE_RULES,
    Clean,
    Filtered,
    Preprocessor,
    Rejected,
    csv_index,
)

KEY = AnonymizeKey(b"k" * 32, "test")
CARDS = CardPool()
SAMPLE_LINES = SAMPLE_CSV.read_bytes().splitlines()
HEADER = SAMPLE_LINES[0]
USERS = {"cust-000001": {"name": "Jane Doe", "country": "BE", "segment": "retail"}}


def pre(rules_text: str | None = None, users=None, key: AnonymizeKey = KEY) -> Preprocessor:
    rules = load_rules(DEFAULT_RULES) if rules_text is None else parse_rules("version: 1\n" + rules_text)
    return Preprocessor(rules, Anonymizer(key), users)


def raw_event(index: int = 0, **changes) -> dict:
    row = next(iter_rows(SAMPLE_CSV, start=index, limit=1))
    obj = transaction_event(row, CARDS).to_dict()
    obj.update(changes)
    return obj


def enc(obj: dict) -> bytes:
    return orjson.dumps(obj)


def csv_line(line: bytes, column: str, value: str) -> bytes:
    cells = line.decode().split(",")
    cells[CSV_COLUMNS.index(column)] = value
    return ",".join(cells).encode()


# -- anonymization ------------------------------------------------------------------------------


def test_pseudonyms_are_keyed_hmacs_domain_separated_and_stable():
    a = Anonymizer(KEY)
    p = a.pseudonym("card_id", "9123456789012345")
    expected = hmac.new(b"k" * 32, b"card_id\x1f9123456789012345", hashlib.sha256).hexdigest()[:32]
    assert p == "card_" + expected
    assert a.pseudonym("card_id", "9123456789012345") == p
    assert a.pseudonym("customer_id", "9123456789012345").startswith("customer_")
    assert a.pseudonym("customer_id", "9123456789012345")[9:] != p[5:]
    assert Anonymizer(AnonymizeKey(b"j" * 32, "other")).pseudonym("card_id", "9123456789012345") != p


@pytest.mark.parametrize("function, chars, expected", [
    ("mask", 0, "XXxx-nnnn"),
    ("mask_left", 4, "XXxx-1234"),
    ("mask_left", 99, "XXxx-nnnn"),
    ("mask_right", 4, "ABcd-nnnn"),
    ("mask_keep_left", 2, "ABxx-nnnn"),
    ("mask_keep_right", 2, "XXxx-nn34"),
    ("mask_keep_right", 0, "XXxx-nnnn"),
])
def test_mask_functions_follow_ksql(function, chars, expected):
    assert mask("ABcd-1234", function, chars) == expected


def test_mask_chars_and_visible_limit():
    assert mask("4111-1111", "mask_left", 5, MaskChars(digit="#", other="~")) == "####~1111"
    pan = "9123456789012345"
    shown = mask(pan, "mask_left", 6)
    assert shown == "nnnnnn6789012345"
    assert limit_visible(pan, shown, 4) == "nnnnnnnnnnnn2345"
    assert limit_visible(pan, mask(pan, "mask_left", 12), 4) == "nnnnnnnnnnnn2345"


def test_load_key_sources_and_refusals(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_bytes(b"0123456789abcdef0123\n")
    assert load_key({}, key_file).secret == b"0123456789abcdef0123"
    assert load_key({KEY_FILE_ENV: str(key_file)}).secret == b"0123456789abcdef0123"
    env_key = load_key({KEY_ENV: "s" * 20})
    assert env_key.secret == b"s" * 20 and not env_key.insecure
    assert KEY_ENV in env_key.source and "s" * 20 not in repr(env_key)
    dev = load_key({}, dev_insecure=True)
    assert dev.insecure and dev.secret == DEV_INSECURE_KEY
    with pytest.raises(FraudError, match="no anonymization key: set FRAUD_ANONYMIZE_KEY"):
        load_key({})
    with pytest.raises(FraudError, match="is 5 bytes, at least 16") as info:
        load_key({KEY_ENV: "short"})
    assert "short" not in str(info.value)
    with pytest.raises(FraudError, match="cannot read the anonymization key file"):
        load_key({}, tmp_path / "absent")
    assert load_key({KEY_ENV: "s" * 20}).fingerprint == load_key({KEY_ENV: "s" * 20}).fingerprint
    assert load_key({KEY_ENV: "s" * 20}).fingerprint != dev.fingerprint


def test_redaction_of_json_keeps_shape_and_hides_ids():
    a = Anonymizer(KEY)
    obj = raw_event(0, attributes={"note": "paid with 9123 4567 8901 2348 today"})
    card, cust = obj["card_id"], obj["customer_id"]
    out = a.redact_record(enc(obj))
    assert card.encode() not in out and cust.encode() not in out and b"9123 4567" not in out
    back = orjson.loads(out)
    assert back["card_id"] == a.pseudonym("card_id", card)
    assert back["customer_id"] == a.pseudonym("customer_id", cust)
    assert back["features"] == obj["features"] and back["event_time_ms"] == obj["event_time_ms"]
    assert back["attributes"]["note"] == f"paid with {a.pseudonym('card_id', '9123456789012348')} today"


def test_redaction_of_broken_records():
    a = Anonymizer(KEY)
    obj = raw_event(0)
    broken = enc(obj)[:-40]  # cut: not JSON any more
    out = a.redact_record(broken)
    assert obj["card_id"].encode() not in out and obj["customer_id"].encode() not in out
    assert a.pseudonym("card_id", obj["card_id"]).encode() in out
    numeric = b'{"card_id": 9123456789012345, "x": 0.1234567890123456789'
    assert b"9123456789012345" not in a.redact_record(numeric)
    # A decimal fraction is not a card number; a non-Luhn digit run is left alone.
    assert a.redact_record(b"0.8789049316830981,1234567890123456") == b"0.8789049316830981,1234567890123456"
    assert a.redact_record(None) is None


def test_redact_key():
    a = Anonymizer(KEY)
    assert redact_key(b"tx-000001", {"card_id": "9123456789012345"}, a) == b"tx-000001"
    assert redact_key(b"cust-000001", {"customer_id": "cust-000001"}, a) == a.pseudonym(
        "customer_id", "cust-000001").encode()
    assert redact_key(b"9123456789012348", {}, a) == a.pseudonym("card_id", "9123456789012348").encode()
    assert redact_key(None, {}, a) is None


# -- CSV lines ----------------------------------------------------------------------------------


def test_csv_line_becomes_a_clean_event_with_replay_identities():
    p = pre()
    out = p.process(SOURCE_CSV, SAMPLE_LINES[1])
    assert isinstance(out, Clean)
    row = next(iter_rows(SAMPLE_CSV, limit=1))
    index = csv_index(SAMPLE_LINES[1].decode())
    card = CARDS.card_for_row(index)
    ev = out.event
    assert ev.transaction_id == transaction_id(index) and out.key == ev.transaction_id.encode()
    assert ev.card_id == Anonymizer(KEY).pseudonym("card_id", card.card_id)
    assert ev.customer_id == Anonymizer(KEY).pseudonym("customer_id", card.customer_id)
    assert ev.event_time_ms == event_time_ms(row.features["Time"])
    assert dict(ev.features) == row.features
    assert ev.label == row.label
    assert ev.attributes["card_display"] == "n" * 12 + card.card_id[-4:]
    assert ev.attributes["customer_display"] == "xxxx-nnnn" + card.customer_id[-2:]
    assert ev.attributes["source"] == "csv"
    assert TransactionEvent.from_json(out.value) == ev
    assert card.card_id.encode() not in out.value and card.customer_id.encode() not in out.value


def test_csv_ids_depend_on_the_content_only():
    p = pre()
    a = p.process(SOURCE_CSV, SAMPLE_LINES[5])
    b = p.process(SOURCE_CSV, SAMPLE_LINES[5] + b"  ")
    c = p.process(SOURCE_CSV, SAMPLE_LINES[6])
    assert a.event == b.event
    assert a.event.transaction_id != c.event.transaction_id
    ids = {p.process(SOURCE_CSV, line).event.transaction_id for line in SAMPLE_LINES[1:500]}
    assert len(ids) == len(set(SAMPLE_LINES[1:500]))


def test_header_and_blank_lines_are_filtered_not_scored():
    p = pre()
    assert p.process(SOURCE_CSV, HEADER) == Filtered(CSV_HEADER)
    assert p.process(SOURCE_CSV, b"Time,V1," + b",".join(f"V{i}".encode() for i in range(2, 29)) + b",Amount,Class") \
        == Filtered(CSV_HEADER)
    assert p.process(SOURCE_CSV, b"") == Filtered(BLANK_LINE)
    assert p.process(SOURCE_CSV, b"  \t") == Filtered(BLANK_LINE)
    assert p.process(SOURCE_CSV, None) == Filtered(BLANK_LINE)


@pytest.mark.parametrize("line, reason, field, stage", [
    (b"1,2,3", CSV_COLUMNS_REASON, None, STAGE_PARSE),
    (b"\xff\xfe", "bad_encoding", None, STAGE_PARSE),
    (None, WRONG_TYPE, "features.V3", STAGE_PARSE),  # V3 = "abc"
    (None, MISSING_FIELD, "features.V7", STAGE_RULES),  # V7 empty, not imputed
    (None, NOT_FINITE, "features.V2", STAGE_RULES),  # V2 = nan
    (None, OUT_OF_RANGE, "features.Amount", STAGE_RULES),  # Amount = -1
    (None, OUT_OF_RANGE, "label", STAGE_RULES),  # Class = "2"
])
def test_bad_csv_lines_are_rejected_with_reason_and_field(line, reason, field, stage):
    base = SAMPLE_LINES[1]
    if line is None:
        line = {"features.V3": csv_line(base, "V3", "abc"), "features.V7": csv_line(base, "V7", ""),
                "features.V2": csv_line(base, "V2", "nan"), "features.Amount": csv_line(base, "Amount", "-1"),
                "label": csv_line(base, "Class", '"2"')}[field]
    out = pre().process(SOURCE_CSV, line)
    assert isinstance(out, Rejected), out
    assert (out.reason, out.field, out.stage) == (reason, field, stage)


def test_missing_label_is_filtered_by_the_shipped_rule():
    out = pre().process(SOURCE_CSV, csv_line(SAMPLE_LINES[1], "Class", ""))
    assert out == Filtered("filter:no_label")


def test_imputation_fills_missing_values_when_its_condition_holds():
    rules = """
impute:
  - {field: label, value: 0, when: 'source == "csv"'}
  - {field: V7, value: 0.5}
filters:
  - {name: no_label, when: label is missing}
"""
    p = pre(rules)
    line = csv_line(csv_line(SAMPLE_LINES[1], "Class", ""), "V7", "")
    out = p.process(SOURCE_CSV, line)
    assert isinstance(out, Clean)
    assert out.event.label == 0 and out.event.features["V7"] == 0.5
    # The label rule only applies to CSV: a raw event without label stays without.
    out = p.process(SOURCE_RAW, enc(raw_event(0)))
    assert out == Filtered("filter:no_label")


# -- raw events ---------------------------------------------------------------------------------


def test_raw_event_is_anonymized_and_keeps_no_raw_id():
    obj = raw_event(3)
    out = pre(users=USERS).process(SOURCE_RAW, enc(obj))
    assert isinstance(out, Clean)
    assert out.event.transaction_id == obj["transaction_id"]
    assert out.event.card_id == Anonymizer(KEY).pseudonym("card_id", obj["card_id"])
    assert out.event.label is None
    assert obj["card_id"].encode() not in out.value and obj["customer_id"].encode() not in out.value
    assert out.event.attributes["source"] == "raw"


@pytest.mark.parametrize("value, reason, field", [
    (b"{not json", "malformed_json", None),
    (b"[1, 2]", "not_an_object", None),
    (None, "not_an_object", None),
    (b'{"transaction_id": "t", "extra": 1}', UNKNOWN_FIELD, "extra"),
    (b'{"features": {"V99": 1}}', UNKNOWN_FIELD, "features.V99"),
    (b'{"features": [1]}', WRONG_TYPE, "features"),
])
def test_unparseable_raw_records_are_rejected_at_parse(value, reason, field):
    out = pre().process(SOURCE_RAW, value)
    assert isinstance(out, Rejected)
    assert (out.reason, out.field, out.stage) == (reason, field, STAGE_PARSE)


def test_contract_violations_are_rejected_after_imputation():
    obj = raw_event(0)
    del obj["customer_id"]
    out = pre().process(SOURCE_RAW, enc(obj))
    assert isinstance(out, Rejected) and (out.reason, out.field) == (MISSING_FIELD, "customer_id")
    assert out.raw_ids["card_id"] == obj["card_id"]
    obj = raw_event(0)
    obj["features"]["Amount"] = "12"
    out = pre("impute:\n  - {field: Amount, value: 0}\n").process(SOURCE_RAW, enc(obj))
    assert isinstance(out, Rejected) and (out.reason, out.field) == (WRONG_TYPE, "features.Amount")
    obj = raw_event(0)
    obj["features"]["Amount"] = None
    assert isinstance(pre("impute:\n  - {field: Amount, value: 0}\n").process(SOURCE_RAW, enc(obj)), Clean)


# -- enrichment, filters, checks, masks, projection ---------------------------------------------


def test_enrichment_joins_by_raw_customer_id_and_masks_the_name():
    obj = raw_event(0, customer_id="cust-000001")
    out = pre(users=USERS).process(SOURCE_RAW, enc(obj))
    assert out.event.attributes["country"] == "BE"
    assert out.event.attributes["segment"] == "retail"
    assert out.event.attributes["user_name"] == "Jxxx-Xxx"
    assert "Jane" not in out.value.decode()
    missing = pre(users=USERS).process(SOURCE_RAW, enc(raw_event(0, customer_id="cust-999999")))
    assert isinstance(missing, Clean) and "country" not in missing.event.attributes


@pytest.mark.parametrize("on_missing, expected", [("filter", Filtered(ENRICH_NO_MATCH)), ("dead_letter", Rejected)])
def test_enrichment_on_missing(on_missing, expected):
    p = pre(f"enrich: {{fields: [country], on_missing: {on_missing}}}\n", users=USERS)
    out = p.process(SOURCE_RAW, enc(raw_event(0, customer_id="cust-999999")))
    if expected is Rejected:
        assert isinstance(out, Rejected) and out.reason == ENRICH_NO_MATCH and out.field == "customer_id"
    else:
        assert out == expected
    assert isinstance(p.process(SOURCE_RAW, enc(raw_event(0, customer_id="cust-000001"))), Clean)


def test_filters_in_order_and_checks_dead_letter():
    rules = """
enrich: {fields: [country]}
filters:
  - {name: belgium, when: 'user.country == "BE"'}
  - {name: small, when: Amount < 5}
checks:
  - {name: amount_cap, require: Amount <= 100}
"""
    p = pre(rules, users=USERS)
    be = raw_event(0, customer_id="cust-000001")
    be["features"]["Amount"] = 1.0
    assert p.process(SOURCE_RAW, enc(be)) == Filtered("filter:belgium")
    small = raw_event(0)
    small["features"]["Amount"] = 1.0
    assert p.process(SOURCE_RAW, enc(small)) == Filtered("filter:small")
    big = raw_event(0)
    big["features"]["Amount"] = 1000.0
    out = p.process(SOURCE_RAW, enc(big))
    assert isinstance(out, Rejected) and out.reason == "check:amount_cap" and out.stage == STAGE_RULES
    assert out.message == "check amount_cap failed: Amount <= 100"
    ok = raw_event(0)
    ok["features"]["Amount"] = 50.0
    assert isinstance(p.process(SOURCE_RAW, enc(ok)), Clean)


def test_projection_keeps_only_listed_attributes_and_can_drop_the_label():
    rules = """
masks:
  last4: {field: card_id, function: mask_left, chars: 2}
project:
  label: drop
  attributes: [last4, attributes.channel]
"""
    obj = raw_event(0, attributes={"channel": "web", "secret": "s"}, label=1)
    out = pre(rules).process(SOURCE_RAW, enc(obj))
    assert out.event.label is None
    # mask_left 2 of a 16-digit number would show 14 digits: identity masks show at most 4.
    assert out.event.attributes == {"last4": "n" * 12 + obj["card_id"][-4:], "channel": "web"}
    out = pre("").process(SOURCE_RAW, enc(obj))
    assert out.event.attributes == {} and out.event.label == 1


def test_every_sample_line_has_one_outcome_and_events_round_trip():
    p = pre()
    outcomes = [p.process(SOURCE_CSV, line) for line in SAMPLE_LINES]
    assert outcomes[0] == Filtered(CSV_HEADER)
    clean = [o for o in outcomes if isinstance(o, Clean)]
    assert len(clean) == len(SAMPLE_LINES) - 1
    for o in clean[:200]:
        assert TransactionEvent.from_json(o.value) == o.event
        assert set(o.event.features) == set(FEATURE_NAMES)


def test_raw_ids_cannot_leave_through_the_transaction_id_or_a_projected_attribute():
    obj = raw_event(4)
    card, cust = obj["card_id"], obj["customer_id"]
    for tid in (card, f"tx-{card}", cust, "tx-9123 4567 8901 2348"):
        out = pre().process(SOURCE_RAW, enc(dict(obj, transaction_id=tid)))
        assert isinstance(out, Rejected) and out.reason == "raw_id_in_transaction_id", tid
        assert out.field == "transaction_id"
    assert isinstance(pre().process(SOURCE_RAW, enc(dict(obj, transaction_id="tx-2013-09-01-000042"))), Clean)
    rules = "project:\n  attributes: [attributes.note]\n"
    note = f"card {card} of {cust}, also 9123456789012348"
    out = pre(rules).process(SOURCE_RAW, enc(dict(obj, attributes={"note": note})))
    anon = Anonymizer(KEY)
    assert out.event.attributes["note"] == (f"card {anon.pseudonym('card_id', card)} of "
                                            f"{anon.pseudonym('customer_id', cust)}, also "
                                            f"{anon.pseudonym('card_id', '9123456789012348')}")
