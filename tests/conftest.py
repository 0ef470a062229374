"""Shared fixtures: a synthetic materials table and a way to run the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Element

DATA_DIR = os.environ.get("TOPOCLASS_DATA_DIR")

# Elements with full property tables; heavy ones drive the synthetic "topological" rule.
_ELEMENTS = [Element.from_Z(z) for z in range(1, 84) if z not in (2, 10, 18, 36, 43, 54, 61)]


def write_synthetic_table(path: Path, n: int, seed: int = 0) -> Path:
    """A learnable random table: topological iff a heavy element meets a centrosymmetric-ish group."""
    rng = np.random.default_rng(seed)
    lines = ["id,formula,spacegroup,topological,gap"]
    for i in range(n):
        picks = rng.choice(len(_ELEMENTS), size=rng.integers(1, 4), replace=False)
        elements = [_ELEMENTS[p] for p in picks]
        formula = "".join(f"{e.symbol}{rng.integers(1, 5)}" for e in elements)
        spacegroup = int(rng.integers(1, 231))
        heavy = max(e.Z for e in elements) > 50
        label = "topological" if heavy and spacegroup > 100 else "trivial"
        gap = "" if i % 4 == 0 else f"{rng.normal(1.0 - heavy, 0.1):.3f}"  # some labels missing
        lines.append(f"m{i},{formula},{spacegroup},{label},{gap}")
    path.write_text("\n".join(lines) + "\n")
    return path


SYNTHETIC_CONFIG = """\
data:
  dataset: table
  table: {table}
  tasks:
    - {{name: topological, classes: [trivial, topological]}}
    - {{name: gap, type: regression, weight: 0.5}}
model: {{hidden_dim: 16, element_embedding_dim: 8, spacegroup_embedding_dim: 8, composition_heads: 2,
         fusion_layers: 1}}
train: {{epochs: {epochs}, batch_size: 16, lr: 0.003, patience: 50, progress_bar: false, warmup_epochs: 1}}
checkpoint: {{checkpoint_every_epochs: 1, checkpoint_every_minutes: 0, checkpoint_every_steps: {every_steps}}}
"""


@pytest.fixture
def synthetic_config(tmp_path: Path):
    """Factory: write a synthetic table and a small config; returns the config path."""

    def make(n: int = 200, epochs: int = 3, every_steps: int = 0) -> Path:
        table = write_synthetic_table(tmp_path / "materials.csv", n)
        config = tmp_path / "config.yaml"
        config.write_text(SYNTHETIC_CONFIG.format(table=table, epochs=epochs, every_steps=every_steps))
        return config

    return make


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    # One thread per process: several training processes share two cores in these tests.
    env = {
        **os.environ,
        "TOPOCLASS_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("TOPOCLASS_KILL_DURING_CHECKPOINT_WRITE", None)
    env.update(extra)
    return env


def run_cli(
    args: list[str], tmp_path: Path, *, input: str | None = None, **env: str
) -> subprocess.CompletedProcess:
    """Run ``topoclass ARGS`` in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "topoclass.cli", *args],
        capture_output=True,
        text=True,
        input=input,
        env=cli_env(tmp_path, **env),
        timeout=600,
    )


def start_cli(args: list[str], tmp_path: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "topoclass.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(tmp_path, **env),
    )
