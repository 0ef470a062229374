"""What a screen reads: structure files, folders and globs of them, multi-frame extended XYZ, ASE
databases, tables, and pymatgen JSON dumps (Materials Project, Alexandria) — one item at a time.

Every reader is a generator, so memory does not grow with the input: a folder is walked one
directory at a time, a table and an XYZ file are read line by line, a JSON dump is parsed as a
stream (ijson), a database row by row. Items come in a fixed order (arguments as given, folder
entries sorted), so a list of inputs always cuts into the same chunks. Each item has a stable
``id`` and a ``source`` (the file, frame or row it came from); one that cannot be read carries
the reason instead of a material, and the screen goes on.

A JSON document may also state its space group the way the Materials Project does
(``symmetry.number`` with the ``symmetry.symprec`` spglib found it at). Found at the tolerance
of a model trained on spglib's groups, it is kept and spglib's search, two thirds of a
structure's featurization, is skipped; found at another tolerance, stated without one, or for a
model trained on moyopy's groups, it is searched again.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import itertools
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from topoclass.data.records import Material, StructureRef
from topoclass.data.tables import SUPPORTED_SUFFIXES as TABLE_SUFFIXES
from topoclass.data.tables import iter_table
from topoclass.errors import DataError

STRUCTURE_SUFFIXES = {".cif", ".mcif", ".vasp", ".poscar"}
STRUCTURE_PREFIXES = ("poscar", "contcar")
FRAME_SUFFIXES = {".xyz", ".extxyz"}
DATABASE_SUFFIXES = {".db"}
JSON_SUFFIXES = (".json", ".json.gz", ".json.bz2")
# A JSON file smaller than this is read whole (it may be one structure); larger ones are streamed.
_WHOLE_JSON_BYTES = 32 * 2**20


@dataclass(frozen=True)
class InputItem:
    """One thing to screen: a material to featurize, or the reason it could not be read."""

    id: str
    source: str
    material: Material | None
    problem: str = ""


@dataclass(frozen=True)
class InputPath:
    """One input, and the folder its structure files' ids are relative to."""

    path: Path
    root: Path

    def __str__(self) -> str:
        return str(self.path)


def expand_inputs(arguments: Sequence[str | os.PathLike[str]]) -> list[InputPath]:
    """Each argument as a path, globs expanded (sorted, ``**`` recursive); DataError for one that
    names nothing. A glob's files are named relative to the folder before its first wildcard."""
    paths: list[InputPath] = []
    for argument in arguments:
        text = os.path.expanduser(os.fspath(argument))
        if glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise DataError("the pattern matches no file", file=text)
            fixed = Path(
                *[part for part in itertools.takewhile(lambda p: not glob.has_magic(p), Path(text).parts)]
            )
            paths.extend(InputPath(Path(match), fixed) for match in matches)
        elif Path(text).is_dir():
            paths.append(InputPath(Path(text), Path(text)))
        elif Path(text).exists():
            paths.append(InputPath(Path(text), Path(text).parent))
        else:
            raise DataError("no such file or folder", file=text)
    return paths


def input_kind(path: Path) -> str:
    """How a path is read: folder, structure, frames, database, table or json."""
    if path.is_dir():
        return "folder"
    kind = _file_kind(path)
    if kind is None:
        raise DataError(
            "cannot tell how to read it: give a folder, a CIF/POSCAR, an extended XYZ (.xyz, .extxyz), "
            "an ASE database (.db), a table (.csv, .tsv, .jsonl) or a JSON dump (.json, .json.gz, .json.bz2)",
            file=path,
        )
    return kind


def _file_kind(path: Path) -> str | None:
    name, suffix = path.name.lower(), path.suffix.lower()
    if name.endswith(JSON_SUFFIXES):
        return "json"
    if suffix in STRUCTURE_SUFFIXES or name.startswith(STRUCTURE_PREFIXES):
        return "structure"
    kinds = {**dict.fromkeys(FRAME_SUFFIXES, "frames"), **dict.fromkeys(DATABASE_SUFFIXES, "database")}
    return kinds.get(suffix) or ("table" if suffix in TABLE_SUFFIXES else None)


def iter_items(
    inputs: Sequence[InputPath],
    *,
    payload: bool | Callable[[int], bool] = True,
    symprec: float | None = None,
) -> Iterator[InputItem]:
    """Every item of ``inputs``, in order. ``payload`` says for which items (by position) the
    material is wanted; for the others only ids and sources are (counting the input, or items
    another process screens), and the readers skip the work they can. ``symprec`` is the
    spglib tolerance (Å) of the space groups the model was trained on: a JSON document's space
    group stated at it is kept (None, as for a model trained on moyopy's groups: every space
    group is searched)."""
    cursor = _Cursor(payload, symprec)
    for entry in inputs:
        for item in _read(entry, cursor):
            yield item
            cursor.position += 1


@dataclass
class _Cursor:
    """The position of the next item, whether its material is wanted, and the tolerance a stated
    space group must have been found at to be kept."""

    payload: bool | Callable[[int], bool]
    symprec: float | None = None
    position: int = 0

    def wanted(self) -> bool:
        return self.payload(self.position) if callable(self.payload) else self.payload


def _read(entry: InputPath, cursor: _Cursor) -> Iterator[InputItem]:
    path = entry.path
    kind = input_kind(path)
    if kind == "folder":
        for file in _walk(path):
            yield _structure_item(file, _relative_id(file, entry.root))
    elif kind == "structure":
        yield _structure_item(path, _relative_id(path, entry.root))
    elif kind == "frames":
        yield from _frames(path)
    elif kind == "database":
        yield from _database_rows(path, cursor)
    elif kind == "table":
        yield from _table_rows(path)
    else:
        yield from _json_entries(path, cursor)


def _walk(folder: Path) -> Iterator[Path]:
    """Structure files under ``folder``, depth first, each directory's entries sorted by name."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as error:
        raise DataError(f"cannot list the folder ({error.strerror})", file=folder) from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if entry.is_dir():
            yield from _walk(path)
        elif _file_kind(path) == "structure":  # a folder's other files are left alone
            yield path


def _relative_id(path: Path, root: Path) -> str:
    relative = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
    name = relative.with_suffix("") if relative.suffix.lower() in STRUCTURE_SUFFIXES else relative
    return name.as_posix()


def _structure_item(path: Path, item_id: str) -> InputItem:
    material = Material(
        id=item_id, formula="", spacegroup=None, structure=StructureRef(path=path), source=str(path)
    )
    return InputItem(item_id, str(path), material)


def _inline_item(item_id: str, source: str, text: str, fmt: str, spacegroup: int | None = None) -> InputItem:
    ref = StructureRef(text=text, format=fmt)
    return InputItem(
        item_id, source, Material(id=item_id, formula="", spacegroup=spacegroup, structure=ref, source=source)
    )


def _frames(path: Path) -> Iterator[InputItem]:
    """The frames of an extended XYZ file, split by their atom-count lines and parsed later (by ASE).

    A frame is its count line, a comment line and that many atom lines: the split needs no
    parser. A count line that is not a number ends the file's frames, as an item saying so.
    """
    stem = path.stem
    try:
        stream = path.open(encoding="utf-8", errors="replace")
    except OSError as error:
        yield InputItem(stem, str(path), None, f"cannot read the file ({error.strerror})")
        return
    with stream:
        frame = 0
        for line in stream:
            if not line.strip():
                continue
            item_id, source = f"{stem}#{frame}", f"{path}#{frame}"
            try:
                count = int(line.strip())
            except ValueError:
                yield InputItem(
                    item_id, source, None, f"frame {frame}: '{line.strip()[:40]}' is not an atom count"
                )
                return
            body = list(itertools.islice(iter(stream.readline, ""), count + 1)) if count >= 0 else []
            if len(body) < count + 1:  # a negative count, or the file ends first
                yield InputItem(item_id, source, None, f"frame {frame}: the file ends inside the frame")
                return
            yield _inline_item(item_id, source, line + "".join(body), "extxyz")
            frame += 1


def _database_rows(path: Path, cursor: _Cursor) -> Iterator[InputItem]:
    """The rows of an ASE database (ase.db), as extended XYZ text for the same parser as files."""
    import ase.db
    import ase.io

    try:
        database = ase.db.connect(str(path), type="db")
        rows = database.select()
        for row in rows:
            item_id = str(row.key_value_pairs.get("material_id") or f"{path.stem}#{row.id}")
            source = f"{path}#id={row.id}"
            if not cursor.wanted():
                yield InputItem(item_id, source, None)
                continue
            try:
                text = io.StringIO()
                ase.io.write(text, row.toatoms(), format="extxyz")
            except Exception as error:  # one broken row must not stop the others
                yield InputItem(item_id, source, None, f"unreadable row: {type(error).__name__}: {error}")
                continue
            yield _inline_item(item_id, source, text.getvalue(), "extxyz")
    except DataError:
        raise
    except Exception as error:  # sqlite3 and ase raise many types for a file that is no database
        raise DataError(f"not a readable ASE database ({type(error).__name__}: {error})", file=path) from None


def _table_rows(path: Path) -> Iterator[InputItem]:
    for record in iter_table(path):
        if isinstance(record, Material):
            yield InputItem(record.id, record.source, record)
        else:
            yield InputItem(record.id, record.source, None, record.reason)


def _json_entries(path: Path, cursor: _Cursor) -> Iterator[InputItem]:
    """A pymatgen JSON dump: a list of ComputedStructureEntry or Structure dicts, a dict holding
    such a list under ``entries`` (Alexandria), or a single structure or entry."""
    try:
        size = path.stat().st_size
        with _open_json(path) as stream:
            first = stream.read(1)
            while first.isspace():
                first = stream.read(1)
            if first == b"{" and size < _WHOLE_JSON_BYTES:
                whole = json.loads(first + stream.read())
                documents = iter(whole.get("entries", [whole]))
            else:
                import ijson

                stream.seek(0)
                prefix = "item" if first == b"[" else "entries.item"
                documents = ijson.items(stream, prefix, use_float=True)
            for index, document in enumerate(documents):
                yield _json_item(path, index, document, cursor)
    except (OSError, EOFError, ValueError) as error:  # ijson's and json's errors are ValueErrors
        raise DataError(f"not a readable JSON dump ({type(error).__name__}: {error})", file=path) from None


def _open_json(path: Path) -> IO[bytes]:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]  # a binary file object
    if name.endswith(".bz2"):
        return bz2.open(path, "rb")
    return path.open("rb")


def _json_item(path: Path, index: int, document: Any, cursor: _Cursor) -> InputItem:
    source = f"{path}#{index}"
    if not isinstance(document, dict):
        return InputItem(f"{_json_stem(path)}#{index}", source, None, "entry is not a JSON object")
    data = document["data"] if isinstance(document.get("data"), dict) else {}
    named = document.get("entry_id") or document.get("material_id") or data.get("material_id")
    item_id = str(named) if named else f"{_json_stem(path)}#{index}"
    structure = document.get("structure", document)
    if not isinstance(structure, dict) or "lattice" not in structure or "sites" not in structure:
        return InputItem(item_id, source, None, "entry holds no pymatgen structure (lattice and sites)")
    if not cursor.wanted():
        return InputItem(item_id, source, None)
    spacegroup = _stated_spacegroup(document.get("symmetry"), cursor.symprec)
    return _inline_item(item_id, source, json.dumps(structure), "json", spacegroup)


def _stated_spacegroup(symmetry: Any, symprec: float | None) -> int | None:
    """The space group a document states (``{"number": 225, "symprec": 0.1, ...}``, as the
    Materials Project gives it) when it was found at ``symprec``; None when it is to be searched.

    The Materials Project finds its space groups with spglib at its documented tolerances, the
    distance one stated with each (``symprec``) and 5 degrees, which are the tolerances
    :func:`topoclass.features.structures.spglib_spacegroup` uses."""
    if symprec is None or not isinstance(symmetry, dict):
        return None
    number, stated = symmetry.get("number"), symmetry.get("symprec")
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 230:
        return None
    if not isinstance(stated, int | float) or not math.isclose(stated, symprec, rel_tol=1e-9):
        return None
    return number


def _json_stem(path: Path) -> str:
    name = path.name
    for suffix in JSON_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
