#!/usr/bin/env bash
# Re-resolves requirements.in into the fully pinned requirements.lock.
# Resolution targets Python 3.10 markers because tfx/ml-pipelines-sdk 1.16 declare Requires-Python <3.11;
# the pinned set is then installed on 3.11 with --no-deps --ignore-requires-python (scripts/setup-env.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="${FRAUD_CACHE:-$HOME/.cache/fraud-tfx}/uv-tool"
if [ ! -x "$tools/bin/uv" ]; then
  python3.11 -m venv "$tools"
  "$tools/bin/pip" install --quiet 'uv==0.13.9'
fi
"$tools/bin/uv" pip compile --quiet --python-version 3.10 --python-platform x86_64-manylinux_2_36 \
  --no-header --annotation-style line --override "$root/requirements-overrides.txt" \
  "$root/requirements.in" -o "$root/requirements.lock"
{
  echo "# Fully pinned by scripts/lock.sh from requirements.in; do not edit by hand."
  echo "# Install: pip install --no-deps --ignore-requires-python --prefer-binary -r requirements.lock"
  cat "$root/requirements.lock"
} > "$root/requirements.lock.tmp"
mv "$root/requirements.lock.tmp" "$root/requirements.lock"
echo "requirements.lock: $(grep -c '==' "$root/requirements.lock") pins"
# The images' pinned subsets are derived from the lock (deploy/docker/pins.py); keep them in step.
for subset in "$root"/deploy/requirements-*.lock; do
  python3.11 "$root/deploy/docker/pins.py" subset "$subset"
done
