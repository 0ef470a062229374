"""Read-only views of checkpoints, behind the ``checkpoints`` CLI verbs.

Nothing here renames, deletes or cleans up, so these functions are safe to run
while a trainer is writing to the same directory. They take a checkpoint
directory (the folder of checkpoints) or one checkpoint; which one a user's
argument means (a run, ``latest``, ``best``) is decided by the run layout.

:func:`inspect_checkpoint` summarises the metadata a trainer stores with each
checkpoint; it reads these keys when present: ``config`` (resolved config dict),
``history`` (list of per-epoch records), ``best_val_loss``, ``package_version``,
``code_revision`` and ``resumed_from``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from topoclass.checkpoint import storage
from topoclass.checkpoint.lock import live_writer
from topoclass.checkpoint.names import BEST_NAME, checkpoint_dirs, tag_or_none
from topoclass.checkpoint.serialize import DICT_TAG, safetensors_chunks
from topoclass.errors import CheckpointError, DamagedCheckpointError
from topoclass.files import atomic_write

HISTORY_TAIL = 3
# The config keys that define what a model computes; an export carries these and nothing else.
MODEL_DEFINING = ("model", "tasks", "use_structure", "graph")


@dataclass(frozen=True)
class CheckpointInfo:
    """One entry of a checkpoint directory listing."""

    name: str
    path: Path
    epoch: int | None
    step: int | None
    created: str | None
    size_bytes: int
    verified: bool
    problem: str | None
    is_best: bool
    is_latest: bool


def list_checkpoints(directory: Path) -> list[CheckpointInfo]:
    """Every checkpoint of ``directory``, each fully verified (every file re-hashed).

    Numbered ones oldest first (uncommitted ones included, with their problem),
    then those set aside as corrupt (``*.corrupt-*``), then ``best``.
    """
    return _catalog(Path(directory), include_set_aside=True)


def verify_checkpoints(directory: Path) -> list[CheckpointInfo]:
    """Re-hash every file of every usable checkpoint (numbered ones and ``best``) against its manifest.

    Checkpoints already set aside as corrupt are not listed: they are known bad.
    """
    return _catalog(Path(directory), include_set_aside=False)


def describe_checkpoint(path: Path) -> CheckpointInfo:
    """One checkpoint, fully verified."""
    path = Path(path)
    return _info(path, _problem(path), None, None)


def _problem(path: Path) -> str | None:
    try:
        storage.verify(path)
        nonfinite = storage.nonfinite_tensors(path)
    except DamagedCheckpointError as damage:
        return damage.problem
    return f"non-finite values in {', '.join(nonfinite[:3])}" if nonfinite else None


def _catalog(directory: Path, *, include_set_aside: bool) -> list[CheckpointInfo]:
    writing = live_writer(directory) is not None
    numbered = []
    for _tag, path in reversed(checkpoint_dirs(directory)):
        problem = _problem(path)
        if problem is not None and writing and _in_flux(path, problem):
            continue  # a live trainer is committing or removing it: not damage, just not done
        numbered.append((path, problem))
    latest = next((path for path, problem in reversed(numbered) if problem is None), None)
    entries = list(numbered)
    if include_set_aside and directory.is_dir():
        for path in sorted(directory.glob(f"*{storage.CORRUPT_MARK}*")):
            entries.append((path, "set aside after failing verification"))
    best, best_source = directory / BEST_NAME, None
    best_problem = _problem(best) if best.exists() else None
    if best.exists() and not (best_problem is not None and writing and _in_flux(best, best_problem)):
        entries.append((best, best_problem))
        best_source = _manifest_or_empty(best).get("source") if best_problem is None else None
    return [_info(path, problem, best_source, latest) for path, problem in entries]


def _in_flux(path: Path, problem: str) -> bool:
    """A checkpoint that vanished, or has no manifest yet: what a writer at work leaves for a moment."""
    return not path.exists() or problem.startswith(("missing MANIFEST", "missing directory"))


def format_info(info: CheckpointInfo) -> str:
    """One line describing ``info``, for listings: name, epoch, step, size, time, flags, status."""
    epoch = "?" if info.epoch is None else str(info.epoch)
    step = "end" if info.step is None else str(info.step)
    flags = ",".join(flag for flag, on in (("latest", info.is_latest), ("best", info.is_best)) if on)
    status = "ok" if info.verified else f"PROBLEM: {info.problem}"
    return (
        f"{info.name:<36} epoch {epoch:>4} step {step:>7} {info.size_bytes / 1e6:9.1f} MB "
        f"{info.created or '-':<25} {flags:<11} {status}"
    )


def inspect_checkpoint(path: Path) -> dict[str, Any]:
    """Summary of one verified checkpoint."""
    path = Path(path)
    manifest = storage.verify(path)
    try:
        state = json.loads((path / storage.STATE_FILE).read_bytes())
        with safetensors.safe_open(path / storage.TENSORS_FILE, framework="pt") as tensors:
            tensor_count = len(list(tensors.keys()))
    except (ValueError, safetensors.SafetensorError) as error:
        raise DamagedCheckpointError(path, f"undecodable content ({error})") from None
    metadata = state.get("metadata") or {}
    history = metadata.get("history") or []
    return {
        "path": str(path),
        "name": path.name,
        "epoch": manifest["epoch"],
        "step": manifest["step"],
        "created": manifest.get("created"),
        "source": manifest.get("source"),
        "size_bytes": sum(entry["size"] for entry in manifest["files"].values()),
        "tensor_count": tensor_count,
        "state_keys": _top_level_keys(state.get("tree")),
        "best_val_loss": metadata.get("best_val_loss"),
        "config": metadata.get("config"),
        "history_length": len(history),
        "history_tail": history[-HISTORY_TAIL:],
        "package_version": metadata.get("package_version", metadata.get("version")),
        "code_revision": metadata.get("code_revision"),
        "resumed_from": metadata.get("resumed_from"),
        "metadata_keys": sorted(metadata),
    }


def export_weights(path: Path, out_file: Path) -> str:
    """Write the inference weights of checkpoint ``path`` alone to a ``.safetensors`` file.

    The averaged weights when the run kept an average, else the live ones; returns which.
    The file's metadata holds only what defines the model (its settings, tasks and
    topoclass version), so identical weights give identical files whatever run made them.
    """
    path = Path(path)
    tree, metadata = storage.read(path)
    key = "averaged_model" if isinstance(tree, Mapping) and "averaged_model" in tree else "model"
    weights = tree.get(key) if isinstance(tree, Mapping) else None
    if (
        not isinstance(weights, Mapping)
        or not weights
        or not all(
            isinstance(name, str) and isinstance(value, torch.Tensor) for name, value in weights.items()
        )
    ):
        raise CheckpointError(f"{path}: state key '{key}' is not a flat mapping of names to tensors")
    config = metadata.get("config") or {}
    data = config.get("data") or {}
    defining = {
        "model": config.get("model"),
        "tasks": metadata.get("tasks"),
        "use_structure": data.get("use_structure"),
        "graph": data.get("graph"),
    }
    header = {
        "format": "topoclass-weights",
        "package_version": str(metadata.get("package_version")),
        **{name: json.dumps(defining[name], sort_keys=True) for name in MODEL_DEFINING},
    }
    out_file = Path(out_file)
    if out_file.is_dir():
        raise CheckpointError(f"{out_file} is a directory; give the path of a .safetensors file to write")
    tensors = {name: weights[name].detach().cpu().contiguous() for name in sorted(weights)}
    atomic_write(out_file, safetensors_chunks(tensors, header))
    return key


def _info(path: Path, problem: str | None, best_source: str | None, latest: Path | None) -> CheckpointInfo:
    manifest = _manifest_or_empty(path) if problem is None else {}
    tag = tag_or_none(path.name.split(storage.CORRUPT_MARK)[0])
    epoch = manifest.get("epoch", tag.epoch if tag else None)
    step = manifest.get("step", tag.step if tag else None)
    try:
        files = [entry for entry in path.iterdir() if entry.is_file()]
    except OSError:  # removed meanwhile
        files = []
    return CheckpointInfo(
        name=path.name,
        path=path,
        epoch=epoch,
        step=step,
        created=manifest.get("created"),
        size_bytes=sum(_size(entry) for entry in files),
        verified=problem is None,
        problem=problem,
        is_best=path.name == BEST_NAME or path.name == best_source,
        is_latest=path == latest,
    )


def _size(file: Path) -> int:
    try:
        return file.stat().st_size
    except OSError:
        return 0


def _manifest_or_empty(path: Path) -> dict[str, Any]:
    try:
        return storage.read_manifest(path)
    except DamagedCheckpointError:
        return {}


def _top_level_keys(tree: Any) -> list[Any]:
    if isinstance(tree, dict) and DICT_TAG in tree:
        return [key for key, _value in tree[DICT_TAG]]
    return list(tree) if isinstance(tree, dict) else []
