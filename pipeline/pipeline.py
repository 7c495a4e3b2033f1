"""`create_pipeline()`: the TFX training pipeline, built from typed arguments, without side effects.

    KafkaExportExampleGen (latest complete span(s); train / validation / eval by event time)
      -> StatisticsGen, ImportSchemaGen (schema/schema.pbtxt) -> ExampleValidator -> DataValidationGate
      -> Transform (pipeline/modules/transform_module.py; analyzes train)
      -> one Trainer per model kind (pipeline/models/: autoencoder, supervised MLP, gradient-boosted
         trees, hybrid), each warm-started from the last blessed model of its kind (base_model_<kind>)
      -> ModelSelector: the candidate best on *validation* (never on eval)
      -> Evaluator on eval: value thresholds + change threshold against the serving model (the latest
         blessed selection); ModelScorecard: every candidate's eval figures with their uncertainty
      -> infra validation -> Pusher (integer versions under serving_model_dir/<model name>)

Runners (pipeline/local_runner.py, beam_runner.py, kubeflow_v2_runner.py) only resolve paths, Beam
arguments and the environment, then call this.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2

from components import versioned_pusher
from components.kafka_export_example_gen import KafkaExportExampleGen
from components.kind_blessing import KindBlessing
from components.model_selector import ModelSelector
from components.scorecard import ModelScorecard
from components.validation_gate import DataValidationGate
from fraud import signature
from fraud.features import AMOUNT_BAND_KEY, HOUR_OF_DAY_KEY, LABEL_KEY
from fraud.metrics import ANCHOR_FPR
from fraud.topics import TRANSACTIONS
from pipeline.models import KINDS
from pipeline.models.base import TRANSFORM_SIGNATURE

PIPELINE_NAME = "fraud-detection"
MODULES_DIR = Path(__file__).resolve().parent / "modules"
TRAIN_SPLIT, VALIDATION_SPLIT, EVAL_SPLIT = "train", "validation", "eval"
MODEL_KINDS: tuple[str, ...] = tuple(KINDS)
SELECTOR_ID, EVALUATOR_ID = "ModelSelector", "Evaluator"

#: Infra validation before the Pusher: "local" = components/infra_validator (loads the model in the
#: project's TF Serving-compatible server, queries it with eval examples, ships them as warm-up
#: requests), "kubernetes" = TFX's stock InfraValidator executor (Kubeflow), or "none".
INFRA_LOCAL, INFRA_KUBERNETES, INFRA_NONE = "local", "kubernetes", "none"


@dataclass(frozen=True)
class Gates:
    """What a candidate must reach on the eval split to be blessed (AUPRC of its `score`)."""

    min_auprc: float = 0.3
    #: Largest allowed drop of AUPRC against the serving model (the latest blessed selection).
    max_auprc_drop: float = 0.02


@dataclass(frozen=True)
class SplitFractions:
    """Shares of a span's rows in event-time order: oldest train, then validation, newest eval."""

    train: float = 0.68
    validation: float = 0.12
    eval: float = 0.20

    def output_config(self) -> example_gen_pb2.Output:
        parts = {TRAIN_SPLIT: self.train, VALIDATION_SPLIT: self.validation, EVAL_SPLIT: self.eval}
        if abs(sum(parts.values()) - 1.0) > 1e-9 or min(parts.values()) <= 0:
            raise ValueError(f"split fractions must be positive and sum to 1, got {parts}")
        return example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
            example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=round(share * 1000))
            for name, share in parts.items()]))


@dataclass(frozen=True)
class TrainingSettings:
    """Which model kinds to train and their settings (custom_config of each Trainer)."""

    kinds: tuple[str, ...] = MODEL_KINDS
    #: kind -> config fields of that kind (pipeline/models/<kind>.py), e.g. {"gbt": {"num_trees": 200}}.
    configs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: TrainArgs.num_steps: upper bound on gradient steps per seed (None = the configs' epochs).
    train_steps: int | None = None
    #: Warm-start each Trainer from the last blessed model of its kind (TFX base_model).
    warm_start: bool = True

    def __post_init__(self) -> None:
        unknown = (set(self.kinds) | set(self.configs)) - set(MODEL_KINDS)
        if unknown:
            raise ValueError(f"unknown model kinds {sorted(unknown)} (known: {', '.join(MODEL_KINDS)})")
        if not self.kinds:
            raise ValueError("train at least one model kind")
        for name, config in self.configs.items():
            KINDS[name].config(config)  # fails early, naming the unknown field


@dataclass(frozen=True)
class TuningSettings:
    """TFX Tuner (KerasTuner) before the Trainers of `kinds`: a random search judged on validation
    AUPRC; the Trainer applies the best values. Off unless passed to create_pipeline."""

    kinds: tuple[str, ...] = ("supervised",)
    max_trials: int = 6
    epochs: int = 5  # per trial

    def __post_init__(self) -> None:
        untunable = [k for k in self.kinds if k not in KINDS or not KINDS[k].tunable]
        if untunable:
            raise ValueError(f"not tunable: {untunable} (tunable: {[k for k in KINDS if KINDS[k].tunable]})")
        if self.max_trials < 1 or self.epochs < 1:
            raise ValueError("max_trials and epochs must be >= 1")


def eval_config(gates: Gates) -> tfma.EvalConfig:
    """TFMA config: ranking and calibration metrics on `score`, precision/recall of `decision` (the
    shipped threshold), slices by amount band and hour of day, and the blessing thresholds."""
    auprc_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": gates.min_auprc}),
        change_threshold=tfma.GenericChangeThreshold(direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                                                     absolute={"value": -gates.max_auprc_drop}),
    )
    score_metrics = [
        tfma.MetricConfig(class_name="ExampleCount"),
        tfma.MetricConfig(class_name="AUC"),
        # Thresholds on the overall slice only: a slice with a handful of rows must not veto a model.
        tfma.MetricConfig(class_name="AUCPrecisionRecall", per_slice_thresholds=[
            tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()], threshold=auprc_threshold)]),
        tfma.MetricConfig(class_name="RecallAtFalsePositiveRate", config=json.dumps(
            {"false_positive_rate": ANCHOR_FPR, "name": "recall_at_1pct_fpr"})),
        tfma.MetricConfig(class_name="Calibration"),
        tfma.MetricConfig(class_name="MeanLabel"),
        tfma.MetricConfig(class_name="MeanPrediction"),
        tfma.MetricConfig(class_name="CalibrationPlot"),
        tfma.MetricConfig(class_name="ConfusionMatrixPlot"),
    ]
    decision_metrics = [
        tfma.MetricConfig(class_name="Precision"),
        tfma.MetricConfig(class_name="Recall"),
        tfma.MetricConfig(class_name="ConfusionMatrixAtThresholds", config=json.dumps({"thresholds": [0.5]})),
    ]
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name=signature.SIGNATURE_NAME,
            label_keys={signature.SCORE: LABEL_KEY, signature.DECISION: LABEL_KEY},
            preprocessing_function_names=[TRANSFORM_SIGNATURE],
        )],
        slicing_specs=[
            tfma.SlicingSpec(),
            tfma.SlicingSpec(feature_keys=[AMOUNT_BAND_KEY]),
            tfma.SlicingSpec(feature_keys=[HOUR_OF_DAY_KEY]),
        ],
        metrics_specs=[
            tfma.MetricsSpec(output_names=[signature.SCORE], metrics=score_metrics),
            tfma.MetricsSpec(output_names=[signature.DECISION], metrics=decision_metrics),
        ],
    )


def _infra_validator(kind: str, model: Any, examples: Any) -> Any | None:
    if kind == INFRA_NONE:
        return None
    if kind == INFRA_KUBERNETES:
        from components.k8s_infra_validator import KubernetesInfraValidator

        return KubernetesInfraValidator(
            model=model,
            examples=examples,
            serving_spec=tfx.proto.ServingSpec(
                tensorflow_serving=tfx.proto.TensorFlowServing(tags=["2.16.1"]),
                kubernetes=tfx.proto.KubernetesConfig(),
            ),
            request_spec=tfx.proto.RequestSpec(
                tensorflow_serving=tfx.proto.TensorFlowServingRequestSpec(signature_names=[signature.SIGNATURE_NAME]),
                split_name=EVAL_SPLIT,
                num_examples=10,
            ),
        )
    if kind == INFRA_LOCAL:
        from components.infra_validator import build_for_pipeline

        return build_for_pipeline(model=model, examples=examples, split_name=EVAL_SPLIT)
    raise ValueError(f"unknown infra validation {kind!r}")


def create_pipeline(
    *,
    pipeline_root: str,
    exports_dir: str,
    schema_file: str,
    serving_model_dir: str,
    pipeline_name: str = PIPELINE_NAME,
    topic: str = TRANSACTIONS.name,
    window_spans: int = 1,
    model_name: str = signature.DEFAULT_MODEL_NAME,
    metadata_connection_config: Any | None = None,
    beam_pipeline_args: Sequence[str] = (),
    splits: SplitFractions = SplitFractions(),
    training: TrainingSettings = TrainingSettings(),
    tuning: TuningSettings | None = None,
    gates: Gates = Gates(),
    infra_validation: str = INFRA_LOCAL,
    package_user_modules: bool = False,
    versioned_push: bool = True,
    enable_cache: bool = False,
) -> tfx.dsl.Pipeline:
    """Builds the pipeline (see the module docstring).

    package_user_modules: False (default) passes importable paths (`pipeline.modules.<file>.<fn>`): no
      wheel is built, the project must be importable where components run (this checkout, the image);
      True passes the module files and TFX builds and installs a wheel of pipeline/modules/ per component.
    versioned_push: True uses the integer-version, rename-into-place pusher (local file systems);
      False the stock Pusher (UNIX-timestamp versions; object stores have no atomic rename).
    window_spans: train on the latest N export spans as one dataset (exports are incremental).
    tuning: None (default, and the demo's) trains with the configured settings; TuningSettings runs a
      Tuner before the Trainers of its kinds.
    """
    example_gen = KafkaExportExampleGen(input_base=exports_dir, topic=topic, output_config=splits.output_config(),
                                        window_spans=window_spans)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.ImportSchemaGen(schema_file=schema_file)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    data_gate = DataValidationGate(anomalies=example_validator.outputs["anomalies"])

    user_code = _user_code(package_user_modules, training.kinds)
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        splits_config=tfx.proto.SplitsConfig(analyze=[TRAIN_SPLIT], transform=[TRAIN_SPLIT, VALIDATION_SPLIT]),
        disable_statistics=True,  # StatisticsGen already describes the raw data; saves a pass
        **user_code["transform"],
    )
    transform.add_upstream_node(data_gate)

    nodes: list[Any] = [example_gen, statistics_gen, schema_gen, example_validator, data_gate, transform]
    trainers = []
    for kind in training.kinds:
        extra: dict[str, Any] = {}
        if training.warm_start:
            # TFX's base-model resolver: the latest model of this Trainer that KindBlessing_<kind> blessed.
            base_model = tfx.dsl.Resolver(
                strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
                model=_channel(tfx.types.standard_artifacts.Model, f"Trainer_{kind}", "model"),
                model_blessing=_channel(tfx.types.standard_artifacts.ModelBlessing, f"KindBlessing_{kind}", "blessing"),
            ).with_id(f"base_model_{kind}")
            nodes.append(base_model)
            extra["base_model"] = base_model.outputs["model"]
        custom_config = {kind: dict(training.configs.get(kind, {}))}
        if tuning is not None and kind in tuning.kinds:
            tuner = tfx.components.Tuner(
                examples=transform.outputs["transformed_examples"],
                transform_graph=transform.outputs["transform_graph"],
                schema=schema_gen.outputs["schema"],
                train_args=tfx.proto.TrainArgs(splits=[TRAIN_SPLIT]),
                eval_args=tfx.proto.EvalArgs(splits=[VALIDATION_SPLIT]),
                custom_config={**custom_config, "tuning": {"max_trials": tuning.max_trials, "epochs": tuning.epochs}},
                **_tuner_code(package_user_modules, kind),
            ).with_id(f"Tuner_{kind}")
            nodes.append(tuner)
            extra["hyperparameters"] = tuner.outputs["best_hyperparameters"]
        trainer = tfx.components.Trainer(
            examples=transform.outputs["transformed_examples"],
            transform_graph=transform.outputs["transform_graph"],
            schema=schema_gen.outputs["schema"],
            train_args=tfx.proto.TrainArgs(splits=[TRAIN_SPLIT], num_steps=training.train_steps),
            eval_args=tfx.proto.EvalArgs(splits=[VALIDATION_SPLIT]),
            custom_config=custom_config,
            **extra,
            **user_code[kind],
        ).with_id(f"Trainer_{kind}")
        trainers.append(trainer)
        nodes.append(trainer)

    candidates = {kind: t.outputs["model"] for kind, t in zip(training.kinds, trainers, strict=True)}
    selector = ModelSelector(models=candidates).with_id(SELECTOR_ID)
    # The serving model: the latest selection the Evaluator blessed.
    serving_model = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=_channel(tfx.types.standard_artifacts.Model, SELECTOR_ID, "model"),
        model_blessing=_channel(tfx.types.standard_artifacts.ModelBlessing, EVALUATOR_ID, "blessing"),
    ).with_id("serving_model")
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=selector.outputs["model"],
        baseline_model=serving_model.outputs["model"],
        schema=schema_gen.outputs["schema"],
        eval_config=eval_config(gates),
        example_splits=[EVAL_SPLIT],
        **user_code["evaluator"],
    ).with_id(EVALUATOR_ID)
    scorecard = ModelScorecard(examples=example_gen.outputs["examples"], models=candidates, split=EVAL_SPLIT)
    nodes += [selector, serving_model, evaluator, scorecard]
    if training.warm_start:
        nodes += [KindBlessing(model=trainer.outputs["model"], selection=selector.outputs["model"],
                               verdict=evaluator.outputs["blessing"]).with_id(f"KindBlessing_{kind}")
                  for kind, trainer in zip(training.kinds, trainers, strict=True)]
    infra = _infra_validator(infra_validation, selector.outputs["model"], example_gen.outputs["examples"])
    pusher_args: dict[str, Any] = {
        "model": selector.outputs["model"],
        "model_blessing": evaluator.outputs["blessing"],
        "push_destination": tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
            base_directory=str(Path(serving_model_dir) / model_name) if "://" not in serving_model_dir
            else f"{serving_model_dir.rstrip('/')}/{model_name}")),
    }
    if infra is not None:
        nodes.append(infra)
        pusher_args["infra_blessing"] = infra.outputs["blessing"]
        if infra_validation == INFRA_LOCAL:
            # Push the validated copy (<blessing>/stamped_model), which carries the warm-up requests.
            del pusher_args["model"]
    if versioned_push:
        pusher_args["custom_executor_spec"] = executor_spec.ExecutorClassSpec(versioned_pusher.Executor)
    nodes.append(tfx.components.Pusher(**pusher_args))

    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=nodes,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(beam_pipeline_args),
    )


def _channel(artifact_type: Any, producer: str, key: str) -> Any:
    return tfx.dsl.Channel(type=artifact_type, producer_component_id=producer, output_key=key)


def _tuner_code(package: bool, kind: str) -> dict[str, str]:
    if package:
        return {"module_file": str(MODULES_DIR / f"{kind}_tuner.py")}
    return {"tuner_fn": f"pipeline.modules.{kind}_tuner.tuner_fn"}


def _user_code(package: bool, kinds: Sequence[str]) -> dict[str, dict[str, str]]:
    """Module files (TFX builds and installs a wheel of pipeline/modules/ per component) or importable
    paths (nothing built; the project must be importable where the component runs)."""
    files = {"transform": "transform_module", "evaluator": "evaluator_module",
             **{kind: f"{kind}_trainer" for kind in kinds}}
    if package:
        return {k: {"module_file": str(MODULES_DIR / f"{v}.py")} for k, v in files.items()}
    return {
        "transform": {"preprocessing_fn": f"pipeline.modules.{files['transform']}.preprocessing_fn"},
        "evaluator": {"module_path": f"pipeline.modules.{files['evaluator']}"},
        **{kind: {"run_fn": f"pipeline.modules.{files[kind]}.run_fn"} for kind in kinds},
    }
