"""Write, verify and read one checkpoint directory, durably and without pickle.

Layout of a checkpoint directory (e.g. ``checkpoint_epoch_7_step_1200/``)::

    tensors.safetensors   every tensor of the state tree (safetensors format)
    state.json            {"tree": <JSON half of the state tree>, "metadata": {...}}
    MANIFEST.json         format version, created time, epoch, step, and the
                          SHA-256 and size of every other file

Commit protocol of :meth:`CheckpointStorage.write` (a crash at any point leaves either
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
manifest, raising :class:`DamagedCheckpointError` with the problem. :func:`read`
verifies the very bytes it then decodes, using only ``safetensors`` and ``json``.
Files written by ``torch.save`` or any other pickle-based format are refused
outright, because unpickling can execute code.

Testing seam: functions in :data:`COMMIT_HOOKS` run during every commit, after
the data files are in the final directory but before the manifest, with the number
of that commit in this process (1, 2, ...). Crash tests put one there that sends
the process SIGKILL, leaving a torn, uncommitted checkpoint behind; the list is
empty in production.

:class:`CheckpointStorage` owns the threads that overlap hashing, fsyncs and
deletions with the writes; whoever creates one closes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from topoclass.errors import CheckpointError, CheckpointWriteError, DamagedCheckpointError, WriteError
from topoclass.files import TEMP_PREFIX, atomic_write, fsync_paths, write_chunks

if TYPE_CHECKING:
    import torch

# PyTorch and safetensors are imported where tensors are written or decoded: verifying a
# directory and reading its JSON or extra files (what serving without PyTorch does) needs neither.

log = logging.getLogger(__name__)

FORMAT_NAME = "topoclass-checkpoint"
FORMAT_VERSION = 1
TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"
MANIFEST_FILE = "MANIFEST.json"
DATA_FILES = (TENSORS_FILE, STATE_FILE)
REPLACED_PREFIX = ".replaced-"
CORRUPT_MARK = ".corrupt-"

COMMIT_HOOKS: list[Callable[[int], None]] = []

_PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar"})
_READ_CHUNK = 8 << 20
_commit_count = 0


class CheckpointStorage:
    """Writes and removes checkpoint directories; owns the I/O threads (close it when done)."""

    def __init__(self, workers: int = 4) -> None:
        # Hashing, concurrent fsyncs and deleting old checkpoints overlap the writes.
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="checkpoint-io")
        self._deletions: list[Future[None]] = []

    def write(
        self,
        path: Path,
        tree: Any,
        *,
        metadata: dict[str, Any],
        epoch: int,
        step: int | None,
        extra_files: dict[str, bytes] | None = None,
    ) -> Path:
        """Durably write ``tree`` and ``metadata`` as the checkpoint directory ``path``.

        ``extra_files`` (name -> bytes) are committed and verified with the rest (fitted tree
        models in their own text format, say); :func:`read_file` reads one back.
        """
        from topoclass.checkpoint.serialize import flatten, safetensors_chunks

        path = Path(path)
        tensors, json_tree = flatten(tree)
        nonfinite = [name for name, tensor in tensors.items() if _has_nonfinite(tensor)]
        if nonfinite:
            raise CheckpointError(
                f"refusing to write {path.name}: non-finite values in {', '.join(nonfinite[:3])} "
                "(a diverged state would be restored by every resume)"
            )
        contents: dict[str, list[bytes | memoryview]] = {
            TENSORS_FILE: safetensors_chunks(tensors),
            STATE_FILE: [_json_bytes({"tree": json_tree, "metadata": metadata}, what="checkpoint metadata")],
            **{name: [data] for name, data in (extra_files or {}).items()},
        }
        # Hashing the big file runs in the pool while the files are written and fsynced
        # (hashlib releases the GIL), so it overlaps the I/O and nothing is read back to be hashed.
        tensors_digest = self._pool.submit(_sha256_hex, contents[TENSORS_FILE])
        small_digests = {
            name: _sha256_hex(chunks) for name, chunks in contents.items() if name != TENSORS_FILE
        }
        temp = fresh_temp_dir(path)
        try:
            sizes = {name: write_chunks(temp / name, chunks) for name, chunks in contents.items()}
            fsync_paths(*(temp / name for name in contents), temp, executor=self._pool)
            digests = {TENSORS_FILE: tensors_digest.result(), **small_digests}
            manifest = new_manifest(
                epoch, step, {name: {"sha256": digests[name], "size": sizes[name]} for name in contents}
            )
            self._commit(temp, path, manifest)
        except (OSError, WriteError) as error:  # disk full, permissions...: nothing was committed
            shutil.rmtree(temp, ignore_errors=True)
            raise CheckpointWriteError(f"cannot write checkpoint {path}: {_reason(error)}") from error
        return path

    def commit_directory(
        self, temp: Path, final: Path, manifest: dict[str, Any], *, unsynced: Iterable[Path] = ()
    ) -> None:
        """Steps 2 (fsync) to 4 of the protocol for a temp dir whose files are written.

        ``unsynced`` lists the files in ``temp`` that still need an fsync.
        """
        fsync_paths(*unsynced, temp, executor=self._pool)
        self._commit(temp, final, manifest)

    def _commit(self, temp: Path, final: Path, manifest: dict[str, Any]) -> None:
        """Steps 3 and 4: rename the fsynced temp dir into place, then write the manifest."""
        global _commit_count
        _commit_count += 1
        replaced = _move_existing_aside(final)
        os.rename(temp, final)
        for hook in COMMIT_HOOKS:
            hook(_commit_count)
        # The parent's fsync (making the rename durable) runs concurrently with the
        # manifest file's: both must complete before the manifest is renamed into place.
        data = _json_bytes(manifest, what="manifest", indent=1)
        atomic_write(final / MANIFEST_FILE, data, also_sync=(final.parent,), executor=self._pool)
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)

    def remove(self, path: Path) -> None:
        """Delete a checkpoint: renamed to a temp name now (so a half-deleted one is never seen),
        its files freed in the background (deleting large files takes a while on some filesystems).
        """
        path = Path(path)
        doomed = path.parent / f"{TEMP_PREFIX}deleted-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(path, doomed)
        self._deletions.append(self._pool.submit(shutil.rmtree, doomed, ignore_errors=True))

    def wait_for_removals(self) -> None:
        """Wait until removed checkpoints are gone from disk (before measuring disk use)."""
        for deletion in self._deletions:
            deletion.result()
        self._deletions.clear()

    def close(self) -> None:
        """Finish pending removals and stop the I/O threads."""
        self.wait_for_removals()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> CheckpointStorage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _has_nonfinite(tensor: torch.Tensor) -> bool:
    import torch

    return tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())


def nonfinite_tensors(path: Path) -> list[str]:
    """Names of the tensors of a verified checkpoint that hold NaN or infinity."""
    import safetensors

    try:
        with safetensors.safe_open(Path(path) / TENSORS_FILE, framework="pt") as handle:
            names = handle.keys()  # a safetensors handle is not iterable itself
            return [name for name in names if _has_nonfinite(handle.get_tensor(name))]
    except (OSError, safetensors.SafetensorError) as error:
        raise DamagedCheckpointError(path, f"undecodable content ({error})") from None


def new_manifest(epoch: int, step: int | None, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest that commits a checkpoint of ``files`` ({name: {sha256, size}})."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "epoch": epoch,
        "step": step,
        "files": files,
    }


def fresh_temp_dir(final: Path) -> Path:
    """An empty temporary directory next to ``final``, named ``.tmp-<name>-<pid>``."""
    temp = final.parent / f"{TEMP_PREFIX}{final.name}-{os.getpid()}"
    if temp.exists():
        shutil.rmtree(temp)
    temp.mkdir(parents=True)
    return temp


def _reason(error: OSError | WriteError) -> str:
    return error.reason if isinstance(error, WriteError) else error.strerror or str(error)


def _json_bytes(value: Any, *, what: str, indent: int | None = None) -> bytes:
    try:
        return json.dumps(value, indent=indent).encode()
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{what} is not JSON-serializable: {error}") from None


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


def read_manifest(path: Path) -> dict[str, Any]:
    """The parsed, well-shaped manifest of checkpoint ``path``; DamagedCheckpointError otherwise."""
    manifest_path = Path(path) / MANIFEST_FILE
    if not manifest_path.is_file():
        raise DamagedCheckpointError(path, f"missing {MANIFEST_FILE} (never committed)")
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except (OSError, ValueError):
        raise DamagedCheckpointError(path, "manifest unreadable") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise DamagedCheckpointError(path, "manifest unreadable")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DamagedCheckpointError(path, f"unsupported format version {manifest.get('format_version')!r}")
    problem = _manifest_shape_problem(manifest)
    if problem is not None:
        raise DamagedCheckpointError(path, f"manifest malformed ({problem})")
    return manifest


def _manifest_shape_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with a parsed manifest's shape, or None; valid JSON can still be nonsense."""
    epoch, step, files = manifest.get("epoch"), manifest.get("step"), manifest.get("files")
    if not _is_count(epoch):
        return "epoch is not a non-negative integer"
    if step is not None and not _is_count(step):
        return "step is not a non-negative integer"
    if not isinstance(files, dict) or any(name not in files for name in DATA_FILES):
        return f"files must describe {', '.join(DATA_FILES)}"
    for name, entry in files.items():
        if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
            return f"bad file name {name!r}"
        if not isinstance(entry, dict) or not _is_count(entry.get("size")):
            return f"{name}: size is not a non-negative integer"
        digest = entry.get("sha256")
        if (
            not isinstance(digest, str)
            or len(digest) != 64
            or not all(c in "0123456789abcdef" for c in digest)
        ):
            return f"{name}: sha256 is not a hex digest"
    return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def verify(path: Path, *, full: bool = True) -> dict[str, Any]:
    """Check that ``path`` is an intact checkpoint; returns its manifest.

    Raises :class:`DamagedCheckpointError` naming the problem. ``full=False`` checks the
    manifest, the presence and the sizes of the files but skips re-hashing their contents.
    """
    path = Path(path)
    if not path.is_dir():
        raise DamagedCheckpointError(path, "not a directory" if path.exists() else "missing directory")
    manifest = read_manifest(path)
    for name, expected in manifest["files"].items():
        problem = _check_file(path / name, expected, full=full)
        if problem is not None:
            raise DamagedCheckpointError(
                path, problem if problem.startswith("missing") else f"{name}: {problem}"
            )
    return manifest


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
    import safetensors.torch

    from topoclass.checkpoint.serialize import unflatten

    path = Path(path)
    refuse_if_foreign(path)
    manifest = read_manifest(path)
    data: dict[str, bytes] = {}
    for name in DATA_FILES:
        expected = manifest["files"][name]
        try:
            data[name] = (path / name).read_bytes()
        except FileNotFoundError:
            raise DamagedCheckpointError(path, f"missing file {name}") from None
        if len(data[name]) != expected["size"]:
            kind = "truncated" if len(data[name]) < expected["size"] else "size mismatch"
            raise DamagedCheckpointError(path, f"{name}: {kind}")
        if hashlib.sha256(data[name]).hexdigest() != expected["sha256"]:
            raise DamagedCheckpointError(path, f"{name}: sha256 mismatch")
    try:
        tensors = safetensors.torch.load(data[TENSORS_FILE])
        state = json.loads(data[STATE_FILE])
        return unflatten(tensors, state["tree"]), state["metadata"]
    except (ValueError, KeyError, TypeError, safetensors.SafetensorError) as error:
        raise DamagedCheckpointError(path, f"undecodable content ({error})") from None


def read_file(path: Path, name: str) -> bytes:
    """One file of a checkpoint, checked against the manifest (an extra file, say)."""
    manifest = read_manifest(path)
    expected = manifest["files"].get(name)
    if expected is None:
        raise DamagedCheckpointError(path, f"no file {name} in the manifest")
    try:
        data = (Path(path) / name).read_bytes()
    except OSError:
        raise DamagedCheckpointError(path, f"missing file {name}") from None
    if len(data) != expected["size"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise DamagedCheckpointError(path, f"{name}: sha256 mismatch")
    return data


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata of a checkpoint that :func:`verify` passed, without decoding its tensors."""
    try:
        state = json.loads((Path(path) / STATE_FILE).read_bytes())
        metadata = state["metadata"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DamagedCheckpointError(path, f"undecodable content ({error})") from None
    if not isinstance(metadata, dict):
        raise DamagedCheckpointError(path, "undecodable content (metadata is not a mapping)")
    return metadata


def refuse_if_foreign(path: Path) -> None:
    """Raise if ``path`` looks like a pickle-based checkpoint (``torch.save`` & co.) or is not ours."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    ours = path.is_dir() and any((path / name).exists() for name in (MANIFEST_FILE, *DATA_FILES))
    if ours:
        return
    if path.is_file() or holds_pickles(path):
        raise CheckpointError(
            f"refusing to load {path}: not a topoclass checkpoint "
            "(pickle-based files are never loaded because they can execute code)"
        )
    raise CheckpointError(f"{path} is not a topoclass checkpoint (no {MANIFEST_FILE})")


def holds_pickles(directory: Path) -> bool:
    """Whether a folder holds files that look like pickles (``torch.save`` and the like)."""
    return directory.is_dir() and any(_looks_pickled(entry) for entry in sorted(directory.iterdir())[:100])


def _looks_pickled(file: Path) -> bool:
    if not file.is_file():
        return False
    if file.suffix.lower() in _PICKLE_SUFFIXES:
        return True
    with file.open("rb") as handle:
        head = handle.read(4)
    is_pickle = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    return is_pickle or head == b"PK\x03\x04"  # torch.save's zip container holds a pickle


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
    try:
        verify(original)
    except DamagedCheckpointError as damage:
        if original.exists():
            set_aside_as_corrupt(original, damage.problem)
        log.warning("Restoring %s, whose replacement was never committed", original)
        os.rename(aside, original)  # verified like any other checkpoint when it is next read
        fsync_paths(aside.parent)
    else:  # the replacement did get committed: the old one is obsolete
        shutil.rmtree(aside, ignore_errors=True)


def set_aside_as_corrupt(path: Path, problem: str) -> Path:
    """Rename a bad checkpoint to ``<name>.corrupt-<UTC time>`` (never deleted) and log it."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}{CORRUPT_MARK}{stamp}")
    log.warning("Checkpoint %s is unusable (%s); renamed it to %s", path, problem, target.name)
    os.rename(path, target)
    fsync_paths(path.parent)
    return target
