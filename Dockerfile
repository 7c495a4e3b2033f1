# syntax=docker/dockerfile:1
# The pipeline image: the official TFX 1.16 image plus this project.
#
#   docker build -t fraud-tfx-pipeline:0.1.0 .
#
# Kubeflow Pipelines (V2) runs every TFX component of pipeline/ in this image: KubeflowV2DagRunner's
# container spec sets the command itself (python -m tfx.orchestration.kubeflow.v2.container.
# kubeflow_v2_run_executor, see tfx/orchestration/kubeflow/v2/kubeflow_v2_dag_runner.py), so that
# module only has to be importable here, with the project's components and module files beside it.
# The entrypoint stays the base's (/opt/apache/beam/boot), so the same image is also the Beam SDK
# harness for Dataflow/Flink/Spark (pipeline/beam_runner.py --environment-type DOCKER).
# The monitor (TFDV drift against the pipeline's statistics) runs from this image too: entrypoint fraudctl.
#
# The base ships Python 3.10 (conda), TensorFlow 2.16, TFX/TFT/TFDV/TFMA 1.16 and Beam: nothing of it is
# reinstalled. deploy/requirements-pipeline.lock has the project's own dependencies at the project's pins;
# only those the base lacks are installed (--no-deps), then the project itself (--no-deps).
ARG TFX_IMAGE=gcr.io/tfx-oss-public/tfx:1.16.0
FROM ${TFX_IMAGE}

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    FRAUD_HOME=/var/lib/fraud \
    FRAUD_CACHE=/var/cache/fraud

WORKDIR /opt/fraud-tfx
COPY deploy/docker/pins.py deploy/docker/pins.py
COPY deploy/requirements-pipeline.lock deploy/requirements-pipeline.lock
RUN python deploy/docker/pins.py install-missing deploy/requirements-pipeline.lock

COPY setup.py pyproject.toml ./
COPY fraud fraud
COPY schema schema
COPY components components
COPY pipeline pipeline
COPY serving serving
COPY kafka_bridge kafka_bridge
COPY preprocessing preprocessing
COPY monitoring monitoring
COPY warehouse warehouse
COPY fraudctl fraudctl
RUN python -m pip install --no-deps . \
 && python -c "import tensorflow as tf, tfx; assert tfx.__version__ == '1.16.0', tfx.__version__; assert tf.__version__.startswith('2.16.'), tf.__version__" \
 && python -c "import tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor, pipeline.pipeline, monitoring.monitor" \
 && fraudctl --help > /dev/null \
 && fraudctl preprocess check-rules > /dev/null \
 && rm -rf build *.egg-info

# The user the compose file and the Kubernetes manifests run the monitor as (Kubeflow runs as the image's
# default user, root, as with the stock TFX image).
RUN groupadd --system --gid 10001 fraud \
 && useradd --system --uid 10001 --gid fraud --home-dir /var/lib/fraud --no-create-home --shell /usr/sbin/nologin fraud \
 && mkdir -p /var/lib/fraud /var/cache/fraud \
 && chown fraud:fraud /var/lib/fraud /var/cache/fraud
