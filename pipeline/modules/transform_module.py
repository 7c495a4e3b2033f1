"""Transform's module file: `preprocessing_fn`, driven by fraud.features (names declared once).

Per raw feature, by its Kind:
- ZSCORE: z-score over the analyzed (train) split.
- LOG_ZSCORE: z-score of log1p(x) (Amount is heavy-tailed).
- TIME_OF_DAY: position in the day of `Time` as [sin, cos] (a [batch, 2] output), so 23:59 is next to 00:00.
Plus the evaluation slices (hour of day, amount band) and the label passed through unchanged.
"""

from __future__ import annotations

import math

import tensorflow as tf
import tensorflow_transform as tft

from fraud.features import (
    AMOUNT_BAND_EDGES,
    AMOUNT_BAND_KEY,
    FEATURES,
    HOUR_OF_DAY_KEY,
    LABEL_KEY,
    SECONDS_PER_DAY,
    Kind,
    transformed_name,
)

_TIME_FEATURE = next(f.name for f in FEATURES.values() if f.kind is Kind.TIME_OF_DAY)
_AMOUNT_FEATURE = next(f.name for f in FEATURES.values() if f.kind is Kind.LOG_ZSCORE)


def _dense(x: tf.Tensor | tf.SparseTensor) -> tf.Tensor:
    """[batch, 1] dense float (the schema declares every raw feature with shape [1])."""
    if isinstance(x, tf.SparseTensor):
        x = tf.sparse.to_dense(x, default_value=0)
    return tf.reshape(x, [-1, 1])


def _seconds_of_day(time_s: tf.Tensor) -> tf.Tensor:
    return tf.math.floormod(tf.cast(time_s, tf.float64), float(SECONDS_PER_DAY))


def preprocessing_fn(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    outputs: dict[str, tf.Tensor] = {}
    for name, feature in FEATURES.items():
        x = tf.cast(_dense(inputs[name]), tf.float32)
        if feature.kind is Kind.ZSCORE:
            outputs[transformed_name(name)] = tft.scale_to_z_score(x)
        elif feature.kind is Kind.LOG_ZSCORE:
            outputs[transformed_name(name)] = tft.scale_to_z_score(tf.math.log1p(tf.maximum(x, 0.0)))
        elif feature.kind is Kind.TIME_OF_DAY:
            angle = tf.cast(_seconds_of_day(x) * (2.0 * math.pi / SECONDS_PER_DAY), tf.float32)
            outputs[transformed_name(name)] = tf.concat([tf.sin(angle), tf.cos(angle)], axis=1)
        else:  # pragma: no cover - a new Kind must be handled here first
            raise ValueError(f"no transform for {name} of kind {feature.kind}")

    seconds = _seconds_of_day(_dense(inputs[_TIME_FEATURE]))
    outputs[HOUR_OF_DAY_KEY] = tf.cast(tf.math.floor(seconds / 3600.0), tf.int64)
    amount = tf.cast(_dense(inputs[_AMOUNT_FEATURE]), tf.float32)
    outputs[AMOUNT_BAND_KEY] = tf.cast(
        tf.raw_ops.Bucketize(input=amount, boundaries=[float(e) for e in AMOUNT_BAND_EDGES]), tf.int64)
    if LABEL_KEY in inputs:
        outputs[LABEL_KEY] = _dense(inputs[LABEL_KEY])
    return outputs
