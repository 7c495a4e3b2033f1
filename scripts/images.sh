#!/usr/bin/env bash
# `make images`: the project's container images, built with the local Docker engine.
#
#   fraud-tfx-base:TAG      deploy/docker/base.Dockerfile on ROOT (below): CPython 3.11, CA certificates, user 10001
#   fraud-tfx-kafka:TAG     deploy/docker/kafka.Dockerfile: Apache Kafka 4.1.1 + Connect from Maven Central jars
#   fraud-tfx-services:TAG  deploy/docker/services.Dockerfile: bridge, preprocessing, sink, topics
#   fraud-tfx-pipeline:TAG  Dockerfile: the TFX pipeline, the monitor, the model server
#
# ROOT is python:3.11-slim-bookworm when it is present or can be pulled; otherwise (no registry reachable)
# Debian bookworm from Debian's archive, deploy/docker/rootfs.sh (cached, rebuilt only when its inputs
# change). FRAUD_ROOT_IMAGE=<image> forces one. Every build step is cached by Docker: unchanged inputs
# rebuild in seconds. IMAGE_TAG (default 0.1.0) tags them; with REGISTRY=host/path/ they are also tagged
# REGISTRY<name>:TAG (for `docker push`). Build logs: FRAUD_HOME/logs/images/ (default var/ of the checkout).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tag="${IMAGE_TAG:-0.1.0}"
registry="${REGISTRY:-}"
python_image="${FRAUD_PYTHON_IMAGE:-python:3.11-slim-bookworm}"
logs="${FRAUD_HOME:-$root/var}/logs/images"
mkdir -p "$logs"
cd "$root"

"$root/scripts/install-docker.sh"
# The docker CLI's own builder is BuildKit through the buildx plugin; without the plugin, the engine's
# classic builder builds these Dockerfiles the same way (they use no BuildKit-only syntax).
if ! docker buildx version > /dev/null 2>&1; then
  export DOCKER_BUILDKIT=0
fi

mb() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%d MB", $1 / 1e6}'; }

all_start=$(date +%s)
root_image="${FRAUD_ROOT_IMAGE:-}"
if [ -z "$root_image" ]; then
  if docker image inspect "$python_image" > /dev/null 2>&1 \
     || timeout 180 docker pull -q "$python_image" > "$logs/pull.log" 2>&1; then
    root_image="$python_image"
  else
    echo "images: $python_image cannot be pulled ($(tail -1 "$logs/pull.log")); using Debian from its archive" >&2
    start=$(date +%s)
    root_image="$("$root/deploy/docker/rootfs.sh")"
    echo "images: root $root_image ($(mb "$root_image"), $(( $(date +%s) - start ))s)" >&2
  fi
fi

# The build machine's extra CA certificates (a TLS-intercepting egress); none on an ordinary machine.
certs="$root/deploy/docker/certs"
find "$certs" -maxdepth 1 -name '*.crt' -delete
if [ -d /usr/local/share/ca-certificates ]; then
  find /usr/local/share/ca-certificates -name '*.crt' -type f -exec cp {} "$certs/" \;
fi

build() {  # build NAME DOCKERFILE [docker build options...]
  local name="$1" dockerfile="$2" image="fraud-tfx-$1:$tag" start
  shift 2
  start=$(date +%s)
  if ! docker build --force-rm --file "$dockerfile" --tag "$image" "$@" . > "$logs/$name.log" 2>&1; then
    tail -25 "$logs/$name.log" >&2
    echo "images: building $image failed (log $logs/$name.log)" >&2
    exit 1
  fi
  if [ -n "$registry" ]; then
    docker tag "$image" "$registry$(basename "$image")"
  fi
  echo "images: $image  $(mb "$image")  $(( $(date +%s) - start ))s" >&2
}

build base deploy/docker/base.Dockerfile --build-arg "ROOT_IMAGE=$root_image"
base="BASE_IMAGE=fraud-tfx-base:$tag"
build kafka deploy/docker/kafka.Dockerfile --build-arg "$base"
build services deploy/docker/services.Dockerfile --build-arg "$base"
build pipeline Dockerfile --build-arg "$base"
echo "images: done in $(( $(date +%s) - all_start ))s (root $root_image; logs $logs)" >&2
