#!/usr/bin/env bash
# Quickstart, command 1: install FedShape and run the main job on the embedded default: simulated
# tenants federate one shaping policy through Flower's simulation engine, then the report compares
# federated, local-only and centralized training with the static baselines (docs/federation.md).
# Extra arguments are Hydra overrides, e.g. scripts/main.sh fl=fedprox privacy=central_dp fl.rounds=6
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# Flower must not install dependencies at run time (offline machines; the venv already has them).
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
exec python -m experiments.federated "$@"
