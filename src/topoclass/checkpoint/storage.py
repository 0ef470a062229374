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
   (``.tmp-<name>-<pid>``); each file is written once and hashed from the same
   in-memory buffers while it is written (no re-read). The files and the
   temporary directory (so its entries are durable) are then fsynced, all
   concurrently: a journaling filesystem folds concurrent fsyncs into one
   journal commit, so together they cost about as much as the largest one.
3. The temporary directory is renamed to the final name (atomic within one
   filesystem). If a checkpoint of that name already existed it is first
   renamed to ``.replaced-<name>-<pid>`` and only deleted after the new one is
   committed; :func:`clean_leftovers` puts it back if the process died in between.
4. LAST, ``MANIFEST.json`` is written to a temporary file inside the directory;
   that file and the parent directory (making the rename of step 3 durable) are
   fsynced, the file is renamed into place, and the directory is fsynced. The
   manifest is the commit mark: a directory without a valid manifest is not a
   checkpoint, whatever else it contains. The manifest can only become
   durable after everything it describes already is.

:func:`verify` re-reads every file and checks sizes and SHA-256 against the
manifest. :func:`read` verifies the very bytes it then decodes, using only
``safetensors`` and ``json``. Files written by ``torch.save`` or any other
pickle-based format are refused outright, because unpickling can execute code.

Testing seam: if the environment variable
``TOPOCLASS_KILL_DURING_CHECKPOINT_WRITE`` holds an integer N, the process sends
itself SIGKILL during its N-th checkpoint write (counted per process, from 1;
every :func:`write_checkpoint` and every :func:`commit_directory`, such as the
hard-linked ``best/`` of the manager, is one write), after the data files are in
the final directory but before the manifest, leaving a torn, uncommitted
checkpoint behind. Crash tests use it; it is inert when the variable is unset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import uuid
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
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
# Threads for work that overlaps I/O: hashing, concurrent fsyncs, deleting old checkpoints.
_IO_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="checkpoint-io")


def write_checkpoint(
    path: Path, tree: Any, *, metadata: dict[str, Any], epoch: int, step: int | None
) -> Path:
    """Durably write ``tree`` and ``metadata`` as the checkpoint directory ``path``."""
    path = Path(path)
    tensors, json_tree = flatten(tree)
    contents = {
        TENSORS_FILE: safetensors_chunks(tensors),
        STATE_FILE: [_json_bytes({"tree": json_tree, "metadata": metadata}, what="checkpoint metadata")],
    }
    # Hashing the big file runs in the I/O pool while the files are written and fsynced
    # (hashlib releases the GIL), so it overlaps the I/O and nothing is read back to be hashed.
    tensors_digest = _IO_POOL.submit(_sha256_hex, contents[TENSORS_FILE])
    state_digest = _sha256_hex(contents[STATE_FILE])
    temp = fresh_temp_dir(path)
    try:
        sizes = {name: _write_file(temp / name, chunks) for name, chunks in contents.items()}
        fsync_paths(*(temp / name for name in contents), temp)
        digests = {TENSORS_FILE: tensors_digest.result(), STATE_FILE: state_digest}
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "epoch": epoch,
            "step": step,
            "files": {name: {"sha256": digests[name], "size": sizes[name]} for name in contents},
        }
        _commit(temp, path, manifest)
    except OSError as error:  # disk full, permissions...: nothing was committed
        shutil.rmtree(temp, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {path}: {error}") from error
    return path


def fresh_temp_dir(final: Path) -> Path:
    """An empty temporary directory next to ``final``, named ``.tmp-<name>-<pid>``."""
    temp = final.parent / f"{TEMP_PREFIX}{final.name}-{os.getpid()}"
    if temp.exists():
        shutil.rmtree(temp)
    temp.mkdir(parents=True)
    return temp


def commit_directory(
    temp: Path, final: Path, manifest: dict[str, Any], *, unsynced: Iterable[Path] = ()
) -> None:
    """Steps 2 (fsync) to 4 of the protocol for a temp dir whose files are written.

    ``unsynced`` lists the files in ``temp`` that still need an fsync.
    """
    fsync_paths(*unsynced, temp)
    _commit(temp, final, manifest)


def _commit(temp: Path, final: Path, manifest: dict[str, Any]) -> None:
    """Steps 3 and 4: rename the fsynced temp dir into place, then write the manifest."""
    global _write_count
    _write_count += 1
    replaced = _move_existing_aside(final)
    os.rename(temp, final)
    _maybe_kill_for_test()
    # The parent's fsync (making the rename durable) runs concurrently with the
    # manifest file's: both must complete before the manifest is renamed into place.
    write_manifest(final, manifest, also_sync=(final.parent,))
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)


def write_manifest(directory: Path, manifest: dict[str, Any], *, also_sync: Iterable[Path] = ()) -> None:
    """Commit ``directory`` by atomically writing its manifest (the last step of a write)."""
    data = _json_bytes(manifest, what="manifest", indent=1)
    atomic_write_bytes(directory / MANIFEST_FILE, data, also_sync=also_sync)


def atomic_write_bytes(
    path: Path, data: bytes, *, durable: bool = True, also_sync: Iterable[Path] = ()
) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync of the directory.

    Readers see the old or the new content, never a mix. ``also_sync`` paths are
    fsynced together with the temp file. ``durable=False`` skips the fsyncs,
    for hints that may be lost in a crash.
    """
    temp = path.with_name(f"{TEMP_PREFIX}{path.name}-{os.getpid()}")
    temp.unlink(missing_ok=True)
    _write_file(temp, [data])
    if durable:
        fsync_paths(temp, *also_sync)
    os.replace(temp, path)
    if durable:
        fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make the entries of ``directory`` (creations, renames) durable."""
    fsync_paths(directory)


def fsync_paths(*paths: Path) -> None:
    """fsync files and directories, concurrently when there are several."""
    if len(paths) == 1:
        _fsync_path(paths[0])
    else:
        list(_IO_POOL.map(_fsync_path, paths))


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_bytes(value: Any, *, what: str, indent: int | None = None) -> bytes:
    try:
        return json.dumps(value, indent=indent).encode()
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{what} is not JSON-serializable: {error}") from None


def _write_file(path: Path, chunks: list[bytes | memoryview]) -> int:
    """Write ``chunks`` to a new file with one pass over the buffers; returns its size."""
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


def _sha256_hex(chunks: list[bytes | memoryview]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


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


def remove_checkpoint(path: Path) -> Future[None]:
    """Delete a checkpoint: renamed to a temp name now (so a half-deleted one is never seen),
    its files freed in the background (deleting large files takes a while on some filesystems).
    """
    path = Path(path)
    doomed = path.parent / f"{TEMP_PREFIX}deleted-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(path, doomed)
    return _IO_POOL.submit(shutil.rmtree, doomed, ignore_errors=True)


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
    problem = verify(original)
    if problem is None:  # the replacement did get committed: the old one is obsolete
        shutil.rmtree(aside, ignore_errors=True)
        return
    if original.exists():
        set_aside_as_corrupt(original, problem)
    log.warning("Restoring %s, whose replacement was never committed", original)
    os.rename(aside, original)  # verified like any other checkpoint when it is next read
    fsync_directory(aside.parent)


def set_aside_as_corrupt(path: Path, problem: str) -> Path:
    """Rename a bad checkpoint to ``<name>.corrupt-<UTC time>`` (never deleted) and log it."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    log.warning("Checkpoint %s is unusable (%s); renamed it to %s", path, problem, target.name)
    os.rename(path, target)
    fsync_directory(path.parent)
    return target
