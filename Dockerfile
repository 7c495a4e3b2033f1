# The pipeline image: the TFX 1.16 stack as pinned and tested here (CPython 3.11) plus this project.
#
#   scripts/images.sh     (make images: builds fraud-tfx-base first, then this with BASE_IMAGE set)
#   docker run --rm -v "$PWD/var:/var/lib/fraud" fraud-tfx-pipeline:0.1.0 train
#
# It runs:
# - `fraudctl train` (LocalDagRunner / BeamDagRunner) on FRAUD_HOME=/var/lib/fraud: exports in, models out;
# - every TFX component of a Kubeflow Pipelines V2 run: KubeflowV2DagRunner's container spec sets the
#   command itself (python -m tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor), so that
#   module only has to be importable, with the project's components and module files beside it;
# - the monitor (TFDV drift against the pipeline's statistics) and the model server (`fraudctl serve`,
#   TF Serving's API) in docker compose.
#
# Layers, most stable first: the base; the venv with deploy/requirements-pipeline.lock (the TFX stack,
# ~3 GB, rebuilt only when the lock changes); the project's wheel (rebuilt when the sources change).
ARG BASE_IMAGE=fraud-tfx-base:0.1.0

# The project's wheel; identical in deploy/docker/services.Dockerfile, so both builds share its cache.
FROM ${BASE_IMAGE} AS wheel
COPY deploy/requirements-build.lock /tmp/requirements-build.lock
RUN python3 -m venv /tmp/build \
 && /tmp/build/bin/pip install --quiet --no-deps --only-binary=:all: -r /tmp/requirements-build.lock
COPY . /src
RUN /tmp/build/bin/pip wheel --quiet --no-deps --no-build-isolation --wheel-dir /wheels /src

# Wheels of the few pins published as source only (dill 0.3.1.1, pyfarmhash, kfp, ...), built with a
# compiler that stays in this stage: the final stage installs wheels only.
FROM ${BASE_IMAGE} AS sdists
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends g++ > /dev/null \
 && (python3 -c "import os, sys, sysconfig; sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
     || apt-get install -y -qq --no-install-recommends python3-dev > /dev/null) \
 && rm -rf /var/lib/apt/lists/*
COPY deploy/docker/pins.py deploy/requirements-build.lock deploy/requirements-pipeline.lock /tmp/pins/
RUN python3 -m venv /tmp/build \
 && /tmp/build/bin/pip install --quiet --no-deps --only-binary=:all: -r /tmp/pins/requirements-build.lock \
 && /tmp/build/bin/python /tmp/pins/pins.py build-sdists /tmp/pins/requirements-pipeline.lock --wheel-dir /wheels

FROM ${BASE_IMAGE}
# tfx and ml-pipelines-sdk 1.16 declare Requires-Python <3.11 but are pure Python and run on 3.11 (the
# lock is resolved for 3.10 markers, see requirements.in): hence --ignore-requires-python.
COPY deploy/requirements-pipeline.lock /tmp/requirements-pipeline.lock
COPY --from=sdists /wheels /tmp/sdist-wheels
RUN python3 -m venv /opt/fraud \
 && /opt/fraud/bin/pip install --quiet --no-deps --ignore-requires-python --only-binary=:all: \
      --find-links /tmp/sdist-wheels -r /tmp/requirements-pipeline.lock \
 && rm -rf /tmp/requirements-pipeline.lock /tmp/sdist-wheels \
 && /opt/fraud/bin/python -c "import tensorflow as tf, tfx; assert tfx.__version__ == '1.16.0', tfx.__version__; assert tf.__version__.startswith('2.16.'), tf.__version__"
COPY --from=wheel /wheels /tmp/wheels
RUN /opt/fraud/bin/pip install --quiet --no-deps /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && /opt/fraud/bin/python -c "import tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor, pipeline.pipeline, monitoring.monitor, serving.server" \
 && /opt/fraud/bin/fraudctl --help > /dev/null \
 && /opt/fraud/bin/fraudctl preprocess check-rules > /dev/null
# The health check (deploy/docker/healthcheck.py) in a late layer: editing it rebuilds seconds.
COPY deploy/docker/healthcheck.py /usr/local/bin/fraud-healthcheck
# `python` first on PATH is the venv's: Kubeflow's `python -m ...` command finds TFX and the project.
# Matplotlib's cache goes to /tmp: the user's home (FRAUD_HOME) may be mounted read-only (the model server).
ENV PATH=/opt/fraud/bin:$PATH \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /var/lib/fraud
# The monitor's /healthz, /readyz, /metrics; the model server's gRPC and REST ports.
EXPOSE 9467 8500 8501
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=6 CMD ["fraud-healthcheck"]
ENTRYPOINT ["fraudctl"]
CMD ["--help"]
