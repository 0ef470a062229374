"""Uploaded structure files: parsed with the project's readers, each file judged on its own.

A file that cannot be read, or from which no crystal comes, gets a one-line reason and the
other files are still predicted; a structure over the atom limit refuses the whole request
(it is a limit of this server, not a property of the file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from topoclass.errors import DataError
from topoclass.features.structures import StructureRef, read_structure, structure_format
from topoclass.serve.limits import Limits

if TYPE_CHECKING:
    from pymatgen.core import Structure


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its name as the client gave it, and its bytes."""

    name: str
    data: bytes


@dataclass(frozen=True)
class ReadUpload:
    """A file's structure, or why there is none."""

    name: str
    structure: Structure | None
    reason: str = ""


def read_uploads(uploads: list[Upload], limits: Limits) -> list[ReadUpload]:
    """Parse every upload, in order; LimitExceeded (422) naming the file of a structure over the atom
    limit."""
    read = []
    for position, upload in enumerate(uploads):
        try:
            structure = read_structure(_ref(upload))
        except DataError as exc:
            read.append(ReadUpload(upload.name, None, exc.reason))
            continue
        limits.check_atoms(len(structure), f"files[{position}] '{upload.name}'")
        read.append(ReadUpload(upload.name, structure))
    return read


def _ref(upload: Upload) -> StructureRef:
    """Inline text, in the format the file name says (a CIF called .cif), else sniffed from the text."""
    try:
        text = upload.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text (byte {exc.start}): upload CIF, POSCAR, extxyz or JSON") from None
    try:
        fmt: str | None = structure_format(StructureRef(path=Path(upload.name)))
    except DataError:
        fmt = None
    return StructureRef(text=text, format=fmt)
