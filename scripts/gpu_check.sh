#!/usr/bin/env bash
# The CUDA paths in a few minutes, on a machine with an NVIDIA GPU: a short training in each
# precision, a real out-of-memory recovered by micro-batching, bit-exact resume of the CUDA random
# streams, the memory report, deterministic attention, a crystal-graph training killed at random
# moments that resumes bit-identical, and the spectral encodings computed on the GPU equal to the
# CPU's. With TOPOCLASS_DATA_DIR set, also the GPU's spectra against the CPU's on real crystals.
# Usage: bash scripts/gpu_check.sh   (after bash scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" - <<'PY'
import torch
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device visible: nothing to check here")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PY
"$PYTHON" -m pytest -q -m cuda -p no:cacheprovider tests/cuda tests/features/test_spectral.py
if [ -n "${TOPOCLASS_DATA_DIR:-}" ]; then
    "$PYTHON" benchmarks/spectra_gpu.py --structures 2000
fi
