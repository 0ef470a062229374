from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch

from topoclass.checkpoint.manager import CheckpointManager, CheckpointTag
from topoclass.checkpoint.state import RNGState, Stateful
from topoclass.config import CheckpointConfig
from topoclass.errors import CheckpointError


def _draw() -> tuple:
    return (
        [random.random() for _ in range(3)],
        random.gauss(0, 1),
        np.random.standard_normal(3).tolist(),
        np.random.randint(0, 1000, 4).tolist(),
        torch.rand(3).tolist(),
        torch.randint(0, 1000, (4,)).tolist(),
    )


def test_rng_state_is_stateful():
    assert isinstance(RNGState(), Stateful)


def test_rng_state_restores_bit_exactly_through_a_checkpoint(tmp_path):
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    _draw()  # leave cached Gaussians behind in both Python and NumPy
    random.gauss(0, 1)
    np.random.standard_normal()
    with CheckpointManager(tmp_path, CheckpointConfig()) as manager:
        manager.attach({"rng": RNGState()}, lambda tag: {})
        manager.save(CheckpointTag(1))
        expected = _draw()

        random.seed(0)
        np.random.seed(0)
        torch.manual_seed(0)
        loaded = manager.find_latest()
        assert loaded is not None
        manager.restore(loaded)
    assert _draw() == expected


def test_cuda_device_count_mismatch_warns_and_leaves_cuda_alone(monkeypatch, caplog):
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": [torch.zeros(16, dtype=torch.uint8)],
    }
    with caplog.at_level(logging.WARNING):
        RNGState().load_state_dict(state)
    assert restored == []
    assert "checkpoint holds 1 device(s), this machine has 2" in caplog.text

    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 2
    RNGState().load_state_dict(state)
    assert len(restored) == 1 and len(restored[0]) == 2


def test_malformed_rng_state_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="random-number state"):
        RNGState().load_state_dict({"python": "nonsense"})
