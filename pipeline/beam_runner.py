"""Runs the pipeline with TFX's BeamDagRunner: the components themselves are steps of a Beam
pipeline, and each component's own Beam work uses the arguments below.

Default: Beam's DirectRunner in multi-processing mode (one worker per core). The same pipeline runs
on a cluster by switching the arguments (see `beam_args`):

    python -m pipeline.beam_runner                                   # DirectRunner, all cores
    python -m pipeline.beam_runner --runner flink --flink-master host:8081
    python -m pipeline.beam_runner --runner spark --spark-master-url spark://host:7077
    python -m pipeline.beam_runner --runner dataflow --project P --region R --temp-location gs://B/tmp

Flink and Spark run Python through Beam's portability framework: the workers need an SDK harness
(`--environment-type DOCKER` with an image that has this project installed, or EXTERNAL/LOOPBACK).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner

from fraud.paths import Paths, load_paths
from pipeline.local_runner import local_pipeline

RUNNERS = ("direct", "flink", "spark", "dataflow")


def beam_args(runner: str = "direct", *, workers: int = 0, flink_master: str | None = None,
              spark_master_url: str | None = None, project: str | None = None, region: str | None = None,
              temp_location: str | None = None, environment_type: str | None = None,
              environment_config: str | None = None) -> list[str]:
    """Beam pipeline arguments for one of RUNNERS (the only place they are spelled out)."""
    if runner == "direct":
        return ["--runner=DirectRunner", "--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    portable = []
    if environment_type:
        portable.append(f"--environment_type={environment_type}")
    if environment_config:
        portable.append(f"--environment_config={environment_config}")
    if runner == "flink":
        if not flink_master:
            raise ValueError("the Flink runner needs --flink-master host:port")
        return ["--runner=FlinkRunner", f"--flink_master={flink_master}", "--parallelism=-1", *portable]
    if runner == "spark":
        if not spark_master_url:
            raise ValueError("the Spark runner needs --spark-master-url spark://host:port")
        return ["--runner=SparkRunner", f"--spark_master_url={spark_master_url}", *portable]
    if runner == "dataflow":
        missing = [n for n, v in (("--project", project), ("--region", region), ("--temp-location", temp_location))
                   if not v]
        if missing:
            raise ValueError(f"the Dataflow runner needs {', '.join(missing)}")
        return ["--runner=DataflowRunner", f"--project={project}", f"--region={region}",
                f"--temp_location={temp_location}", "--experiments=use_runner_v2"]
    raise ValueError(f"unknown runner {runner!r} (one of {', '.join(RUNNERS)})")


def run(paths: Paths | None = None, args: Sequence[str] = (), **options: Any) -> None:
    pipeline = local_pipeline(paths or load_paths(), beam_args=list(args) or beam_args(), **options)
    BeamDagRunner().run(pipeline)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runner", choices=RUNNERS, default="direct")
    parser.add_argument("--workers", type=int, default=0, help="DirectRunner processes (0 = one per core)")
    for flag in ("--flink-master", "--spark-master-url", "--project", "--region", "--temp-location",
                 "--environment-type", "--environment-config"):
        parser.add_argument(flag)
    a = parser.parse_args(argv)
    run(args=beam_args(a.runner, workers=a.workers, flink_master=a.flink_master, spark_master_url=a.spark_master_url,
                       project=a.project, region=a.region, temp_location=a.temp_location,
                       environment_type=a.environment_type, environment_config=a.environment_config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
