"""How much does a durable, verified checkpoint cost compared with a bare ``torch.save``?

Builds a realistically sized training state (an MLP of about 2 M parameters,
AdamW state after one step, all random-number generator states) and measures,
interleaved on the same disk in the same run (median over ``--repeats``):

* bare ``torch.save`` to a file (no fsync: the data may still be in the page cache),
* ``torch.save`` followed by fsync (the same durability as ours, minus hashing),
* ``CheckpointManager.save`` (fsync of every file and directory, SHA-256,
  manifest, ``latest`` pointer, retention),
* the same save with fsync disabled, to show what durability itself costs,
* ``find_latest`` + load: the time a resume spends on the checkpoint.

Usage: ``python benchmarks/checkpoint_save.py [--repeats 15] [--dir .]``. The
scratch directory is created inside ``--dir`` (default: the current directory)
and removed afterwards; a tmpfs there is reported, because fsync is free on
tmpfs and the comparison would flatter durability.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch

from topoclass.checkpoint.manager import CheckpointManager, CheckpointTag
from topoclass.checkpoint.serialize import flatten, safetensors_chunks
from topoclass.checkpoint.state import RNGState
from topoclass.config import CheckpointConfig


def build_state(width: int) -> dict:
    """Model, optimizer after one step, and RNG state: what a trainer checkpoints."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(width // 2, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width // 2),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(32, width // 2)).pow(2).mean().backward()
    optimizer.step()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": RNGState().state_dict(),
        "trainer": {"epoch": 1, "global_step": 100, "best_val_loss": 0.5},
    }


class Frozen:
    """A component whose state is fixed: the same tree on every save."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def state_dict(self) -> dict:
        return self.state

    def load_state_dict(self, state: dict) -> None:
        self.state = state


def filesystem_type(path: Path) -> str:
    """Type of the filesystem holding ``path``, from /proc/mounts (longest matching mount point)."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                mount_point = fields[1]
                inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) > len(best):
                    best, kind = mount_point, fields[2]
    except OSError:
        pass
    return kind


def timed(action: Callable[..., object], *args: object, **kwargs: object) -> float:
    """Seconds that ``action(*args, **kwargs)`` takes."""
    start = time.perf_counter()
    action(*args, **kwargs)
    return time.perf_counter() - start


def torch_save(state: dict, target: Path, *, durable: bool) -> None:
    with open(target, "wb") as handle:
        torch.save(state, handle)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="measurements per variant (median reported)")
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="where to put the scratch directory")
    parser.add_argument("--width", type=int, default=1024, help="MLP hidden width (1024: ~2.1 M params)")
    args = parser.parse_args()

    state = build_state(args.width)
    tensors, _ = flatten(state)
    payload = sum(t.numel() * t.element_size() for t in tensors.values())
    parameters = sum(t.numel() for t in state["model"].values())
    kind = filesystem_type(args.dir)
    print(f"state: {parameters / 1e6:.2f} M parameters, {payload / 1e6:.1f} MB of tensors")
    print(f"disk: {args.dir.resolve()} ({kind})")
    if kind in {"tmpfs", "ramfs"}:
        print("WARNING: this is a RAM filesystem: fsync costs nothing here; use --dir on a real disk")

    scratch = Path(tempfile.mkdtemp(prefix=".checkpoint-bench-", dir=args.dir))
    times: dict[str, list[float]] = {name: [] for name in ("bare", "fsync", "ours", "ours_nofsync", "resume")}
    try:
        (scratch / "torch").mkdir()
        manager = CheckpointManager(scratch / "ours", CheckpointConfig(keep_last=3))
        unsynced = CheckpointManager(scratch / "nofsync", CheckpointConfig(keep_last=3))
        for saver in (manager, unsynced):
            saver.attach(
                {name: Frozen(part) for name, part in state.items()}, lambda tag: {"epoch": tag.epoch}
            )
        for i in range(args.repeats):
            bare, durable = scratch / "torch" / f"bare_{i}.pt", scratch / "torch" / f"fsync_{i}.pt"
            times["bare"].append(timed(torch_save, state, bare, durable=False))
            times["fsync"].append(timed(torch_save, state, durable, durable=True))
            tag = CheckpointTag(i + 1)
            times["ours"].append(timed(manager.save, tag))
            with mock.patch("os.fsync"):
                times["ours_nofsync"].append(timed(unsynced.save, tag))
            # Retention frees old checkpoints in the background; in training that overlaps the next
            # steps, here it must not slow down the next measurement, so wait for it untimed.
            manager.wait_for_cleanup()
            unsynced.wait_for_cleanup()
            for old in (scratch / "torch").glob(f"*_{i - 2}.pt"):  # keep 3, like the manager's retention
                old.unlink()
        manager.close()
        unsynced.close()
        with CheckpointManager(scratch / "ours", CheckpointConfig()) as reader:
            for _ in range(args.repeats):
                times["resume"].append(timed(reader.find_latest))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    hash_seconds = statistics.median(
        timed(lambda: [hashlib.sha256(chunk) for chunk in safetensors_chunks(tensors)]) for _ in range(5)
    )
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"torch.save (no fsync)               {median['bare'] * 1e3:8.1f} ms")
    print(f"torch.save + fsync                  {median['fsync'] * 1e3:8.1f} ms")
    print(f"CheckpointManager.save              {median['ours'] * 1e3:8.1f} ms")
    print(f"  same, fsync disabled (diagnosis)  {median['ours_nofsync'] * 1e3:8.1f} ms")
    print(f"  SHA-256 of the payload alone      {hash_seconds * 1e3:8.1f} ms (overlapped with writing)")
    print(f"ratio save / torch.save             {median['ours'] / median['bare']:8.2f}")
    print(f"ratio save / (torch.save + fsync)   {median['ours'] / median['fsync']:8.2f}")
    print(f"resume: find_latest + load          {median['resume']:8.3f} s")


if __name__ == "__main__":
    main()
