#!/usr/bin/env bash
# Create .venv (if absent) and install FedShape into it. Usage: scripts/setup.sh [extra]
#   extra: "dev" for the test and lint tools.
# torch comes first and pinned: on CPU machines torch==2.13.0 is the local CPU wheel, while an
# unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  echo "[setup] installing torch==${FEDSHAPE_TORCH:-2.13.0}"
  pip install --quiet "torch==${FEDSHAPE_TORCH:-2.13.0}"
fi
spec="."
[ -n "$extra" ] && spec=".[$extra]"
echo "[setup] installing fedshape ($spec)"
pip install --quiet -e "$spec"
