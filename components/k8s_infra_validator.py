"""TFX's stock InfraValidator (TF Serving launched on Kubernetes) for the Kubeflow V2 pipeline.

TFX 1.16's Kubeflow V2 compiler refuses the `InfraValidator` component class outright
(tfx/orchestration/kubeflow/v2/step_builder.py raises NotImplementedError for it). This class has
the same spec and runs the same stock executor; only the Python class differs, so the compiler emits
it as an ordinary container step. It needs a cluster to launch TF Serving in (self-hosted Kubeflow
Pipelines on Kubernetes, with a service account allowed to create pods); Vertex AI Pipelines has none.
"""

from tfx import types
from tfx.components.infra_validator import executor as stock_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import infra_validator_pb2
from tfx.types import standard_artifacts, standard_component_specs


class KubernetesInfraValidator(base_component.BaseComponent):
    """Loads the model in TF Serving on Kubernetes, sends requests built from examples, blesses it if served."""

    SPEC_CLASS = standard_component_specs.InfraValidatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(stock_executor.Executor)

    def __init__(self, model: types.BaseChannel, serving_spec: infra_validator_pb2.ServingSpec,
                 examples: types.BaseChannel | None = None,
                 request_spec: infra_validator_pb2.RequestSpec | None = None,
                 validation_spec: infra_validator_pb2.ValidationSpec | None = None) -> None:
        spec = standard_component_specs.InfraValidatorSpec(
            model=model, examples=examples, blessing=types.Channel(type=standard_artifacts.InfraBlessing),
            serving_spec=serving_spec, validation_spec=validation_spec, request_spec=request_spec)
        super().__init__(spec=spec)
