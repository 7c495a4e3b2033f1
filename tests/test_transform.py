"""`preprocessing_fn` run for real through TF Transform (AnalyzeAndTransformDataset) on the curated
schema, compared with values computed independently in numpy."""

from __future__ import annotations

import math
import tempfile

import numpy as np
import pytest
import tensorflow_data_validation as tfdv
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata

from fraud.features import (
    AMOUNT_BAND_EDGES,
    AMOUNT_BAND_KEY,
    FEATURE_NAMES,
    HOUR_OF_DAY_KEY,
    LABEL_KEY,
    transformed_name,
)
from pipeline.modules.transform_module import preprocessing_fn
from schema import SCHEMA_FILE


@pytest.fixture(scope="module")
def transformed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]], str]:
    rng = np.random.default_rng(0)
    n = 64
    raw: dict[str, np.ndarray] = {name: rng.normal(size=n).astype(np.float32) for name in FEATURE_NAMES}
    raw["Time"] = np.array([0, 3599, 3600, 43_200, 86_399, 86_400, 90_000, 172_792] * 8, dtype=np.float32)
    raw["Amount"] = np.array([0.0, 0.5, 1.0, 9.99, 10.0, 150.0, 999.0, 25_691.16] * 8, dtype=np.float32)
    raw[LABEL_KEY] = (np.arange(n) % 9 == 0).astype(np.int64)
    # The serving/training schema: dense features of shape [1]; only the keys the function reads.
    schema = tfdv.load_schema_text(str(SCHEMA_FILE))
    for name in ("transaction_id", "event_time_ms", "card_id"):
        tfdv.get_feature(schema, name)  # present in the curated schema...
    kept = [f for f in schema.feature if f.name in set(FEATURE_NAMES) | {LABEL_KEY}]
    del schema.feature[:]
    schema.feature.extend(kept)  # ...but these rows carry only features and label
    metadata = dataset_metadata.DatasetMetadata(schema)
    rows = [{k: [v[i].item()] for k, v in raw.items()} for i in range(n)]
    tft_dir = str(tmp_path_factory.mktemp("tft"))
    with tft_beam.Context(temp_dir=tempfile.mkdtemp(), force_tf_compat_v1=False):
        (out, _), transform_fn = (rows, metadata) | tft_beam.AnalyzeAndTransformDataset(preprocessing_fn)
        _ = transform_fn | tft_beam.WriteTransformFn(tft_dir)
    return raw, out, tft_dir


def _column(out: list[dict[str, np.ndarray]], key: str) -> np.ndarray:
    return np.array([np.asarray(r[key]) for r in out])


def test_zscores_use_the_analyzed_mean_and_std(transformed) -> None:
    raw, out, _ = transformed
    for name in ("V1", "V14", "V28"):
        x = raw[name].astype(np.float64)
        expected = (x - x.mean()) / x.std()
        np.testing.assert_allclose(_column(out, transformed_name(name)).reshape(-1), expected, rtol=1e-4, atol=1e-5)


def test_amount_is_log1p_then_zscored(transformed) -> None:
    raw, out, _ = transformed
    logs = np.log1p(raw["Amount"].astype(np.float64))
    np.testing.assert_allclose(_column(out, transformed_name("Amount")).reshape(-1), (logs - logs.mean()) / logs.std(),
                               rtol=1e-4, atol=1e-5)


def test_time_becomes_position_in_the_day(transformed) -> None:
    raw, out, _ = transformed
    tod = _column(out, transformed_name("Time")).reshape(-1, 2)
    angle = 2 * math.pi * (raw["Time"].astype(np.float64) % 86_400) / 86_400
    np.testing.assert_allclose(tod[:, 0], np.sin(angle), atol=1e-5)
    np.testing.assert_allclose(tod[:, 1], np.cos(angle), atol=1e-5)
    # Midnight of day 2 equals midnight of day 1; 23:59:59 is next to it.
    assert tod[0] == pytest.approx(tod[5], abs=1e-6)
    assert np.linalg.norm(tod[4] - tod[0]) < 1e-3
    hours = _column(out, HOUR_OF_DAY_KEY).reshape(-1)
    assert hours[:8].tolist() == [0, 0, 1, 12, 23, 0, 1, 23]


def test_amount_bands_and_label_pass_through(transformed) -> None:
    raw, out, _ = transformed
    bands = _column(out, AMOUNT_BAND_KEY).reshape(-1)
    assert bands[:8].tolist() == [0, 0, 1, 1, 2, 3, 3, 4]
    assert len(AMOUNT_BAND_EDGES) + 1 == 5
    np.testing.assert_array_equal(_column(out, LABEL_KEY).reshape(-1), raw[LABEL_KEY])
    assert set(out[0]) == {transformed_name(n) for n in FEATURE_NAMES} | {HOUR_OF_DAY_KEY, AMOUNT_BAND_KEY, LABEL_KEY}


def test_serving_graph_needs_no_label(transformed) -> None:
    """The transform graph applied to raw features without the label (what serving sends)."""
    import tensorflow as tf

    raw, out, tft_dir = transformed
    layer = tft.TFTransformOutput(tft_dir).transform_features_layer()
    result = layer({n: tf.constant(raw[n][:2].reshape(2, 1)) for n in FEATURE_NAMES})
    assert LABEL_KEY not in result
    np.testing.assert_allclose(result[transformed_name("V3")].numpy().reshape(-1),
                               _column(out, transformed_name("V3")).reshape(-1)[:2], rtol=1e-5)
