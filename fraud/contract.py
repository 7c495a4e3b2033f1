"""The event contract: every record the project puts on Kafka, and the validation that guards it.

- TransactionEvent: a card transaction (id, event time, card and customer ids, the 30 features;
  the label, when known, is held apart from the features and never sent to a model).
- ScoreEvent: what the served model said about one transaction, and which model version said it.
- LabelEvent: delayed ground truth for a transaction (the feedback topic).
- AlertEvent: a monitoring threshold broken in a window (drift, skew, alert rate, precision, ...).
- DeadLetter: a record that could not be processed, with Kafka Connect's `__connect.errors.*` headers.

All values are JSON objects encoded as UTF-8. Parsing is strict: unknown fields, missing fields,
wrong types, NaN/inf and oversize records are refused with a ContractError naming the field at fault.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from fraud.features import FEATURE_NAMES, FEATURES

#: Upper bound on one encoded event; anything larger is refused before parsing.
MAX_EVENT_BYTES = 16 * 1024
_MAX_ID_LEN = 128
_MAX_ATTRIBUTES = 32

# Reason codes: stable strings carried in dead-letter headers and metrics labels.
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
UNKNOWN_FIELD = "unknown_field"
WRONG_TYPE = "wrong_type"
NOT_FINITE = "not_finite"
OUT_OF_RANGE = "out_of_range"
OVERSIZE = "oversize"
BAD_ENCODING = "bad_encoding"
REASONS = (
    MALFORMED_JSON,
    NOT_AN_OBJECT,
    MISSING_FIELD,
    UNKNOWN_FIELD,
    WRONG_TYPE,
    NOT_FINITE,
    OUT_OF_RANGE,
    OVERSIZE,
    BAD_ENCODING,
)


class ContractError(ValueError):
    """A record that breaks the contract. `reason` is one of REASONS, `field` a dotted path or None."""

    def __init__(self, reason: str, message: str, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        self.detail = message
        super().__init__(f"{field}: {message}" if field else message)


# ---------------------------------------------------------------------------------------------
# Decoding helpers


def _decode_object(data: bytes | str) -> dict[str, Any]:
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > MAX_EVENT_BYTES:
        raise ContractError(OVERSIZE, f"record is {len(data)} bytes, the limit is {MAX_EVENT_BYTES}")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        _raise_decode_error(data, exc)
    if not isinstance(obj, dict):
        raise ContractError(NOT_AN_OBJECT, f"expected a JSON object, got {_json_type(obj)}")
    return obj


def decode_object(data: bytes | str) -> dict[str, Any]:
    """One record as a JSON object, with the contract's size, encoding and JSON checks (ContractError).

    For jobs that must look at a record before it is a valid event (e.g. to impute missing fields).
    """
    return _decode_object(data)


def _raise_decode_error(data: bytes, exc: Exception) -> None:
    # Error path only: tell NaN/Infinity literals (valid for Python's json, not for JSON) apart
    # from plain garbage, so the dead-letter reason says what is really wrong.
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as uexc:
        raise ContractError(BAD_ENCODING, f"record is not UTF-8 ({uexc.reason} at byte {uexc.start})") from None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's json accepts
        raise ContractError(MALFORMED_JSON, f"not valid JSON ({exc})") from None
    path = _first_non_finite(obj, "")
    if path is not None:
        raise ContractError(NOT_FINITE, "expected a finite number, got NaN or Infinity", path or None)
    raise ContractError(MALFORMED_JSON, f"not valid JSON ({exc})") from None


def _first_non_finite(obj: Any, path: str) -> str | None:
    if isinstance(obj, float) and not math.isfinite(obj):
        return path
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _first_non_finite(v, f"{path}.{k}" if path else str(k))
            if found is not None:
                return found
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            found = _first_non_finite(v, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _check_fields(obj: Mapping[str, Any], required: Sequence[str], optional: Sequence[str], where: str = "") -> None:
    prefix = f"{where}." if where else ""
    for name in required:
        if name not in obj:
            raise ContractError(MISSING_FIELD, "required field is missing", prefix + name)
    allowed = set(required) | set(optional)
    for name in obj:
        if name not in allowed:
            raise ContractError(UNKNOWN_FIELD, "field is not part of the contract", prefix + str(name))


def _str(obj: Mapping[str, Any], name: str, *, where: str = "", max_len: int = _MAX_ID_LEN) -> str:
    value = obj[name]
    path = f"{where}.{name}" if where else name
    if not isinstance(value, str):
        raise ContractError(WRONG_TYPE, f"expected a string, got {_json_type(value)}", path)
    if not value or len(value) > max_len:
        raise ContractError(OUT_OF_RANGE, f"expected 1 to {max_len} characters, got {len(value)}", path)
    return value


def _int(obj: Mapping[str, Any], name: str, *, minimum: int | None = None) -> int:
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ContractError(WRONG_TYPE, f"expected an integer, got {_json_type(value)}", name)
    if minimum is not None and value < minimum:
        raise ContractError(OUT_OF_RANGE, f"expected >= {minimum}, got {value}", name)
    return value


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ContractError(WRONG_TYPE, f"expected a number, got {_json_type(value)}", path)
    value = float(value)
    if not math.isfinite(value):
        raise ContractError(NOT_FINITE, f"expected a finite number, got {value}", path)
    return value


def _label(value: Any, path: str) -> int:
    if isinstance(value, bool) or value not in (0, 1):
        raise ContractError(WRONG_TYPE if not isinstance(value, int) else OUT_OF_RANGE,
                            f"expected 0 or 1, got {value!r}", path)
    return int(value)


def _str_map(value: Any, path: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ContractError(WRONG_TYPE, f"expected an object, got {_json_type(value)}", path)
    if len(value) > _MAX_ATTRIBUTES:
        raise ContractError(OUT_OF_RANGE, f"at most {_MAX_ATTRIBUTES} entries, got {len(value)}", path)
    for k, v in value.items():
        if not isinstance(v, str):
            raise ContractError(WRONG_TYPE, f"expected a string, got {_json_type(v)}", f"{path}.{k}")
    return dict(value)


def _dumps(obj: Mapping[str, Any]) -> bytes:
    return orjson.dumps(obj)


# ---------------------------------------------------------------------------------------------
# Events

_FEATURE_KEYS = frozenset(FEATURE_NAMES)
_FEATURE_BOUNDS = tuple((f.name, f.minimum, f.maximum) for f in FEATURES.values())


@dataclass(frozen=True)
class TransactionEvent:
    """One card transaction. `features` holds exactly the 30 raw features of fraud.features."""

    transaction_id: str
    event_time_ms: int
    card_id: str
    customer_id: str
    features: Mapping[str, float]
    label: int | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)

    _REQUIRED = ("transaction_id", "event_time_ms", "card_id", "customer_id", "features")
    _OPTIONAL = ("label", "attributes")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "transaction_id": self.transaction_id,
            "event_time_ms": self.event_time_ms,
            "card_id": self.card_id,
            "customer_id": self.customer_id,
            "features": dict(self.features),
        }
        if self.label is not None:
            out["label"] = self.label
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        return out

    def to_json(self) -> bytes:
        return _dumps(self.to_dict())

    def feature_vector(self) -> list[float]:
        return [self.features[name] for name in FEATURE_NAMES]

    def without_label(self) -> TransactionEvent:
        return TransactionEvent(self.transaction_id, self.event_time_ms, self.card_id, self.customer_id,
                                self.features, None, self.attributes)

    @classmethod
    def from_json(cls, data: bytes | str) -> TransactionEvent:
        return cls.from_dict(_decode_object(data))

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> TransactionEvent:
        _check_fields(obj, cls._REQUIRED, cls._OPTIONAL)
        raw = obj["features"]
        if not isinstance(raw, dict):
            raise ContractError(WRONG_TYPE, f"expected an object, got {_json_type(raw)}", "features")
        # Fast paths (the bridge validates every event on its hot path): exactly the feature keys, and
        # finite floats, skip the general checks, which still run (and name the fault) otherwise.
        if raw.keys() != _FEATURE_KEYS:
            _check_fields(raw, FEATURE_NAMES, (), where="features")
        features: dict[str, float] = {}
        for name, minimum, maximum in _FEATURE_BOUNDS:
            value = raw[name]
            if type(value) is not float or not math.isfinite(value):
                value = _number(value, f"features.{name}")
            if minimum is not None and value < minimum:
                raise ContractError(OUT_OF_RANGE, f"expected >= {minimum}, got {value}", f"features.{name}")
            if maximum is not None and value > maximum:
                raise ContractError(OUT_OF_RANGE, f"expected <= {maximum}, got {value}", f"features.{name}")
            features[name] = value
        label = obj.get("label")
        return cls(
            transaction_id=_str(obj, "transaction_id"),
            event_time_ms=_int(obj, "event_time_ms", minimum=0),
            card_id=_str(obj, "card_id"),
            customer_id=_str(obj, "customer_id"),
            features=features,
            label=None if label is None else _label(label, "label"),
            attributes=_str_map(obj["attributes"], "attributes") if "attributes" in obj else {},
        )


@dataclass(frozen=True)
class ScoreEvent:
    """What the served model said about one transaction.

    score is in [0, 1] (higher = more likely fraud); decision is score >= threshold, where the
    threshold is the one recorded in the served model. explanation maps the features that contributed
    most (e.g. per-feature reconstruction error) to their contribution. outputs holds any further scalar
    outputs of the model (e.g. the scores of the models a combination is made of).
    """

    transaction_id: str
    event_time_ms: int
    card_id: str
    score: float
    decision: bool
    threshold: float
    model_name: str
    model_version: int
    source_timestamp_ms: int  # Kafka timestamp of the transaction record
    scored_at_ms: int  # wall clock when the score was produced
    reconstruction_error: float | None = None
    explanation: Mapping[str, float] = field(default_factory=dict)
    outputs: Mapping[str, float] = field(default_factory=dict)

    _REQUIRED = ("transaction_id", "event_time_ms", "card_id", "score", "decision", "threshold",
                 "model_name", "model_version", "source_timestamp_ms", "scored_at_ms")
    _OPTIONAL = ("reconstruction_error", "explanation", "outputs")

    @property
    def latency_ms(self) -> int:
        return self.scored_at_ms - self.source_timestamp_ms

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "transaction_id": self.transaction_id,
            "event_time_ms": self.event_time_ms,
            "card_id": self.card_id,
            "score": self.score,
            "decision": self.decision,
            "threshold": self.threshold,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "source_timestamp_ms": self.source_timestamp_ms,
            "scored_at_ms": self.scored_at_ms,
        }
        if self.reconstruction_error is not None:
            out["reconstruction_error"] = self.reconstruction_error
        if self.explanation:
            out["explanation"] = dict(self.explanation)
        if self.outputs:
            out["outputs"] = dict(self.outputs)
        return out

    def to_json(self) -> bytes:
        return _dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str) -> ScoreEvent:
        obj = _decode_object(data)
        _check_fields(obj, cls._REQUIRED, cls._OPTIONAL)
        score = _number(obj["score"], "score")
        if not 0.0 <= score <= 1.0:
            raise ContractError(OUT_OF_RANGE, f"expected a score in [0, 1], got {score}", "score")
        if not isinstance(obj["decision"], bool):
            raise ContractError(WRONG_TYPE, f"expected a boolean, got {_json_type(obj['decision'])}", "decision")
        error = obj.get("reconstruction_error")
        return cls(
            transaction_id=_str(obj, "transaction_id"),
            event_time_ms=_int(obj, "event_time_ms", minimum=0),
            card_id=_str(obj, "card_id"),
            score=score,
            decision=obj["decision"],
            threshold=_number(obj["threshold"], "threshold"),
            model_name=_str(obj, "model_name"),
            model_version=_int(obj, "model_version", minimum=0),
            source_timestamp_ms=_int(obj, "source_timestamp_ms", minimum=0),
            scored_at_ms=_int(obj, "scored_at_ms", minimum=0),
            reconstruction_error=None if error is None else _number(error, "reconstruction_error"),
            explanation=_number_map(obj.get("explanation", {}), "explanation"),
            outputs=_number_map(obj.get("outputs", {}), "outputs"),
        )


def _number_map(value: Any, path: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ContractError(WRONG_TYPE, f"expected an object, got {_json_type(value)}", path)
    return {str(k): _number(v, f"{path}.{k}") for k, v in value.items()}


@dataclass(frozen=True)
class LabelEvent:
    """Ground truth for a transaction, arriving after a delay (the feedback topic)."""

    transaction_id: str
    label: int
    event_time_ms: int  # event time of the transaction the label is for
    labelled_at_ms: int  # when the label became known

    _REQUIRED = ("transaction_id", "label", "event_time_ms", "labelled_at_ms")

    def to_dict(self) -> dict[str, Any]:
        return {
            "transaction_id": self.transaction_id,
            "label": self.label,
            "event_time_ms": self.event_time_ms,
            "labelled_at_ms": self.labelled_at_ms,
        }

    def to_json(self) -> bytes:
        return _dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str) -> LabelEvent:
        obj = _decode_object(data)
        _check_fields(obj, cls._REQUIRED, ())
        return cls(
            transaction_id=_str(obj, "transaction_id"),
            label=_label(obj["label"], "label"),
            event_time_ms=_int(obj, "event_time_ms", minimum=0),
            labelled_at_ms=_int(obj, "labelled_at_ms", minimum=0),
        )


#: What an alert is about (AlertEvent.kind).
ALERT_KINDS = ("drift", "skew", "schema", "alert_rate", "precision", "recall", "auprc", "latency")
ALERT_SEVERITIES = ("warning", "critical")
_MAX_MESSAGE_LEN = 2048


@dataclass(frozen=True)
class AlertEvent:
    """A monitoring threshold broken in one event-time window (the alerts topic, keyed by alert_id).

    alert_id is deterministic (kind, granularity, window, model), so a re-sent alert can be recognised;
    features names the features at fault (drift, skew, schema), each a name of fraud.features; value and
    threshold are the measured statistic and the threshold it broke (for several features: the largest);
    details maps each feature (or sub-metric) to its measured value.
    """

    alert_id: str
    kind: str
    severity: str
    metric: str
    value: float
    threshold: float
    window_start_ms: int
    window_end_ms: int
    raised_at_ms: int
    message: str
    features: tuple[str, ...] = ()
    details: Mapping[str, float] = field(default_factory=dict)
    model_name: str | None = None
    model_version: int | None = None

    _REQUIRED = ("alert_id", "kind", "severity", "metric", "value", "threshold", "window_start_ms",
                 "window_end_ms", "raised_at_ms", "message")
    _OPTIONAL = ("features", "details", "model_name", "model_version")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "alert_id": self.alert_id,
            "kind": self.kind,
            "severity": self.severity,
            "metric": self.metric,
            "value": self.value,
            "threshold": self.threshold,
            "window_start_ms": self.window_start_ms,
            "window_end_ms": self.window_end_ms,
            "raised_at_ms": self.raised_at_ms,
            "message": self.message,
        }
        if self.features:
            out["features"] = list(self.features)
        if self.details:
            out["details"] = dict(self.details)
        if self.model_name is not None:
            out["model_name"] = self.model_name
        if self.model_version is not None:
            out["model_version"] = self.model_version
        return out

    def to_json(self) -> bytes:
        return _dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str) -> AlertEvent:
        obj = _decode_object(data)
        _check_fields(obj, cls._REQUIRED, cls._OPTIONAL)
        kind = _str(obj, "kind")
        if kind not in ALERT_KINDS:
            raise ContractError(OUT_OF_RANGE, f"expected one of {', '.join(ALERT_KINDS)}, got {kind!r}", "kind")
        severity = _str(obj, "severity")
        if severity not in ALERT_SEVERITIES:
            raise ContractError(OUT_OF_RANGE, f"expected one of {', '.join(ALERT_SEVERITIES)}, got {severity!r}",
                                "severity")
        start = _int(obj, "window_start_ms", minimum=0)
        end = _int(obj, "window_end_ms", minimum=0)
        if end <= start:
            raise ContractError(OUT_OF_RANGE, f"expected a window end after its start ({start}), got {end}",
                                "window_end_ms")
        raw_features = obj.get("features", [])
        if not isinstance(raw_features, list):
            raise ContractError(WRONG_TYPE, f"expected an array, got {_json_type(raw_features)}", "features")
        for i, name in enumerate(raw_features):
            if not isinstance(name, str):
                raise ContractError(WRONG_TYPE, f"expected a string, got {_json_type(name)}", f"features[{i}]")
            if name not in FEATURES:
                raise ContractError(OUT_OF_RANGE, f"{name!r} is not a feature of fraud.features", f"features[{i}]")
        if len(set(raw_features)) != len(raw_features):
            raise ContractError(OUT_OF_RANGE, "feature names must not repeat", "features")
        version = obj.get("model_version")
        return cls(
            alert_id=_str(obj, "alert_id", max_len=256),
            kind=kind,
            severity=severity,
            metric=_str(obj, "metric"),
            value=_number(obj["value"], "value"),
            threshold=_number(obj["threshold"], "threshold"),
            window_start_ms=start,
            window_end_ms=end,
            raised_at_ms=_int(obj, "raised_at_ms", minimum=0),
            message=_str(obj, "message", max_len=_MAX_MESSAGE_LEN),
            features=tuple(raw_features),
            details=_number_map(obj.get("details", {}), "details"),
            model_name=_str(obj, "model_name") if "model_name" in obj else None,
            model_version=None if version is None else _int(obj, "model_version", minimum=0),
        )


# ---------------------------------------------------------------------------------------------
# Dead letters

#: Header names, as Kafka Connect's dead-letter queue reporter writes them (DeadLetterQueueReporter).
H_TOPIC = "__connect.errors.topic"
H_PARTITION = "__connect.errors.partition"
H_OFFSET = "__connect.errors.offset"
H_CONNECTOR = "__connect.errors.connector.name"
H_STAGE = "__connect.errors.stage"
H_EXC_CLASS = "__connect.errors.exception.class.name"
H_EXC_MESSAGE = "__connect.errors.exception.message"
#: The project's own header: the machine-readable reason code (one of REASONS or a component's own).
H_REASON = "fraud.errors.reason"
H_FIELD = "fraud.errors.field"


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be processed. The original key and value are kept byte for byte."""

    key: bytes | None
    value: bytes | None
    source_topic: str
    source_partition: int
    source_offset: int
    reason: str
    message: str
    component: str  # e.g. "kafka_bridge", "preprocessing"
    stage: str  # e.g. "VALUE_CONVERTER" (parse), "TRANSFORMATION" (validate/rules), "TASK_PUT" (score)
    field: str | None = None
    exception_class: str = "fraud.contract.ContractError"

    def headers(self) -> list[tuple[str, bytes]]:
        hs = [
            (H_TOPIC, self.source_topic),
            (H_PARTITION, str(self.source_partition)),
            (H_OFFSET, str(self.source_offset)),
            (H_CONNECTOR, self.component),
            (H_STAGE, self.stage),
            (H_EXC_CLASS, self.exception_class),
            (H_EXC_MESSAGE, self.message),
            (H_REASON, self.reason),
        ]
        if self.field:
            hs.append((H_FIELD, self.field))
        return [(k, v.encode("utf-8")) for k, v in hs]

    @classmethod
    def from_error(cls, error: ContractError, *, key: bytes | None, value: bytes | None, topic: str,
                   partition: int, offset: int, component: str, stage: str) -> DeadLetter:
        return cls(key=key, value=value, source_topic=topic, source_partition=partition, source_offset=offset,
                   reason=error.reason, message=str(error), component=component, stage=stage, field=error.field)

    @classmethod
    def from_record(cls, key: bytes | None, value: bytes | None,
                    headers: Sequence[tuple[str, bytes]] | None) -> DeadLetter:
        """Read a dead-letter record back from the topic (for tests, reconciliation and reports)."""
        h = {k: v.decode("utf-8") for k, v in (headers or [])}
        try:
            return cls(key=key, value=value, source_topic=h[H_TOPIC], source_partition=int(h[H_PARTITION]),
                       source_offset=int(h[H_OFFSET]), reason=h[H_REASON], message=h[H_EXC_MESSAGE],
                       component=h[H_CONNECTOR], stage=h[H_STAGE], field=h.get(H_FIELD),
                       exception_class=h.get(H_EXC_CLASS, ""))
        except KeyError as exc:
            raise ContractError(MISSING_FIELD, "dead-letter header is missing", str(exc.args[0])) from None
