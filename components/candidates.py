"""Components over every trained candidate: one input channel per model kind (`model_<kind>`).

Kubeflow V2's compiler takes only single channels as inputs (no union of channels), and a python
function component has a fixed signature; so the ModelSelector and the ModelScorecard are class
components whose spec is built for the kinds the pipeline trains. Their executors read every input
whose key starts with `model_`.
"""

from collections.abc import Mapping
from typing import Any

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

CANDIDATE_PREFIX = "model_"


def candidate_key(kind: str) -> str:
    return f"{CANDIDATE_PREFIX}{kind}"


def candidates(input_dict: Mapping[str, list[Any]]) -> list[Any]:
    """Every candidate Model artifact of an executor's input dict, in kind order."""
    return [a for key, artifacts in sorted(input_dict.items()) if key.startswith(CANDIDATE_PREFIX) for a in artifacts]


def build(name: str, executor: type, models: Mapping[str, types.BaseChannel], inputs: Mapping[str, tuple[Any, Any]],
          outputs: Mapping[str, Any], parameters: Mapping[str, tuple[type, Any]]) -> base_component.BaseComponent:
    """An instance of component class `name` with inputs `model_<kind>` for each of `models`, plus
    `inputs` ({key: (artifact type, channel)}), `outputs` ({key: artifact type}) and `parameters`
    ({key: (type, value)})."""
    if not models:
        raise ValueError(f"{name}: no candidate models")
    spec_class = type(f"{name}Spec", (ComponentSpec,), {
        "PARAMETERS": {k: ExecutionParameter(type=t) for k, (t, _) in parameters.items()},
        "INPUTS": {**{candidate_key(k): ChannelParameter(type=standard_artifacts.Model) for k in models},
                   **{k: ChannelParameter(type=t) for k, (t, _) in inputs.items()}},
        "OUTPUTS": {k: ChannelParameter(type=t) for k, t in outputs.items()},
        "__module__": executor.__module__,
    })
    component_class = type(name, (base_component.BaseComponent,), {
        "SPEC_CLASS": spec_class,
        "EXECUTOR_SPEC": executor_spec.ExecutorClassSpec(executor),
        "__module__": executor.__module__,
    })
    spec = spec_class(**{candidate_key(k): ch for k, ch in models.items()},
                      **{k: ch for k, (_, ch) in inputs.items()},
                      **{k: types.Channel(type=t) for k, t in outputs.items()},
                      **{k: v for k, (_, v) in parameters.items()})
    return component_class(spec=spec)
