"""Writing files so that a crash never leaves half of one: the one atomic-write helper.

Every file topoclass writes for the user (status, split, metrics, reports,
exports, predictions, checkpoint manifests) goes through :func:`atomic_write`:
the data lands in a temporary sibling named ``.tmp-<name>-<pid>``, is fsynced,
and is renamed over the target, so a reader sees the old content or the new,
never a mix. A failure removes the temporary file and raises :class:`WriteError`
naming the path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from pathlib import Path

from topoclass.errors import WriteError

TEMP_PREFIX = ".tmp-"

Chunk = bytes | memoryview


def temp_sibling(path: Path) -> Path:
    """The temporary name a write to ``path`` uses until it is complete."""
    return path.with_name(f"{TEMP_PREFIX}{path.name}-{os.getpid()}")


def atomic_write(
    path: str | Path,
    data: bytes | str | Sequence[Chunk],
    *,
    durable: bool = True,
    also_sync: Iterable[Path] = (),
    executor: Executor | None = None,
) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync of the directory.

    ``durable=False`` skips the fsyncs (for hints that may be lost in a crash);
    ``also_sync`` paths are fsynced together with the temp file. A missing parent
    folder is created.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    chunks: Sequence[Chunk] = [data] if isinstance(data, bytes) else data
    temp = temp_sibling(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp.unlink(missing_ok=True)
        write_chunks(temp, chunks)
        if durable:
            fsync_paths(temp, *also_sync, executor=executor)
        os.replace(temp, path)
        if durable:
            fsync_paths(path.parent)
    except OSError as error:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise WriteError(path, error) from error


def write_chunks(path: Path, chunks: Iterable[Chunk]) -> int:
    """Write ``chunks`` to a new file (refusing to overwrite) in one pass; returns its size."""
    size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            while view:
                written = os.write(fd, view)
                view = view[written:]
                size += written
    finally:
        os.close(fd)
    return size


def fsync_paths(*paths: Path, executor: Executor | None = None) -> None:
    """fsync files and directories; concurrently on ``executor`` when there are several.

    A journaling filesystem folds concurrent fsyncs into one journal commit, so
    together they cost about as much as the largest one.
    """
    if executor is None or len(paths) == 1:
        for path in paths:
            _fsync_path(path)
    else:
        list(executor.map(_fsync_path, paths))


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
