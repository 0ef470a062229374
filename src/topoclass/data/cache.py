"""The featurization cache: featurize once, load in a fraction of a second afterwards.

An entry is a directory named by the dataset and a fingerprint of everything
that produced it (the input records, the featurizer settings and version).
Tensors live in one safetensors file, everything else in JSON; a manifest with
SHA-256 checksums is written last, and the directory appears under its final
name only by an atomic rename, so a crash never leaves a half-written entry
that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
_TENSORS = "features.safetensors"
_META = "meta.json"
_MANIFEST = "MANIFEST.json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_entry(directory: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write a cache entry atomically (temp directory, then rename)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f".tmp-{directory.name}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    blobs = {
        _TENSORS: save({k: v.contiguous() for k, v in tensors.items()}),
        _META: json.dumps(meta).encode(),
    }
    for name, blob in blobs.items():
        (staging / name).write_bytes(blob)
    manifest = {"version": CACHE_FORMAT_VERSION, "sha256": {n: _sha256(b) for n, b in blobs.items()}}
    (staging / _MANIFEST).write_text(json.dumps(manifest))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(staging, directory)


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
    return load(blobs[_TENSORS]), json.loads(blobs[_META])


def fingerprint(parts: list[Any]) -> str:
    """Stable SHA-256 of JSON-serializable parts."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()
