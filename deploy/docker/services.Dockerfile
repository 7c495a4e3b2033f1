# syntax=docker/dockerfile:1
# The services image: the Kafka -> gRPC -> Kafka scoring bridge, the preprocessing job, the warehouse
# sink and the topic initializer. None of them imports TensorFlow, so this is a slim Python image with only
# the streaming path's pins and the sink's BigQuery client (deploy/requirements-services.lock, a closure
# of requirements.lock).
# The monitor needs TFDV and MLMD and runs from the pipeline image (../../Dockerfile) instead.
#
#   docker build -f deploy/docker/services.Dockerfile -t fraud-tfx-services:0.1.0 .
#   docker run --rm fraud-tfx-services:0.1.0 bridge run --help
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/fraud
COPY deploy/requirements-services.lock /tmp/requirements-services.lock
RUN /opt/fraud/bin/pip install --no-deps --only-binary=:all: -r /tmp/requirements-services.lock
WORKDIR /src
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
RUN /opt/fraud/bin/pip install --no-deps . \
 && /opt/fraud/bin/fraudctl --help > /dev/null \
 && /opt/fraud/bin/fraudctl bridge run --help > /dev/null \
 && /opt/fraud/bin/fraudctl preprocess check-rules > /dev/null

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 fraud \
 && useradd --system --uid 10001 --gid fraud --home-dir /var/lib/fraud --no-create-home --shell /usr/sbin/nologin fraud \
 && mkdir -p /var/lib/fraud /var/cache/fraud \
 && chown fraud:fraud /var/lib/fraud /var/cache/fraud
COPY --from=build /opt/fraud /opt/fraud
ENV PATH=/opt/fraud/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FRAUD_HOME=/var/lib/fraud \
    FRAUD_CACHE=/var/cache/fraud
USER 10001:10001
WORKDIR /var/lib/fraud
# /healthz, /readyz and /metrics of the bridge, preprocessing and sink (see deploy/docker-compose.yml).
EXPOSE 9464 9465 9466
ENTRYPOINT ["fraudctl"]
CMD ["--help"]
