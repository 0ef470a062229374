"""Kernel choices of a training step: deterministic attention on CUDA, the CPU's kernels untouched."""

from __future__ import annotations

import pytest
import torch

from topoclass.trainer.device import training_kernels

cuda_backends = torch.backends.cuda


def fused_attention_enabled() -> tuple[bool, bool, bool]:
    return (
        cuda_backends.flash_sdp_enabled(),
        cuda_backends.mem_efficient_sdp_enabled(),
        cuda_backends.cudnn_sdp_enabled(),
    )


def test_deterministic_cuda_training_runs_attention_on_the_math_kernel_only_inside_the_step():
    before = fused_attention_enabled()
    assert any(before)
    with training_kernels(torch.device("cuda", 0), deterministic=True)():
        assert fused_attention_enabled() == (False, False, False)
        assert cuda_backends.math_sdp_enabled()
    assert fused_attention_enabled() == before


@pytest.mark.parametrize(("device", "deterministic"), [("cpu", True), ("cpu", False), ("cuda", False)])
def test_other_runs_keep_the_fused_attention_kernels(device, deterministic):
    before = fused_attention_enabled()
    with training_kernels(torch.device(device), deterministic=deterministic)():
        assert fused_attention_enabled() == before
