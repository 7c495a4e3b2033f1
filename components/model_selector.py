"""ModelSelector: of the two evaluated candidates, hand the better blessed one to the Pusher.

Each Trainer's model is judged by its own Evaluator on the eval split (value thresholds, and a change
threshold against the latest model of the same kind that was blessed). The selector reads both
evaluations, and among the blessed candidates picks the one with the higher overall AUPRC of its
`score` output. Its outputs are that model (copied) and a ModelBlessing the Pusher honours: blessed
only if a candidate was. When neither is blessed the better candidate is still copied (so infra
validation has something to load) but the blessing says NOT blessed and nothing is pushed.
"""

import os

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx
from tfx.dsl.io import fileio
from tfx.types import standard_artifacts
from tfx.utils import io_utils, path_utils

from fraud import signature

AUPRC_METRIC = "auc_precision_recall"
BLESSED_FILE = "BLESSED"
NOT_BLESSED_FILE = "NOT_BLESSED"
SELECTED_PROPERTY = "selected_model"


def overall_metric(evaluation_uri: str, metric: str, output_name: str = signature.SCORE) -> float | None:
    """The candidate's value of `metric` for `output_name` on the overall slice of a TFMA result."""
    for metrics_for_slice in tfma.load_metrics(evaluation_uri):
        if metrics_for_slice.slice_key.single_slice_keys:
            continue
        for kv in metrics_for_slice.metric_keys_and_values:
            key = kv.key
            if key.name == metric and key.output_name == output_name and not key.HasField("sub_key") \
                    and not key.is_diff and key.model_name in ("", "candidate"):
                return float(kv.value.double_value.value)
    return None


def is_blessed(blessing: standard_artifacts.ModelBlessing) -> bool:
    return bool(blessing.get_int_custom_property("blessed")) if blessing.has_custom_property("blessed") else False


def choose(candidates: dict[str, tuple[bool, float | None]]) -> tuple[str, bool]:
    """(name, blessed): the blessed candidate with the best metric, else the best one, not blessed."""
    def rank(item: tuple[str, tuple[bool, float | None]]) -> float:
        value = item[1][1]
        return float("-inf") if value is None else value

    blessed = {k: v for k, v in candidates.items() if v[0]}
    pool = blessed or candidates
    name = max(sorted(pool.items()), key=rank)[0]
    return name, bool(blessed)


@tfx.dsl.components.component
def ModelSelector(
    autoencoder_model: tfx.dsl.components.InputArtifact[standard_artifacts.Model],
    autoencoder_blessing: tfx.dsl.components.InputArtifact[standard_artifacts.ModelBlessing],
    autoencoder_evaluation: tfx.dsl.components.InputArtifact[standard_artifacts.ModelEvaluation],
    supervised_model: tfx.dsl.components.InputArtifact[standard_artifacts.Model],
    supervised_blessing: tfx.dsl.components.InputArtifact[standard_artifacts.ModelBlessing],
    supervised_evaluation: tfx.dsl.components.InputArtifact[standard_artifacts.ModelEvaluation],
    model: tfx.dsl.components.OutputArtifact[standard_artifacts.Model],
    blessing: tfx.dsl.components.OutputArtifact[standard_artifacts.ModelBlessing],
    metric: tfx.dsl.components.Parameter[str] = AUPRC_METRIC,
) -> None:
    """Picks the better blessed model (see the module docstring)."""
    inputs = {
        "autoencoder": (autoencoder_model, autoencoder_blessing, autoencoder_evaluation),
        "supervised": (supervised_model, supervised_blessing, supervised_evaluation),
    }
    candidates = {name: (is_blessed(b), overall_metric(e.uri, metric)) for name, (_, b, e) in inputs.items()}
    name, blessed = choose(candidates)
    chosen = inputs[name][0]
    source = path_utils.serving_model_path(chosen.uri, path_utils.is_old_model_artifact(chosen))
    io_utils.copy_dir(source, path_utils.serving_model_path(model.uri))
    fileio.makedirs(blessing.uri)
    io_utils.write_string_file(os.path.join(blessing.uri, BLESSED_FILE if blessed else NOT_BLESSED_FILE), "")
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_string_custom_property(SELECTED_PROPERTY, name)
    blessing.set_int_custom_property("current_model_id", chosen.id)
    model.set_string_custom_property(SELECTED_PROPERTY, name)
    for cname, (cblessed, value) in candidates.items():
        blessing.set_int_custom_property(f"{cname}_blessed", int(cblessed))
        if value is not None:
            blessing.set_float_custom_property(f"{cname}_{metric}", value)
