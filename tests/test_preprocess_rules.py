"""Unit tests of the rules file: the expression language, the loader's line-numbered errors, the shipped file."""

from __future__ import annotations

import textwrap

import pytest

from fraud.features import FEATURE_NAMES
from fraud.replay import DEFAULT_CARDS, DEFAULT_SEED
from preprocessing.expr import NUMBER, STRING, ExpressionError, compile_expression
from preprocessing.rules import DEFAULT_RULES, FieldTypes, RulesError, load_rules, parse_rules

FIELDS = {"Amount": NUMBER, "label": NUMBER, "source": STRING, "user.country": STRING}


def ev(text: str, **record):
    return compile_expression(text, FIELDS)(record)


# -- expressions --------------------------------------------------------------------------------


def test_comparisons_and_logic():
    assert ev("Amount > 10", Amount=11.0)
    assert not ev("Amount > 10", Amount=10.0)
    assert ev("Amount >= 10 and Amount <= 20", Amount=10.0)
    assert ev("Amount < 1 or Amount > 100", Amount=101.0)
    assert not ev("not Amount > 10", Amount=11.0)
    assert ev('source == "csv" and (label == 1 or Amount > 1000)', source="csv", label=0, Amount=2000.0)
    assert not ev('source == "csv" and (label == 1 or Amount > 1000)', source="raw", label=1, Amount=2000.0)
    assert ev("Amount != 0", Amount=1.5)
    assert ev("-5 < Amount", Amount=0.0)
    assert ev("Amount < 1e3", Amount=999.0)


def test_missing_fields_make_comparisons_false_and_is_missing_finds_them():
    assert not ev("Amount > 10", Amount=None)
    assert not ev("Amount <= 10", Amount=None)
    assert not ev("Amount != 10", Amount=None)
    assert ev("label is missing", label=None)
    assert not ev("label is missing", label=0)
    assert ev("label is not missing", label=0)
    assert not ev('user.country in ["BE"]', **{"user.country": None})
    assert not ev('user.country not in ["BE"]', **{"user.country": None})


def test_in_lists():
    assert ev('user.country in ["BE", "NL"]', **{"user.country": "NL"})
    assert ev('user.country not in ["BE", "NL"]', **{"user.country": "FR"})
    assert ev("label in [1]", label=1)
    assert ev("label in [0, 1]", label=0)
    assert ev("Amount in [1.5, 2]", Amount=2.0)


def test_strings_with_quotes_and_escapes():
    assert ev("user.country == 'B\\'E'", **{"user.country": "B'E"})
    assert ev('user.country == "x y"', **{"user.country": "x y"})


@pytest.mark.parametrize("text, message", [
    ("Amout > 1", "unknown field 'Amout' (did you mean 'Amount'?)"),
    ('Amount > "10"', "cannot compare Amount (number) with \"10\" (string)"),
    ("Amount >", "expected a field or a value"),
    ("Amount", "expected a comparison after 'Amount'"),
    ("1 < 2", "a comparison needs at least one field"),
    ("(Amount > 1", "expected ')'"),
    ("Amount > 1 Amount", "unexpected 'Amount'"),
    ("", "empty expression"),
    ("Amount > 1 ; import os", "unexpected character ';'"),
    ("__import__('os')", "unknown field '__import__'"),
    ('user.country in ["BE", 1]', "user.country is a string, the list has a number"),
    ("1 is missing", "'is missing' needs a field"),
])
def test_bad_expressions_are_refused_with_the_place(text, message):
    with pytest.raises(ExpressionError) as info:
        compile_expression(text, FIELDS)
    assert message in str(info.value)


def test_column_of_the_error():
    with pytest.raises(ExpressionError) as info:
        compile_expression("Amount > 1 and lable == 1", FIELDS)
    assert info.value.column == 16


def test_field_types_accept_any_attribute_but_not_unknown_names():
    ft = FieldTypes(("country",))
    assert ft["attributes.merchant"] == STRING
    assert ft["user.country"] == STRING
    assert ft["V17"] == NUMBER
    with pytest.raises(KeyError):
        ft["user.nope"]
    assert set(FEATURE_NAMES) <= set(ft)


# -- the loader ---------------------------------------------------------------------------------


def rules_text(body: str) -> str:
    return "version: 1\n" + textwrap.dedent(body)


def test_shipped_rules_load():
    rules = load_rules(DEFAULT_RULES)
    assert rules.csv.cards == DEFAULT_CARDS and rules.csv.seed == DEFAULT_SEED
    assert [f.name for f in rules.filters] == ["no_label"]
    assert rules.enrich is not None and rules.enrich.key == "customer_id"
    assert {m.name for m in rules.masks} == {"card_display", "customer_display", "user_name"}
    assert rules.project.keep_label
    assert len(rules.sha256) == 64


def test_a_full_rules_file_compiles():
    rules = parse_rules(rules_text("""
        csv: {cards: 50, seed: 7, base_time_ms: 0}
        impute:
          - {field: label, value: 0, when: 'source == "csv"'}
          - {field: Amount, value: 0}
          - {field: attributes.channel, value: web}
        filters:
          - name: big
            description: too big
            when: Amount > 1000
        checks:
          - {name: pos, require: Amount >= 0}
        enrich: {key: card_id, fields: [country], on_missing: dead_letter}
        masks:
          cd: {field: card_id, function: mask_keep_right, chars: 4, digit: "*"}
        project:
          label: drop
          attributes: [cd, user.country, attributes.channel]
    """))
    assert rules.csv.cards == 50 and rules.csv.base_time_ms == 0
    assert [i.field for i in rules.impute] == ["label", "Amount", "attributes.channel"]
    assert rules.impute[1].value == 0.0 and isinstance(rules.impute[1].value, float)
    assert rules.filters[0].reason == "filter:big" and rules.checks[0].reason == "check:pos"
    assert rules.enrich.on_missing == "dead_letter"
    assert rules.masks[0].repl.digit == "*"
    assert not rules.project.keep_label
    assert [(p.name, p.mask, p.field) for p in rules.project.attributes] == [
        ("cd", "cd", None), ("country", None, "user.country"), ("channel", None, "attributes.channel")]


@pytest.mark.parametrize("body, line, message", [
    ("filtres: []\n", 2, "unknown key 'filtres' (did you mean 'filters'?)"),
    ("filters:\n  - name: a\n    when: Amout > 1\n", 4, "filters a: when: unknown field 'Amout'"),
    ("filters:\n  - name: a\n    when: Amount > 1\n  - name: a\n    when: Amount > 2\n", 5, "name 'a' already used on line 3"),
    ("filters:\n  - name: a\n", 3, "filters[0]: missing `when`"),
    ("checks:\n  - name: c\n    require: true\n", 4, "the YAML boolean True; quote it"),
    ("impute:\n  - {field: label, value: 2}\n", 3, "a label is 0 or 1, got 2"),
    ("impute:\n  - {field: Amount, value: abc}\n", 3, "Amount is a number, got 'abc'"),
    ("impute:\n  - {field: card_id, value: x}\n", 3, "'card_id' cannot be imputed"),
    ("masks:\n  m: {field: Amount, function: mask}\n", 3, "masks apply to string fields, 'Amount' is a number"),
    ("masks:\n  m: {field: card_id, function: mask_left}\n", 3, "mask_left needs `chars`"),
    ("masks:\n  m: {field: card_id, function: scramble}\n", 3, "one of mask, mask_left"),
    ("masks:\n  m: {field: card_id, function: mask_keep_right, chars: 6}\n", 3, "shows at most 4"),
    ("masks:\n  m: {field: card_id, function: mask, digit: '7'}\n", 3, "must not be a letter or a digit"),
    ("masks:\n  m: {field: user.name, function: mask}\n", 3, "'user.name' is not a field"),
    ("project:\n  attributes: [card_id]\n", 3, "card_id is a raw identifier and is never projected"),
    ("project:\n  attributes: [customer_id]\n", 3, "customer_id is a raw identifier"),
    ("project:\n  attributes: [Amount]\n", 3, "is a number"),
    ("project:\n  attributes: [source, source]\n", 3, "attribute 'source' already projected"),
    ("project:\n  label: maybe\n", 3, "keep or drop"),
    ("enrich: {fields: [a], key: transaction_id}\n", 2, "join on one of card_id, customer_id"),
    ("enrich: {fields: [a], on_missing: ignore}\n", 2, "one of keep, filter, dead_letter"),
    ("csv: {cards: 0}\n", 2, "csv.cards: expected >= 1"),
    ("filters: [\n", 3, "not valid YAML"),
    ("filters: []\nfilters: []\n", 3, "'filters' given twice (first on line 2)"),
])
def test_bad_rules_are_refused_with_the_line(body, line, message):
    with pytest.raises(RulesError) as info:
        parse_rules("version: 1\n" + body, "rules.yaml")
    text = str(info.value)
    assert text.startswith(f"rules.yaml:{line}: "), text
    assert message in text


def test_version_is_required_and_checked():
    with pytest.raises(RulesError, match=r"^r.yaml:1: missing `version: 1`"):
        parse_rules("filters: []\n", "r.yaml")
    with pytest.raises(RulesError, match=r"^r.yaml:1: version 2 is not supported"):
        parse_rules("version: 2\n", "r.yaml")
    with pytest.raises(RulesError, match=r"^r.yaml:1: the rules file is empty"):
        parse_rules("# nothing\n", "r.yaml")


def test_load_rules_names_the_file(tmp_path):
    path = tmp_path / "my-rules.yaml"
    path.write_text("version: 1\nfilters:\n  - name: x\n    when: V99 > 1\n")
    with pytest.raises(RulesError, match=rf"^{path}:4: filters x: when: unknown field 'V99'"):
        load_rules(path)
    with pytest.raises(RulesError, match="cannot read the rules file"):
        load_rules(tmp_path / "absent.yaml")
