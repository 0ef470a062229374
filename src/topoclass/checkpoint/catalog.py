"""Read-only views of a checkpoint directory, behind the ``checkpoints`` CLI verbs.

Nothing here renames, deletes or cleans up, so these functions are safe to run
while a trainer is writing to the same directory.

:func:`inspect_checkpoint` summarises the metadata a trainer stores with each
checkpoint; it reads these keys when present: ``config`` (resolved config dict),
``history`` (list of per-epoch records), ``best_val_loss``, ``package_version``,
``code_revision`` and ``resumed_from``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from topoclass.checkpoint import storage
from topoclass.checkpoint.manager import (
    BEST_NAME,
    RUN_CHECKPOINT_SUBDIR,
    checkpoint_dirs,
    tag_or_none,
)
from topoclass.checkpoint.serialize import DICT_TAG
from topoclass.errors import CheckpointError

CORRUPT_MARK = ".corrupt-"
HISTORY_TAIL = 3


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


def list_checkpoints(directory: Path, *, full: bool = False) -> list[CheckpointInfo]:
    """Checkpoints of ``directory`` (or of a run directory's ``checkpoints/``).

    Numbered ones oldest first (uncommitted ones included, with their problem),
    then those set aside as corrupt (``*.corrupt-*``), then ``best``.
    ``full=False`` checks manifests and file sizes only; :func:`verify_checkpoints`
    re-hashes every file.
    """
    return _catalog(Path(directory), full=full, include_set_aside=True)


def verify_checkpoints(directory: Path) -> list[CheckpointInfo]:
    """Re-hash every file of every usable checkpoint (numbered ones and ``best``) against its manifest.

    Checkpoints already set aside as corrupt are not listed: they are known bad.
    """
    return _catalog(Path(directory), full=True, include_set_aside=False)


def _catalog(directory: Path, *, full: bool, include_set_aside: bool) -> list[CheckpointInfo]:
    directory = _checkpoint_root(Path(directory))
    numbered = [
        (path, storage.verify(path, full=full)) for _tag, path in reversed(checkpoint_dirs(directory))
    ]
    latest = next((path for path, problem in reversed(numbered) if problem is None), None)
    entries = list(numbered)
    if include_set_aside and directory.is_dir():
        for path in sorted(directory.glob(f"*{CORRUPT_MARK}*")):
            entries.append((path, "set aside after failing verification"))
    best, best_source = directory / BEST_NAME, None
    if best.is_dir():
        best_problem = storage.verify(best, full=full)
        entries.append((best, best_problem))
        best_source = _manifest_or_empty(best).get("source") if best_problem is None else None
    return [_info(path, problem, best_source, latest) for path, problem in entries]


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
    """Summary of a checkpoint (or of the latest intact one of a checkpoint or run directory)."""
    path = resolve_checkpoint(Path(path))
    manifest = storage.read_manifest(path)
    state = json.loads((path / storage.STATE_FILE).read_bytes())
    metadata = state.get("metadata") or {}
    tree = state.get("tree")
    history = metadata.get("history") or []
    with safetensors.safe_open(path / storage.TENSORS_FILE, framework="pt") as tensors:
        tensor_count = len(list(tensors.keys()))
    return {
        "path": str(path),
        "name": path.name,
        "epoch": manifest["epoch"],
        "step": manifest["step"],
        "created": manifest.get("created"),
        "source": manifest.get("source"),
        "size_bytes": sum(entry["size"] for entry in manifest["files"].values()),
        "tensor_count": tensor_count,
        "state_keys": _top_level_keys(tree),
        "best_val_loss": metadata.get("best_val_loss"),
        "config": metadata.get("config"),
        "history_length": len(history),
        "history_tail": history[-HISTORY_TAIL:],
        "package_version": metadata.get("package_version", metadata.get("version")),
        "code_revision": metadata.get("code_revision"),
        "resumed_from": metadata.get("resumed_from"),
        "metadata_keys": sorted(metadata),
    }


def export_weights(path: Path, out_file: Path, key: str = "model") -> Path:
    """Write the tensors under ``state[key]`` alone to a ``.safetensors`` file.

    The file's safetensors metadata carries the run's config as a JSON string
    (``config``) plus the source checkpoint, epoch and step.
    """
    path = resolve_checkpoint(Path(path))
    tree, metadata = storage.read(path)
    weights = tree.get(key) if isinstance(tree, Mapping) else None
    if (
        not isinstance(weights, Mapping)
        or not weights
        or not all(
            isinstance(name, str) and isinstance(value, torch.Tensor) for name, value in weights.items()
        )
    ):
        raise CheckpointError(f"{path}: state key '{key}' is not a flat mapping of names to tensors")
    manifest = storage.read_manifest(path)
    header = {
        "format": "topoclass-weights",
        "config": json.dumps(metadata.get("config")),
        "source_checkpoint": path.name,
        "epoch": str(manifest["epoch"]),
        "step": str(manifest["step"]),
    }
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    temp = out_file.with_name(f"{storage.TEMP_PREFIX}{out_file.name}-{os.getpid()}")
    safetensors.torch.save_file({name: value.contiguous() for name, value in weights.items()}, temp, header)
    os.replace(temp, out_file)
    return out_file


def resolve_checkpoint(path: Path) -> Path:
    """``path`` itself if it is a checkpoint, else the newest intact one it contains (read-only)."""
    if path.is_dir() and (
        tag_or_none(path.name) or path.name == BEST_NAME or (path / storage.MANIFEST_FILE).exists()
    ):
        problem = storage.verify(path)
        if problem is not None:
            raise CheckpointError(f"{path}: {problem}")
        return path
    root = _checkpoint_root(path)
    candidates = checkpoint_dirs(root)
    if not candidates:
        storage.refuse_if_foreign(root)
        raise CheckpointError(f"no checkpoint found in {path}")
    for _tag, candidate in candidates:
        if storage.verify(candidate) is None:
            return candidate
    raise CheckpointError(f"no intact checkpoint found in {path}")


def _checkpoint_root(path: Path) -> Path:
    nested = path / RUN_CHECKPOINT_SUBDIR
    return nested if nested.is_dir() else path


def _info(path: Path, problem: str | None, best_source: str | None, latest: Path | None) -> CheckpointInfo:
    manifest = _manifest_or_empty(path) if problem is None else {}
    tag = tag_or_none(path.name.split(CORRUPT_MARK)[0])
    epoch = manifest.get("epoch", tag.epoch if tag else None)
    step = manifest.get("step", tag.step if tag else None)
    return CheckpointInfo(
        name=path.name,
        path=path,
        epoch=epoch,
        step=step,
        created=manifest.get("created"),
        size_bytes=sum(entry.stat().st_size for entry in path.iterdir() if entry.is_file()),
        verified=problem is None,
        problem=problem,
        is_best=path.name == BEST_NAME or path.name == best_source,
        is_latest=path == latest,
    )


def _manifest_or_empty(path: Path) -> dict[str, Any]:
    try:
        return storage.read_manifest(path)
    except CheckpointError:
        return {}


def _top_level_keys(tree: Any) -> list[Any]:
    if isinstance(tree, dict) and DICT_TAG in tree:
        return [key for key, _value in tree[DICT_TAG]]
    return list(tree) if isinstance(tree, dict) else []
