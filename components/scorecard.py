"""ModelScorecard: every candidate's figures on the eval split, with their uncertainty.

The Evaluator judges one model (the one chosen on validation) against the serving model; this
component scores *every* trained candidate on the same eval rows through its `serving_default`
signature (raw tf.Examples in, as clients send them) and records, per model: AUPRC with its 95%
bootstrap interval, ROC-AUC, recall at 1% false-positive rate, precision at 100 (fraud.metrics),
next to its validation AUPRC. The report shows the table; nothing downstream decides on it.

Output: a `fraud.ModelScorecard` artifact holding `scorecard.json` ({kind: {...}}).
"""

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact, standard_artifacts
from tfx.utils import io_utils, path_utils

from components.candidates import build, candidates
from fraud import signature
from fraud.features import LABEL_KEY
from fraud.metrics import BOOTSTRAP_SAMPLES, scorecard
from fraud.model_info import load_custom_ops, read_model_info

SCORECARD_FILE = "scorecard.json"
_BATCH = 8192


class FraudScorecard(artifact.Artifact):
    """Per-model figures on the eval split (scorecard.json)."""

    TYPE_NAME = "fraud.ModelScorecard"  # <namespace>.<Title>: the form Kubeflow V2 accepts


def read_split(examples: Any, split: str) -> tuple[list[bytes], np.ndarray]:
    """Serialized tf.Examples of one split of an ExampleGen artifact, and their labels."""
    import tensorflow as tf

    pattern = os.path.join(examples.uri, f"Split-{split}", "*")
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise ValueError(f"no files match {pattern}")
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    labels = np.concatenate([
        tf.io.parse_example(tf.constant(records[i:i + _BATCH]),
                            {LABEL_KEY: tf.io.FixedLenFeature([1], tf.int64)})[LABEL_KEY].numpy().reshape(-1)
        for i in range(0, len(records), _BATCH)]) if records else np.zeros(0, np.int64)
    return records, labels


def score_examples(model_dir: str, records: list[bytes]) -> np.ndarray:
    """SCORE of each serialized example through the model's serving_default signature."""
    import tensorflow as tf

    load_custom_ops(model_dir)
    serve = tf.saved_model.load(model_dir).signatures[signature.SIGNATURE_NAME]
    return np.concatenate([serve(**{signature.INPUT_EXAMPLES: tf.constant(records[i:i + _BATCH])})[signature.SCORE]
                           .numpy() for i in range(0, len(records), _BATCH)]) if records else np.zeros(0)


def read_scorecard(uri: str) -> dict[str, Any]:
    return json.loads(io_utils.read_string_file(os.path.join(uri, SCORECARD_FILE)))


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict: dict[str, list[Any]], output_dict: dict[str, list[Any]],
           exec_properties: dict[str, Any]) -> None:
        (examples,) = input_dict["examples"]
        (out,) = output_dict["scorecard"]
        split = exec_properties.get("split") or "eval"
        samples = int(exec_properties.get("bootstrap_samples") or BOOTSTRAP_SAMPLES)
        records, labels = read_split(examples, split)
        result: dict[str, Any] = {}
        for model in candidates(input_dict):
            model_dir = path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))
            info = read_model_info(model_dir)
            card = scorecard(labels, score_examples(model_dir, records), samples=samples).to_dict()
            card["validation_auprc"] = info.get("validation_auprc")
            card["model_id"] = model.id
            result[str(info["model"])] = card
        io_utils.write_string_file(os.path.join(out.uri, SCORECARD_FILE),
                                   json.dumps({"split": split, "models": result}, indent=1, sort_keys=True))


def ModelScorecard(examples: types.BaseChannel, models: Mapping[str, types.BaseChannel], split: str = "eval",
                   bootstrap_samples: int = BOOTSTRAP_SAMPLES) -> Any:
    """Scores every model of `models` ({kind: Trainer model channel}) on `split` of `examples`."""
    return build("ModelScorecard", Executor, models,
                 inputs={"examples": (standard_artifacts.Examples, examples)},
                 outputs={"scorecard": FraudScorecard},
                 parameters={"split": (str, split), "bootstrap_samples": (int, bootstrap_samples)})
