#!/usr/bin/env bash
# Screenshots of the MLflow UI after the smoke study, with headless Chromium (Debian's
# `chromium` package). About 2 minutes:   bash docs/screenshot.sh
# Needs the project's venv (.venv) and `apt-get install chromium`.
set -euo pipefail
cd "$(dirname "$0")/.."
export TRANSINV_HOME=$(mktemp -d)
.venv/bin/python -m study run search_spaces/smoke.yaml > /dev/null
.venv/bin/python -m study ui --port 5055 > /dev/null & ui=$!
trap 'kill $ui' EXIT
sleep 12
read -r exp run < <(.venv/bin/python -c "
from mlflow import MlflowClient
c = MlflowClient('http://127.0.0.1:5055'); e = c.get_experiment_by_name('smoke')
r = c.search_runs([e.experiment_id], \"tags.\`transinv.role\` = 'trial'\")[0]
print(e.experiment_id, r.info.run_id)")
shot() {
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$(mktemp -d)" --window-size=1600,1000 --virtual-time-budget=20000 \
    --screenshot="$1" "$2" > /dev/null 2>&1
}
shot docs/mlflow_study.png "http://127.0.0.1:5055/#/experiments/$exp/runs"
shot docs/mlflow_trial_curves.png "http://127.0.0.1:5055/#/experiments/$exp/runs/$run/model-metrics"
shot docs/mlflow_trial_forgetting.png \
  "http://127.0.0.1:5055/#/experiments/$exp/runs/$run/artifacts/forgetting.png"
