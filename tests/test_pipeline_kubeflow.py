"""The Kubeflow V2 runner compiles the pipeline; the IR JSON is inspected: components, images,
parameters, dependencies."""

from __future__ import annotations

import json

import pytest

from pipeline.kubeflow_v2_runner import compile_pipeline
from pipeline.pipeline import MODEL_KINDS, Gates

IMAGE = "registry.example.com/fraud-tfx:1.2.3"


@pytest.fixture(scope="module")
def ir(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("kfp") / "fraud.json"
    compile_pipeline(image=IMAGE, root="gs://fraud-bucket/prod/", output=out, project="proj", region="europe-west1",
                     gates=Gates(min_auprc=0.42, max_auprc_drop=0.01), window_spans=7)
    return json.loads(out.read_text())["pipelineSpec"]


def _param(ir: dict, task: str, name: str):
    value = ir["root"]["dag"]["tasks"][task]["inputs"]["parameters"][name]["runtimeValue"]["constantValue"]
    return next(iter(value.values()))


def test_every_component_is_a_task_on_the_project_image(ir: dict) -> None:
    tasks = set(ir["root"]["dag"]["tasks"])
    assert {"KafkaExportExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "DataValidationGate",
            "Transform", *(f"Trainer_{k}" for k in MODEL_KINDS), *(f"KindBlessing_{k}" for k in MODEL_KINDS),
            "ModelSelector", "ModelScorecard", "Evaluator", "KubernetesInfraValidator", "Pusher"} <= tasks
    # The stock base-model resolver per kind (warm start) and for the serving model compile on Kubeflow.
    assert all(any(t.startswith(f"base_model_{k}") for t in tasks) for k in MODEL_KINDS)
    assert any(t.startswith("serving_model") for t in tasks)
    executors = ir["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values() if "container" in e}
    assert images == {IMAGE}
    # The stock InfraValidator executor, and the span-resolving driver step for the ExampleGen.
    assert "tfx.components.infra_validator.executor.Executor" in executors["KubernetesInfraValidator_executor"][
        "container"]["args"]
    example_gen = executors["KafkaExportExampleGen_executor"]["container"]
    assert "components.kafka_export_example_gen.executor.Executor" in example_gen["args"]
    assert "tfx.orchestration.kubeflow.v2.file_based_example_gen.driver" in example_gen["lifecycle"]["preCacheCheck"][
        "command"]
    assert "--runner=DataflowRunner" in example_gen["args"] and "--project=proj" in example_gen["args"]


def test_parameters(ir: dict) -> None:
    input_config = json.loads(_param(ir, "KafkaExportExampleGen", "input_config"))
    assert input_config["splits"][0]["pattern"] == "span-{SPAN:8}/fraud.transactions/partition=*/fraud.transactions+*"
    assert _param(ir, "KafkaExportExampleGen", "input_base") == "gs://fraud-bucket/prod/exports"
    assert int(_param(ir, "KafkaExportExampleGen", "window_spans")) == 7
    output_config = json.loads(_param(ir, "KafkaExportExampleGen", "output_config"))
    assert [s["name"] for s in output_config["split_config"]["splits"]] == ["train", "validation", "eval"]
    assert _param(ir, "Transform", "preprocessing_fn") == "pipeline.modules.transform_module.preprocessing_fn"
    assert _param(ir, "Trainer_autoencoder", "run_fn") == "pipeline.modules.autoencoder_trainer.run_fn"
    assert json.loads(_param(ir, "Trainer_supervised", "eval_args"))["splits"] == ["validation"]
    assert _param(ir, "Trainer_gbt", "run_fn") == "pipeline.modules.gbt_trainer.run_fn"
    assert _param(ir, "Evaluator", "module_path") == "pipeline.modules.evaluator_module"
    eval_config = json.loads(_param(ir, "Evaluator", "eval_config"))
    thresholds = [t for m in eval_config["metrics_specs"][0]["metrics"] for t in m.get("per_slice_thresholds", [])]
    assert thresholds[0]["threshold"]["value_threshold"]["lower_bound"] == 0.42
    assert thresholds[0]["threshold"]["change_threshold"]["absolute"] == -0.01
    push = json.loads(_param(ir, "Pusher", "push_destination"))
    assert push["filesystem"]["base_directory"] == "gs://fraud-bucket/prod/serving/models/fraud"


def test_dependencies(ir: dict) -> None:
    tasks = ir["root"]["dag"]["tasks"]
    assert "DataValidationGate" in tasks["Transform"]["dependentTasks"]
    pusher_inputs = tasks["Pusher"]["inputs"]["artifacts"]
    assert pusher_inputs["model"]["taskOutputArtifact"]["producerTask"] == "ModelSelector"
    assert pusher_inputs["model_blessing"]["taskOutputArtifact"]["producerTask"] == "Evaluator"
    assert pusher_inputs["infra_blessing"]["taskOutputArtifact"]["producerTask"] == "KubernetesInfraValidator"
    evaluator = tasks["Evaluator"]["inputs"]["artifacts"]
    assert evaluator["model"]["taskOutputArtifact"]["producerTask"] == "ModelSelector"
    assert "baseline_model" in evaluator
    assert "base_model" in tasks["Trainer_supervised"]["inputs"]["artifacts"]
