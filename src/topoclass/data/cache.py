"""The featurization cache: featurize once, load in a fraction of a second afterwards.

An entry is a directory named by the dataset and a fingerprint of everything
that produced it (the input records, the featurizer settings and version).
Tensors live in one safetensors file, everything else in JSON; a manifest with
SHA-256 checksums is written last, and the directory appears under its final
name only by an atomic rename, so a crash never leaves a half-written entry
that looks complete.

Entries are never deleted behind the user's back: a change of data or settings
leaves the old entry in place (another run may still want it). ``topoclass cache
list`` shows them with their size and last use; ``topoclass cache prune`` removes
the ones unused for a while, so a long project does not fill a quota.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save

from topoclass.files import TEMP_PREFIX, temp_sibling

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
_TENSORS = "features.safetensors"
_META = "meta.json"
_MANIFEST = "MANIFEST.json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_entry(directory: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bool:
    """Write a cache entry atomically (temp directory, then rename); False if it could not be written.

    A cache is an optimization: a full or read-only cache disk costs the next run a
    featurization, never this run its work, so a failed write is a warning.
    """
    staging = temp_sibling(directory)
    blobs = {
        _TENSORS: save({k: v.contiguous() for k, v in tensors.items()}),
        _META: json.dumps(meta).encode(),
    }
    manifest = {"version": CACHE_FORMAT_VERSION, "sha256": {n: _sha256(b) for n, b in blobs.items()}}
    blobs[_MANIFEST] = json.dumps(manifest).encode()
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for name, blob in blobs.items():
            (staging / name).write_bytes(blob)
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(staging, directory)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        logger.warning(
            "Featurization cache not written (%s: %s); the next run featurizes again",
            directory.parent,
            error.strerror or error,
        )
        return False
    return True


def read_entry(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Load and verify an entry; None when absent, stale or damaged (it is then rebuilt)."""
    try:
        manifest = json.loads((directory / _MANIFEST).read_text())
        if manifest.get("version") != CACHE_FORMAT_VERSION:
            return None
        blobs = {name: (directory / name).read_bytes() for name in manifest["sha256"]}
    except (OSError, ValueError, KeyError):
        return None
    for name, digest in manifest["sha256"].items():
        if _sha256(blobs[name]) != digest:
            logger.warning("Featurization cache %s is damaged (%s checksum); rebuilding it", directory, name)
            return None
    # The manifest's modification time records the last use, for ``topoclass cache prune``.
    with contextlib.suppress(OSError):
        os.utime(directory / _MANIFEST)
    return load(blobs[_TENSORS]), json.loads(blobs[_META])


@dataclass(frozen=True)
class CacheEntry:
    """One directory under the cache root: a finished entry or a write a crash left behind."""

    path: Path
    size_bytes: int
    last_used: float  # seconds since the epoch
    complete: bool

    @property
    def idle_days(self) -> float:
        return (time.time() - self.last_used) / 86400


def list_entries(root: Path) -> list[CacheEntry]:
    """Every entry under ``root``, least recently used first; [] when the root does not exist."""
    if not root.is_dir():
        return []
    entries = []
    for directory in root.iterdir():
        unfinished = directory.name.startswith(TEMP_PREFIX)
        complete = not unfinished and _written_by_this_cache(directory / _MANIFEST)
        if not directory.is_dir() or not (complete or unfinished):
            continue  # not ours: a mistyped --cache-dir must never cost the user files
        files = [f for f in directory.rglob("*") if f.is_file()]
        stamp = directory / _MANIFEST if complete else directory
        entries.append(
            CacheEntry(
                path=directory,
                size_bytes=sum(f.stat().st_size for f in files),
                last_used=stamp.stat().st_mtime,
                complete=complete,
            )
        )
    return sorted(entries, key=lambda entry: entry.last_used)


def _written_by_this_cache(manifest: Path) -> bool:
    try:
        content = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and {"version", "sha256"} <= content.keys()


def remove_entry(entry: CacheEntry) -> None:
    """Delete one entry (it is rebuilt on its next use)."""
    shutil.rmtree(entry.path)


def fingerprint(parts: list[Any]) -> str:
    """Stable SHA-256 of JSON-serializable parts."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()
