"""ModelSelector: of every trained candidate, hand the one best on *validation* to the Evaluator.

Each Trainer records its model's validation figures in the model (assets.extra/fraud_model.json,
fraud.model_info): the ranking is by `validation_auprc` (AUPRC of the calibrated score on the
validation split, the rows the trainers tuned on). The eval split is never looked at here: it is kept
for the Evaluator's verdict (blessing against the serving model) and the report's scorecard, so the
figure reported for the chosen model is not the figure it was chosen by.

Output: a copy of the chosen model artifact (Format-Serving and its warm-start data), with custom
properties `selected_model` (its kind), `source_model_id` (the Trainer's model it copies), and
`<kind>_validation_auprc` for every candidate.
"""

import math
import os
from collections.abc import Mapping
from typing import Any

from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.dsl.io import fileio
from tfx.types import standard_artifacts
from tfx.utils import io_utils, path_utils

from components.candidates import build, candidates
from fraud.model_info import read_model_info

#: The model-info field candidates are ranked by.
VALIDATION_METRIC = "validation_auprc"
#: Custom properties of the output Model: the kind chosen, and the id of the Trainer's model it copies.
SELECTED_PROPERTY = "selected_model"
SOURCE_PROPERTY = "source_model_id"


def choose(candidates: dict[str, float | None]) -> str:
    """The candidate with the highest metric (ties: the first name in sorted order)."""
    if not candidates:
        raise ValueError("no candidate models to choose from")

    def rank(item: tuple[str, float | None]) -> float:
        value = item[1]
        return float("-inf") if value is None or not math.isfinite(value) else value

    return max(sorted(candidates.items()), key=rank)[0]


def _copy_tree(source: str, dest: str) -> None:
    for name in fileio.listdir(source):
        src = os.path.join(source, name.rstrip("/"))
        if fileio.isdir(src):
            io_utils.copy_dir(src, os.path.join(dest, name.rstrip("/")))
        else:
            fileio.makedirs(dest)
            fileio.copy(src, os.path.join(dest, name), overwrite=True)


def select(models: list[Any], model: Any, metric: str = VALIDATION_METRIC) -> str:
    """Copies the best candidate into `model` (see the module docstring); returns its kind."""
    by_kind: dict[str, Any] = {}
    values: dict[str, float | None] = {}
    for candidate in models:
        info = read_model_info(path_utils.serving_model_path(candidate.uri,
                                                             path_utils.is_old_model_artifact(candidate)))
        kind = str(info["model"])
        by_kind[kind] = candidate
        value = info.get(metric)
        values[kind] = None if value is None else float(value)
    name = choose(values)
    chosen = by_kind[name]
    _copy_tree(chosen.uri, model.uri)
    model.set_string_custom_property(SELECTED_PROPERTY, name)
    model.set_int_custom_property(SOURCE_PROPERTY, chosen.id)
    for kind, value in values.items():
        if value is not None and math.isfinite(value):
            model.set_float_custom_property(f"{kind}_{metric}", value)
    return name


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict: dict[str, list[Any]], output_dict: dict[str, list[Any]],
           exec_properties: dict[str, Any]) -> None:
        (model,) = output_dict["model"]
        select(candidates(input_dict), model, exec_properties.get("metric") or VALIDATION_METRIC)


def ModelSelector(models: Mapping[str, types.BaseChannel], metric: str = VALIDATION_METRIC) -> Any:
    """The selector over `models` ({kind: Trainer model channel}); output `model`."""
    return build("ModelSelector", Executor, models, inputs={},
                 outputs={"model": standard_artifacts.Model}, parameters={"metric": (str, metric)})
