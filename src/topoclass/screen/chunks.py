"""The output folder of a screen: what it was started with, and which chunks are done.

Work is cut into chunks of N consecutive input items. A chunk is committed in two atomic
steps: its rows become ``part-CCCCCC.parquet`` (temporary file, fsync, rename), then its
manifest entry ``_chunks/chunk-CCCCCC.json`` records the part's size and SHA-256. A chunk
counts as done only when both exist and agree, so a process killed at any moment leaves
either a done chunk or one that is screened again, never half a chunk and never a chunk twice.
Every process of a sharded screen writes only its own chunks: nothing is shared but the
folder. The names start with ``_`` so Parquet readers of the folder skip them.

``_screen.json`` records the fingerprint of the model, the input list (:func:`survey`) and the
settings: a rerun into the same folder continues only when all three are the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from topoclass.errors import ConfigError, DataError
from topoclass.files import atomic_write
from topoclass.screen.inputs import InputPath, iter_items

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "_screen.json"
CHUNKS_DIR = "_chunks"
SUMMARY_FILE = "summary.json"
CANDIDATES_FILE = "candidates.csv"


def part_name(chunk: int) -> str:
    return f"part-{chunk:06d}.parquet"


@dataclass(frozen=True)
class ChunkRecord:
    """A committed chunk: its part file's size and hash, and what its rows hold."""

    chunk: int
    part: str
    size: int
    sha256: str
    counts: dict[str, Any]


class ScreenFolder:
    """The output folder ``root`` of one screen (created on first use)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def chunks_dir(self) -> Path:
        return self.root / CHUNKS_DIR

    def claim(self, fingerprint: dict[str, Any]) -> bool:
        """Record ``fingerprint``, or check it against the one recorded; True when resuming.

        A folder with files that are not a screen's is refused rather than written into; a
        screen of another model, other inputs or other settings is refused in one line.
        """
        marker = self.root / FINGERPRINT_FILE
        if marker.is_file():
            try:
                recorded = json.loads(marker.read_text())
            except (OSError, ValueError):
                raise DataError("unreadable screen fingerprint", file=marker) from None
            _check_same(self.root, recorded, fingerprint)
            return True
        if self.root.exists() and any(not p.name.startswith(".tmp-") for p in self.root.iterdir()):
            raise ConfigError(f"{self.root} already holds files that are not a screen's: give another -o")
        atomic_write(marker, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
        return False

    def commit(self, chunk: int, part: bytes, counts: dict[str, Any]) -> ChunkRecord:
        """Write chunk ``chunk``'s part, then its manifest entry: from then on it is done."""
        name = part_name(chunk)
        atomic_write(self.root / name, part)
        record = ChunkRecord(chunk, name, len(part), hashlib.sha256(part).hexdigest(), counts)
        atomic_write(self._entry(chunk), json.dumps(record.__dict__, sort_keys=True) + "\n")
        return record

    def done(self) -> dict[int, ChunkRecord]:
        """The committed chunks: a manifest entry whose part file exists with the recorded size."""
        records: dict[int, ChunkRecord] = {}
        for record in self._entries():
            part = self.root / record.part
            if part.is_file() and part.stat().st_size == record.size:
                records[record.chunk] = record
        return records

    def _entries(self) -> Iterator[ChunkRecord]:
        if not self.chunks_dir.is_dir():
            return
        for path in sorted(self.chunks_dir.glob("chunk-*.json")):
            try:
                yield ChunkRecord(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                logger.warning("%s is unreadable: its chunk is screened again", path)

    def _entry(self, chunk: int) -> Path:
        return self.chunks_dir / f"chunk-{chunk:06d}.json"

    def parts(self, records: dict[int, ChunkRecord]) -> list[Path]:
        """The part files of ``records``, in chunk order."""
        return [self.root / records[chunk].part for chunk in sorted(records)]


@dataclass(frozen=True)
class InputSurvey:
    """What a list of inputs holds, read once without parsing a structure: the number of items and
    a digest of their ids and sources (and of the inputs' sizes and dates), which a resumed screen
    must match."""

    paths: list[str]
    items: int
    digest: str

    def chunks(self, chunk_size: int) -> int:
        return -(-self.items // chunk_size)


def survey(inputs: Sequence[InputPath]) -> InputSurvey:
    """Count and fingerprint the items of ``inputs`` (a first, light pass over them)."""
    digest = hashlib.sha256()
    for entry in inputs:
        if entry.path.is_file():
            stat = entry.path.stat()
            digest.update(f"{entry.path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    count = 0
    for item in iter_items(inputs, payload=False):
        digest.update(f"{item.id}\0{item.source}\n".encode())
        count += 1
    return InputSurvey([str(entry) for entry in inputs], count, digest.hexdigest())


def _check_same(root: Path, recorded: dict[str, Any], current: dict[str, Any]) -> None:
    """ConfigError naming the first of model, inputs or settings that differs from the recorded screen."""
    if recorded.get("model", {}).get("digest") != current["model"]["digest"]:
        raise ConfigError(
            f"{root} holds a screen by another model ({recorded.get('model', {}).get('name')}, not "
            f"{current['model']['name']}): give another -o, or rerun with that model to continue"
        )
    was, now = recorded.get("inputs", {}), current["inputs"]
    if was.get("digest") != now["digest"]:
        raise ConfigError(
            f"{root} holds a screen of another input list ({was.get('items')} items from "
            f"{', '.join(was.get('paths', []))}; now {now['items']} items): "
            "give another -o, or the same inputs"
        )
    changed = [
        f"{key} {recorded.get('settings', {}).get(key)!r} then, {value!r} now"
        for key, value in current["settings"].items()
        if recorded.get("settings", {}).get(key) != value
    ]
    if changed:
        raise ConfigError(
            f"{root} holds a screen with other settings ({'; '.join(changed)}): give another -o"
        )
