"""When to checkpoint, what to keep, and which checkpoint to resume from.

:class:`CheckpointManager` holds the policy over one checkpoint directory. The
trainer attaches the components to save (anything with ``state_dict()`` /
``load_state_dict()``) and reports events: a finished optimizer step, the end
of an epoch. The manager alone decides, from its config section, whether that
event writes a checkpoint, only ``best/``, or nothing; it also restores the
attached components from a checkpoint. The bytes on disk are
:mod:`topoclass.checkpoint.storage`'s business and the meaning of the state is
the caller's. The directory holds::

    checkpoint_epoch_5/                 end of epoch 5
    checkpoint_epoch_7_step_1200/       mid-epoch 7, at global step 1200
    best/                               best-by-validation-loss state (an independent copy)
    latest                              text file: name of the newest checkpoint
    <name>.corrupt-<UTC time>/          a checkpoint that failed verification, kept for inspection
    abandoned-<UTC time>/               newer checkpoints set aside when a run resumed from an older one

The manager renames, deletes and cleans up inside its directory, so only the
process holding the directory's :class:`~topoclass.checkpoint.lock.CheckpointLock`
may use one.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from topoclass.checkpoint import storage
from topoclass.checkpoint.names import (
    ABANDONED_PREFIX,
    BEST_NAME,
    LATEST_POINTER,
    CheckpointTag,
    checkpoint_dirs,
)
from topoclass.checkpoint.state import Stateful
from topoclass.config import CheckpointConfig
from topoclass.distributed import ProcessGroup
from topoclass.errors import (
    CheckpointError,
    CheckpointWriteError,
    DamagedCheckpointError,
    ResumableStop,
    WriteError,
)
from topoclass.files import atomic_write, fsync_paths

log = logging.getLogger(__name__)


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
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__).rstrip(".")
        raise CheckpointError(
            f"{checkpoint.path}: the saved {name} does not fit this version of topoclass "
            f"({detail}); it was written by topoclass {checkpoint.metadata.get('package_version', '?')} "
            f"at revision {checkpoint.metadata.get('code_revision') or 'unknown'}: use that version, "
            "or train anew"
        ) from exc


def read_checkpoint(path: Path) -> LoadedCheckpoint:
    """Verify and load one checkpoint directory (CheckpointError if it is not intact)."""
    path = Path(path)
    tree, metadata = storage.read(path)
    manifest = storage.read_manifest(path)
    if not isinstance(tree, dict) or not isinstance(metadata, dict):
        raise DamagedCheckpointError(path, "undecodable content (state or metadata is not a mapping)")
    return LoadedCheckpoint(path, CheckpointTag(manifest["epoch"], manifest["step"]), tree, metadata)


def latest_in(directory: Path, *, set_aside_corrupt: bool) -> LoadedCheckpoint | None:
    """Newest checkpoint of ``directory`` that verifies; older ones are tried in turn.

    A failing one is logged and, if ``set_aside_corrupt``, renamed to
    ``<name>.corrupt-<UTC time>``.
    """
    for _tag, path in checkpoint_dirs(directory):
        try:
            return read_checkpoint(path)
        except DamagedCheckpointError as damage:
            if set_aside_corrupt:
                storage.set_aside_as_corrupt(path, damage.problem)
            else:
                log.warning("Skipping checkpoint %s: %s", path, damage.problem)
    return None


class CheckpointManager:
    """Checkpoint policy for one directory: schedule, retention, best, resume, restore."""

    def __init__(
        self,
        directory: Path,
        config: CheckpointConfig,
        *,
        group: ProcessGroup | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = Path(directory)
        self.config = config
        # In a job of several processes all of them take every decision together (the state is
        # gathered from all), and the first one alone writes.
        self.group = group or ProcessGroup()
        self.storage = storage.CheckpointStorage()
        self.seconds = 0.0  # wall time spent writing checkpoints
        self.last_save_seconds: float | None = None  # how long the last full save took
        self.failed_saves = 0  # in a row
        self._clock = clock
        self._last_save = clock()
        self._components: Mapping[str, Stateful] = {}
        self._metadata: Callable[[CheckpointTag], dict[str, Any]] = lambda tag: {}

    # -- what is saved -------------------------------------------------------------------------------

    def attach(
        self, components: Mapping[str, Stateful], metadata: Callable[[CheckpointTag], dict[str, Any]]
    ) -> None:
        """The components every checkpoint holds, and the metadata written beside them."""
        self._components = components
        self._metadata = metadata

    def restore(self, checkpoint: LoadedCheckpoint) -> None:
        """Load every attached component's state from ``checkpoint``."""
        for name, component in self._components.items():
            if name not in checkpoint.state:
                raise CheckpointError(
                    f"{checkpoint.path}: holds no '{name}' state; it was written by topoclass "
                    f"{checkpoint.metadata.get('package_version', '?')}"
                )
            load_component(checkpoint, name, component, checkpoint.state[name])

    # -- events: the manager decides -------------------------------------------------------------

    def on_step(self, epoch: int, global_step: int, *, epoch_done: bool, stop: bool) -> bool:
        """An optimizer step finished; saves mid-epoch when stopping or when due. True if it saved.

        Mid-epoch saves are due every ``every_steps`` steps or ``every_minutes`` minutes,
        never on an epoch's last step (the end of the epoch saves then, if due).
        """
        due_by_time = self.config.every_minutes > 0 and (
            self._clock() - self._last_save >= self.config.every_minutes * 60
        )
        due_by_steps = self.config.every_steps > 0 and global_step % self.config.every_steps == 0
        due = stop or (not epoch_done and (due_by_steps or self.group.any(due_by_time)))
        if due:
            self.save(CheckpointTag(epoch, global_step))
        return due

    def on_epoch_end(self, epoch: int, *, improved: bool, last: bool, stop: bool) -> Path | None:
        """An epoch finished and was validated: a full checkpoint when due, else ``best/`` if improved."""
        tag = CheckpointTag(epoch)
        due = self.config.every_epochs > 0 and epoch % self.config.every_epochs == 0
        if due or last or stop:
            return self.save(tag, best=improved)
        if improved:
            return self._commit(tag, self.best_path, best=False)
        return None

    # -- writing -----------------------------------------------------------------------------------

    def save(self, tag: CheckpointTag, *, best: bool = False) -> Path | None:
        """Commit a checkpoint, point ``latest`` at it, copy it to ``best/`` if asked, apply retention.

        A save that fails (disk full, permission lost, I/O error) leaves every earlier
        checkpoint as it was and training goes on; after ``max_failed_saves`` in a row the
        run stops, resumable. Returns the checkpoint, or None when the save failed.
        """
        return self._commit(tag, self.directory / tag.name(), best=best)

    def _commit(self, tag: CheckpointTag, path: Path, *, best: bool) -> Path | None:
        started = time.perf_counter()
        state, metadata = self._state(), self._metadata(tag)  # every process: the state is gathered
        problem = None
        if self.group.is_primary:
            try:
                self.storage.write(path, state, metadata=metadata, epoch=tag.epoch, step=tag.step)
                storage.verify(path, full=False)  # bytes were hashed as written; re-check the commit
                if path != self.best_path:
                    self._point_latest_at(tag)
                    if best:
                        self._copy_best(path)
                    self._apply_retention(keep=path)
            except CheckpointWriteError as error:
                problem = str(error)
        self._last_save = self._clock()
        elapsed = time.perf_counter() - started
        self.seconds += elapsed
        if not self.group.any(problem is not None):
            self.failed_saves = 0
            if path != self.best_path:
                self.last_save_seconds = elapsed
            return path
        self.failed_saves += 1
        problem = problem or "see the first process's log"
        log.warning("Checkpoint not saved (%s); earlier checkpoints are intact", problem)
        if self.failed_saves >= self.config.max_failed_saves:
            raise ResumableStop(
                f"{self.failed_saves} checkpoint saves in a row failed (last: {problem}); stopping so that "
                "no more progress is lost: free the space or fix the permission, then resume"
            )
        return None

    def _point_latest_at(self, tag: CheckpointTag) -> None:
        # A hint for people and tools, so not fsynced: resume scans and verifies instead of trusting it.
        try:
            atomic_write(self.directory / LATEST_POINTER, f"{tag.name()}\n", durable=False)
        except WriteError as error:
            log.warning("Could not update %s: %s", self.directory / LATEST_POINTER, error.reason)

    def _state(self) -> dict[str, Any]:
        return {name: component.state_dict() for name, component in self._components.items()}

    def _copy_best(self, source: Path) -> None:
        """Make ``best/`` an independent, committed copy of ``source``: one damaged file never
        takes both with it."""
        temp = storage.fresh_temp_dir(self.best_path)
        try:
            for name in storage.DATA_FILES:
                shutil.copyfile(source / name, temp / name)
            manifest = {**storage.read_manifest(source), "source": source.name}
            self.storage.commit_directory(
                temp, self.best_path, manifest, unsynced=[temp / n for n in storage.DATA_FILES]
            )
        except OSError as error:
            shutil.rmtree(temp, ignore_errors=True)
            raise CheckpointWriteError(
                f"cannot copy {source.name} to best/: {error.strerror or error}"
            ) from error

    def repair_best(self, checkpoint: LoadedCheckpoint) -> None:
        """Bring ``best/`` up to ``checkpoint`` when the run says it is the best and ``best/`` lags:
        a crash between committing a checkpoint and copying it to ``best/`` leaves just that."""
        if checkpoint.tag.step is not None or checkpoint.metadata.get("best_epoch") != checkpoint.tag.epoch:
            return
        try:
            current = storage.read_manifest(self.best_path) if self.best_path.is_dir() else None
        except DamagedCheckpointError:
            current = None
        if current is not None and current["epoch"] == checkpoint.tag.epoch and current["step"] is None:
            return
        log.warning("best/ lags behind %s, the best checkpoint so far: copying it", checkpoint.path.name)
        try:
            self._copy_best(checkpoint.path)
        except CheckpointWriteError as error:
            log.warning("%s", error)

    def check_room(self, checkpoint_bytes: int) -> None:
        """Fail before any work when the folder cannot hold two checkpoints (the next and the last)."""
        existing = self.directory
        while not existing.exists() and existing != existing.parent:  # a new run's folder is made later
            existing = existing.parent
        free = shutil.disk_usage(existing).free
        if free < 2 * checkpoint_bytes:
            raise CheckpointError(
                f"{self.directory}: {free / 1e6:.0f} MB free, but two checkpoints need about "
                f"{2 * checkpoint_bytes / 1e6:.0f} MB; free some space or set checkpoint.dir elsewhere"
            )

    def _apply_retention(self, *, keep: Path) -> None:
        """Remove all but the newest ``keep_last`` committed checkpoints, never ``keep`` itself."""
        committed = [
            path
            for _tag, path in checkpoint_dirs(self.directory)
            if (path / storage.MANIFEST_FILE).exists() and path != keep
        ]
        for path in committed[self.config.keep_last - 1 :]:
            log.info("Removing old checkpoint %s (keep_last=%d)", path.name, self.config.keep_last)
            try:
                self.storage.remove(path)
            except OSError as error:
                log.warning("Could not remove old checkpoint %s: %s", path, error.strerror or error)

    # -- reading -----------------------------------------------------------------------------------

    @property
    def best_path(self) -> Path:
        """Where the best-by-validation-loss checkpoint lives (it may not exist yet)."""
        return self.directory / BEST_NAME

    def find_latest(self) -> LoadedCheckpoint | None:
        """The newest intact checkpoint, setting corrupt ones aside; None if there is none.

        Also repairs what a killed process left: uncommitted temp directories are
        removed, and a ``best/`` that fails verification is set aside. In a job of several
        processes the first one repairs while the others wait, then all read the same one.
        """
        found = None
        if self.group.is_primary:
            storage.clean_leftovers(self.directory)
            if self.best_path.is_dir():
                try:
                    storage.verify(self.best_path)
                except DamagedCheckpointError as damage:
                    storage.set_aside_as_corrupt(self.best_path, damage.problem)
            found = latest_in(self.directory, set_aside_corrupt=True)
        self.group.barrier()
        if not self.group.is_primary:
            found = latest_in(self.directory, set_aside_corrupt=False)
        return found

    def abandon_newer_than(self, tag: CheckpointTag) -> Path | None:
        """Start a new timeline at ``tag``: move every later checkpoint (and a later ``best/``) aside.

        Resuming from an older checkpoint while newer ones exist would otherwise mix two
        timelines: retention would delete the new ones, and a later automatic resume would
        jump back to the abandoned one. Nothing is deleted; returns the folder they went to.
        """
        later = [path for other, path in checkpoint_dirs(self.directory) if other.sort_key() > tag.sort_key()]
        if self.best_path.is_dir():
            try:
                best = storage.read_manifest(self.best_path)
            except DamagedCheckpointError:
                best = None
            if best is None or CheckpointTag(best["epoch"], best["step"]).sort_key() > tag.sort_key():
                later.append(self.best_path)
        if not later:
            return None
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = self.directory / f"{ABANDONED_PREFIX}{stamp}"
        aside.mkdir()
        for path in later:
            os.rename(path, aside / path.name)
        (self.directory / LATEST_POINTER).unlink(missing_ok=True)
        fsync_paths(self.directory)
        log.warning(
            "Resuming from %s while %d later checkpoint(s) exist: they were moved to %s",
            tag.name(),
            len(later),
            aside,
        )
        return aside

    def wait_for_cleanup(self) -> None:
        """Wait until old checkpoints removed by retention are deleted from disk."""
        self.storage.wait_for_removals()

    def close(self) -> None:
        """Finish pending deletions and release the I/O threads."""
        self.storage.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
