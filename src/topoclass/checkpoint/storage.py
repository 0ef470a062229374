"""Write, verify and read one checkpoint directory, durably and without pickle.

Layout of a checkpoint directory (e.g. ``checkpoint_epoch_7_step_1200/``)::

    tensors.safetensors   every tensor of the state tree (safetensors format)
    state.json            {"tree": <JSON half of the state tree>, "metadata": {...}}
    MANIFEST.json         format version, created time, epoch, step, and the
                          SHA-256 and size of every other file

Commit protocol of :func:`write_checkpoint` (a crash at any point leaves either
the previous checkpoints untouched or a directory that is visibly uncommitted):

1. Everything is serialized in memory first, so a bad state tree fails before
   any file exists.
2. The data files are written into a temporary directory in the same parent
   (``.tmp-<name>-<pid>``); each file is written once, hashed from the same
   in-memory buffers while it is written (no re-read), and fsynced. Then the
   temporary directory itself is fsynced so its entries are durable.
3. The temporary directory is renamed to the final name (atomic within one
   filesystem) and the parent directory is fsynced so the rename is durable.
   If a checkpoint of that name already existed it is first renamed to
   ``.replaced-<name>-<pid>`` and only deleted after the new one is committed;
   :func:`clean_leftovers` puts it back if the process died in between.
4. LAST, ``MANIFEST.json`` is written to a temporary file inside the directory,
   fsynced, renamed into place, and the directory is fsynced. The manifest is
   the commit mark: a directory without a valid manifest is not a checkpoint,
   whatever else it contains.

:func:`verify` re-reads every file and checks sizes and SHA-256 against the
manifest. :func:`read` verifies the very bytes it then decodes, using only
``safetensors`` and ``json``. Files written by ``torch.save`` or any other
pickle-based format are refused outright, because unpickling can execute code.

Testing seam: if the environment variable
``TOPOCLASS_KILL_DURING_CHECKPOINT_WRITE`` holds an integer N, the process sends
itself SIGKILL during its N-th call of :func:`write_checkpoint` (counted per
process, from 1), after the data files are in the final directory but before
the manifest, leaving a torn, uncommitted checkpoint behind. Crash tests use it;
it is inert when the variable is unset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import safetensors.torch

from topoclass.checkpoint.serialize import flatten, safetensors_chunks, unflatten
from topoclass.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT_NAME = "topoclass-checkpoint"
FORMAT_VERSION = 1
TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"
MANIFEST_FILE = "MANIFEST.json"
DATA_FILES = (TENSORS_FILE, STATE_FILE)
TEMP_PREFIX = ".tmp-"
REPLACED_PREFIX = ".replaced-"
KILL_ENV = "TOPOCLASS_KILL_DURING_CHECKPOINT_WRITE"

_PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar"})
_READ_CHUNK = 8 << 20
_write_count = 0


def write_checkpoint(
    path: Path, tree: Any, *, metadata: dict[str, Any], epoch: int, step: int | None
) -> Path:
    """Durably write ``tree`` and ``metadata`` as the checkpoint directory ``path``."""
    global _write_count
    _write_count += 1
    path = Path(path)
    tensors, json_tree = flatten(tree)
    state_bytes = _json_bytes({"tree": json_tree, "metadata": metadata}, what="checkpoint metadata")
    temp = fresh_temp_dir(path)
    files = {
        TENSORS_FILE: _write_file(temp / TENSORS_FILE, safetensors_chunks(tensors)),
        STATE_FILE: _write_file(temp / STATE_FILE, [state_bytes]),
    }
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "epoch": epoch,
        "step": step,
        "files": files,
    }
    _commit(temp, path, manifest, kill_point=True)
    return path


def fresh_temp_dir(final: Path) -> Path:
    """An empty temporary directory next to ``final``, named ``.tmp-<name>-<pid>``."""
    temp = final.parent / f"{TEMP_PREFIX}{final.name}-{os.getpid()}"
    if temp.exists():
        shutil.rmtree(temp)
    temp.mkdir(parents=True)
    return temp


def commit_directory(temp: Path, final: Path, manifest: dict[str, Any]) -> None:
    """Steps 2 to 4 of the protocol for a temp dir whose files are already written and fsynced."""
    _commit(temp, final, manifest, kill_point=False)


def _commit(temp: Path, final: Path, manifest: dict[str, Any], *, kill_point: bool) -> None:
    fsync_directory(temp)
    replaced = _move_existing_aside(final)
    os.rename(temp, final)
    fsync_directory(final.parent)
    if kill_point:
        _maybe_kill_for_test()
    write_manifest(final, manifest)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Commit ``directory`` by atomically writing its manifest (the last step of a write)."""
    atomic_write_bytes(directory / MANIFEST_FILE, _json_bytes(manifest, what="manifest", indent=1))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync of the directory."""
    temp = path.with_name(f"{TEMP_PREFIX}{path.name}-{os.getpid()}")
    temp.unlink(missing_ok=True)
    _write_file(temp, [data])
    os.replace(temp, path)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make the entries of ``directory`` (creations, renames) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_bytes(value: Any, *, what: str, indent: int | None = None) -> bytes:
    try:
        return json.dumps(value, indent=indent).encode()
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{what} is not JSON-serializable: {error}") from None


def _write_file(path: Path, chunks: list[bytes | memoryview]) -> dict[str, Any]:
    """Write ``chunks`` to a new file, fsync it, return its size and SHA-256.

    Hashing runs in a second thread over the same buffers while this one writes:
    both release the GIL, so the hash costs next to nothing on top of the write.
    """
    digest = hashlib.sha256()
    hasher = threading.Thread(target=_hash_all, args=(digest, chunks), daemon=True)
    hasher.start()
    size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            while view:
                written = os.write(fd, view)
                view = view[written:]
                size += written
        os.fsync(fd)
    finally:
        os.close(fd)
        hasher.join()
    return {"sha256": digest.hexdigest(), "size": size}


def _hash_all(digest: Any, chunks: Iterable[bytes | memoryview]) -> None:
    for chunk in chunks:
        digest.update(chunk)


def _move_existing_aside(path: Path) -> Path | None:
    if not path.exists():
        return None
    aside = path.parent / f"{REPLACED_PREFIX}{path.name}-{os.getpid()}"
    if aside.exists():
        shutil.rmtree(aside)
    os.rename(path, aside)
    return aside


def _maybe_kill_for_test() -> None:
    target = os.environ.get(KILL_ENV)
    if target and target.strip().isdigit() and int(target) == _write_count:
        os.kill(os.getpid(), signal.SIGKILL)


def read_manifest(path: Path) -> dict[str, Any]:
    """The parsed manifest of checkpoint ``path``; CheckpointError if absent or malformed."""
    manifest_path = Path(path) / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"{path}: missing {MANIFEST_FILE} (never committed)")
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except (OSError, ValueError):
        raise CheckpointError(f"{path}: manifest unreadable") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: manifest unreadable")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported format version {manifest.get('format_version')!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or any(name not in files for name in DATA_FILES):
        raise CheckpointError(f"{path}: manifest unreadable")
    return manifest


def verify(path: Path, *, full: bool = True) -> str | None:
    """None if ``path`` is an intact checkpoint, else a one-line description of the problem.

    ``full=False`` checks the manifest, the presence and the sizes of the files
    but skips re-hashing their contents.
    """
    path = Path(path)
    if not path.is_dir():
        return "not a directory" if path.exists() else "missing directory"
    try:
        manifest = read_manifest(path)
    except CheckpointError as error:
        return str(error).removeprefix(f"{path}: ")
    for name, expected in manifest["files"].items():
        problem = _check_file(path / name, expected, full=full)
        if problem is not None:
            return f"{name}: {problem}" if not problem.startswith("missing") else problem
    return None


def _check_file(file: Path, expected: dict[str, Any], *, full: bool) -> str | None:
    if not file.is_file():
        return f"missing file {file.name}"
    size = file.stat().st_size
    if size < expected["size"]:
        return f"truncated ({size} of {expected['size']} bytes)"
    if size != expected["size"]:
        return f"size mismatch ({size} bytes, manifest says {expected['size']})"
    if full:
        digest = hashlib.sha256()
        with file.open("rb") as handle:
            while block := handle.read(_READ_CHUNK):
                digest.update(block)
        if digest.hexdigest() != expected["sha256"]:
            return "sha256 mismatch"
    return None


def read(path: Path) -> tuple[Any, dict[str, Any]]:
    """Verify and load checkpoint ``path``: returns ``(state tree, metadata)``.

    Every file is read once; the bytes that were hashed are the bytes decoded.
    """
    path = Path(path)
    refuse_if_foreign(path)
    manifest = read_manifest(path)
    data: dict[str, bytes] = {}
    for name in DATA_FILES:
        expected = manifest["files"][name]
        try:
            data[name] = (path / name).read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing file {name}") from None
        if len(data[name]) != expected["size"]:
            kind = "truncated" if len(data[name]) < expected["size"] else "size mismatch"
            raise CheckpointError(f"{path}: {name}: {kind}")
        if hashlib.sha256(data[name]).hexdigest() != expected["sha256"]:
            raise CheckpointError(f"{path}: {name}: sha256 mismatch")
    try:
        tensors = safetensors.torch.load(data[TENSORS_FILE])
        state = json.loads(data[STATE_FILE])
        return unflatten(tensors, state["tree"]), state["metadata"]
    except (ValueError, KeyError, TypeError, safetensors.SafetensorError) as error:
        raise CheckpointError(f"{path}: undecodable content ({error})") from None


def refuse_if_foreign(path: Path) -> None:
    """Raise if ``path`` looks like a pickle-based checkpoint (``torch.save`` & co.) or is not ours."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    ours = path.is_dir() and any((path / name).exists() for name in (MANIFEST_FILE, *DATA_FILES))
    if ours:
        return
    if path.is_file() or any(_looks_pickled(entry) for entry in sorted(path.iterdir())[:100]):
        raise CheckpointError(
            f"refusing to load {path}: not a topoclass checkpoint "
            "(pickle-based files are never loaded because they can execute code)"
        )
    raise CheckpointError(f"{path} is not a topoclass checkpoint (no {MANIFEST_FILE})")


def _looks_pickled(file: Path) -> bool:
    if not file.is_file():
        return False
    if file.suffix.lower() in _PICKLE_SUFFIXES:
        return True
    with file.open("rb") as handle:
        head = handle.read(4)
    is_pickle = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    return is_pickle or head == b"PK\x03\x04"  # torch.save's zip container holds a pickle


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint: first rename it to a temp name so a half-deleted one is never seen."""
    path = Path(path)
    doomed = path.parent / f"{TEMP_PREFIX}deleted-{path.name}-{os.getpid()}"
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def clean_leftovers(directory: Path) -> None:
    """Undo what a killed writer left in ``directory`` (only call while holding its lock).

    Temporary entries were never committed and are removed. A checkpoint that
    was being replaced is put back when its replacement never got a manifest.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith(TEMP_PREFIX):
            log.info("Removing uncommitted leftover %s", entry)
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        elif entry.name.startswith(REPLACED_PREFIX) and entry.is_dir():
            _restore_replaced(entry)


def _restore_replaced(aside: Path) -> None:
    name = aside.name.removeprefix(REPLACED_PREFIX).rsplit("-", 1)[0]
    original = aside.parent / name
    if verify(original) is None or verify(aside) is not None:
        shutil.rmtree(aside, ignore_errors=True)
        return
    if original.exists():
        set_aside_as_corrupt(original, "replacement never committed")
    log.warning("Restoring %s, whose replacement was never committed", original)
    os.rename(aside, original)
    fsync_directory(aside.parent)


def set_aside_as_corrupt(path: Path, problem: str) -> Path:
    """Rename a bad checkpoint to ``<name>.corrupt-<UTC time>`` (never deleted) and log it."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    log.warning("Checkpoint %s is unusable (%s); renamed it to %s", path, problem, target.name)
    os.rename(path, target)
    fsync_directory(path.parent)
    return target
