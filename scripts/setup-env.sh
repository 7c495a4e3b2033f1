#!/usr/bin/env bash
# Creates .venv and installs the pinned stack plus this project (editable).
# Idempotent: does nothing when requirements.lock and setup.py are unchanged since the last install.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.fraud-install-stamp"
python="${FRAUD_PYTHON:-python3.11}"
want="$(cat "$root/requirements.lock" "$root/setup.py" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi
command -v "$python" >/dev/null || { echo "setup-env: $python not found (CPython 3.11 is required)" >&2; exit 1; }
start=$(date +%s)
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# The lock is resolved for 3.10 markers (tfx 1.16 declares <3.11); no resolver runs here.
PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/pip" install --quiet --no-deps --ignore-requires-python \
  --prefer-binary -r "$root/requirements.lock"
PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/pip" install --quiet --no-deps --no-build-isolation -e "$root"
echo "$want" > "$stamp"
echo "setup-env: installed into $venv in $(( $(date +%s) - start ))s"
