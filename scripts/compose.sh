#!/usr/bin/env bash
# `make compose-up` / `make compose-down`: the stack of deploy/docker-compose.yml on the local engine.
#
#   scripts/compose.sh up          the anonymization key (once), then `docker compose up -d`; waits until
#                                  Kafka, Connect, preprocessing, the bridge and the sink are healthy
#                                  (FRAUD_COMPOSE_TIMEOUT seconds, default 300) and prints every service
#   scripts/compose.sh down [-v]   `docker compose down` (-v also drops the volumes: Kafka's log, the warehouse)
#   scripts/compose.sh ARGS...     any other `docker compose` command on the same file (ps, logs bridge, ...)
#
# The images come from `make images` (nothing is pulled or built here). The model server and the monitor
# start too; they turn healthy once a model has been trained and pushed (deploy/README.md).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
compose=(docker compose -f "$root/deploy/docker-compose.yml")
tag="${FRAUD_IMAGE_TAG:-0.1.0}"
key="${FRAUD_ANONYMIZE_KEY_PATH:-$root/deploy/secrets/anonymize.key}"
# Services that are healthy without a trained model, and the one-shot that must have succeeded.
core=(kafka connect preprocessing bridge sink)

status() {  # service -> "state health exit-code", one line per container of the project
  "${compose[@]}" ps --all --format '{{.Service}} {{.State}} {{if .Health}}{{.Health}}{{else}}-{{end}} {{.ExitCode}}'
}

up() {
  "$root/scripts/install-docker.sh"
  if [ ! -s "$key" ]; then
    mkdir -p "$(dirname "$key")"
    # Readable by the containers' user (10001): compose mounts the file as it is.
    (umask 022; python3 -c 'import secrets; print(secrets.token_hex(32))' > "$key")
    echo "compose: new pseudonymization key in $key (keep it: pseudonyms change with it)" >&2
  fi
  local missing=()
  for name in kafka services pipeline; do
    local image="${FRAUD_IMAGE_REGISTRY:-}fraud-tfx-$name:$tag"
    [ "$name" = kafka ] && image="${FRAUD_KAFKA_IMAGE:-$image}"
    docker image inspect "$image" > /dev/null 2>&1 || missing+=("$image")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "compose: no image ${missing[*]}: run \`make images\` first" >&2
    exit 1
  fi
  local start timeout
  start=$(date +%s)
  timeout="${FRAUD_COMPOSE_TIMEOUT:-300}"
  "${compose[@]}" up --detach --remove-orphans --quiet-pull 2>&1 | grep -v -E '^ *(Container|Network|Volume) .* (Creat|Start|Running|Wait|Healthy|Exited|Recreat)' >&2 || true
  while true; do
    local lines waiting=() failed=()
    lines="$(status)"
    for svc in "${core[@]}"; do
      local line
      line="$(grep "^$svc " <<< "$lines" || true)"
      case "$line" in
        *" running healthy "*) ;;
        *" exited "* | *" dead "*) failed+=("$svc") ;;
        *) waiting+=("$svc") ;;
      esac
    done
    if grep -q '^topics exited - [1-9]' <<< "$lines"; then failed+=(topics); fi
    if [ ${#failed[@]} -gt 0 ]; then
      echo "compose: ${failed[*]} stopped; last lines:" >&2
      for svc in "${failed[@]}"; do "${compose[@]}" logs --tail 15 "$svc" >&2; done
      exit 1
    fi
    [ ${#waiting[@]} -eq 0 ] && break
    if [ $(( $(date +%s) - start )) -ge "$timeout" ]; then
      echo "compose: not healthy after ${timeout}s: ${waiting[*]} (scripts/compose.sh logs ${waiting[0]})" >&2
      exit 1
    fi
    sleep 2
  done
  echo "compose: up in $(( $(date +%s) - start ))s" >&2
  status | while read -r svc state health code; do
    note=""
    case "$svc/$health" in
      model-server/healthy | monitor/healthy) ;;
      model-server/*) note="  (no model version AVAILABLE yet: train and push one, deploy/README.md)" ;;
      monitor/*) note="  (drift needs a pushed model's training statistics; FRAUD_MONITOR_DRIFT=0 runs without)" ;;
    esac
    [ "$svc" = topics ] && health="exit $code"
    printf '  %-14s %-10s %s%s\n' "$svc" "$state" "$health" "$note" >&2
  done
  echo "compose: Kafka 127.0.0.1:${FRAUD_KAFKA_HOST_PORT:-9094}, Connect :${FRAUD_CONNECT_HOST_PORT:-8083}, model server :${FRAUD_SERVING_GRPC_HOST_PORT:-8500}/:${FRAUD_SERVING_REST_HOST_PORT:-8501}" >&2
}

case "${1:-}" in
  up) up ;;
  down) shift; "${compose[@]}" down --remove-orphans "$@" ;;
  "") sed -n '2,12p' "$0" >&2; exit 2 ;;
  *) "${compose[@]}" "$@" ;;
esac
