"""KindBlessing: the Evaluator's verdict, restated per model kind, so each Trainer can warm-start.

The Evaluator blesses one model: the ModelSelector's copy of the chosen candidate. TFX's base-model
resolver (LatestBlessedModelStrategy) pairs a Model channel with ModelBlessings that name the model
(`current_model_id`). One KindBlessing per Trainer turns the verdict into a blessing of that Trainer's
own model: blessed when the Evaluator blessed the selection and the selection is this model. The
Trainer of that kind then resolves "the last blessed model of my kind" with the stock strategy (which
Kubeflow's compiler also supports).
"""

import os

from tfx import v1 as tfx
from tfx.dsl.io import fileio
from tfx.types import standard_artifacts
from tfx.utils import io_utils

from components.model_selector import SELECTED_PROPERTY, SOURCE_PROPERTY

BLESSED_FILE = "BLESSED"
NOT_BLESSED_FILE = "NOT_BLESSED"


def is_blessed(blessing: standard_artifacts.ModelBlessing) -> bool:
    return bool(blessing.get_int_custom_property("blessed")) if blessing.has_custom_property("blessed") else False


@tfx.dsl.components.component
def KindBlessing(
    model: tfx.dsl.components.InputArtifact[standard_artifacts.Model],
    selection: tfx.dsl.components.InputArtifact[standard_artifacts.Model],
    verdict: tfx.dsl.components.InputArtifact[standard_artifacts.ModelBlessing],
    blessing: tfx.dsl.components.OutputArtifact[standard_artifacts.ModelBlessing],
) -> None:
    """Blesses `model` iff the Evaluator blessed `selection` and `selection` is a copy of `model`."""
    chosen = selection.get_int_custom_property(SOURCE_PROPERTY) if selection.has_custom_property(SOURCE_PROPERTY) \
        else -1
    blessed = is_blessed(verdict) and chosen == model.id
    fileio.makedirs(blessing.uri)
    io_utils.write_string_file(os.path.join(blessing.uri, BLESSED_FILE if blessed else NOT_BLESSED_FILE), "")
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_int_custom_property("current_model_id", model.id)
    blessing.set_string_custom_property("current_model", model.uri)
    if selection.has_custom_property(SELECTED_PROPERTY):
        blessing.set_string_custom_property(SELECTED_PROPERTY, selection.get_string_custom_property(SELECTED_PROPERTY))
