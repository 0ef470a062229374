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
from safetensors import SafetensorError
from safetensors.torch import load_file

from topoclass.files import TEMP_PREFIX, temp_sibling
from topoclass.tensorfile import DTYPE_CODES, header

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
_TENSORS = "features.safetensors"
_META = "meta.json"
_MANIFEST = "MANIFEST.json"
# Bytes read at a time when copying or hashing files; small, so a featurization's peak memory
# does not grow with the size of its cache file.
_BLOCK = 1 << 20


def begin_entry(directory: Path) -> Path | None:
    """A fresh staging folder for the entry ``directory``; None (with a warning) where none can be made."""
    staging = temp_sibling(directory)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as error:
        _not_written(directory, error)
        return None
    return staging


def write_entry(
    directory: Path,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    *,
    staging: Path | None = None,
    streamed: dict[str, tuple[str, tuple[int, ...], list[Path]]] | None = None,
) -> bool:
    """Write a cache entry atomically (staging folder, then rename); False if it could not be written.

    ``streamed`` tensors (name -> dtype code, shape, files holding their bytes in order) are
    copied from disk into the tensor file without passing through memory whole. A cache is an
    optimization: a full or read-only cache disk costs the next run a featurization, never this
    run its work, so a failed write is a warning.
    """
    staging = staging or begin_entry(directory)
    if staging is None:
        return False
    tensors = {name: value.contiguous() for name, value in tensors.items()}
    entries = [
        (name, DTYPE_CODES[t.dtype], list(t.shape), t.numel() * t.element_size())
        for name, t in tensors.items()
    ]
    for name, (code, shape, files) in (streamed or {}).items():
        entries.append((name, code, list(shape), sum(f.stat().st_size for f in files)))
    try:
        digests = {_TENSORS: _write_streamed(staging / _TENSORS, header(entries), tensors, streamed or {})}
        meta_bytes = json.dumps(meta).encode()
        (staging / _META).write_bytes(meta_bytes)
        digests[_META] = hashlib.sha256(meta_bytes).hexdigest()
        for path in staging.iterdir():
            if path.is_dir():
                shutil.rmtree(path)  # the streamed parts are in the tensor file now
        (staging / _MANIFEST).write_text(json.dumps({"version": CACHE_FORMAT_VERSION, "sha256": digests}))
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(staging, directory)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        _not_written(directory, error)
        return False
    return True


def _write_streamed(
    path: Path,
    head: bytes,
    tensors: dict[str, torch.Tensor],
    streamed: dict[str, tuple[str, tuple[int, ...], list[Path]]],
) -> str:
    """Write the header, the in-memory tensors, then the streamed files; returns the SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:

        def put(data: bytes | memoryview) -> None:
            digest.update(data)
            out.write(data)

        put(head)
        for tensor in tensors.values():
            if tensor.numel():
                put(tensor.reshape(-1).view(torch.uint8).numpy().data)
        for _code, _shape, files in streamed.values():
            for file in files:
                with file.open("rb") as source:
                    while block := source.read(_BLOCK):
                        put(block)
    return digest.hexdigest()


def _not_written(directory: Path, error: OSError) -> None:
    logger.warning(
        "Featurization cache not written (%s: %s); the next run featurizes again",
        directory.parent,
        error.strerror or error,
    )


def read_entry(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Load and verify an entry; None when absent, stale or damaged (it is then rebuilt).

    The files are hashed as they stream past, then the tensors are memory-mapped: a cached
    load needs memory for what training touches, not twice the file.
    """
    try:
        manifest = json.loads((directory / _MANIFEST).read_text())
        if manifest.get("version") != CACHE_FORMAT_VERSION:
            return None
        for name, expected in manifest["sha256"].items():
            if _file_sha256(directory / name) != expected:
                logger.warning(
                    "Featurization cache %s is damaged (%s checksum); rebuilding it", directory, name
                )
                return None
        meta = json.loads((directory / _META).read_bytes())
        tensors = load_file(directory / _TENSORS)
    except (OSError, ValueError, KeyError, SafetensorError):
        return None
    # The manifest's modification time records the last use, for ``topoclass cache prune``.
    with contextlib.suppress(OSError):
        os.utime(directory / _MANIFEST)
    return tensors, meta


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


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
