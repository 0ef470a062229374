"""Domain records: a material as the user knows it, and a record that was turned away."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

LabelValue = str | float | None


@dataclass(frozen=True)
class StructureRef:
    """Where a crystal structure comes from: a file, or inline text.

    Structures are referenced, not parsed, when a dataset is read: parsing is the
    expensive part of featurization and runs once, in worker processes, and only
    when the featurization cache misses.
    """

    path: Path | None = None
    text: str | None = None
    format: str | None = None  # "cif", "poscar", "extxyz", "json"; None: inferred

    def describe(self) -> str:
        return str(self.path) if self.path is not None else "<inline structure>"


@dataclass(frozen=True)
class Material:
    """One material: formula, space group, optional crystal structure, and raw labels.

    ``formula`` may be empty and ``spacegroup`` None when they are to be derived
    from the structure. ``labels`` maps a label column to its raw value (a class name or a number);
    ``None`` marks a missing label, which then does not contribute to that task.
    ``source`` says where the record came from (``file:line``) for reports.
    """

    id: str
    formula: str
    spacegroup: int | None
    labels: dict[str, LabelValue] = field(default_factory=dict)
    structure: StructureRef | None = None
    source: str = ""

    @property
    def has_structure(self) -> bool:
        return self.structure is not None


@dataclass(frozen=True)
class Reject:
    """A record left out of the dataset, with the one-line reason why."""

    id: str
    source: str
    reason: str
    category: str

    def as_row(self) -> dict[str, str]:
        return {"id": self.id, "source": self.source, "category": self.category, "reason": self.reason}
