"""LatestBlessedModelOfKind: the base model a Trainer warm-starts from (TFX Resolver strategy).

The ModelSelector copies the chosen candidate into its own Model artifact and marks it with the kind
(`selected_model`); the Evaluator blesses that artifact against the serving model. For the Trainer of
one kind, the base model is the latest selected model *of that kind* that the Evaluator blessed: TFX's
LatestBlessedModelStrategy over the selector's models, restricted to the kind. A kind that was never
selected and blessed has no base model and trains from scratch.
"""

from __future__ import annotations

from typing import Any

from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy
from tfx.types import standard_artifacts

#: Custom property of the ModelSelector's Model artifact: the kind it chose.
SELECTED_PROPERTY = "selected_model"


def kind_of(model: Any) -> str | None:
    return model.get_string_custom_property(SELECTED_PROPERTY) if model.has_custom_property(SELECTED_PROPERTY) \
        else None


class LatestBlessedModelOfKind(LatestBlessedModelStrategy):
    """LatestBlessedModelStrategy over the Model artifacts whose `selected_model` is `kind`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def resolve_artifacts(self, store: Any, input_dict: dict[str, list[Any]]) -> dict[str, list[Any]] | None:
        filtered = {key: ([a for a in artifacts if kind_of(a) == self.kind]
                          if artifacts and isinstance(artifacts[0], standard_artifacts.Model) else artifacts)
                    for key, artifacts in input_dict.items()}
        return super().resolve_artifacts(store, filtered)
