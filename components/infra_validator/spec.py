"""Spec of LocalInfraValidator: the stock InfraValidator's inputs, output and request/validation
protos (same keys), without a ServingSpec (the server is this project's, started by the executor).

Key constants live here so the component, the executor and the tests share them.
"""

from __future__ import annotations

from tfx.proto import infra_validator_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

MODEL_KEY = standard_component_specs.MODEL_KEY  # "model"
EXAMPLES_KEY = standard_component_specs.EXAMPLES_KEY  # "examples"
BLESSING_KEY = standard_component_specs.BLESSING_KEY  # "blessing"
REQUEST_SPEC_KEY = standard_component_specs.REQUEST_SPEC_KEY  # "request_spec"
VALIDATION_SPEC_KEY = standard_component_specs.VALIDATION_SPEC_KEY  # "validation_spec"
#: Execution property: the model name the requests (and the warm-up records) carry.
MODEL_NAME_KEY = "model_name"

#: Files and custom properties of the InfraBlessing artifact, as the stock InfraValidator writes them,
#: so the stock Pusher (model_utils.is_infra_validated, has_model) reads them unchanged.
BLESSED_FILE = "INFRA_BLESSED"
NOT_BLESSED_FILE = "INFRA_NOT_BLESSED"
BLESSED_PROPERTY = "blessed"
HAS_MODEL_PROPERTY = "has_model"
#: The executor's account of the validation (requests sent, failures, timings), next to the blessing.
REPORT_FILE = "infra_validation.json"


class LocalInfraValidatorSpec(ComponentSpec):
    """Inputs model (+ examples), output blessing (InfraBlessing); parameters as the stock component."""

    PARAMETERS = {
        REQUEST_SPEC_KEY: ExecutionParameter(type=infra_validator_pb2.RequestSpec, optional=True),
        VALIDATION_SPEC_KEY: ExecutionParameter(type=infra_validator_pb2.ValidationSpec, optional=True),
        MODEL_NAME_KEY: ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }
    OUTPUTS = {
        BLESSING_KEY: ChannelParameter(type=standard_artifacts.InfraBlessing),
    }
