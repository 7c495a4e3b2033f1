"""The one feature module: raw feature names, the label, their types and transformed names.

Transform, both Trainers, the event contract, the bridge, the monitor and the tests import these
names from here; nothing else declares a feature list.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


class Kind(enum.Enum):
    """How Transform normalizes a raw feature for the models."""

    ZSCORE = "zscore"  # (x - mean) / std over the training data
    LOG_ZSCORE = "log_zscore"  # z-score of log1p(x); for heavy-tailed non-negative amounts
    TIME_OF_DAY = "time_of_day"  # seconds since the first transaction -> position in the day


@dataclass(frozen=True)
class Feature:
    name: str
    kind: Kind
    minimum: float | None = None  # curated range checked by the schema and the contract
    maximum: float | None = None


def _build() -> Mapping[str, Feature]:
    features = [Feature("Time", Kind.TIME_OF_DAY, minimum=0.0)]
    features += [Feature(f"V{i}", Kind.ZSCORE) for i in range(1, 29)]
    features.append(Feature("Amount", Kind.LOG_ZSCORE, minimum=0.0))
    return MappingProxyType({f.name: f for f in features})


#: The 30 raw numeric features of a transaction, in the dataset's column order.
FEATURES: Mapping[str, Feature] = _build()
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURES)

#: The label column of the dataset (1 = fraud). Held apart from the features everywhere.
LABEL_KEY = "Class"

#: Identity and time keys carried next to the features in exported examples (not model inputs).
TRANSACTION_ID_KEY = "transaction_id"
EVENT_TIME_KEY = "event_time_ms"
CARD_ID_KEY = "card_id"

#: Column order of the public dataset's CSV file.
CSV_COLUMNS: tuple[str, ...] = FEATURE_NAMES + (LABEL_KEY,)


def transformed_name(key: str) -> str:
    """Name of the Transform output derived from raw feature `key`."""
    return f"{key}_xf"


# ---------------------------------------------------------------------------------------------
# Derived keys the pipeline's Transform produces next to the normalized features (added by the
# training pipeline). They are evaluation slices, not model inputs.

#: Seconds in a day: `Time` counts seconds from the first transaction of the data set.
SECONDS_PER_DAY = 86_400
#: Hour of the day of a transaction (int64 0..23), from `Time`; TFMA slices on it.
HOUR_OF_DAY_KEY = "hour_of_day"
#: Amount band index (int64): band i holds amounts in [AMOUNT_BAND_EDGES[i-1], AMOUNT_BAND_EDGES[i]).
AMOUNT_BAND_KEY = "amount_band"
AMOUNT_BAND_EDGES: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0)
#: Human-readable band labels, one per band (len(AMOUNT_BAND_EDGES) + 1).
AMOUNT_BAND_LABELS: tuple[str, ...] = ("<1", "1-10", "10-100", "100-1000", ">=1000")
SLICE_KEYS: tuple[str, ...] = (HOUR_OF_DAY_KEY, AMOUNT_BAND_KEY)
