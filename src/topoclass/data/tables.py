"""Read a user's table of materials (CSV, TSV, delimited text or JSON lines).

The reader is strict about the file and lenient about rows: a file it cannot
parse, or one that lacks a required column, is a :class:`DataError`; a bad row
becomes a :class:`Reject` (or a record that cleaning rejects) so one typo never
stops a whole dataset.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from topoclass.data.records import LabelValue, Material, Reject, StructureRef
from topoclass.errors import DataError

logger = logging.getLogger(__name__)

DELIMITED_SUFFIXES = {".csv": ",", ".tsv": "\t"}
SNIFFED_SUFFIXES = {".txt"}
JSON_LINES_SUFFIXES = {".jsonl", ".ndjson"}
SUPPORTED_SUFFIXES = sorted({*DELIMITED_SUFFIXES, *SNIFFED_SUFFIXES, *JSON_LINES_SUFFIXES})

# One parsed row: its 1-based line number and its cells by column name.
Row = tuple[int, dict[str, Any]]


def read_table(
    path: str | Path,
    *,
    id_column: str = "id",
    formula_column: str = "formula",
    spacegroup_column: str = "spacegroup",
    structure_column: str = "structure",
    label_columns: Sequence[str] = (),
) -> tuple[list[Material], list[Reject]]:
    """Read materials from a table; returns the records and the rows turned away.

    The id and structure columns are optional. Every label column is required,
    and so are formula and space group unless the table has a structure column
    (they are then derived from the structure where empty). A structure cell is
    a file path (relative to the table's folder) or the structure text itself;
    it is referenced here and parsed later. Line numbers count the header as line 1.
    """
    path = Path(path)
    materials: list[Material] = []
    rejects: list[Reject] = []
    columns = TableColumns(
        id_column, formula_column, spacegroup_column, structure_column, tuple(label_columns)
    )
    for record in iter_table(path, columns):
        if isinstance(record, Material):
            materials.append(record)
        else:
            rejects.append(record)
    logger.info("%s: read %d rows, %d turned away", path, len(materials) + len(rejects), len(rejects))
    return materials, rejects


def iter_table(path: str | Path, columns: TableColumns | None = None) -> Iterator[Material | Reject]:
    """The records of :func:`read_table` one at a time, in file order, reading the file as it goes:
    memory does not grow with the table. A JSON-lines file names its columns row by row, so a
    required column it never has is reported after its last row."""
    path = Path(path)
    columns = columns or TableColumns()
    header, rows = _parse_file(path)
    seen: set[str] = set(header or ())
    if header is not None:
        columns.check(path, header)
    for line, cells in rows:
        seen.update(cells)
        yield columns.record(path, line, cells)
    if header is None:
        columns.check(path, seen)


@dataclass(frozen=True)
class TableColumns:
    """Which column holds what (the names :func:`read_table` takes)."""

    id: str = "id"
    formula: str = "formula"
    spacegroup: str = "spacegroup"
    structure: str = "structure"
    labels: tuple[str, ...] = ()

    def check(self, path: Path, present: set[str]) -> None:
        required = list(self.labels)
        if self.structure not in present:
            required = [self.formula, self.spacegroup, *required]
        for column in required:
            if column not in present:
                raise DataError(f"required column '{column}' not found", file=path, field=column)

    def record(self, path: Path, line: int, cells: dict[str, Any]) -> Material | Reject:
        """The record of one row (a reject when the row cannot be one)."""
        source = f"{path}:{line}"
        row_id = _text(cells.get(self.id)) or f"{path.stem}:{line}"
        if all(_text(value) == "" for value in cells.values()):
            return Reject(row_id, source, "row has no values", "empty_row")
        raw_spacegroup = cells.get(self.spacegroup)
        try:
            spacegroup = _parse_spacegroup(raw_spacegroup)
        except ValueError:
            reason = f"{self.spacegroup}: '{_text(raw_spacegroup)}' is not an integer space group"
            return Reject(row_id, source, reason, "bad_spacegroup")
        structure = _structure_ref(cells.get(self.structure), path.parent)
        if isinstance(structure, str):
            return Reject(row_id, source, f"{self.structure}: {structure}", "bad_structure")
        return Material(
            id=row_id,
            formula=_text(cells.get(self.formula)),
            spacegroup=spacegroup,
            labels={column: _label_value(cells.get(column)) for column in self.labels},
            structure=structure,
            source=source,
        )


def read_data_text(path: Path, *, missing_hint: str = "") -> str:
    """A data file's text; a missing or unreadable file is a DataError naming it."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"file not found{f' ({missing_hint})' if missing_hint else ''}", file=path) from None
    except UnicodeDecodeError:
        raise DataError("not UTF-8 text", file=path) from None
    except OSError as exc:
        raise DataError(f"cannot read file ({exc.strerror})", file=path) from None


def _parse_file(path: Path) -> tuple[set[str] | None, Iterator[Row]]:
    """The header's columns (None for JSON lines, whose rows name their own) and the rows, read lazily."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"unsupported table format '{suffix}' (use one of {', '.join(SUPPORTED_SUFFIXES)})", file=path
        )
    # Split JSON lines on newlines only: JSON strings may legally hold other line separators.
    stream = _open_text(path, newline="\n" if suffix in JSON_LINES_SUFFIXES else "")
    if suffix in JSON_LINES_SUFFIXES:
        return None, _parse_json_lines(path, stream)
    delimiter = DELIMITED_SUFFIXES.get(suffix)
    if delimiter is None:
        with _decoding(path):
            delimiter = _sniff_delimiter(path, stream.read(65536))
        stream.seek(0)
    reader = csv.reader(stream, delimiter=delimiter)
    with _decoding(path):
        header = _next_row(reader, path)
    if header is None:
        stream.close()
        raise DataError("empty file: no header line", file=path, line=1)
    columns = [name.strip() for name in header]
    duplicated = sorted({name for name in columns if columns.count(name) > 1})
    if duplicated:
        stream.close()
        raise DataError(f"column '{duplicated[0]}' appears twice in the header", file=path, line=1)
    return set(columns), _parse_delimited(path, stream, reader, columns)


def _open_text(path: Path, *, newline: str) -> TextIO:
    try:
        return path.open(encoding="utf-8-sig", newline=newline)
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except OSError as exc:
        raise DataError(f"cannot read file ({exc.strerror})", file=path) from None


@contextmanager
def _decoding(path: Path) -> Iterator[None]:
    try:
        yield
    except UnicodeDecodeError:
        raise DataError("not UTF-8 text", file=path) from None


def _sniff_delimiter(path: Path, text: str) -> str:
    try:
        return csv.Sniffer().sniff(text, delimiters=",\t;|").delimiter
    except csv.Error:
        raise DataError("cannot detect the column delimiter (use .csv or .tsv)", file=path) from None


def _parse_delimited(
    path: Path, stream: TextIO, reader: Iterator[list[str]], columns: list[str]
) -> Iterator[Row]:
    with stream, _decoding(path):
        while True:
            # The line where a row starts, as an editor shows it (a quoted cell may span lines).
            start_line = reader.line_num + 1  # type: ignore[attr-defined]  # a csv reader has it
            cells = _next_row(reader, path)
            if cells is None:
                return
            if len(cells) <= 1 and not "".join(cells).strip():
                continue  # a blank line holds no record; a row of bare delimiters does (empty_row)
            if len(cells) > len(columns):
                raise DataError(
                    f"row has {len(cells)} fields but the header has {len(columns)}",
                    file=path,
                    line=start_line,
                )
            yield start_line, dict(zip(columns, cells, strict=False))


def _next_row(reader: Iterator[list[str]], path: Path) -> list[str] | None:
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error as exc:
        line = getattr(reader, "line_num", None)
        raise DataError(f"malformed delimited text ({exc})", file=path, line=line) from None


def _parse_json_lines(path: Path, stream: TextIO) -> Iterator[Row]:
    with stream, _decoding(path):
        for line, raw in enumerate(stream, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DataError(f"not valid JSON ({exc.msg})", file=path, line=line) from None
            if not isinstance(record, dict):
                raise DataError(f"expected a JSON object, got {type(record).__name__}", file=path, line=line)
            yield line, record


def _text(value: Any) -> str:
    """A cell as stripped text; missing and null cells are empty."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _parse_spacegroup(value: Any) -> int | None:
    """The space group number, None for an empty cell; ValueError when it is not an integer."""
    text = _text(value)
    if not text:
        return None
    number = float(text)  # raises ValueError for text; accepts "166.0" as written by spreadsheets
    if isinstance(value, bool) or not math.isfinite(number) or not number.is_integer():
        raise ValueError(text)
    return int(number)


def _label_value(value: Any) -> LabelValue:
    """Raw label: None when missing, a float for JSON numbers, stripped text otherwise."""
    if value is None or isinstance(value, bool):
        return None if value is None else str(value).lower()
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    return text or None


def _structure_ref(value: Any, base_dir: Path) -> StructureRef | str | None:
    """A reference to the structure in a cell, None for an empty cell, or the reason it is unusable.

    Text with a line break is the structure itself (CIF or POSCAR); a JSON object
    is a serialized pymatgen structure; anything else names a file.
    """
    if isinstance(value, dict):
        return StructureRef(text=json.dumps(value), format="json")
    text = _text(value)
    if not text:
        return None
    if "\n" in text:
        # Unstripped: a POSCAR's first line is a comment and may be blank.
        return StructureRef(text=str(value))
    file = Path(text).expanduser()
    file = file if file.is_absolute() else base_dir / file
    if not file.is_file():
        return f"file {file} not found"
    return StructureRef(path=file)
