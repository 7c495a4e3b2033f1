"""Transport-neutral requests: what the gRPC and REST front ends decode a call into.

Both front ends turn a wire request into one of these and hand it to `serving.api.ServingApi`, so a
request means the same thing, and fails the same way, whichever way it arrived.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from serving.errors import Code, ServingError

#: Signature used when a request names none (tensorflow::kDefaultServingSignatureDefKey).
DEFAULT_SIGNATURE = "serving_default"


@dataclass(frozen=True)
class ModelSpec:
    """Which model, which version (a number, a label, or the latest) and which signature."""

    name: str
    version: int | None = None
    version_label: str | None = None
    signature_name: str = ""

    def describe(self) -> str:
        """TF Serving's ServableRequest::DebugString(), used in NOT_FOUND messages."""
        if self.version is not None:
            return f"Specific({self.name}, {self.version})"
        return f"Latest({self.name})"

    def with_version(self, version: int) -> ModelSpec:
        return ModelSpec(self.name, version, None, self.signature_name)


@dataclass(frozen=True)
class PredictCall:
    """A Predict request: named input arrays and an optional output filter."""

    model_spec: ModelSpec
    inputs: Mapping[str, np.ndarray]
    output_filter: Sequence[str] = ()


@dataclass(frozen=True)
class ExamplesCall:
    """A Classify or Regress request: serialized tf.Example records (context already merged in)."""

    model_spec: ModelSpec
    examples: Sequence[bytes] = field(default_factory=tuple)


@dataclass(frozen=True)
class InferenceTask:
    """One task of a MultiInference request: a model spec (its signature) and the method to run it as
    ("tensorflow/serving/classify" or "tensorflow/serving/regress")."""

    model_spec: ModelSpec
    method_name: str


@dataclass(frozen=True)
class MultiInferenceCall:
    """A MultiInference request: Classify/Regress tasks over one set of serialized tf.Examples."""

    tasks: Sequence[InferenceTask]
    examples: Sequence[bytes] = field(default_factory=tuple)

    @property
    def model_spec(self) -> ModelSpec:
        """The spec the version is resolved with: the first task's (TF Serving's GetModelSpecFromRequest);
        an empty one when there are no tasks."""
        return self.tasks[0].model_spec if self.tasks else ModelSpec(name="")


def spec_from_path(name: str, version: str | None, label: str | None) -> ModelSpec:
    """A ModelSpec from the parts of a REST path (`/v1/models/<name>[/versions/<v>|/labels/<l>]`)."""
    if version is not None and label is not None:  # the path grammar makes this impossible; kept for safety
        raise ServingError(Code.INVALID_ARGUMENT,
                           f"Both model version ({version}) and model version label ({label}) cannot be supplied.")
    number: int | None = None
    if version is not None:
        try:
            number = int(version)
        except ValueError:
            raise ServingError(Code.INVALID_ARGUMENT, f"Failed to convert version: {version} to numeric.") from None
        if not -(2**63) <= number < 2**63:
            raise ServingError(Code.INVALID_ARGUMENT, f"Failed to convert version: {version} to numeric.")
    return ModelSpec(name=name, version=number, version_label=label)
