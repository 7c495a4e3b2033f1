"""Test helpers for the bridge: a small SavedModel with the project's signature that also refuses some
values (so "values the model rejects" can be tested for real), transaction events, and a model server
on a free loopback port (the project's serving/, in this process)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from fraud.contract import TransactionEvent
from fraud.features import FEATURE_NAMES
from fraud.signature import (
    DECISION,
    FEATURE_CONTRIBUTIONS,
    FEATURES_SIGNATURE_NAME,
    INPUT_EXAMPLES,
    INPUT_FEATURES,
    RECONSTRUCTION_ERROR,
    SCORE,
    SIGNATURE_NAME,
    THRESHOLD,
)

MODEL_NAME = "fraud"
#: The test model refuses (InvalidArgument -> gRPC INVALID_ARGUMENT) any feature beyond this magnitude.
REJECT_ABOVE = 1.0e6
WEIGHTS = np.linspace(-0.3, 0.3, len(FEATURE_NAMES)).astype(np.float32)
THRESHOLD_VALUE = 0.7


def save_model(base_path: str | os.PathLike, version: int = 1, features_signature: bool = True) -> Path:
    """A model following fraud.signature: parses raw examples, scores sigmoid(w.x), refuses huge values. With
    `features_signature`, also `serving_features` (float32 [N, 30], the bridge's default input) with the
    same outputs; without, only `serving_default` (the bridge falls back to tf.Examples)."""
    import tensorflow as tf

    spec = {name: tf.io.FixedLenFeature([], tf.float32) for name in FEATURE_NAMES}

    class Model(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(WEIGHTS, trainable=False)

        def _outputs(self, x: Any) -> dict:
            check = tf.debugging.assert_less_equal(tf.abs(x), REJECT_ABOVE,
                                                   message="feature value outside the model's range")
            with tf.control_dependencies([check]):
                contributions = tf.tanh(x / 100.0) * self.w
            score = tf.sigmoid(tf.reduce_sum(contributions, axis=1))
            threshold = tf.fill(tf.shape(score), tf.constant(THRESHOLD_VALUE, tf.float32))
            return {SCORE: score, DECISION: tf.cast(score >= threshold, tf.int64), THRESHOLD: threshold,
                    RECONSTRUCTION_ERROR: tf.reduce_sum(tf.square(contributions), axis=1),
                    FEATURE_CONTRIBUTIONS: contributions}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_EXAMPLES)])
        def serve(self, examples: Any) -> dict:
            parsed = tf.io.parse_example(examples, spec)
            return self._outputs(tf.stack([parsed[n] for n in FEATURE_NAMES], axis=1))

        @tf.function(input_signature=[tf.TensorSpec([None, len(FEATURE_NAMES)], tf.float32, name=INPUT_FEATURES)])
        def serve_features(self, features: Any) -> dict:
            return self._outputs(features)

    path = Path(base_path) / str(version)
    module = Model()
    signatures = {SIGNATURE_NAME: module.serve}
    if features_signature:
        signatures[FEATURES_SIGNATURE_NAME] = module.serve_features
    tf.saved_model.save(module, str(path), signatures=signatures)
    return path


@contextmanager
def model_server(base_path: str | os.PathLike, port: int = 0, max_batch_size: int | None = None) -> Iterator[Any]:
    """The project's TF Serving-compatible server on 127.0.0.1 (gRPC only); `.grpc_port`. With
    `max_batch_size`: request batching on (`--enable_batching`), taking at most that many rows per request."""
    from serving.batching import BatchingParameters
    from serving.config import ModelConfig, ServerConfig
    from serving.server import ModelServer

    batching = {} if max_batch_size is None else dict(
        enable_batching=True, batching=BatchingParameters(max_batch_size=max_batch_size))
    config = ServerConfig(models=(ModelConfig(MODEL_NAME, str(base_path)),), host="127.0.0.1", port=port,
                          rest_api_port=None, **batching)
    server = ModelServer(config).start(model_timeout=120)
    try:
        yield server
    finally:
        server.stop(grace=1.0)


def transaction(i: int, rng: np.random.Generator | None = None, **features: float) -> TransactionEvent:
    rng = rng or np.random.default_rng(i)
    values = {n: float(rng.normal()) for n in FEATURE_NAMES}
    values["Time"] = float(i)
    values["Amount"] = float(abs(rng.normal()) * 50)
    values.update(features)
    return TransactionEvent(transaction_id=f"tx-{i:07d}", event_time_ms=1_700_000_000_000 + i, card_id=f"card-{i % 97}",
                            customer_id=f"cust-{i % 89}", features=values, label=i % 2)


def malformed_corpus() -> list[tuple[str, bytes]]:
    """(expected dead-letter reason, record value) for every kind of bad event the bridge must dead-letter."""
    good = transaction(0).to_dict()

    def mutate(fn) -> bytes:  # noqa: ANN001
        d = {**good, "features": dict(good["features"])}
        fn(d)
        import orjson

        return orjson.dumps(d)

    import json

    nan = json.dumps({**good, "features": {**good["features"], "V3": float("nan")}}).encode()
    inf = json.dumps({**good, "features": {**good["features"], "V4": float("inf")}}).encode()
    return [
        ("malformed_json", b'{"transaction_id": "tx-x", '),
        ("malformed_json", b"not json at all"),
        ("malformed_json", b"[" * 5000 + b"]" * 5000),  # nested deeper than Python's json parser goes
        ("bad_encoding", b'{"transaction_id": "\xff\xfe"}'),
        ("not_an_object", b"[1, 2, 3]"),
        ("missing_field", mutate(lambda d: d.pop("card_id"))),
        ("missing_field", mutate(lambda d: d["features"].pop("V7"))),
        ("unknown_field", mutate(lambda d: d.update(extra=1))),
        ("unknown_field", mutate(lambda d: d["features"].update(V29=0.5))),
        ("wrong_type", mutate(lambda d: d["features"].update(V1="1.5"))),
        ("wrong_type", mutate(lambda d: d.update(event_time_ms="yesterday"))),
        ("out_of_range", mutate(lambda d: d["features"].update(Amount=-3.0))),
        ("not_finite", nan),
        ("not_finite", inf),
        ("oversize", mutate(lambda d: d.update(attributes={"note": "x" * 20_000}))),
        ("model_rejected", mutate(lambda d: d["features"].update(V5=5.0e7))),
    ]
