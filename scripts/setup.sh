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

# -qq: pip's own errors still show; the warnings of indexes that lack a package do not.
pip_install() { python -m pip install -qq --disable-pip-version-check "$@"; }
cpu_index=https://download.pytorch.org/whl/cpu

if python -c "import torch" 2>/dev/null; then
    echo "Keeping installed PyTorch $(python -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1; then
    echo "NVIDIA driver found: PyTorch 2.13.0 (CUDA build) from the configured package index"
    pip_install "torch==2.13.0"
elif python -c "import urllib.request; urllib.request.urlopen('$cpu_index/', timeout=10)" 2>/dev/null; then
    echo "PyTorch 2.13.0 (CPU build) from $cpu_index"
    pip_install "torch==2.13.0" --index-url "$cpu_index"
else
    echo "PyTorch CPU index unreachable: PyTorch 2.13.0 from the configured package index"
    pip_install "torch==2.13.0"
fi
pip_install -e ".[dev]"
echo "topoclass installed in $(dirname "$(dirname "$(command -v python)")")"
