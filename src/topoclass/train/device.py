"""Device choice and reproducibility switches."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from topoclass.errors import ConfigError


def select_device(requested: str) -> torch.device:
    """``auto`` picks the first CUDA device when there is one, else the CPU."""
    if requested == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"train.device: unknown device '{requested}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: '{requested}' requested but CUDA is not available")
    return device


def seed_everything(seed: int, *, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; harmless on the CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
