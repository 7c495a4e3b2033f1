"""LocalInfraValidator: TFX's InfraValidator, run against this project's model server.

TFX's InfraValidator launches `tensorflow/serving` with Docker or on Kubernetes; neither exists on a
developer machine here. This component does the same job with the project's TF Serving-compatible
server (`python -m serving`, same API, same model-directory layout, same warm-up replay):

1. builds requests from `examples` with TFX's own request builder (one request per example and
   signature: Predict with serialized examples, Classify or Regress by the signature's method);
2. copies the candidate into the blessing artifact (`<blessing>/stamped_model`) with those requests as
   `assets.extra/tf_serving_warmup_requests` (TFRecord of PredictionLog, what TF Serving replays);
3. starts the server on that copy (so the warm-up file itself is replayed and checked), waits until the
   version is AVAILABLE (`validation_spec.max_loading_time_seconds`), sends every request over gRPC;
4. blesses the model only if every answer is well formed: every signature output present, one row per
   example, finite numbers; for signatures following fraud.signature also score in [0, 1], decision in
   {0, 1} and equal to score >= threshold;
5. writes INFRA_BLESSED / INFRA_NOT_BLESSED and the `blessed` / `has_model` properties exactly as the
   stock component, so the stock Pusher accepts the output as `infra_blessing`.

To ship the warm-up file, the Pusher must push the blessing's stamped model: give the Pusher
`infra_blessing=` and no `model=` (the stock Pusher then pushes `<blessing>/stamped_model`), as with
the stock InfraValidator and `request_spec.make_warmup`. Keep the stock InfraValidator for Kubeflow
(it has Kubernetes); this component needs no container runtime.
"""

from __future__ import annotations

from collections.abc import Sequence

from tfx import types
from tfx.dsl.components.base import base_component, base_driver, executor_spec
from tfx.proto import infra_validator_pb2
from tfx.types import standard_artifacts

from components.infra_validator import executor
from components.infra_validator.spec import LocalInfraValidatorSpec
from fraud.signature import DEFAULT_MODEL_NAME, SIGNATURE_NAME


class LocalInfraValidator(base_component.BaseComponent):
    """Validates a model in the project's TF Serving-compatible server before it is pushed.

    Args:
      model: channel of `Model` (e.g. Trainer or a model selector output). Required.
      examples: channel of `Examples` to build requests from (tf.Example TFRecords, as ExampleGen
        writes them). Without it, or without `request_spec`, the model is only loaded (LOAD_ONLY).
      request_spec: TFX `RequestSpec`: `tensorflow_serving.signature_names` (default: serving_default),
        `tensorflow_serving.tag_set` (default: serve), `split_name` (default: the first split),
        `num_examples` (default 1; one request per example and signature), `make_warmup` (write the
        requests as the warm-up file of the blessed model copy and set `has_model`).
      validation_spec: TFX `ValidationSpec`: `max_loading_time_seconds` (default 300) for the server to
        start and the version to become AVAILABLE, `num_tries` (default 1: nothing here is flaky the way
        pulling a container image is; a retry only helps against a busy machine).
      model_name: the model name in the requests and warm-up records (default fraud.signature's
        DEFAULT_MODEL_NAME; TF Serving ignores it when replaying warm-up records).
    Output:
      blessing: `InfraBlessing`, as the stock InfraValidator writes it, plus `infra_validation.json`.
    """

    SPEC_CLASS = LocalInfraValidatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)
    DRIVER_CLASS = base_driver.BaseDriver

    def __init__(
        self,
        model: types.BaseChannel,
        examples: types.BaseChannel | None = None,
        request_spec: infra_validator_pb2.RequestSpec | None = None,
        validation_spec: infra_validator_pb2.ValidationSpec | None = None,
        model_name: str | None = None,
    ) -> None:
        spec = LocalInfraValidatorSpec(
            model=model,
            examples=examples,
            request_spec=request_spec,
            validation_spec=validation_spec,
            model_name=model_name,
            blessing=types.Channel(type=standard_artifacts.InfraBlessing),
        )
        super().__init__(spec=spec)


def build_for_pipeline(
    model: types.BaseChannel,
    examples: types.BaseChannel,
    split_name: str = "eval",
    num_examples: int = 10,
    signature_names: Sequence[str] = (SIGNATURE_NAME,),
    max_loading_time_seconds: int = 300,
    model_name: str = DEFAULT_MODEL_NAME,
) -> LocalInfraValidator:
    """The project's infra validation node: `num_examples` evaluation examples per signature, sent as
    requests and kept as the blessed model's warm-up file."""
    return LocalInfraValidator(
        model=model,
        examples=examples,
        request_spec=infra_validator_pb2.RequestSpec(
            tensorflow_serving=infra_validator_pb2.TensorFlowServingRequestSpec(signature_names=list(signature_names)),
            split_name=split_name,
            num_examples=num_examples,
            make_warmup=True,
        ),
        validation_spec=infra_validator_pb2.ValidationSpec(max_loading_time_seconds=max_loading_time_seconds,
                                                           num_tries=1),
        model_name=model_name,
    )
