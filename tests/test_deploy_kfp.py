"""`make kfp-compile` builds an IR that runs on the pipeline image, and pushes where prod's TF Serving reads.

The Kubeflow V2 IR is compiled with the Makefile's own image and root; then every executor class, driver
module and module-file function the IR names must be importable from what ./Dockerfile installs (TFX
from deploy/requirements-pipeline.lock, the project's packages from its wheel), on the image `make images`
builds and the prod overlay deploys. tests/test_pipeline_kubeflow.py checks the pipeline's content; this checks the deployment.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import deploy_helpers as h
import pytest
import yaml

from fraud import signature

# Compiling the IR imports all of TFX and takes 40-80 s on this machine (tests/test_pipeline_kubeflow.py
# already compiles once in the default run): `make test-slow` runs these.
pytestmark = pytest.mark.slow


def _make_kfp_args() -> dict[str, str]:
    dry = subprocess.run(["make", "-n", "kfp-compile"], cwd=h.ROOT, capture_output=True, text=True, timeout=30)
    assert dry.returncode == 0, dry.stderr
    line = next(ln for ln in dry.stdout.splitlines() if "-m pipeline.kubeflow_v2_runner" in ln).split()
    return {line[i][2:]: line[i + 1] for i in range(len(line) - 1) if line[i].startswith("--")}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], dict[str, Any]]:
    from pipeline.kubeflow_v2_runner import main

    args = _make_kfp_args()
    out = tmp_path_factory.mktemp("kfp") / Path(args["output"]).name
    assert main(["--image", args["image"], "--root", args["root"], "--output", str(out)]) == 0
    return args, json.loads(out.read_text())["pipelineSpec"]


def _copied_packages() -> set[str]:
    """Top-level packages of the project the image installs: its wheel, built from the whole build context
    (tests/test_deploy.py checks that every package of setup.py is in that context)."""
    return set(h.setup_packages())


def _importable_from_image(dotted: str) -> Any:
    """The object at `dotted` (module.attr), whose top-level package the pipeline image has."""
    top = dotted.split(".")[0]
    assert top == "tfx" or top in _copied_packages(), f"{dotted}: package {top} is not in the pipeline image"
    assert "tfx" in h.lock_names(h.PIPELINE_LOCK)
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def test_ir_runs_every_step_on_the_pipeline_image(compiled: tuple[dict[str, str], dict[str, Any]]) -> None:
    from tfx.orchestration.kubeflow.v2.kubeflow_v2_dag_runner import KUBEFLOW_TFX_CMD

    args, ir = compiled
    prod = yaml.safe_load((h.K8S / "overlays" / "prod" / "kustomization.yaml").read_text())
    (pipeline_image,) = [f"{i['newName']}:{i['newTag']}" for i in prod["images"] if i["name"] == "fraud-tfx-pipeline"]
    assert args["image"] == pipeline_image
    containers = [e["container"] for e in ir["deploymentSpec"]["executors"].values() if "container" in e]
    assert len(containers) >= 10
    for c in containers:
        assert c["image"] == pipeline_image
        assert tuple(c["command"]) == KUBEFLOW_TFX_CMD
        path = c["args"][c["args"].index("--executor_class_path") + 1]
        executor = _importable_from_image(path)
        assert isinstance(executor, type), path
        if "lifecycle" in c:
            command = c["lifecycle"]["preCacheCheck"]["command"]
            assert command[:2] == ["python", "-m"] and importlib.util.find_spec(command[2]) is not None


def test_ir_module_functions_are_in_the_pipeline_image(compiled: tuple[dict[str, str], dict[str, Any]]) -> None:
    _, ir = compiled
    text = json.dumps(ir)
    functions = set(re.findall(r'"((?:pipeline|components)\.[\w.]+\.(?:preprocessing_fn|run_fn|stats_options_updater_fn))"',
                               text))
    assert {"pipeline.modules.transform_module.preprocessing_fn", "pipeline.modules.autoencoder_trainer.run_fn"} <= functions
    for dotted in functions:
        assert callable(_importable_from_image(dotted)), dotted


def test_pipeline_pushes_where_prod_tf_serving_reads(compiled: tuple[dict[str, str], dict[str, Any]]) -> None:
    args, ir = compiled
    params = ir["root"]["dag"]["tasks"]["Pusher"]["inputs"]["parameters"]
    destination = json.loads(next(iter(params["push_destination"]["runtimeValue"]["constantValue"].values())))
    pushed_to = destination["filesystem"]["base_directory"]
    docs = h.kustomize_build(h.K8S / "overlays" / "prod") if h.kubectl() else None
    if docs is None:
        pytest.skip("kubectl is not installed")
    (serving,) = [w for w in h.workloads(docs) if w.name == "tf-serving"]
    assert pushed_to == f"{serving.env['MODEL_BASE_PATH']}/{serving.env['MODEL_NAME']}"
    assert pushed_to == f"{args['root']}/serving/models/{signature.DEFAULT_MODEL_NAME}"
