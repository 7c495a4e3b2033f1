#!/usr/bin/env bash
# Makes `docker` and `docker compose` work on this machine, for `make images` / `make compose-up`:
#   1. a Docker engine: Debian's docker.io (engine 20.10) installed with apt-get if dockerd is missing, and
#      dockerd started in the background (log: /var/log/fraud-dockerd.log) if no engine answers;
#   2. debootstrap, for the Debian root image built when no public registry is reachable (docker/rootfs.sh);
#   3. Docker Compose v2 as a docker CLI plugin if `docker compose` does not work: Debian has only Compose v1
#      (a Python program); v2 is built from its Go module (proxy.golang.org) with the Go toolchain, once,
#      and cached in FRAUD_CACHE (default ~/.cache/fraud-tfx).
# Idempotent: each step is skipped when what it provides already works. Installing and starting dockerd
# needs root; on a machine with Docker set up already, nothing here needs root.
set -euo pipefail
COMPOSE_VERSION=v2.40.3
cache="${FRAUD_CACHE:-$HOME/.cache/fraud-tfx}"
say() { echo "install-docker: $*" >&2; }
as_root() { [ "$(id -u)" = 0 ] || { say "$1 needs root (run as root, or do it by hand: $2)"; exit 1; }; }
apt_install() {
  as_root "installing $*" "apt-get install -y $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" > /dev/null 2>&1 || {
    apt-get update -qq > /dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" > /dev/null
  }
}

# 1. The engine.
if ! docker info > /dev/null 2>&1; then
  if ! command -v dockerd > /dev/null; then
    start=$(date +%s)
    apt_install docker.io
    say "installed docker.io ($(dockerd --version | cut -d, -f1)) in $(( $(date +%s) - start ))s"
  fi
  as_root "starting dockerd" "dockerd &"
  if [ -S /var/run/docker.sock ] && ! pgrep -x dockerd > /dev/null; then
    rm -f /var/run/docker.sock /var/run/docker.pid  # left by an engine that did not stop cleanly
  fi
  if ! pgrep -x dockerd > /dev/null; then
    nohup dockerd > /var/log/fraud-dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 60); do
    docker info > /dev/null 2>&1 && break
    sleep 1
  done
  docker info > /dev/null 2>&1 || { tail -5 /var/log/fraud-dockerd.log >&2; say "dockerd did not come up (log /var/log/fraud-dockerd.log)"; exit 1; }
  say "Docker engine $(docker info -f '{{.ServerVersion}}') running (storage driver $(docker info -f '{{.Driver}}'), log /var/log/fraud-dockerd.log)"
fi

# 2. debootstrap (only used when no registry is reachable, but small and cheap to have).
if ! command -v debootstrap > /dev/null; then
  apt_install debootstrap
fi

# 3. Compose v2.
if ! docker compose version > /dev/null 2>&1; then
  plugin="$cache/docker-compose-$COMPOSE_VERSION/docker-compose"
  if [ ! -x "$plugin" ]; then
    command -v go > /dev/null || { say "Go is needed to build Docker Compose $COMPOSE_VERSION (or install the docker-compose-plugin package)"; exit 1; }
    start=$(date +%s)
    say "building Docker Compose $COMPOSE_VERSION from its Go module (once, a few minutes) ..."
    src="$(GOFLAGS=-mod=mod go mod download -json "github.com/docker/compose/v2@$COMPOSE_VERSION" \
           | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    [ -d "$src" ] || { say "go mod download of github.com/docker/compose/v2@$COMPOSE_VERSION failed"; exit 1; }
    work="$(mktemp -d)"
    trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
    cp -r "$src/." "$work/" && chmod -R u+w "$work"
    # Built as the main module (not `go install`): compose's go.mod has exclude/replace directives.
    (cd "$work" && CGO_ENABLED=0 go build -trimpath -o "$work/docker-compose" \
        -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION" ./cmd)
    mkdir -p "$(dirname "$plugin")"
    mv "$work/docker-compose" "$plugin"
    say "built Docker Compose $COMPOSE_VERSION in $(( $(date +%s) - start ))s"
  fi
  plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
  mkdir -p "$plugins"
  ln -sf "$plugin" "$plugins/docker-compose"
  docker compose version > /dev/null || { say "docker compose does not run after installing $plugin"; exit 1; }
  say "$(docker compose version) (plugin $plugins/docker-compose)"
fi
