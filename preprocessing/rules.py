"""The preprocessing rules file: its format, and the loader that refuses a bad one with the line at fault.

One YAML file holds everything an operator may change without touching code (see the shipped
`preprocessing/rules.yaml`, which documents each section):

- `csv`: how CSV lines get their synthetic identities (card pool size and seed, time base: as replay);
- `impute`: values for missing fields (e.g. a missing class), each with an optional `when` condition;
- `filters`: records to drop (counted with the reason `filter:<name>`), as expressions over fields;
- `checks`: conditions a record must meet, else it is dead-lettered with the reason `check:<name>`;
- `enrich`: the join with the reference table (the compacted users topic) by customer or card id: the
  fields taken and what happens when a record has no match;
- `masks`: display forms of string fields (ksqlDB's MASK family), e.g. the card number's last 4 digits;
- `project`: which attributes the clean event carries (masks, enrichment fields, incoming attributes)
  and whether it keeps the label.

Card and customer ids are always replaced by keyed pseudonyms; no rule can turn that off, project a raw id
or show more than 4 characters of one. Expressions use the small language of `preprocessing.expr`.

`load_rules(path)` parses, type-checks and compiles the file once; any problem is a `RulesError`
reading `rules.yaml:LINE: what is wrong`.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fraud.errors import FraudError
from fraud.features import FEATURE_NAMES, TRANSACTION_ID_KEY
from fraud.replay import DEFAULT_BASE_TIME_MS, DEFAULT_CARDS, DEFAULT_SEED
from preprocessing.anonymize import MASK_FUNCTIONS, MaskChars
from preprocessing.expr import NUMBER, STRING, Expression, ExpressionError, compile_expression

#: The rules the demo and `fraudctl preprocess run` use unless told otherwise.
DEFAULT_RULES = Path(__file__).resolve().parent / "rules.yaml"
RULES_VERSION = 1

#: Where a record came from: CSV lines from Kafka Connect, or raw contract JSON (e.g. `fraudctl replay`).
SOURCE_CSV = "csv"
SOURCE_RAW = "raw"
#: Raw identity fields: always pseudonymized, never projected, masked to at most 4 visible characters.
IDENTITY_FIELDS: tuple[str, ...] = ("card_id", "customer_id")
ON_MISSING = ("keep", "filter", "dead_letter")
MAX_ATTRIBUTES = 32  # the contract's limit on TransactionEvent.attributes

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_USER_PREFIX = "user."
_ATTR_PREFIX = "attributes."


class RulesError(FraudError):
    """A rules file that cannot be used; the message starts with `file:line:`."""


# ---------------------------------------------------------------------------------------------
# The compiled rules


@dataclass(frozen=True)
class CsvIdentity:
    """Synthetic identities of CSV lines: the card pool and time base `fraudctl replay` uses."""

    cards: int = DEFAULT_CARDS
    seed: int = DEFAULT_SEED
    base_time_ms: int = DEFAULT_BASE_TIME_MS


@dataclass(frozen=True)
class Impute:
    field: str
    value: Any
    when: Expression | None
    line: int


@dataclass(frozen=True)
class Filter:
    name: str
    when: Expression
    line: int

    @property
    def reason(self) -> str:
        return f"filter:{self.name}"


@dataclass(frozen=True)
class Check:
    name: str
    require: Expression
    line: int

    @property
    def reason(self) -> str:
        return f"check:{self.name}"


@dataclass(frozen=True)
class Enrich:
    """Join with the reference table (the compacted users topic, `fraud.topics.USERS` unless the job says)."""

    key: str  # the raw identity field joined on (customer_id or card_id)
    fields: tuple[str, ...]
    on_missing: str  # keep | filter | dead_letter
    line: int


@dataclass(frozen=True)
class Mask:
    name: str
    field: str
    function: str
    chars: int
    repl: MaskChars
    line: int


@dataclass(frozen=True)
class Projected:
    """One attribute of the clean event: `name` <- a mask (`mask` set) or a string field (`field` set)."""

    name: str
    mask: str | None = None
    field: str | None = None


@dataclass(frozen=True)
class Projection:
    keep_label: bool = True
    attributes: tuple[Projected, ...] = ()


@dataclass(frozen=True)
class Rules:
    path: str
    sha256: str
    csv: CsvIdentity = field(default_factory=CsvIdentity)
    impute: tuple[Impute, ...] = ()
    filters: tuple[Filter, ...] = ()
    checks: tuple[Check, ...] = ()
    enrich: Enrich | None = None
    masks: tuple[Mask, ...] = ()
    project: Projection = field(default_factory=Projection)

    def summary(self) -> str:
        parts = [f"{len(self.impute)} impute", f"{len(self.filters)} filters", f"{len(self.checks)} checks",
                 f"{len(self.masks)} masks", f"{len(self.project.attributes)} attributes"]
        if self.enrich:
            parts.append(f"enrich by {self.enrich.key} ({', '.join(self.enrich.fields)})")
        return f"{self.path} (sha256 {self.sha256[:12]}): " + ", ".join(parts)


class FieldTypes(Mapping[str, str]):
    """The fields expressions may use and their types; any `attributes.<name>` is a string."""

    def __init__(self, user_fields: tuple[str, ...] = ()) -> None:
        fixed: dict[str, str] = {"source": STRING, TRANSACTION_ID_KEY: STRING, "event_time_ms": NUMBER,
                                 "card_id": STRING, "customer_id": STRING, "label": NUMBER}
        fixed.update({name: NUMBER for name in FEATURE_NAMES})
        fixed.update({_USER_PREFIX + f: STRING for f in user_fields})
        self._fixed = fixed

    def __getitem__(self, key: str) -> str:
        if key in self._fixed:
            return self._fixed[key]
        if key.startswith(_ATTR_PREFIX) and _NAME_RE.match(key[len(_ATTR_PREFIX):]):
            return STRING
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._fixed)

    def __len__(self) -> int:
        return len(self._fixed)


# ---------------------------------------------------------------------------------------------
# YAML with line numbers


class _Loc:
    """Reports errors as `path:line: message`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def error(self, node: yaml.Node | int, message: str) -> RulesError:
        line = node if isinstance(node, int) else node.start_mark.line + 1
        return RulesError(f"{self.path}:{line}: {message}")


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _compose(text: str, loc: _Loc) -> tuple[yaml.Node | None, yaml.SafeLoader]:
    loader = yaml.SafeLoader(text)
    try:
        return loader.get_single_node(), loader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        what = exc.problem or exc.context or "syntax error"
        raise loc.error(line, f"not valid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise loc.error(1, f"not valid YAML: {exc}") from None


class _Reader:
    def __init__(self, loader: yaml.SafeLoader, loc: _Loc) -> None:
        self.loader = loader
        self.loc = loc

    def mapping(self, node: yaml.Node, what: str, allowed: tuple[str, ...]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """A mapping node's entries: key -> (key node, value node); unknown and duplicate keys refused."""
        if not isinstance(node, yaml.MappingNode):
            raise self.loc.error(node, f"{what}: expected a mapping ({', '.join(allowed)})")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, f"{what} key")
            if not isinstance(key, str):
                raise self.loc.error(key_node, f"{what}: keys are names, got {key!r}")
            if key in out:
                raise self.loc.error(key_node, f"{what}: {key!r} given twice (first on line {_line(out[key][0])})")
            if allowed and key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (expected one of: {', '.join(allowed)})"
                raise self.loc.error(key_node, f"{what}: unknown key {key!r}{hint}")
            out[key] = (key_node, value_node)
        return out

    def free_mapping(self, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        return self.mapping(node, what, ())

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if isinstance(node, yaml.ScalarNode) and self.scalar(node, what) is None:
            return []
        if not isinstance(node, yaml.SequenceNode):
            raise self.loc.error(node, f"{what}: expected a list")
        return list(node.value)

    def scalar(self, node: yaml.Node, what: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.loc.error(node, f"{what}: expected a single value, got a {'list' if isinstance(node, yaml.SequenceNode) else 'mapping'}")
        return self.loader.construct_object(node, deep=True)

    def string(self, node: yaml.Node, what: str) -> str:
        value = self.scalar(node, what)
        if not isinstance(value, str) or not value.strip():
            raise self.loc.error(node, f"{what}: expected a non-empty string, got {value!r}")
        return value.strip()

    def name(self, node: yaml.Node, what: str) -> str:
        value = self.string(node, what)
        if not _NAME_RE.match(value):
            raise self.loc.error(node, f"{what}: {value!r} is not a name (letters, digits, underscores)")
        return value

    def integer(self, node: yaml.Node, what: str, minimum: int | None = None) -> int:
        value = self.scalar(node, what)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.loc.error(node, f"{what}: expected an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.loc.error(node, f"{what}: expected >= {minimum}, got {value}")
        return value

    def expression(self, node: yaml.Node, what: str, fields: Mapping[str, str]) -> Expression:
        text = self.scalar(node, what)
        if isinstance(text, bool):  # `when: true` is YAML's boolean, not a field
            raise self.loc.error(node, f"{what}: expected an expression, got the YAML boolean {text}; quote it")
        if not isinstance(text, str):
            raise self.loc.error(node, f"{what}: expected an expression in a string, got {text!r}")
        try:
            return compile_expression(text, fields)
        except ExpressionError as exc:
            raise self.loc.error(node, f"{what}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Sections

_TOP = ("version", "csv", "impute", "filters", "checks", "enrich", "masks", "project")


def load_rules(path: Path | str) -> Rules:
    """Read, check and compile a rules file; RulesError (`path:line: what`) if anything is wrong."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RulesError(f"{path}: cannot read the rules file: {exc.strerror}") from None
    return parse_rules(data, str(path))


def parse_rules(data: bytes | str, where: str = "rules.yaml") -> Rules:
    """Compile rules from text; `where` names the file in error messages."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    loc = _Loc(where)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise loc.error(line, "the rules file is not UTF-8") from None
    root, loader = _compose(text, loc)
    if root is None:
        raise loc.error(1, f"the rules file is empty (it needs at least `version: {RULES_VERSION}`)")
    r = _Reader(loader, loc)
    top = r.mapping(root, "rules", _TOP)
    if "version" not in top:
        raise loc.error(root, f"missing `version: {RULES_VERSION}`")
    version = r.integer(top["version"][1], "version")
    if version != RULES_VERSION:
        raise loc.error(top["version"][1], f"version {version} is not supported (this job reads version {RULES_VERSION})")

    csv_identity = _csv(r, top["csv"][1]) if "csv" in top else CsvIdentity()
    enrich = _enrich(r, top["enrich"][1]) if "enrich" in top else None
    fields = FieldTypes(enrich.fields if enrich else ())
    impute = _impute(r, top["impute"][1], fields) if "impute" in top else ()
    filters = _filters(r, top["filters"][1], fields) if "filters" in top else ()
    checks = _checks(r, top["checks"][1], fields) if "checks" in top else ()
    masks = _masks(r, top["masks"][1], fields) if "masks" in top else ()
    project = _project(r, top["project"][1], fields, masks) if "project" in top else Projection()
    return Rules(path=where, sha256=hashlib.sha256(raw).hexdigest(), csv=csv_identity, impute=impute,
                 filters=filters, checks=checks, enrich=enrich, masks=masks, project=project)


def _csv(r: _Reader, node: yaml.Node) -> CsvIdentity:
    m = r.mapping(node, "csv", ("cards", "seed", "base_time_ms"))
    defaults = CsvIdentity()
    return CsvIdentity(
        cards=r.integer(m["cards"][1], "csv.cards", minimum=1) if "cards" in m else defaults.cards,
        seed=r.integer(m["seed"][1], "csv.seed") if "seed" in m else defaults.seed,
        base_time_ms=r.integer(m["base_time_ms"][1], "csv.base_time_ms", minimum=0)
        if "base_time_ms" in m else defaults.base_time_ms,
    )


def _impute(r: _Reader, node: yaml.Node, fields: FieldTypes) -> tuple[Impute, ...]:
    out = []
    for i, item in enumerate(r.sequence(node, "impute")):
        what = f"impute[{i}]"
        m = r.mapping(item, what, ("field", "value", "when"))
        for key in ("field", "value"):
            if key not in m:
                raise r.loc.error(item, f"{what}: missing `{key}`")
        name = r.string(m["field"][1], f"{what}.field")
        if name != "label" and name not in FEATURE_NAMES and not name.startswith(_ATTR_PREFIX):
            raise r.loc.error(m["field"][1], f"{what}.field: {name!r} cannot be imputed (label, a feature "
                                             f"such as Amount, or attributes.<name>){_hint(name, fields)}")
        if name.startswith(_ATTR_PREFIX) and name not in fields:
            raise r.loc.error(m["field"][1], f"{what}.field: {name!r} is not a valid attribute name")
        value_node = m["value"][1]
        value = r.scalar(value_node, f"{what}.value")
        if name == "label":
            if isinstance(value, bool) or value not in (0, 1):
                raise r.loc.error(value_node, f"{what}.value: a label is 0 or 1, got {value!r}")
        elif fields[name] == NUMBER:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value \
                    or value in (float("inf"), float("-inf")):
                raise r.loc.error(value_node, f"{what}.value: {name} is a number, got {value!r}")
            value = float(value)
        elif not isinstance(value, str):
            raise r.loc.error(value_node, f"{what}.value: {name} is a string, got {value!r}")
        when = r.expression(m["when"][1], f"{what}.when", fields) if "when" in m else None
        out.append(Impute(name, value, when, _line(item)))
    return tuple(out)


def _hint(name: str, fields: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _named_rules(r: _Reader, node: yaml.Node, section: str, expr_key: str, fields: FieldTypes) -> list[tuple[str, Expression, int]]:
    out: list[tuple[str, Expression, int]] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(r.sequence(node, section)):
        what = f"{section}[{i}]"
        m = r.mapping(item, what, ("name", expr_key, "description"))
        for key in ("name", expr_key):
            if key not in m:
                raise r.loc.error(item, f"{what}: missing `{key}`")
        name = r.name(m["name"][1], f"{what}.name")
        if name in seen:
            raise r.loc.error(m["name"][1], f"{what}: name {name!r} already used on line {seen[name]}")
        seen[name] = _line(item)
        if "description" in m:
            r.string(m["description"][1], f"{what}.description")
        expr = r.expression(m[expr_key][1], f"{section} {name}: {expr_key}", fields)
        out.append((name, expr, _line(item)))
    return out


def _filters(r: _Reader, node: yaml.Node, fields: FieldTypes) -> tuple[Filter, ...]:
    return tuple(Filter(n, e, line) for n, e, line in _named_rules(r, node, "filters", "when", fields))


def _checks(r: _Reader, node: yaml.Node, fields: FieldTypes) -> tuple[Check, ...]:
    return tuple(Check(n, e, line) for n, e, line in _named_rules(r, node, "checks", "require", fields))


def _enrich(r: _Reader, node: yaml.Node) -> Enrich:
    m = r.mapping(node, "enrich", ("key", "fields", "on_missing"))
    if "fields" not in m:
        raise r.loc.error(node, "enrich: missing `fields` (the table's fields to join)")
    key = r.string(m["key"][1], "enrich.key") if "key" in m else "customer_id"
    if key not in IDENTITY_FIELDS:
        raise r.loc.error(m["key"][1], f"enrich.key: join on one of {', '.join(IDENTITY_FIELDS)}, got {key!r}")
    names: list[str] = []
    for item in r.sequence(m["fields"][1], "enrich.fields"):
        name = r.name(item, "enrich.fields")
        if name in names:
            raise r.loc.error(item, f"enrich.fields: {name!r} listed twice")
        names.append(name)
    if not names:
        raise r.loc.error(m["fields"][1], "enrich.fields: list at least one field of the table")
    on_missing = r.string(m["on_missing"][1], "enrich.on_missing") if "on_missing" in m else "keep"
    if on_missing not in ON_MISSING:
        raise r.loc.error(m["on_missing"][1], f"enrich.on_missing: one of {', '.join(ON_MISSING)}, got {on_missing!r}")
    return Enrich(key, tuple(names), on_missing, _line(node))


def _masks(r: _Reader, node: yaml.Node, fields: FieldTypes) -> tuple[Mask, ...]:
    out = []
    for name, (key_node, item) in r.free_mapping(node, "masks").items():
        if not _NAME_RE.match(name):
            raise r.loc.error(key_node, f"masks: {name!r} is not a name (letters, digits, underscores)")
        what = f"masks.{name}"
        m = r.mapping(item, what, ("field", "function", "chars", "upper", "lower", "digit", "other"))
        for key in ("field", "function"):
            if key not in m:
                raise r.loc.error(item, f"{what}: missing `{key}`")
        source = r.string(m["field"][1], f"{what}.field")
        if fields.get(source) != STRING:
            kind = "a number" if source in fields else "not a field"
            raise r.loc.error(m["field"][1], f"{what}.field: masks apply to string fields, {source!r} is {kind}"
                                             f"{_hint(source, fields) if source not in fields else ''}")
        function = r.string(m["function"][1], f"{what}.function")
        if function not in MASK_FUNCTIONS:
            raise r.loc.error(m["function"][1], f"{what}.function: one of {', '.join(MASK_FUNCTIONS)}, got {function!r}")
        if function == "mask":
            if "chars" in m:
                raise r.loc.error(m["chars"][1], f"{what}.chars: `mask` masks every character, `chars` is not used")
            chars = 0
        else:
            if "chars" not in m:
                raise r.loc.error(item, f"{what}: {function} needs `chars` (how many characters)")
            chars = r.integer(m["chars"][1], f"{what}.chars", minimum=0)
        if source in IDENTITY_FIELDS and function in ("mask_keep_left", "mask_keep_right") and chars > 4:
            raise r.loc.error(m["chars"][1], f"{what}.chars: a display form of {source} shows at most 4 of its "
                                             f"characters, {function} {chars} would show {chars}")
        repl = {}
        for key in ("upper", "lower", "digit", "other"):
            if key in m:
                ch = r.scalar(m[key][1], f"{what}.{key}")
                if not isinstance(ch, str) or len(ch) != 1:
                    raise r.loc.error(m[key][1], f"{what}.{key}: expected one character, got {ch!r}")
                if ch.isalnum():
                    raise r.loc.error(m[key][1], f"{what}.{key}: a mask character must not be a letter or a digit "
                                                 f"(it could read as the original), got {ch!r}")
                repl[key] = ch
        out.append(Mask(name, source, function, chars, MaskChars(**repl), _line(key_node)))
    return tuple(out)


def _project(r: _Reader, node: yaml.Node, fields: FieldTypes, masks: tuple[Mask, ...]) -> Projection:
    m = r.mapping(node, "project", ("label", "attributes"))
    keep_label = True
    if "label" in m:
        choice = r.string(m["label"][1], "project.label")
        if choice not in ("keep", "drop"):
            raise r.loc.error(m["label"][1], f"project.label: keep or drop, got {choice!r}")
        keep_label = choice == "keep"
    mask_names = {mk.name for mk in masks}
    attrs: list[Projected] = []
    seen: dict[str, int] = {}
    for item in r.sequence(m["attributes"][1], "project.attributes") if "attributes" in m else []:
        entry = r.string(item, "project.attributes")
        if entry in IDENTITY_FIELDS:
            raise r.loc.error(item, f"project.attributes: {entry} is a raw identifier and is never projected; "
                                    f"project a mask of it (see `masks`)")
        if entry in mask_names:
            projected = Projected(entry, mask=entry)
        elif fields.get(entry) == STRING:
            projected = Projected(entry.rsplit(".", 1)[-1], field=entry)
        else:
            kind = "a number (numbers travel as features)" if entry in fields else "neither a mask nor a field"
            hint = _hint(entry, list(fields) + sorted(mask_names)) if entry not in fields else ""
            raise r.loc.error(item, f"project.attributes: {entry!r} is {kind}{hint}")
        if projected.name in seen:
            raise r.loc.error(item, f"project.attributes: attribute {projected.name!r} already projected on "
                                    f"line {seen[projected.name]}")
        seen[projected.name] = _line(item)
        attrs.append(projected)
    if len(attrs) > MAX_ATTRIBUTES:
        raise r.loc.error(m["attributes"][1], f"project.attributes: at most {MAX_ATTRIBUTES} attributes, got {len(attrs)}")
    return Projection(keep_label, tuple(attrs))
