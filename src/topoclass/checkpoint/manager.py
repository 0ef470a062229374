"""When to checkpoint, what to keep, and which checkpoint to resume from.

:class:`CheckpointManager` holds the policy over one checkpoint directory; the
bytes on disk are :mod:`topoclass.checkpoint.storage`'s business and the
meaning of the state is the caller's. The directory holds::

    checkpoint_epoch_5/                 end of epoch 5
    checkpoint_epoch_7_step_1200/       mid-epoch 7, at global step 1200
    best/                               best-by-validation-loss state (own manifest)
    latest                              text file: name of the newest checkpoint
    <name>.corrupt-<UTC time>/          a checkpoint that failed verification, kept for inspection

The manager renames, deletes and cleans up inside its directory, so only the
process holding the directory's :class:`~topoclass.checkpoint.lock.CheckpointLock`
may use one.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from topoclass.checkpoint import storage
from topoclass.errors import CheckpointError

log = logging.getLogger(__name__)

BEST_NAME = "best"
LATEST_POINTER = "latest"
RUN_CHECKPOINT_SUBDIR = "checkpoints"  # where a run directory keeps its checkpoints
_TAG_PATTERN = re.compile(r"checkpoint_epoch_(\d+)(?:_step_(\d+))?")


@dataclass(frozen=True)
class CheckpointTag:
    """Which point of training a checkpoint captures; ``step`` is None at the end of an epoch."""

    epoch: int
    step: int | None = None

    def name(self) -> str:
        """Directory name: ``checkpoint_epoch_5`` or ``checkpoint_epoch_7_step_1200``."""
        if self.step is None:
            return f"checkpoint_epoch_{self.epoch}"
        return f"checkpoint_epoch_{self.epoch}_step_{self.step}"

    @classmethod
    def parse(cls, name: str) -> CheckpointTag:
        """Inverse of :meth:`name`; CheckpointError for any other name."""
        tag = tag_or_none(name)
        if tag is None:
            raise CheckpointError(
                f"'{name}' is not a checkpoint name (expected checkpoint_epoch_<n>[_step_<n>])"
            )
        return tag

    def sort_key(self) -> tuple[int, float]:
        """Training order: the end of epoch e comes after every mid-epoch checkpoint of epoch e."""
        return (self.epoch, math.inf if self.step is None else self.step)


def tag_or_none(name: str) -> CheckpointTag | None:
    """The tag a directory name encodes, or None if it is not a checkpoint name."""
    match = _TAG_PATTERN.fullmatch(name)
    if match is None:
        return None
    step = match.group(2)
    return CheckpointTag(int(match.group(1)), None if step is None else int(step))


@dataclass
class LoadedCheckpoint:
    """A verified checkpoint read back from disk."""

    path: Path
    tag: CheckpointTag
    state: dict[str, Any]
    metadata: dict[str, Any]


def load_component(checkpoint: LoadedCheckpoint, name: str, component: Any, state: Any) -> None:
    """``component.load_state_dict(state)``, with a one-line error when the saved state no longer fits.

    A checkpoint written by another version of the model (a layer resized, a feature added) is
    intact yet unusable; saying which version wrote it tells the user how to use it.
    """
    try:
        component.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__).rstrip(".")
        raise CheckpointError(
            f"{checkpoint.path}: the saved {name} does not fit this version of topoclass "
            f"({detail}); it was written by topoclass {checkpoint.metadata.get('package_version', '?')} "
            f"at revision {checkpoint.metadata.get('code_revision') or 'unknown'}: use that version, "
            "or train anew"
        ) from exc


def checkpoint_dirs(directory: Path) -> list[tuple[CheckpointTag, Path]]:
    """Every directory named like a checkpoint in ``directory``, newest first."""
    if not Path(directory).is_dir():
        return []
    found = [
        (tag, entry)
        for entry in Path(directory).iterdir()
        if (tag := tag_or_none(entry.name)) and entry.is_dir()
    ]
    return sorted(found, key=lambda item: item[0].sort_key(), reverse=True)


def read_checkpoint(path: Path) -> LoadedCheckpoint:
    """Verify and load one checkpoint directory (CheckpointError if it is not intact)."""
    path = Path(path)
    tree, metadata = storage.read(path)
    manifest = storage.read_manifest(path)
    tag = CheckpointTag(int(manifest["epoch"]), None if manifest["step"] is None else int(manifest["step"]))
    return LoadedCheckpoint(path=path, tag=tag, state=tree, metadata=metadata)


def latest_in(directory: Path, *, set_aside_corrupt: bool) -> LoadedCheckpoint | None:
    """Newest checkpoint of ``directory`` that verifies; older ones are tried in turn.

    A failing one is logged and, if ``set_aside_corrupt``, renamed to
    ``<name>.corrupt-<UTC time>``.
    """
    for _tag, path in checkpoint_dirs(directory):
        try:
            return read_checkpoint(path)
        except CheckpointError as error:
            problem = str(error).removeprefix(f"{path}: ")
            if set_aside_corrupt:
                storage.set_aside_as_corrupt(path, problem)
            else:
                log.warning("Skipping checkpoint %s: %s", path, problem)
    return None


class CheckpointManager:
    """Checkpoint policy for one directory: schedule, retention, best, resume."""

    def __init__(
        self,
        directory: Path,
        *,
        keep_last: int = 3,
        every_epochs: int = 5,
        every_minutes: float = 30.0,
        every_steps: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if keep_last < 1:
            raise CheckpointError(f"keep_last must be at least 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.every_epochs = every_epochs
        self.every_minutes = every_minutes
        self.every_steps = every_steps
        self._clock = clock
        self._last_save = clock()
        self._deletions: list[Future[None]] = []

    def due_mid_epoch(self, global_step: int) -> bool:
        """True when ``every_minutes`` passed since the last save or ``global_step`` hits ``every_steps``."""
        if self.every_minutes > 0 and self._clock() - self._last_save >= self.every_minutes * 60:
            return True
        return self.every_steps > 0 and global_step > 0 and global_step % self.every_steps == 0

    def due_end_of_epoch(self, epoch: int) -> bool:
        """True at every ``every_epochs``-th epoch."""
        return self.every_epochs > 0 and epoch % self.every_epochs == 0

    def save(
        self, tag: CheckpointTag, state: dict[str, Any], *, metadata: dict[str, Any], is_best: bool = False
    ) -> Path:
        """Commit a checkpoint, point ``latest`` at it, update ``best`` if asked, then apply retention.

        With ``is_best`` this is two checkpoint writes as the storage's kill seam
        counts them: the checkpoint, then ``best/`` (hard links, own manifest).
        """
        path = storage.write_checkpoint(
            self.directory / tag.name(), state, metadata=metadata, epoch=tag.epoch, step=tag.step
        )
        problem = storage.verify(path, full=False)  # bytes were hashed as written; re-check the commit
        if problem is not None:
            raise CheckpointError(f"checkpoint {path} failed verification right after writing: {problem}")
        # A hint for people and tools, so not fsynced: resume scans and verifies instead of trusting it.
        storage.atomic_write_bytes(self.directory / LATEST_POINTER, f"{tag.name()}\n".encode(), durable=False)
        if is_best:
            self._link_best(path)
        self._apply_retention(keep=path)
        self._last_save = self._clock()
        return path

    def save_best(self, tag: CheckpointTag, state: dict[str, Any], *, metadata: dict[str, Any]) -> Path:
        """Write ``state`` as ``best/`` only (for a new best that is not otherwise due a checkpoint)."""
        return storage.write_checkpoint(
            self.directory / BEST_NAME, state, metadata=metadata, epoch=tag.epoch, step=tag.step
        )

    @property
    def best_path(self) -> Path:
        """Where the best-by-validation-loss checkpoint lives (it may not exist yet)."""
        return self.directory / BEST_NAME

    def find_latest(self) -> LoadedCheckpoint | None:
        """The newest intact checkpoint, setting corrupt ones aside; None if there is none.

        Also repairs what a killed process left: uncommitted temp directories are
        removed, and a ``best/`` that fails verification is set aside.
        """
        storage.clean_leftovers(self.directory)
        if self.best_path.is_dir() and (problem := storage.verify(self.best_path)) is not None:
            storage.set_aside_as_corrupt(self.best_path, problem)
        return latest_in(self.directory, set_aside_corrupt=True)

    def load(self, path: Path) -> LoadedCheckpoint:
        """Load an explicit checkpoint directory, or the latest one of a checkpoint or run directory.

        An explicit checkpoint that fails verification is an error (no fallback);
        when searching another directory, failing ones are skipped, not renamed.
        """
        path = Path(path)
        if _is_single_checkpoint(path):
            return read_checkpoint(path)
        search = path / RUN_CHECKPOINT_SUBDIR if (path / RUN_CHECKPOINT_SUBDIR).is_dir() else path
        if search.resolve() == self.directory.resolve():
            found = self.find_latest()
        else:
            if not checkpoint_dirs(search):
                storage.refuse_if_foreign(search)  # explains a missing path or pickle files
                raise CheckpointError(f"no checkpoint found in {path}")
            found = latest_in(search, set_aside_corrupt=False)
        if found is None:
            raise CheckpointError(f"no intact checkpoint found in {path}")
        return found

    def _link_best(self, source: Path) -> None:
        """Make ``best/`` a committed copy of ``source``, sharing its files through hard links."""
        temp = storage.fresh_temp_dir(self.best_path)
        copies = []
        for name in storage.DATA_FILES:
            try:
                os.link(source / name, temp / name)  # same inode: its data is already durable
            except OSError:  # filesystems without hard links
                shutil.copyfile(source / name, temp / name)
                copies.append(temp / name)
        manifest = {**storage.read_manifest(source), "source": source.name}
        storage.commit_directory(temp, self.best_path, manifest, unsynced=copies)

    def _apply_retention(self, *, keep: Path) -> None:
        """Remove all but the newest ``keep_last`` committed checkpoints, never ``keep`` itself.

        ``keep`` matters after resuming from an older checkpoint while newer ones
        exist: by tag order the fresh checkpoint would otherwise be the oldest.
        """
        committed = [
            path
            for _tag, path in checkpoint_dirs(self.directory)
            if (path / storage.MANIFEST_FILE).exists() and path != keep
        ]
        for path in committed[self.keep_last - 1 :]:
            log.info("Removing old checkpoint %s (keep_last=%d)", path.name, self.keep_last)
            self._deletions.append(storage.remove_checkpoint(path))

    def wait_for_cleanup(self) -> None:
        """Wait until old checkpoints removed by retention are deleted from disk.

        Retention renames them away at once (they are no longer checkpoints) and
        frees their space in the background; call this before measuring disk use
        or exiting early.
        """
        for deletion in self._deletions:
            deletion.result()
        self._deletions.clear()


def _is_single_checkpoint(path: Path) -> bool:
    if not path.is_dir():
        return False
    if tag_or_none(path.name) is not None or path.name == BEST_NAME:
        return True
    return any((path / name).exists() for name in (storage.MANIFEST_FILE, *storage.DATA_FILES))
