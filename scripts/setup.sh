#!/usr/bin/env bash
# Create .venv (if absent) and install FedShape into it. Usage: scripts/setup.sh [extra]
#   extra: "dev" for the test and lint tools.
# torch comes first and pinned: on CPU machines torch==2.13.0 is the local CPU wheel, while an
# unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
# Some machines' pip configs name local indexes that lack most packages; pip warns once per
# package about them, which buries real errors. Everything else pip says is kept.
quiet_pip() { pip --quiet "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  echo "[setup] installing torch==${FEDSHAPE_TORCH:-2.13.0}"
  quiet_pip install "torch==${FEDSHAPE_TORCH:-2.13.0}"
fi
spec="."
[ -n "$extra" ] && spec=".[$extra]"
echo "[setup] installing fedshape ($spec)"
quiet_pip install -e "$spec"
