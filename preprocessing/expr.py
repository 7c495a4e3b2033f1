"""The small, safe expression language of the rules file (filters, checks, `when` conditions).

An expression is parsed once, type-checked against the fields a record has, and compiled into a
Python closure. Nothing is ever passed to `eval`: the grammar has no calls, attribute access or
arithmetic, so a rules file can only compare fields with literals.

    expr       := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := operand ( ("==" | "!=" | "<" | "<=" | ">" | ">=") operand
                          | ["not"] "in" "[" literal ("," literal)* "]"
                          | "is" ["not"] "missing" )?
                | "(" expr ")"
    operand    := FIELD | NUMBER | STRING | "true" | "false"

FIELD is a name with optional dots (`Amount`, `label`, `user.country`, `attributes.merchant`). A field
that the record lacks is *missing*: any comparison with it is false (as SQL's NULL), so `Amount > 10`
does not hold for a record without Amount; test for it with `is missing`.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: Field types the checker knows. "number" covers ints and floats.
NUMBER = "number"
STRING = "string"
BOOLEAN = "boolean"

Getter = Callable[[Mapping[str, Any]], Any]
Predicate = Callable[[Mapping[str, Any]], bool]


class ExpressionError(ValueError):
    """A bad expression: `column` is the 1-based position in the expression text (or None)."""

    def __init__(self, message: str, column: int | None = None) -> None:
        self.column = column
        super().__init__(f"{message} (at column {column})" if column is not None else message)


_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
      | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "is", "missing", "true", "false"}
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}


@dataclass(frozen=True)
class _Token:
    kind: str  # number, string, op, name, keyword, end
    text: str
    column: int
    value: Any = None


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            col = pos + len(text[pos:]) - len(text[pos:].lstrip()) + 1
            raise ExpressionError(f"unexpected character {text[col - 1]!r}", col)
        kind = m.lastgroup or ""
        raw = m.group(kind)
        column = m.start(kind) + 1
        value: Any = None
        if kind == "number":
            value = float(raw) if any(c in raw for c in ".eE") else int(raw)
        elif kind == "string":
            value = re.sub(r"\\(.)", r"\1", raw[1:-1])
        elif kind == "name" and raw in _KEYWORDS:
            kind = "keyword"
        tokens.append(_Token(kind, raw, column, value))
        pos = m.end()
    tokens.append(_Token("end", "", len(text) + 1))
    return tokens


@dataclass(frozen=True)
class _Typed:
    """A compiled operand: its getter and static type (None for a literal's own type check)."""

    get: Getter
    type: str
    is_field: bool
    text: str


def _literal_type(value: Any) -> str:
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, (int, float)):
        return NUMBER
    return STRING


class _Parser:
    def __init__(self, text: str, fields: Mapping[str, str]) -> None:
        self.text = text
        self.fields = fields
        self.tokens = _tokenize(text)
        self.pos = 0
        self.used: set[str] = set()

    # -- token helpers ---------------------------------------------------------------------------

    @property
    def tok(self) -> _Token:
        return self.tokens[self.pos]

    def _next(self) -> _Token:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def _is(self, kind: str, text: str | None = None) -> bool:
        return self.tok.kind == kind and (text is None or self.tok.text == text)

    def _expect(self, kind: str, text: str, what: str) -> _Token:
        if not self._is(kind, text):
            raise ExpressionError(f"expected {what}, found {self._describe(self.tok)}", self.tok.column)
        return self._next()

    @staticmethod
    def _describe(tok: _Token) -> str:
        return "the end of the expression" if tok.kind == "end" else repr(tok.text)

    # -- grammar ---------------------------------------------------------------------------------

    def parse(self) -> Predicate:
        if self.tok.kind == "end":
            raise ExpressionError("empty expression")
        pred = self._or()
        if self.tok.kind != "end":
            raise ExpressionError(f"unexpected {self._describe(self.tok)}", self.tok.column)
        return pred

    def _or(self) -> Predicate:
        parts = [self._and()]
        while self._is("keyword", "or"):
            self._next()
            parts.append(self._and())
        if len(parts) == 1:
            return parts[0]
        return lambda r, ps=tuple(parts): any(p(r) for p in ps)

    def _and(self) -> Predicate:
        parts = [self._not()]
        while self._is("keyword", "and"):
            self._next()
            parts.append(self._not())
        if len(parts) == 1:
            return parts[0]
        return lambda r, ps=tuple(parts): all(p(r) for p in ps)

    def _not(self) -> Predicate:
        if self._is("keyword", "not"):
            self._next()
            inner = self._not()
            return lambda r: not inner(r)
        return self._comparison()

    def _comparison(self) -> Predicate:
        if self._is("op", "("):
            self._next()
            inner = self._or()
            self._expect("op", ")", "')'")
            return inner
        start = self.tok
        left = self._operand()
        if self._is("op") and self.tok.text in _COMPARE:
            op_tok = self._next()
            right = self._operand()
            return self._compare(left, op_tok, right)
        if self._is("keyword", "is"):
            self._next()
            negate = False
            if self._is("keyword", "not"):
                self._next()
                negate = True
            self._expect("keyword", "missing", "'missing' after 'is'")
            if not left.is_field:
                raise ExpressionError("'is missing' needs a field on its left", start.column)
            get = left.get
            return (lambda r: get(r) is not None) if negate else (lambda r: get(r) is None)
        negate = False
        if self._is("keyword", "not") and self.tokens[self.pos + 1].kind == "keyword" \
                and self.tokens[self.pos + 1].text == "in":
            self._next()
            negate = True
        if self._is("keyword", "in"):
            self._next()
            values = self._list(left)
            get = left.get
            if negate:
                return lambda r: (v := get(r)) is not None and v not in values
            return lambda r: (v := get(r)) is not None and v in values
        if left.type == BOOLEAN:
            get = left.get
            return lambda r: get(r) is True
        raise ExpressionError(
            f"expected a comparison after {left.text!r} (==, !=, <, <=, >, >=, in, is missing)", self.tok.column
        )

    def _operand(self) -> _Typed:
        tok = self._next()
        if tok.kind in ("number", "string"):
            value = tok.value
            return _Typed(lambda r, v=value: v, _literal_type(value), False, tok.text)
        if tok.kind == "keyword" and tok.text in ("true", "false"):
            value = tok.text == "true"
            return _Typed(lambda r, v=value: v, BOOLEAN, False, tok.text)
        if tok.kind == "name":
            ftype = self.fields.get(tok.text)
            if ftype is None:
                raise ExpressionError(f"unknown field {tok.text!r}{_suggest(tok.text, self.fields)}", tok.column)
            self.used.add(tok.text)
            name = tok.text
            return _Typed(lambda r, n=name: r.get(n), ftype, True, tok.text)
        raise ExpressionError(f"expected a field or a value, found {self._describe(tok)}", tok.column)

    def _list(self, left: _Typed) -> frozenset:
        self._expect("op", "[", "'[' to start a list")
        values = []
        while True:
            tok = self._next()
            if tok.kind not in ("number", "string"):
                raise ExpressionError(f"expected a number or a string in the list, found {self._describe(tok)}",
                                      tok.column)
            if _literal_type(tok.value) != left.type:
                raise ExpressionError(f"{left.text} is a {left.type}, the list has a {_literal_type(tok.value)}",
                                      tok.column)
            values.append(tok.value)
            if self._is("op", ","):
                self._next()
                continue
            self._expect("op", "]", "',' or ']'")
            return frozenset(values)

    def _compare(self, left: _Typed, op_tok: _Token, right: _Typed) -> Predicate:
        if not (left.is_field or right.is_field):
            raise ExpressionError("a comparison needs at least one field", op_tok.column)
        if left.type != right.type:
            raise ExpressionError(f"cannot compare {left.text} ({left.type}) with {right.text} ({right.type})",
                                  op_tok.column)
        if left.type == BOOLEAN and op_tok.text not in ("==", "!="):
            raise ExpressionError(f"booleans are compared with == or !=, not {op_tok.text}", op_tok.column)
        fn = _COMPARE[op_tok.text]
        lget, rget = left.get, right.get
        if not right.is_field:
            const = rget({})
            return lambda r: (a := lget(r)) is not None and fn(a, const)

        def compare(r: Mapping[str, Any]) -> bool:
            a, b = lget(r), rget(r)
            return a is not None and b is not None and fn(a, b)

        return compare


def _suggest(name: str, fields: Mapping[str, str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class Expression:
    """A compiled expression: call it with a record mapping (field name -> value or None)."""

    text: str
    predicate: Predicate
    fields: frozenset[str]

    def __call__(self, record: Mapping[str, Any]) -> bool:
        return self.predicate(record)


def compile_expression(text: str, fields: Mapping[str, str]) -> Expression:
    """Parse and type-check `text` against `fields` (name -> NUMBER/STRING/BOOLEAN); ExpressionError if bad."""
    if not isinstance(text, str):
        raise ExpressionError(f"expected an expression in a string, got {type(text).__name__}")
    parser = _Parser(text, fields)
    predicate = parser.parse()
    return Expression(text=text, predicate=predicate, fields=frozenset(parser.used))
