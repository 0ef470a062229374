"""Domain records: a material as the user knows it, a record that was turned away, a dataset as read."""

from __future__ import annotations

from dataclasses import dataclass, field

from topoclass.config import TaskConfig
from topoclass.features.structures import StructureRef
from topoclass.tasks import LabelValue

__all__ = ["LabelValue", "Material", "RawDataset", "Reject", "StructureRef"]


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


@dataclass
class RawDataset:
    """A dataset as read: records before cleaning, early rejects, its tasks and headline task."""

    name: str
    materials: list[Material]
    rejects: list[Reject]
    tasks: list[TaskConfig]
    main_task: str
