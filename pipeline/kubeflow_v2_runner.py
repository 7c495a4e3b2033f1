"""Compiles the pipeline for Kubeflow Pipelines V2 / Vertex AI Pipelines (the IR JSON file).

Everything lives in object storage there, the image has this project installed (module code is
referenced by dotted path, not packaged), models are validated by TFX's stock InfraValidator on
Kubernetes, and pushed by the stock Pusher (integer UNIX-timestamp versions; object stores have no
atomic rename). Components' Beam work runs on Dataflow when --project/--region are given.

    python -m pipeline.kubeflow_v2_runner --image REGISTRY/fraud-tfx:TAG --root gs://BUCKET/fraud \
        [--project P --region R] [--output fraud_pipeline.json]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tfx import v1 as tfx

from pipeline.beam_runner import beam_args
from pipeline.pipeline import INFRA_KUBERNETES, PIPELINE_NAME, Gates, create_pipeline

DEFAULT_OUTPUT = "fraud_pipeline.json"


def compile_pipeline(*, image: str, root: str, output: Path, project: str | None = None, region: str | None = None,
                     gates: Gates | None = None, window_spans: int = 1) -> Path:
    """Writes the pipeline's IR JSON to `output` and returns its path."""
    root = root.rstrip("/")
    args = beam_args("dataflow", project=project, region=region, temp_location=f"{root}/tmp") if project and region \
        else beam_args("direct")
    pipeline = create_pipeline(
        pipeline_root=f"{root}/tfx",
        exports_dir=f"{root}/exports",
        schema_file=f"{root}/schema/schema.pbtxt",  # upload schema/schema.pbtxt there with the exports
        serving_model_dir=f"{root}/serving/models",
        beam_pipeline_args=args,
        gates=gates or Gates(),
        window_spans=window_spans,
        infra_validation=INFRA_KUBERNETES,
        package_user_modules=False,
        versioned_push=False,
    )
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=str(output.parent), output_filename=output.name)
    runner.run(pipeline, write_out=True)
    return output


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="container image with this project installed")
    parser.add_argument("--root", required=True, help="object-store root, e.g. gs://bucket/fraud")
    parser.add_argument("--project")
    parser.add_argument("--region")
    parser.add_argument("--output", type=Path, default=Path(DEFAULT_OUTPUT))
    parser.add_argument("--window-spans", type=int, default=1, metavar="N",
                        help="train on the latest N export spans as one dataset (default 1)")
    a = parser.parse_args(argv)
    if a.window_spans < 1:
        parser.error(f"--window-spans={a.window_spans}: must be at least 1")
    path = compile_pipeline(image=a.image, root=a.root, output=a.output.resolve(), project=a.project, region=a.region,
                            window_spans=a.window_spans)
    print(f"{PIPELINE_NAME}: IR written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
