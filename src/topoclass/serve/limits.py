"""What one request may ask for: body size, rows (or files) per request, atoms per structure.

Each limit is a flag of ``topoclass serve``; a request over one is refused with 413 (too
large) or 422 (a structure too big for this server) and a one-line reason naming the field
and the flag.
"""

from __future__ import annotations

from dataclasses import dataclass

from topoclass.errors import ConfigError, TopoclassError


class LimitExceeded(TopoclassError):
    """A request over one of the server's limits; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 413) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """The server's request limits."""

    max_body_bytes: int = 4 * 1024 * 1024  # a few hundred CIFs, or tens of thousands of rows
    max_rows: int = 1000  # formula rows, or structure files, in one request
    max_atoms: int = 500  # per structure: a crystal graph's cost grows with its atoms

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, not {value}")

    def check_rows(self, count: int, field: str) -> None:
        """413 when a request holds more than ``max_rows`` rows or files."""
        if count > self.max_rows:
            raise LimitExceeded(
                f"{field}: {count} in one request, more than the limit of {self.max_rows} (--max-rows)"
            )

    def check_atoms(self, count: int, where: str) -> None:
        """422 when a structure has more than ``max_atoms`` atoms."""
        if count > self.max_atoms:
            raise LimitExceeded(
                f"{where}: {count} atoms, more than the limit of {self.max_atoms} per structure "
                "(--max-atoms)",
                status=422,
            )

    def body_message(self, size: int) -> str:
        limit = self.max_body_bytes
        return f"request body: {size} bytes, more than the limit of {limit} bytes (--max-body-bytes)"
