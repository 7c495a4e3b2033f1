"""Runs the pipeline in this process with TFX's LocalDagRunner (Beam DirectRunner, in memory).

Paths come from fraud.paths (FRAUD_HOME): exports read from `exports/`, pipeline root and MLMD
sqlite under `tfx/`, models pushed to `serving/models/<model name>/<version>`.

    python -m pipeline.local_runner        (or: fraudctl train)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tfx import v1 as tfx

from fraud.paths import Paths, load_paths
from pipeline.pipeline import create_pipeline
from schema import SCHEMA_FILE

#: An (empty) requirements file: it stops TFX from building a tfx_ephemeral sdist per Beam component.
BEAM_REQUIREMENTS = Path(__file__).resolve().parent / "beam_requirements.txt"
#: Small data and per-component start-up dominate locally: one in-memory Beam worker is fastest; see
#: beam_requirements.txt for the requirements file.
BEAM_ARGS: tuple[str, ...] = ("--direct_running_mode=in_memory", "--direct_num_workers=1",
                              f"--requirements_file={BEAM_REQUIREMENTS}")


def local_pipeline(paths: Paths, beam_args: Sequence[str] = BEAM_ARGS, **options: Any) -> tfx.dsl.Pipeline:
    """The pipeline wired to this installation's paths; `options` go to create_pipeline."""
    paths.pipeline_root.mkdir(parents=True, exist_ok=True)
    return create_pipeline(
        pipeline_root=str(paths.pipeline_root),
        exports_dir=str(paths.exports_dir),
        schema_file=str(SCHEMA_FILE),
        serving_model_dir=str(paths.serving_model_dir),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(paths.metadata_path)),
        beam_pipeline_args=beam_args,
        **options,
    )


def run(paths: Paths | None = None, **options: Any) -> None:
    tfx.orchestration.LocalDagRunner().run(local_pipeline(paths or load_paths(), **options))


if __name__ == "__main__":
    run()
    sys.exit(0)
