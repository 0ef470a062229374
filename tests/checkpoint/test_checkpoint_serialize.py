from __future__ import annotations

import copy
import math
import random
import re

import numpy as np
import pytest
import safetensors.torch
import torch

from topoclass.checkpoint import storage
from topoclass.checkpoint.serialize import flatten, safetensors_chunks, unflatten
from topoclass.errors import CheckpointError


def _round_trip(tree):
    tensors, json_tree = flatten(tree)
    data = b"".join(bytes(chunk) for chunk in safetensors_chunks(tensors))
    return unflatten(safetensors.torch.load(data), json_tree)


def test_scalars_containers_and_key_types_survive_exactly():
    tree = {
        "ints": {0: "zero", 7: [1, 2, 3]},
        "mixed": {1: True, "1": False},
        "floats": [1.5, -0.0, float("inf"), -float("inf"), 1e-300, 0.1],
        "nested": ((1, (2.0, None)), ["a", "b"]),
        "tag_like": {"__tensor__": "not a tensor", "plain": None},
        "big": 2**80,
    }
    restored = _round_trip(tree)
    assert restored["ints"] == {0: "zero", 7: [1, 2, 3]}
    assert list(restored["ints"]) == [0, 7] and all(isinstance(key, int) for key in restored["ints"])
    assert restored["mixed"] == {1: True, "1": False}
    assert restored["floats"][:2] == [1.5, -0.0] and math.copysign(1, restored["floats"][1]) == -1
    assert restored["floats"][2:] == [math.inf, -math.inf, 1e-300, 0.1]
    assert restored["nested"] == ((1, (2.0, None)), ["a", "b"])
    assert isinstance(restored["nested"][0][1], tuple)
    assert restored["tag_like"] == tree["tag_like"]
    assert restored["big"] == 2**80


def test_nan_comes_back_as_nan():
    assert math.isnan(_round_trip({"loss": float("nan")})["loss"])


@pytest.mark.parametrize(
    "tensor",
    [
        torch.tensor(3.5, dtype=torch.float64),
        torch.arange(12, dtype=torch.int64).reshape(3, 4),
        torch.tensor([True, False, True]),
        torch.randint(0, 255, (17,), dtype=torch.uint8),
        torch.randn(2, 3, dtype=torch.bfloat16),
        torch.randn(5, dtype=torch.float16),
        torch.tensor([-3, 4], dtype=torch.int8),
        torch.empty(0, 4),
        torch.randn(4, 6).t(),  # non-contiguous view
    ],
)
def test_tensors_keep_dtype_shape_and_values(tensor):
    restored = _round_trip({"t": tensor})["t"]
    assert restored.dtype == tensor.dtype and restored.shape == tensor.shape
    assert torch.equal(restored, tensor)


def test_our_safetensors_layout_is_read_by_the_library_from_a_file(tmp_path):
    tensors = {"a": torch.randn(3, 2), "b.c": torch.tensor(7), "__metadata__#2": torch.ones(1)}
    target = tmp_path / "x.safetensors"
    target.write_bytes(b"".join(bytes(chunk) for chunk in safetensors_chunks(tensors)))
    loaded = safetensors.torch.load_file(target)
    assert set(loaded) == set(tensors)
    assert all(torch.equal(loaded[name], tensors[name]) for name in tensors)


def test_shared_storage_and_requires_grad_tensors_are_fine():
    weight = torch.nn.Parameter(torch.randn(4, 4))
    restored = _round_trip({"encoder": weight, "decoder": weight, "row": weight[1]})
    assert torch.equal(restored["encoder"], weight.detach()) and torch.equal(
        restored["decoder"], weight.detach()
    )
    assert torch.equal(restored["row"], weight.detach()[1])


def test_numpy_arrays_and_scalars_come_back_as_numpy():
    tree = {
        "u4": np.arange(624, dtype=np.uint32),
        "f2": np.linspace(0, 1, 6, dtype=np.float64).reshape(2, 3),
        "big_endian": np.array([1, 2], dtype=">i4"),
        "flag": np.array(True),
        "scalar": np.float32(2.5),
        "empty": np.zeros((0, 2), dtype=np.int16),
    }
    restored = _round_trip(tree)
    for key, value in tree.items():
        assert type(restored[key]) is type(value), key
        assert restored[key].dtype == value.dtype and restored[key].shape == value.shape
        np.testing.assert_array_equal(restored[key], value)


def test_python_random_state_is_restorable_after_round_trip():
    state = random.getstate()
    expected = [random.random() for _ in range(3)]
    random.setstate(_round_trip({"python": state})["python"])
    assert [random.random() for _ in range(3)] == expected


@pytest.mark.parametrize(
    ("tree", "path"),
    [
        ({"model": {"layer": object()}}, "model.layer"),
        ({"history": [1, {"fn": print}]}, "history.1.fn"),
        ({"opt": {(1, 2): 3}}, "opt"),
        ({"arr": np.array(["a"], dtype=object)}, "arr"),
        ({"c": torch.zeros(2, dtype=torch.complex128)}, "c"),
    ],
)
def test_unsupported_values_are_refused_with_their_key_path(tree, path):
    with pytest.raises(CheckpointError, match=re.escape(f"'{path}'")):
        flatten(tree)


def _train(model, optimizer, scheduler, scaler, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        inputs = torch.randn(8, 4, generator=generator)
        targets = torch.randn(8, 2, generator=generator)
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(loss.item())
        else:
            scheduler.step()


SCHEDULERS = {
    "cosine": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=1e-4),
    "lambda": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 / (1 + epoch)),
    "plateau": lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5),
}


def _setup(scheduler_kind):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=2)
    return model, optimizer, SCHEDULERS[scheduler_kind](optimizer), scaler


@pytest.mark.parametrize("scheduler_kind", sorted(SCHEDULERS))
def test_training_state_reloads_into_fresh_objects_and_continues_bit_identically(tmp_path, scheduler_kind):
    model, optimizer, scheduler, scaler = _setup(scheduler_kind)
    _train(model, optimizer, scheduler, scaler, steps=4, seed=1)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
    }
    assert state["scaler"], "the grad scaler must be enabled for this test to mean anything"
    with storage.CheckpointStorage() as writer:
        writer.write(tmp_path / "ck", state, metadata={}, epoch=1, step=None)
    tree, _metadata = storage.read(tmp_path / "ck")
    snapshot = copy.deepcopy(state["optimizer"])

    fresh_model, fresh_optimizer, fresh_scheduler, fresh_scaler = _setup(scheduler_kind)
    with torch.no_grad():
        for parameter in fresh_model.parameters():
            parameter.add_(1.0)  # prove the loaded weights, not the seed, make them equal
    fresh_model.load_state_dict(tree["model"])
    fresh_optimizer.load_state_dict(tree["optimizer"])
    fresh_scheduler.load_state_dict(tree["scheduler"])
    fresh_scaler.load_state_dict(tree["scaler"])
    assert tree["optimizer"]["param_groups"][0]["betas"] == snapshot["param_groups"][0]["betas"]
    assert set(tree["optimizer"]["state"]) == set(snapshot["state"])

    _train(model, optimizer, scheduler, scaler, steps=3, seed=2)
    _train(fresh_model, fresh_optimizer, fresh_scheduler, fresh_scaler, steps=3, seed=2)
    for original, resumed in zip(model.parameters(), fresh_model.parameters(), strict=True):
        assert torch.equal(original, resumed)
    assert optimizer.param_groups[0]["lr"] == fresh_optimizer.param_groups[0]["lr"]
    assert scaler.get_scale() == fresh_scaler.get_scale()
