"""Test helpers: a synthetic materials table and ways to run the real CLI in a fresh process."""

from __future__ import annotations

import ast
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
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
train: {{epochs: {epochs}, batch_size: 16, lr: 0.003, patience: 50, progress_bar: false, warmup_epochs: 1,
        export_onnx: {export_onnx}}}
checkpoint: {{every_epochs: 1, every_minutes: 0, every_steps: {every_steps}}}
"""


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    # One thread per process: several training processes share two cores in these tests.
    env = {
        **os.environ,
        "TOPOCLASS_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    env.update(extra)
    return env


KILL_SCRIPT = Path(__file__).with_name("kill_during_write.py")
RECORD_SCRIPT = Path(__file__).with_name("record_samples.py")


def _command(args: list[str], kill_at_commit: int | None) -> list[str]:
    if kill_at_commit is None:
        return [sys.executable, "-m", "topoclass", *args]
    return [sys.executable, str(KILL_SCRIPT), str(kill_at_commit), *args]


def run_cli(
    args: list[str],
    tmp_path: Path,
    *,
    input: str | None = None,
    kill_at_commit: int | None = None,
    **env: str,
) -> subprocess.CompletedProcess:
    """Run ``topoclass ARGS`` in a fresh interpreter, as a user would (optionally killed mid-commit)."""
    return subprocess.run(
        _command(args, kill_at_commit),
        capture_output=True,
        text=True,
        input=input,
        env=cli_env(tmp_path, **env),
        timeout=600,
    )


HEAVY_MODULES = (
    "torch",
    "sklearn",
    "lightgbm",
    "matplotlib",
    "torch_geometric",
    "fastapi",
    "chgnet",
    "pandas",
)


def heavy_imports(args: list[str], tmp_path: Path) -> set[str]:
    """Which of :data:`HEAVY_MODULES` ``topoclass ARGS`` imported, run in a fresh interpreter."""
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['topoclass', *{args!r}]\n"
        "try:\n    runpy.run_module('topoclass', run_name='__main__')\n"
        "except SystemExit as stop:\n    assert stop.code in (0, None), stop.code\n"
        f"print(sorted(name for name in {HEAVY_MODULES!r} if name in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=cli_env(tmp_path), timeout=600
    )
    assert done.returncode == 0, done.stderr
    return set(ast.literal_eval(done.stdout.strip().splitlines()[-1]))


def start_cli(
    args: list[str],
    tmp_path: Path,
    *,
    kill_at_commit: int | None = None,
    record_to: Path | None = None,
    **env: str,
) -> subprocess.Popen:
    """Start ``topoclass ARGS`` in the background, output merged into ``stdout``; with ``record_to``,
    every completed step's samples are recorded (see ``record_samples.py``)."""
    command = _command(args, kill_at_commit)
    if record_to is not None:
        command = [sys.executable, str(RECORD_SCRIPT), str(record_to), *args]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(tmp_path, **env),
    )


def signal_on_line(process: subprocess.Popen, marker: str, signum: int = signal.SIGTERM) -> str:
    """Send ``signum`` to ``process`` once a line containing ``marker`` is printed; return all output."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if marker in line:
            process.send_signal(signum)
            break
    return "".join(seen) + process.stdout.read()


class _Weights:
    def __init__(self) -> None:
        self.w = torch.zeros(2)

    def state_dict(self) -> dict:
        return {"w": self.w.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.w = state["w"]


def make_checkpointed_run(root: Path, checkpoint_dir: Path | None = None):
    """A run directory (config, status) with checkpoints 1 (also best) and 2 at step 9, no training."""
    from topoclass.app.runs import RunLayout
    from topoclass.checkpoint.manager import CheckpointManager, CheckpointTag
    from topoclass.config import CheckpointConfig, config_yaml, load_config

    overrides = {"run_dir": str(root)}
    if checkpoint_dir is not None:
        overrides["checkpoint.dir"] = str(checkpoint_dir)
    config = load_config(None, overrides)
    layout = RunLayout.for_config(config)
    root.mkdir(parents=True, exist_ok=True)
    layout.config_file().write_text(config_yaml(config))
    layout.write_status("finished")
    with CheckpointManager(layout.checkpoints, CheckpointConfig()) as manager:
        manager.attach({"model": _Weights()}, lambda tag: {"config": config.to_dict(), "tasks": []})
        manager.save(CheckpointTag(1), best=True)
        manager.save(CheckpointTag(2, 9))
    return layout


def train_synthetic_run(
    root: Path, n: int = 200, epochs: int = 3, *, export_onnx: bool = False
) -> subprocess.CompletedProcess:
    """Train ``root/run`` on a synthetic table (``root/materials.csv``, config ``root/config.yaml``).
    The ONNX export (about 10 s of CPU) is left out unless asked for."""
    table = write_synthetic_table(root / "materials.csv", n)
    config = root / "config.yaml"
    export = str(export_onnx).lower()
    config.write_text(SYNTHETIC_CONFIG.format(table=table, epochs=epochs, every_steps=0, export_onnx=export))
    result = run_cli(["train", "--config", str(config), "--run-dir", str(root / "run")], root)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


# The smallest model the trainer tests need (seconds per epoch on a CPU).
SMALL_MODEL = {
    "model.hidden_dim": 16,
    "model.element_embedding_dim": 8,
    "model.spacegroup_embedding_dim": 8,
    "model.composition_heads": 2,
    "model.fusion_layers": 1,
}


def write_small_config(path: Path, table: Path, *, train: str, checkpoint: str = "", data: str = "") -> Path:
    """A config for a small model on ``table`` (task ``topological``); ``train``, ``checkpoint`` and
    ``data`` are extra YAML flow-mapping entries for those sections."""
    extra = f", {data}" if data else ""
    lines = [
        f"data: {{dataset: table, table: {table}, tasks: [{{name: topological}}]{extra}}}",
        "model: {" + ", ".join(f"{key.split('.')[1]}: {value}" for key, value in SMALL_MODEL.items()) + "}",
        f"train: {{progress_bar: false, {train}}}",
        f"checkpoint: {{{checkpoint}}}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_trainer(prepared, tmp_path: Path, settings: dict | None = None, **train: object):
    """A small trainer on the synthetic ``prepared`` data (120 materials), checkpointing every epoch
    into ``tmp_path``; ``settings`` are other config keys (``{"data.use_structure": True}``)."""
    from topoclass.checkpoint.manager import CheckpointManager
    from topoclass.config import load_config
    from topoclass.data.fingerprint import split_digest
    from topoclass.trainer.device import select_device
    from topoclass.trainer.loop import Trainer
    from topoclass.trainer.signals import StopRequest

    overrides = {
        **SMALL_MODEL,
        "model.dropout": 0.0,
        "train.epochs": 2,
        "train.batch_size": 16,
        "train.progress_bar": False,
        "checkpoint.every_epochs": 1,
        "checkpoint.every_minutes": 0,
        **{f"train.{key}": value for key, value in train.items()},
        **(settings or {}),
    }
    config = load_config(None, overrides)
    n = len(prepared.features)
    split = {"train": torch.arange(0, 84), "val": torch.arange(84, 102), "test": torch.arange(102, n)}
    manager = CheckpointManager(tmp_path / "checkpoints", config.checkpoint)
    digest = split_digest(prepared.features.ids, {k: v.numpy() for k, v in split.items()})
    return Trainer(
        config,
        prepared.features,
        split,
        device=select_device(config.train.device),
        checkpoints=manager,
        stop=StopRequest(),
        metrics_file=tmp_path / "metrics.jsonl",
        run_metadata={"split_ids_sha256": digest, "data_fingerprint": "x", "code_revision": None},
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_ranks(
    args: list[str], tmp_path: Path, world: int, *, record_to: Path | None = None, **env: str
) -> list[subprocess.Popen]:
    """The processes of one job, started with the environment torchrun would give them."""
    port = str(free_port())
    return [
        start_cli(
            args,
            tmp_path,
            record_to=record_to,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            **env,
        )
        for rank in range(world)
    ]
