"""The CUDA paths, on a CUDA machine (skipped elsewhere): precisions, a real out-of-memory, RNG resume,
the memory report, and a crystal-graph training killed at random moments that resumes bit-identical.

Run them with ``bash scripts/gpu_check.sh`` (or ``pytest -m cuda``).
"""

from __future__ import annotations

import random
import re
import signal

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from tests.helpers import make_trainer, run_cli
from tests.test_cli_structures import write_table
from tests.trainer.test_crash_resume import assert_identical, final_model, kill_after_start, timed_training
from topoclass.checkpoint.manager import CheckpointManager, CheckpointTag
from topoclass.checkpoint.state import JobRNGState
from topoclass.config import CheckpointConfig, TaskConfig, load_config
from topoclass.data.build import prepare_dataset
from topoclass.memory import GIB, memory_report, release_memory
from topoclass.model.inference import move_batch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def cuda_trainer(prepared, tmp_path, settings=None, **train):
    trainer = make_trainer(prepared, tmp_path, settings, device="cuda", **train)
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


@pytest.fixture(scope="module")
def prepared_crystals(tmp_path_factory):
    """120 rock-salt crystals of 216 atoms each: a training step's activations dwarf the weights."""
    root = tmp_path_factory.mktemp("crystals")
    rng = np.random.default_rng(0)
    lines = ["id,structure,topological"]
    for i in range(120):
        cation, anion = rng.choice(["Na", "K", "Pb", "Sn"]), rng.choice(["Cl", "Se", "Te"])
        cell = Structure.from_spacegroup(
            "Fm-3m", Lattice.cubic(rng.uniform(5.4, 6.4)), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]]
        )
        cell.make_supercell([3, 3, 3])
        (root / f"c{i}.cif").write_text(cell.to(fmt="cif"))
        heavy = cation in ("Pb", "Sn") or anion == "Te"
        lines.append(f"c{i},c{i}.cif,{'topological' if heavy else 'trivial'}")
    table = root / "crystals.csv"
    table.write_text("\n".join(lines) + "\n")
    data = {
        "data.dataset": "table",
        "data.table": str(table),
        "data.use_structure": True,
        "data.tasks": [TaskConfig(name="topological").model_dump()],
        "data.cache_dir": str(root / "cache"),
    }
    return prepare_dataset(load_config(None, data).data), data


def test_a_real_out_of_memory_is_recovered_by_splitting_the_batch(prepared_crystals, tmp_path):
    prepared, data = prepared_crystals
    trainer = cuda_trainer(prepared, tmp_path, settings={**data, "model.hidden_dim": 32}, batch_size=64)
    assert trainer.features.atoms().min() == 216
    rows, weight = trainer.sampler.next_rows()
    normalizers = trainer.loss.normalizers(trainer.features.labels[rows]).cuda()

    def reserved_for_a_step(pieces: int) -> int:
        trainer.state.micro_batches = pieces
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        trainer._accumulate(rows, weight, normalizers)
        torch.cuda.synchronize()
        trainer.optimizer.zero_grad(set_to_none=True)
        return torch.cuda.max_memory_reserved()

    # What the caching allocator takes from the device is what a memory limit is checked against.
    whole, halves = reserved_for_a_step(1), reserved_for_a_step(2)
    assert halves < 0.8 * whole, (whole, halves)
    trainer.state.micro_batches = 1
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction((whole + halves) / 2 / total)  # the step fails, halves fit
    try:
        with trainer.checkpoints:
            result = trainer.fit()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert result.outcome == "finished"
    assert trainer.state.micro_batches >= 2


def backward_kernels(trainer) -> set[str]:
    """The autograd nodes a training forward pass records, by class name."""
    rows, _ = trainer.sampler.next_rows()
    outputs = trainer.forward(
        move_batch(trainer.features.batch(rows, with_graphs=trainer.with_graphs), trainer.device)
    )
    names, seen, pending = set(), set(), [output.grad_fn for output in outputs.values()]
    while pending:
        node = pending.pop()
        if node is not None and node not in seen:
            seen.add(node)
            names.add(type(node).__name__)
            pending.extend(parent for parent, _ in node.next_functions)
    return names


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_deterministic_training_records_no_fused_attention_backward(prepared, tmp_path, precision):
    def fused(names: set[str]) -> set[str]:
        return {name for name in names if "Attention" in name and name.startswith("ScaledDotProduct")}

    deterministic = cuda_trainer(prepared, tmp_path / "deterministic", precision=precision)
    assert not fused(backward_kernels(deterministic))
    # Without the setting PyTorch picks a fused kernel (memory-efficient, cuDNN's or flash).
    free = cuda_trainer(prepared, tmp_path / "free", precision=precision, deterministic=False)
    assert fused(backward_kernels(free))


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


def test_the_memory_report_follows_what_the_device_holds():
    device = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats()
    before = memory_report(device).devices[0]
    block = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    held = memory_report(device)
    (cuda,) = held.devices
    assert cuda.name == f"cuda:{torch.cuda.current_device()}"
    assert cuda.allocated - before.allocated >= 256 << 20
    assert cuda.peak >= cuda.allocated and cuda.reserved >= cuda.allocated
    assert cuda.total == torch.cuda.get_device_properties(cuda.name).total_memory
    assert f"{cuda.name} {cuda.allocated / GIB:.1f}/{cuda.total / GIB:.1f} GiB" in held.line()
    del block
    release_memory(device)
    after = memory_report(device).devices[0]
    assert after.reserved <= cuda.reserved - (256 << 20)
    assert after.peak == cuda.peak  # the peak stays until reset: the epoch's line reports it


@pytest.mark.integration  # kills real training processes
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_crystal_graph_run_killed_at_random_moments_resumes_bit_identical(tmp_path, precision):
    table = write_table(tmp_path, n=96)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"data: {{dataset: table, table: {table}, use_structure: true,"
        " tasks: [{name: topo, classes: [trivial, TI]}], graph: {num_rbf: 8, spectral_k: 4}}\n"
        "model: {hidden_dim: 32, element_embedding_dim: 8, spacegroup_embedding_dim: 8, composition_heads: 2,"
        " graph_layers: 2, fusion_layers: 1}\n"
        f"train: {{epochs: 6, batch_size: 8, device: cuda, precision: {precision}, progress_bar: false,"
        " export_onnx: false}\n"
        "checkpoint: {every_epochs: 1, every_minutes: 0, every_steps: 2}\n"
    )

    def args(run):
        return ["train", "--config", str(config), "--run-dir", str(tmp_path / run), "--resume", "auto"]

    duration = timed_training(args("reference"), tmp_path)
    rng = random.Random(7)
    kills = 0
    for _ in range(6):
        code = kill_after_start(args("chaos"), tmp_path, rng.uniform(0.1, 0.4) * duration)
        if code == 0:
            break
        assert code == -signal.SIGKILL
        kills += 1
    assert kills >= 3, f"only {kills} kills happened; the run finished too quickly"
    finished = run_cli(args("chaos"), tmp_path)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "Checkpoint loaded from epoch" in finished.stdout
    assert_identical(final_model(tmp_path / "reference"), final_model(tmp_path / "chaos"))
    assert re.search(r"memory: RSS [^\n]*cuda:0 [\d.]+/[\d.]+ GiB, peak", finished.stdout), finished.stdout
