# The services image: the Kafka -> gRPC -> Kafka scoring bridge, the preprocessing job, the warehouse sink
# and the topic initializer. None of them imports TensorFlow, so it holds only the streaming path's pins
# and the sink's BigQuery client (deploy/requirements-services.lock, a closure of requirements.lock).
# The monitor and the model server need TensorFlow/TFDV and run from the pipeline image (../../Dockerfile).
#
#   scripts/images.sh     (make images: builds fraud-tfx-base first, then this with BASE_IMAGE set)
#   docker run --rm fraud-tfx-services:0.1.0 bridge run --help
#
# Layers, most stable first: the base; the venv with the pinned lock (rebuilt only when the lock changes);
# the project's wheel (rebuilt when the sources change, a few seconds).
ARG BASE_IMAGE=fraud-tfx-base:0.1.0

# The project's wheel, built from the sources setup.py packages (whatever its PACKAGES are) with the pinned
# build tools. Identical in ../../Dockerfile, so both builds share this stage's cache.
FROM ${BASE_IMAGE} AS wheel
COPY deploy/requirements-build.lock /tmp/requirements-build.lock
RUN python3 -m venv /tmp/build \
 && /tmp/build/bin/pip install --quiet --no-deps --only-binary=:all: -r /tmp/requirements-build.lock
COPY . /src
RUN /tmp/build/bin/pip wheel --quiet --no-deps --no-build-isolation --wheel-dir /wheels /src

FROM ${BASE_IMAGE}
COPY deploy/requirements-services.lock /tmp/requirements-services.lock
RUN python3 -m venv /opt/fraud \
 && /opt/fraud/bin/pip install --quiet --no-deps --only-binary=:all: -r /tmp/requirements-services.lock \
 && rm /tmp/requirements-services.lock
COPY --from=wheel /wheels /tmp/wheels
RUN /opt/fraud/bin/pip install --quiet --no-deps /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && /opt/fraud/bin/fraudctl --help > /dev/null \
 && /opt/fraud/bin/fraudctl bridge run --help > /dev/null \
 && /opt/fraud/bin/fraudctl preprocess check-rules > /dev/null
# The health check (deploy/docker/healthcheck.py) in a late layer: editing it rebuilds seconds.
COPY deploy/docker/healthcheck.py /usr/local/bin/fraud-healthcheck
ENV PATH=/opt/fraud/bin:$PATH
USER 10001:10001
WORKDIR /var/lib/fraud
# /healthz, /readyz and /metrics of the bridge, preprocessing and sink (their FRAUD_*_HTTP_PORT).
EXPOSE 9464 9465 9466
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=6 CMD ["fraud-healthcheck"]
ENTRYPOINT ["fraudctl"]
CMD ["--help"]
