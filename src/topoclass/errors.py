"""Exception types.

Every error a user can cause derives from :class:`TopoclassError`; the CLI prints
it as one line and exits with code 2. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

from pathlib import Path


class TopoclassError(Exception):
    """A problem the user can fix: shown as one line, never as a traceback."""


class ConfigError(TopoclassError):
    """An invalid configuration key, value or file."""


class DataError(TopoclassError):
    """Bad input data; the message names the file, line and field when known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.reason = message
        where = ""
        if self.file is not None:
            where = self.file if line is None else f"{self.file}:{line}"
        if field is not None:
            where = f"{where}: field '{field}'" if where else f"field '{field}'"
        super().__init__(f"{where}: {message}" if where else message)


class WriteError(TopoclassError):
    """A file or directory could not be written (disk full, permission, read-only place...)."""

    def __init__(self, path: str | Path, error: OSError) -> None:
        self.path = Path(path)
        self.errno = error.errno
        self.reason = error.strerror or str(error)
        super().__init__(f"cannot write {path}: {self.reason}")


class CheckpointError(TopoclassError):
    """A checkpoint that cannot be written, read or trusted."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint whose files do not match its manifest, or that was never committed."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class CheckpointLockedError(CheckpointError):
    """Another live process owns the checkpoint directory."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, permission lost, I/O error); nothing was committed."""


EXIT_RESUMABLE = 75
"""Exit status meaning: stopped with the work kept (a checkpoint, or nothing to keep yet); rerun to resume.

(75 is EX_TEMPFAIL in sysexits.h: a temporary failure, retrying later may succeed.)
"""


class ResumableStop(TopoclassError):
    """The run must stop for now, and can resume later from its last checkpoint (exit 75).

    A full disk, a material too large for this device's memory, or a stop request
    that came while the data was loading: a rerun, perhaps elsewhere, picks up.
    """


class DivergedError(TopoclassError):
    """Training diverged again after every rollback allowed: the configuration needs a change."""
