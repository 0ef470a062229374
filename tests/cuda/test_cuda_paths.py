"""The CUDA paths, on a CUDA machine (skipped elsewhere): precisions, a real out-of-memory, RNG resume.

Run them with ``bash scripts/gpu_check.sh`` (or ``pytest -m cuda``).
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import make_trainer
from topoclass.checkpoint.manager import CheckpointManager, CheckpointTag
from topoclass.checkpoint.state import JobRNGState
from topoclass.config import CheckpointConfig

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def cuda_trainer(prepared, tmp_path, **train):
    trainer = make_trainer(prepared, tmp_path, device="cuda", **train)
    assert trainer.device.type == "cuda"
    return trainer


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_short_training_in_each_precision(prepared, tmp_path, precision):
    trainer = cuda_trainer(prepared, tmp_path, precision=precision)
    with trainer.checkpoints:
        result = trainer.fit()
    assert result.outcome == "finished"
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    assert trainer.scaler.is_enabled() == (precision == "fp16")


def test_a_real_out_of_memory_is_recovered_by_splitting_the_batch(prepared, tmp_path):
    trainer = cuda_trainer(prepared, tmp_path, batch_size=64)
    rows, weight = trainer.sampler.next_rows()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    trainer._accumulate(rows, weight, trainer.loss.normalizers(trainer.features.labels[rows]).cuda())
    step_peak = torch.cuda.max_memory_allocated() - before
    trainer.optimizer.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    # Room for about 60% of what one whole step needs: the step fails, half of it fits.
    torch.cuda.set_per_process_memory_fraction((before + 0.6 * step_peak + (64 << 20)) / total)
    try:
        with trainer.checkpoints:
            trainer.fit()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert trainer.state.micro_batches >= 2


def test_cuda_random_streams_resume_bit_exactly(tmp_path):
    torch.cuda.manual_seed_all(7)
    torch.rand(3, device="cuda")
    with CheckpointManager(tmp_path, CheckpointConfig()) as manager:
        rng = JobRNGState()
        manager.attach({"rng": rng}, lambda tag: {})
        manager.save(CheckpointTag(1))
        expected = torch.rand(5, device="cuda")
        torch.cuda.manual_seed_all(0)
        manager.restore(manager.find_latest())
    assert torch.equal(torch.rand(5, device="cuda"), expected)
