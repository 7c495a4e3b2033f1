"""Anonymization: keyed pseudonyms for card and customer ids, masked display forms, redaction.

- Pseudonyms: HMAC-SHA256 with a secret key over the field name and the raw value; the same card gets
  the same pseudonym wherever it appears (so per-card aggregates still work), but without the key nobody
  can go back to the card number or test a guess. The key comes from FRAUD_ANONYMIZE_KEY or a key file,
  never from the rules file, and is never logged: only its fingerprint (an HMAC of a fixed string) is,
  so operators can tell two jobs use the same key.
- Display forms: ksqlDB's MASK family (MASK, MASK_LEFT, MASK_RIGHT, MASK_KEEP_LEFT, MASK_KEEP_RIGHT):
  upper-case letters become 'X', lower-case 'x', digits 'n', anything else '-'.
- Redaction: what goes to the dead-letter topic keeps its shape for operators, but id values are replaced
  by their pseudonyms (see `Anonymizer.redact_record`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from fraud.errors import FraudError
from fraud.replay import luhn_valid

#: Environment variable holding the secret for the keyed hash.
KEY_ENV = "FRAUD_ANONYMIZE_KEY"
#: Environment variable naming a file that holds the secret (first line, or the whole file).
KEY_FILE_ENV = "FRAUD_ANONYMIZE_KEY_FILE"
MIN_KEY_BYTES = 16
#: The development key behind `--dev-insecure-key`: public, so its pseudonyms protect nothing.
DEV_INSECURE_KEY = b"fraud-tfx development key: NOT SECRET, never use in production"

#: Pseudonym prefixes per identity field; neither can form a raw id of the project's formats.
PSEUDONYM_PREFIX: Mapping[str, str] = {"card_id": "card_", "customer_id": "customer_"}
PSEUDONYM_HEX_CHARS = 32  # 128 bits of the HMAC
#: A display form of an identity field never shows more original characters than this (PCI DSS: last 4).
MAX_VISIBLE_ID_CHARS = 4

MASK_FUNCTIONS = ("mask", "mask_left", "mask_right", "mask_keep_left", "mask_keep_right")

# 13 to 19 digits, optionally in groups separated by spaces or dashes: what a card number looks like.
_PAN_RE = re.compile(rb"(?<![0-9.])[0-9](?:[ -]?[0-9]){12,18}(?![0-9.])")


@dataclass(frozen=True)
class AnonymizeKey:
    """The secret, where it came from (for logs: never the value) and whether it is the public dev key."""

    secret: bytes = field(repr=False)
    source: str
    insecure: bool = False

    @property
    def fingerprint(self) -> str:
        """A short, non-reversible tag of the key: equal fingerprints mean equal pseudonyms."""
        return hmac.new(self.secret, b"fraud-tfx key fingerprint", hashlib.sha256).hexdigest()[:12]


def load_key(environ: Mapping[str, str], key_file: Path | None = None, *, dev_insecure: bool = False) -> AnonymizeKey:
    """The key from `key_file`, else FRAUD_ANONYMIZE_KEY_FILE, else FRAUD_ANONYMIZE_KEY, else the dev key if allowed.

    Refuses (FraudError) when none is given and `dev_insecure` is false, and when a key is shorter than
    MIN_KEY_BYTES. The error messages never contain the key.
    """
    path = key_file or (Path(environ[KEY_FILE_ENV]).expanduser() if environ.get(KEY_FILE_ENV) else None)
    if path is not None:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise FraudError(f"cannot read the anonymization key file {path}: {exc.strerror}") from None
        secret = raw.strip()
        source = f"file {path}"
    elif environ.get(KEY_ENV):
        secret = environ[KEY_ENV].encode("utf-8")
        source = f"environment variable {KEY_ENV}"
    elif dev_insecure:
        return AnonymizeKey(DEV_INSECURE_KEY, "--dev-insecure-key (public development key)", insecure=True)
    else:
        raise FraudError(
            f"no anonymization key: set {KEY_ENV} or {KEY_FILE_ENV}, or pass --key-file "
            f"(or --dev-insecure-key for a demo; its pseudonyms can be reversed by anyone)"
        )
    if len(secret) < MIN_KEY_BYTES:
        raise FraudError(f"the anonymization key from {source} is {len(secret)} bytes, at least {MIN_KEY_BYTES} needed")
    return AnonymizeKey(secret, source)


# ---------------------------------------------------------------------------------------------
# Display forms (ksqlDB MASK family)


@dataclass(frozen=True)
class MaskChars:
    upper: str = "X"
    lower: str = "x"
    digit: str = "n"
    other: str = "-"

    def mask_char(self, ch: str) -> str:
        if ch.isdigit():
            return self.digit
        if ch.isupper():
            return self.upper
        if ch.islower():
            return self.lower
        return self.other


def mask(value: str, function: str, chars: int = 0, repl: MaskChars = MaskChars()) -> str:
    """Apply one of MASK_FUNCTIONS: which characters are masked depends on `function` and `chars`."""
    n = len(value)
    if function == "mask":
        masked = range(n)
    elif function == "mask_left":
        masked = range(min(chars, n))
    elif function == "mask_right":
        masked = range(max(n - chars, 0), n)
    elif function == "mask_keep_left":
        masked = range(min(chars, n), n)
    elif function == "mask_keep_right":
        masked = range(max(n - chars, 0))
    else:
        raise ValueError(f"unknown mask function {function!r}")
    out = list(value)
    for i in masked:
        out[i] = repl.mask_char(out[i])
    return "".join(out)


def limit_visible(original: str, masked: str, max_visible: int, repl: MaskChars = MaskChars()) -> str:
    """Mask more of `masked` (from the left) until at most `max_visible` original characters remain visible."""
    visible = [i for i, (a, b) in enumerate(zip(original, masked, strict=True)) if a == b and repl.mask_char(a) != a]
    if len(visible) <= max_visible:
        return masked
    out = list(masked)
    for i in visible[: len(visible) - max_visible]:
        out[i] = repl.mask_char(original[i])
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Pseudonyms and redaction


class Anonymizer:
    """Keyed pseudonyms of identity values (HMAC-SHA256, domain-separated by field name)."""

    def __init__(self, key: AnonymizeKey) -> None:
        self.key = key
        self._mac = hmac.new(key.secret, digestmod=hashlib.sha256)
        self._cache: dict[tuple[str, str], str] = {}

    def pseudonym(self, field_name: str, value: str) -> str:
        cache_key = (field_name, value)
        found = self._cache.get(cache_key)
        if found is not None:
            return found
        mac = self._mac.copy()
        mac.update(field_name.encode("utf-8") + b"\x1f" + value.encode("utf-8"))
        out = PSEUDONYM_PREFIX.get(field_name, f"{field_name}_") + mac.hexdigest()[:PSEUDONYM_HEX_CHARS]
        if len(self._cache) >= 1_000_000:  # bounded: a pool of cards repeats, an attack of random ids does not
            self._cache.clear()
        self._cache[cache_key] = out
        return out

    def redact_record(self, value: bytes | None, known: Mapping[str, str] | None = None,
                      identity_fields: tuple[str, ...] = tuple(PSEUDONYM_PREFIX)) -> bytes | None:
        """A copy of a rejected record that is safe to keep: identity values replaced by their pseudonyms.

        A JSON object keeps its shape: each identity field's value (whatever its type) is replaced by the
        pseudonym of its text; in every other string and object key, the `known` raw ids of the record
        (field -> raw value) and card-number-like digit runs are replaced too. Anything else (broken JSON,
        not UTF-8) cannot be parsed reliably: the value after each quoted identity field name, the known
        raw ids, and every run of 13 to 19 digits that passes the Luhn check (what a card number looks like,
        with or without separators, not the fraction of a decimal number) are replaced.
        """
        if value is None:
            return None
        known = {k: v for k, v in (known or {}).items() if isinstance(v, str) and v}
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            for name in identity_fields:
                if name in obj:
                    raw = obj[name]
                    text = raw if isinstance(raw, str) else orjson.dumps(raw).decode("utf-8")
                    obj[name] = self.pseudonym(name, text)
            return orjson.dumps(self._redact_strings(obj, known))
        out = value
        for name in identity_fields:
            pattern = re.compile(rb'("' + re.escape(name.encode()) + rb'"\s*:\s*)("(?:[^"\\]|\\.)*"|[^,}\s]+)')
            out = pattern.sub(lambda m, n=name: m.group(1) + b'"' + self.pseudonym(
                n, m.group(2).strip(b'"').decode("utf-8", "replace")).encode() + b'"', out)
        for name, raw in known.items():
            out = out.replace(raw.encode("utf-8"), self.pseudonym(name, raw).encode("utf-8"))
        return self.redact_pans(out)

    def redact_text(self, text: str, known: Mapping[str, str] | None = None) -> str:
        """`text` with the `known` raw ids (field -> raw value) and card-number-like runs replaced."""
        for name, raw in (known or {}).items():
            if isinstance(raw, str) and raw and raw in text:
                text = text.replace(raw, self.pseudonym(name, raw))
        return self.redact_pans(text.encode("utf-8")).decode("utf-8")

    def redact_pans(self, data: bytes) -> bytes:
        """`data` with every Luhn-valid run of 13 to 19 digits replaced by its card pseudonym."""

        def repl(m: re.Match[bytes]) -> bytes:
            digits = re.sub(rb"[ -]", b"", m.group(0)).decode("ascii")
            if not luhn_valid(digits):
                return m.group(0)
            return self.pseudonym("card_id", digits).encode()

        return _PAN_RE.sub(repl, data)

    def _redact_strings(self, obj: Any, known: Mapping[str, str]) -> Any:
        if isinstance(obj, str):
            return self.redact_text(obj, known)
        if isinstance(obj, dict):
            return {self.redact_text(k, known): self._redact_strings(v, known) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self._redact_strings(v, known) for v in obj]
        return obj


def redact_key(key: bytes | None, raw_ids: Mapping[str, Any], anonymizer: Anonymizer) -> bytes | None:
    """The record key, or its pseudonym when it is one of the record's raw identity values or looks like a PAN."""
    if key is None:
        return None
    text = key.decode("utf-8", "replace")
    for name, raw in raw_ids.items():
        if isinstance(raw, str) and raw and text == raw:
            return anonymizer.pseudonym(name, raw).encode()
    return anonymizer.redact_pans(key)
