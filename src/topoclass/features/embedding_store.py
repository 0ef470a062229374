"""Per-crystal vectors from a pretrained backbone, packed like the crystal graphs.

A frozen backbone turns each structure into one vector once, at featurization; training
then reads rows of a [crystals, width] matrix. The store also keeps each crystal's atomic
numbers (CSR, as :class:`GraphStore` does), so the cell facts the graph encoder reads and
the trees' cell columns are the same whichever structure encoder a run uses. For a run that
fine-tunes the backbone it keeps the structures too (fractional coordinates and lattice):
the backbone then sees each crystal again at every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from topoclass.features.chunked_writer import ChunkedWriter
from topoclass.features.graph import cell_facts

TENSOR_DTYPES: dict[str, torch.dtype] = {
    "vectors": torch.float32,
    "atomic_numbers": torch.int64,
    "node_ptr": torch.int64,
}
# Kept only for fine-tuning (StructureEmbedder.keep_structures).
STRUCTURE_DTYPES: dict[str, torch.dtype] = {"frac_coords": torch.float64, "lattice": torch.float64}


class StructureEmbedder(Protocol):
    """A pretrained model that turns structures into fixed-width vectors.

    ``key`` identifies the weights (their SHA-256): featurization caches are keyed by it, so
    other weights never reuse these vectors. Implementations must pickle cheaply (worker
    processes receive them) and load their weights on first use.
    """

    name: str
    key: str
    width: int
    keep_structures: bool  # also store the structures (for fine-tuning the backbone)

    def embed(self, structures: Sequence[Any]) -> np.ndarray:
        """One float32 row per pymatgen structure, [len(structures), width]."""
        ...


@dataclass(slots=True)
class EmbeddingBatch:
    """The backbone vectors of one batch of crystals, with their cell facts."""

    vectors: torch.Tensor  # [crystals, width]
    cell_facts: torch.Tensor  # [crystals, NUM_CELL_FACTS]
    # The crystals themselves, when the store keeps them:
    # [atoms], [crystals + 1], [atoms, 3], [crystals, 3, 3]
    atomic_numbers: torch.Tensor | None = None
    node_ptr: torch.Tensor | None = None
    frac_coords: torch.Tensor | None = None
    lattice: torch.Tensor | None = None

    @property
    def num_graphs(self) -> int:
        return int(self.vectors.shape[0])

    def to(self, device: torch.device | str) -> EmbeddingBatch:
        moved: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            moved[f.name] = None if value is None else value.to(device)
        return EmbeddingBatch(**moved)


class EmbeddingStore:
    """Backbone vectors of many crystals and their atoms; batched by row."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(TENSOR_DTYPES) - set(tensors))
        if missing:
            raise ValueError(f"embedding store: missing tensors {missing}")
        for name, dtype in TENSOR_DTYPES.items():
            if tensors[name].dtype != dtype:
                raise ValueError(f"embedding store: '{name}' is {tensors[name].dtype}, expected {dtype}")
        self.vectors = tensors["vectors"]
        self.atomic_numbers = tensors["atomic_numbers"]
        self.node_ptr = tensors["node_ptr"]
        self.frac_coords: torch.Tensor | None = tensors.get("frac_coords")
        self.lattice: torch.Tensor | None = tensors.get("lattice")
        consistent = (
            self.vectors.dim() == 2
            and self.node_ptr.numel() == self.vectors.shape[0] + 1
            and int(self.node_ptr[-1]) == self.atomic_numbers.numel()
        )
        if (self.frac_coords is None) != (self.lattice is None):
            consistent = False
        elif self.frac_coords is not None and self.lattice is not None:
            consistent = consistent and (
                tuple(self.frac_coords.shape) == (self.atomic_numbers.numel(), 3)
                and tuple(self.lattice.shape) == (len(self.vectors), 3, 3)
            )
        if not consistent:
            raise ValueError("embedding store: tensor shapes do not agree with each other")
        self._cell_facts: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def width(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def has_structures(self) -> bool:
        return self.lattice is not None

    def to_tensors(self) -> dict[str, torch.Tensor]:
        names = [*TENSOR_DTYPES, *(STRUCTURE_DTYPES if self.has_structures else ())]
        return {name: getattr(self, name).contiguous() for name in names}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> EmbeddingStore:
        return cls(dict(tensors))

    def cell_facts(self) -> torch.Tensor:
        """:func:`cell_facts` of every crystal, [len(self), NUM_CELL_FACTS] (computed once)."""
        if self._cell_facts is None:
            owner = torch.repeat_interleave(torch.arange(len(self)), self.node_ptr.diff())
            self._cell_facts = cell_facts(self.atomic_numbers, owner, len(self))
        return self._cell_facts

    def batch(self, rows: Sequence[int] | torch.Tensor) -> EmbeddingBatch:
        index = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(self)):
            raise IndexError(f"row out of range for a store of {len(self)} crystals")
        if not self.has_structures:
            return EmbeddingBatch(self.vectors[index], self.cell_facts()[index])
        starts, ends = self.node_ptr[index], self.node_ptr[index + 1]
        counts = ends - starts
        atoms = torch.cat([torch.arange(int(a), int(b)) for a, b in zip(starts, ends, strict=True)])
        return EmbeddingBatch(
            self.vectors[index],
            self.cell_facts()[index],
            atomic_numbers=self.atomic_numbers[atoms],
            node_ptr=torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)]),
            frac_coords=self.frac_coords[atoms],  # type: ignore[index]
            lattice=self.lattice[index],  # type: ignore[index]
        )

    def input_bytes(self, row: int) -> bytes:
        """What a material's structure contributes to the data fingerprint: its atoms and vector."""
        n0, n1 = int(self.node_ptr[row]), int(self.node_ptr[row + 1])
        return self.atomic_numbers[n0:n1].numpy().tobytes() + self.vectors[row].numpy().tobytes()

    def finite(self) -> torch.Tensor:
        return torch.isfinite(self.vectors).all(dim=1)


class EmbeddingStoreWriter(ChunkedWriter):
    """Vectors appended chunk by chunk to raw files in ``directory`` (or kept in memory).

    Only one chunk is in memory at a time; the files become the cache entry's tensors
    (:meth:`parts`) or a memory-mapped store (:meth:`store`).
    """

    store_type = EmbeddingStore

    def __init__(self, width: int, directory: Path | None = None, *, keep_structures: bool = False) -> None:
        kept = ["vectors", "atomic_numbers", *(["frac_coords", "lattice"] if keep_structures else [])]
        super().__init__({name: _NUMPY[name] for name in kept}, directory)
        self.width = width

    def add(
        self,
        vectors: np.ndarray,
        atomic_numbers: Sequence[np.ndarray],
        frac_coords: Sequence[np.ndarray] = (),
        lattices: Sequence[np.ndarray] = (),
    ) -> None:
        """Keep one chunk: vectors [n, width], each crystal's atomic numbers (and, when the writer
        keeps structures, its fractional coordinates [atoms, 3] and lattice [3, 3])."""
        if not len(atomic_numbers):
            return
        arrays: dict[str, np.ndarray] = {
            "vectors": np.asarray(vectors, dtype=np.float32).reshape(-1, self.width),
            "atomic_numbers": np.concatenate(atomic_numbers),
        }
        if "lattice" in self._chunks:
            arrays["frac_coords"] = np.concatenate(frac_coords)
            arrays["lattice"] = np.stack(lattices)
        node_counts = np.array([len(z) for z in atomic_numbers], dtype=np.int64)
        self._append(arrays, node_counts, np.isfinite(arrays["vectors"]).all(axis=1))

    def pointers(self) -> dict[str, torch.Tensor]:
        counts = np.concatenate(self._node_counts) if self._node_counts else np.zeros(0, dtype=np.int64)
        return {"node_ptr": torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))}

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        atoms = int(sum(c.sum() for c in self._node_counts))
        shapes = {
            "vectors": (len(self), self.width),
            "atomic_numbers": (atoms,),
            "frac_coords": (atoms, 3),
            "lattice": (len(self), 3, 3),
        }
        return {name: shapes[name] for name in self._chunks}

    def store(self) -> EmbeddingStore:
        """Every crystal added: memory-mapped from the files, or joined in memory."""
        shapes = self._shapes()
        tensors = {
            name: torch.from_numpy(np.asarray(a).reshape(shapes[name])) for name, a in self._arrays().items()
        }
        return EmbeddingStore({**tensors, **self.pointers()})


_NUMPY: dict[str, np.dtype] = {
    "vectors": np.dtype(np.float32),
    "atomic_numbers": np.dtype(np.int64),
    "frac_coords": np.dtype(np.float64),
    "lattice": np.dtype(np.float64),
}
