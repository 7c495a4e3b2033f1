"""The pure part of the preprocessing job: one raw record in, one outcome out (no Kafka here).

    parse -> impute -> validate (the event contract) -> enrich -> filters -> checks
          -> anonymize (keyed pseudonyms) -> masks -> project -> clean TransactionEvent

Anonymization covers more than the two id fields: a raw event whose transaction id holds a raw id (it
becomes the record key downstream) is dead-lettered, and projected free-text attributes have the record's raw ids and
card-number-like digit runs replaced by pseudonyms.

Outcomes: `Clean` (the event and its record key), `Filtered` (dropped on purpose, with a reason: the
CSV header, blank lines, a filter rule) or `Rejected` (a dead letter: reason code, message, field and
Kafka Connect stage). Every record has exactly one outcome, so clean + filtered + rejected = consumed.

CSV identities. The dataset has no card or customer ids; a CSV line gets the synthetic identity that
`fraudctl replay` would give a row, through replay's own functions (`CardPool.card_for_row`,
`transaction_id`, `event_time_ms`), with a *content* index: the first 63 bits of the SHA-256 of the
line. The line's position in the file was the other candidate (it would match replay's `tx-000123`
ids), but Connect's FileStreamSource is at-least-once: after a crash it sends again every line since its
last offset flush, and anything counting positions in the topic would shift the ids of every later line.
A content index is the same however often a line is delivered, re-ingested or reprocessed after a
restart. The price: byte-identical lines (the full dataset has 1,081 duplicated rows) share one id, and
CSV transaction ids (`tx-` and up to 19 digits) differ from the positional ids of replay.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fraud.contract import (
    BAD_ENCODING,
    MISSING_FIELD,
    NOT_AN_OBJECT,
    NOT_FINITE,
    UNKNOWN_FIELD,
    WRONG_TYPE,
    ContractError,
    TransactionEvent,
    decode_object,
)
from fraud.features import CSV_COLUMNS, FEATURE_NAMES, LABEL_KEY
from fraud.replay import CardPool, event_time_ms, transaction_id
from preprocessing.anonymize import MAX_VISIBLE_ID_CHARS, Anonymizer, limit_visible, mask
from preprocessing.rules import IDENTITY_FIELDS, SOURCE_CSV, SOURCE_RAW, Mask, Rules

# Kafka Connect error stages (as in its DeadLetterQueueReporter headers).
STAGE_PARSE = "VALUE_CONVERTER"
STAGE_RULES = "TRANSFORMATION"

# Reasons of this job beyond the contract's (fraud.contract.REASONS).
CSV_HEADER = "csv_header"
BLANK_LINE = "blank_line"
CSV_COLUMNS_REASON = "csv_columns"
MALFORMED_CSV = "malformed_csv"
ENRICH_NO_MATCH = "enrich_no_match"
RAW_ID_IN_TRANSACTION_ID = "raw_id_in_transaction_id"
#: A raw id this long found inside a transaction id counts as leaked (shorter ones match by accident).
_MIN_CONTAINED_ID = 8

_CSV_N = len(CSV_COLUMNS)
_N_FEATURES = len(FEATURE_NAMES)
_RAW_FIELDS = ("transaction_id", "event_time_ms", "card_id", "customer_id", "features", "label", "attributes")


@dataclass(frozen=True)
class Clean:
    key: bytes
    event: TransactionEvent

    @property
    def value(self) -> bytes:
        return self.event.to_json()


@dataclass(frozen=True)
class Filtered:
    reason: str


@dataclass(frozen=True)
class Rejected:
    reason: str
    message: str
    stage: str
    field: str | None = None
    #: Raw identity values seen in the record (to redact the dead letter's key), never logged.
    raw_ids: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)


Outcome = Clean | Filtered | Rejected


def csv_index(line: str) -> int:
    """The content index of a CSV line (63 bits of SHA-256 of the stripped line): stable across deliveries."""
    digest = hashlib.sha256(line.strip().encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class _Partial:
    """A record between parsing and validation: values may be missing (None) or of a wrong type."""

    __slots__ = ("source", "transaction_id", "event_time_ms", "card_id", "customer_id", "features", "label",
                 "attributes")

    def __init__(self, source: str) -> None:
        self.source = source
        self.transaction_id: Any = None
        self.event_time_ms: Any = None
        self.card_id: Any = None
        self.customer_id: Any = None
        self.features: dict[str, Any] = {}
        self.label: Any = None
        self.attributes: dict[str, Any] = {}

    def raw_ids(self) -> dict[str, Any]:
        return {"card_id": self.card_id, "customer_id": self.customer_id}


def _num(value: Any) -> Any:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _text(value: Any) -> Any:
    return value if isinstance(value, str) else None


class Preprocessor:
    """Applies compiled rules to raw records. `users` is the reference table (key -> field -> value)."""

    def __init__(self, rules: Rules, anonymizer: Anonymizer, users: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.rules = rules
        self.anonymizer = anonymizer
        self.users: Mapping[str, Mapping[str, str]] = users if users is not None else {}
        self._cards = CardPool(rules.csv.cards, rules.csv.seed)
        # Only the fields some rule reads are put in the expression view (building all 40 per record is
        # the largest cost of a record otherwise).
        needed: set[str] = {m.field for m in rules.masks} | {p.field for p in rules.project.attributes if p.field}
        for rule in (*rules.impute, *rules.filters, *rules.checks):
            expr = getattr(rule, "when", None) or getattr(rule, "require", None)
            if expr is not None:
                needed |= expr.fields
        needed |= {rule.field for rule in rules.impute}
        self._view_features = tuple(name for name in FEATURE_NAMES if name in needed)
        self._view_attributes = any(name.startswith("attributes.") for name in needed)
        self._mask_cache: dict[tuple[str, str], str] = {}

    # -- entry points ----------------------------------------------------------------------------

    def process(self, source: str, value: bytes | None) -> Outcome:
        """The outcome of one record from `source` (SOURCE_CSV: a CSV line; SOURCE_RAW: contract JSON)."""
        if source == SOURCE_CSV:
            parsed = self._parse_csv(value)
        elif source == SOURCE_RAW:
            parsed = self._parse_raw(value)
        else:
            raise ValueError(f"unknown source {source!r}")
        if not isinstance(parsed, _Partial):
            return parsed
        return self._apply(parsed)

    # -- parse -----------------------------------------------------------------------------------

    def _parse_csv(self, value: bytes | None) -> _Partial | Filtered | Rejected:
        if value is None or not value.strip():
            return Filtered(BLANK_LINE)
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Rejected(BAD_ENCODING, f"line is not UTF-8 ({exc.reason} at byte {exc.start})", STAGE_PARSE)
        try:
            cells = next(csv.reader([text]))
        except csv.Error as exc:
            return Rejected(MALFORMED_CSV, f"not a CSV line ({exc})", STAGE_PARSE)
        stripped = [c.strip() for c in cells]
        if tuple(stripped) == CSV_COLUMNS:
            return Filtered(CSV_HEADER)
        if len(cells) != _CSV_N:
            return Rejected(CSV_COLUMNS_REASON, f"expected {_CSV_N} values ({CSV_COLUMNS[0]},...,{CSV_COLUMNS[-1]}), "
                                                f"got {len(cells)}", STAGE_PARSE)
        p = _Partial(SOURCE_CSV)
        for name, cell in zip(FEATURE_NAMES, stripped[:_N_FEATURES], strict=True):
            if cell == "":
                p.features[name] = None
                continue
            try:
                p.features[name] = float(cell)
            except ValueError:
                return Rejected(WRONG_TYPE, "expected a number", STAGE_PARSE, f"features.{name}")
        cell = stripped[_N_FEATURES]
        if cell != "":
            try:
                p.label = int(cell)
            except ValueError:
                return Rejected(WRONG_TYPE, f"expected 0 or 1 in column {LABEL_KEY}", STAGE_PARSE, "label")
        index = csv_index(text)
        card = self._cards.card_for_row(index)
        p.transaction_id = transaction_id(index)
        p.card_id = card.card_id
        p.customer_id = card.customer_id
        return p

    def _parse_raw(self, value: bytes | None) -> _Partial | Rejected:
        if value is None:
            return Rejected(NOT_AN_OBJECT, "expected a JSON object, got a null record (tombstone)", STAGE_PARSE)
        try:
            obj = decode_object(value)
        except ContractError as exc:
            return Rejected(exc.reason, str(exc), STAGE_PARSE, exc.field)
        p = _Partial(SOURCE_RAW)
        p.card_id = obj.get("card_id")
        p.customer_id = obj.get("customer_id")
        for name in obj:
            if name not in _RAW_FIELDS:
                return Rejected(UNKNOWN_FIELD, "field is not part of the contract", STAGE_PARSE, str(name),
                                p.raw_ids())
        p.transaction_id = obj.get("transaction_id")
        p.event_time_ms = obj.get("event_time_ms")
        p.label = obj.get("label")
        features = obj.get("features")
        if features is None:
            features = {}
        if not isinstance(features, dict):
            return Rejected(WRONG_TYPE, "expected an object", STAGE_PARSE, "features", p.raw_ids())
        for name in features:
            if name not in FEATURE_NAMES:
                return Rejected(UNKNOWN_FIELD, "field is not part of the contract", STAGE_PARSE,
                                f"features.{name}", p.raw_ids())
        p.features = {name: features.get(name) for name in FEATURE_NAMES}
        attributes = obj.get("attributes")
        if attributes is not None:
            if not isinstance(attributes, dict):
                return Rejected(WRONG_TYPE, "expected an object", STAGE_PARSE, "attributes", p.raw_ids())
            p.attributes = dict(attributes)
        return p

    # -- rules -----------------------------------------------------------------------------------

    def _view(self, p: _Partial) -> dict[str, Any]:
        """The flat record expressions see; values of a wrong type look missing (validation reports them)."""
        view: dict[str, Any] = {
            "source": p.source,
            "transaction_id": _text(p.transaction_id),
            "event_time_ms": _num(p.event_time_ms),
            "card_id": _text(p.card_id),
            "customer_id": _text(p.customer_id),
            "label": _num(p.label),
        }
        features = p.features
        for name in self._view_features:
            view[name] = _num(features.get(name))
        if self._view_attributes:
            for name, v in p.attributes.items():
                view[f"attributes.{name}"] = _text(v)
        return view

    def _apply(self, p: _Partial) -> Outcome:
        rules = self.rules
        view = self._view(p)
        for rule in rules.impute:
            if view.get(rule.field) is None and (rule.when is None or rule.when(view)):
                if rule.field == "label":
                    if p.label is None:
                        p.label = rule.value
                        view["label"] = rule.value
                elif rule.field in p.features:
                    if p.features[rule.field] is None:
                        p.features[rule.field] = rule.value
                        view[rule.field] = rule.value
                else:
                    attr = rule.field.split(".", 1)[1]
                    if p.attributes.get(attr) is None:
                        p.attributes[attr] = rule.value
                        view[rule.field] = rule.value

        try:
            event = self._validate(p)
        except ContractError as exc:
            return Rejected(exc.reason, str(exc), STAGE_RULES, exc.field, p.raw_ids())

        enrich = rules.enrich
        if enrich is not None:
            user = self.users.get(getattr(event, enrich.key))
            if user is None:
                if enrich.on_missing == "filter":
                    return Filtered(ENRICH_NO_MATCH)
                if enrich.on_missing == "dead_letter":
                    return Rejected(ENRICH_NO_MATCH, f"no entry in the reference table for this {enrich.key}",
                                    STAGE_RULES, enrich.key, p.raw_ids())
            else:
                for name in enrich.fields:
                    view[f"user.{name}"] = user.get(name)

        for flt in rules.filters:
            if flt.when(view):
                return Filtered(flt.reason)
        for check in rules.checks:
            if not check.require(view):
                return Rejected(check.reason, f"check {check.name} failed: {check.require.text}", STAGE_RULES,
                                None, p.raw_ids())

        masked: dict[str, str] = {}
        for m in rules.masks:
            original = view.get(m.field)
            if original is None:
                continue
            masked[m.name] = self._display(m, original)
        anon = self.anonymizer
        raw_ids = {"card_id": event.card_id, "customer_id": event.customer_id}
        tid = event.transaction_id
        if p.source == SOURCE_RAW and (
                any(tid == v or (len(v) >= _MIN_CONTAINED_ID and v in tid) for v in raw_ids.values())
                or anon.redact_pans(tid.encode("utf-8")) != tid.encode("utf-8")):
            # The transaction id is the clean event's key and travels everywhere downstream. (The job makes
            # CSV lines' ids itself from a hash; their long digit runs can pass a Luhn check by chance.)
            return Rejected(RAW_ID_IN_TRANSACTION_ID, "the transaction id contains a raw card or customer id",
                            STAGE_RULES, "transaction_id", p.raw_ids())
        attributes: dict[str, str] = {}
        for proj in rules.project.attributes:
            if proj.mask is not None:
                v = masked.get(proj.mask)
            else:
                v = view.get(proj.field or "")
                if v is not None:  # free text (an incoming attribute, a users field) may quote an id
                    v = anon.redact_text(v, raw_ids)
            if v is not None:
                attributes[proj.name] = v

        clean = TransactionEvent(
            transaction_id=event.transaction_id,
            event_time_ms=event.event_time_ms,
            card_id=anon.pseudonym("card_id", event.card_id),
            customer_id=anon.pseudonym("customer_id", event.customer_id),
            features=event.features,
            label=event.label if rules.project.keep_label else None,
            attributes=attributes,
        )
        return Clean(event.transaction_id.encode("utf-8"), clean)

    def _display(self, m: Mask, original: str) -> str:
        cache_key = (m.name, original)
        shown = self._mask_cache.get(cache_key)
        if shown is None:
            shown = mask(original, m.function, m.chars, m.repl)
            if m.field in IDENTITY_FIELDS:
                shown = limit_visible(original, shown, MAX_VISIBLE_ID_CHARS, m.repl)
            if len(self._mask_cache) >= 100_000:
                self._mask_cache.clear()
            self._mask_cache[cache_key] = shown
        return shown

    def _validate(self, p: _Partial) -> TransactionEvent:
        """The event contract's own checks (types, ranges, finiteness) on the imputed record."""
        if p.source == SOURCE_CSV:
            time_s = p.features.get("Time")
            if time_s is None:
                raise ContractError(MISSING_FIELD, "required field is missing", "features.Time")
            if not math.isfinite(time_s):
                raise ContractError(NOT_FINITE, f"expected a finite number, got {time_s}", "features.Time")
            p.event_time_ms = event_time_ms(time_s, self.rules.csv.base_time_ms)
        obj: dict[str, Any] = {}
        for name in ("transaction_id", "event_time_ms", "card_id", "customer_id"):
            value = getattr(p, name)
            if value is not None:
                obj[name] = value
        obj["features"] = {k: v for k, v in p.features.items() if v is not None}
        if p.label is not None:
            obj["label"] = p.label
        if p.attributes:
            obj["attributes"] = {k: v for k, v in p.attributes.items() if v is not None}
        return TransactionEvent.from_dict(obj)
