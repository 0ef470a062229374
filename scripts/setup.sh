#!/usr/bin/env bash
# Install topoclass and its test tools.
#
# Inside an active virtual or conda environment, installs there (an existing
# PyTorch, CUDA build or not, is kept). Otherwise creates ./.venv. PyTorch is
# installed only when missing: the CUDA build when an NVIDIA driver is present,
# else the CPU build, so a CPU machine never downloads gigabytes of CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
    [ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi

if python -c "import torch" 2>/dev/null; then
    echo "Keeping installed PyTorch $(python -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q "torch==2.13.0"
else
    # --retries 1: where that index cannot be reached, pip falls back on its other indexes quickly.
    python -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu --timeout 20 --retries 1
fi
python -m pip install -q -e ".[dev]"
echo "topoclass installed in $(dirname "$(dirname "$(command -v python)")")"
