"""Device choice and reproducibility switches."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch

from topoclass.errors import ConfigError


def select_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks this process's CUDA device (``cuda:LOCAL_RANK``) when there is one, else the CPU;
    ``cuda`` without an index means the same device."""
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"train.device: unknown device '{requested}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: '{requested}' requested but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast type of ``train.precision`` on ``device`` (None: full precision)."""
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: fp16 needs a CUDA device; on the CPU use bf16")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def seed_everything(seed: int, *, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; harmless on the CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def training_kernels(
    device: torch.device, *, deterministic: bool
) -> Callable[[], AbstractContextManager[None]]:
    """The kernel choice around a training forward pass on ``device`` (a context to enter each time).

    With deterministic kernels asked for on CUDA, attention runs PyTorch's math kernel. The fused
    ones keep a non-deterministic backward while determinism is only warned about (seen on an
    H200 with torch 2.11: the memory-efficient kernel in fp32, cuDNN's in bf16), and a strict
    determinism setting would stop training at any operation that has no deterministic kernel.
    The sequences are a formula's elements and a few modalities, so the math kernel costs little.
    On the CPU nothing changes: its attention kernels are already reproducible.
    """
    if not (deterministic and device.type == "cuda"):
        return contextlib.nullcontext
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return lambda: sdpa_kernel(SDPBackend.MATH)
