#!/usr/bin/env bash
# Quickstart, command 1: install FedShape and run the main job on the embedded default.
# Today the main job is the static-baselines comparison on the default scenario; extra
# arguments are Hydra overrides, e.g. scripts/main.sh scenario=datacenter seeds=5
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python -m experiments.compare "$@"
