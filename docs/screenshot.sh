#!/usr/bin/env bash
# Screenshots of the MLflow UI after the smoke study, for the README, with headless Chromium
# (Debian's `chromium` package) driven by docs/screenshot.py. About 3 minutes on 2 cores:
#   bash docs/screenshot.sh
# Needs the project's venv (.venv) and `apt-get install -y chromium`.
set -euo pipefail
cd "$(dirname "$0")/.."
export TRANSINV_HOME=$(mktemp -d)
.venv/bin/python -m study run search_spaces/smoke.yaml > /dev/null
.venv/bin/python -m study ui --port 5055 > /dev/null & ui=$!
trap 'kill $ui' EXIT
for _ in $(seq 60); do
  curl -sf http://127.0.0.1:5055/health > /dev/null && break
  sleep 1
done
.venv/bin/python docs/screenshot.py http://127.0.0.1:5055 smoke docs
