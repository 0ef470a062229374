"""Per-crystal vectors from a pretrained backbone, packed like the crystal graphs.

A frozen backbone turns each structure into one vector once, at featurization; training
then reads rows of a [crystals, width] matrix. The store also keeps each crystal's atomic
numbers (CSR, as :class:`GraphStore` does), so the cell facts the graph encoder reads and
the trees' cell columns are the same whichever structure encoder a run uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from topoclass.features.graph import cell_facts

if TYPE_CHECKING:
    from topoclass.features.graph_store import GraphStore

TENSOR_DTYPES: dict[str, torch.dtype] = {
    "vectors": torch.float32,
    "atomic_numbers": torch.int64,
    "node_ptr": torch.int64,
}


class StructureEmbedder(Protocol):
    """A pretrained model that turns structures into fixed-width vectors.

    ``key`` identifies the weights (their SHA-256): featurization caches are keyed by it, so
    other weights never reuse these vectors. Implementations must pickle cheaply (worker
    processes receive them) and load their weights on first use.
    """

    name: str
    key: str
    width: int

    def embed(self, structures: Sequence[Any]) -> np.ndarray:
        """One float32 row per pymatgen structure, [len(structures), width]."""
        ...


@dataclass(slots=True)
class EmbeddingBatch:
    """The backbone vectors of one batch of crystals, with their cell facts."""

    vectors: torch.Tensor  # [crystals, width]
    cell_facts: torch.Tensor  # [crystals, NUM_CELL_FACTS]

    @property
    def num_graphs(self) -> int:
        return int(self.vectors.shape[0])

    def to(self, device: torch.device | str) -> EmbeddingBatch:
        return EmbeddingBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


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
        if (
            self.vectors.dim() != 2
            or self.node_ptr.numel() != self.vectors.shape[0] + 1
            or int(self.node_ptr[-1]) != self.atomic_numbers.numel()
        ):
            raise ValueError("embedding store: tensor shapes do not agree with each other")
        self._cell_facts: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def width(self) -> int:
        return int(self.vectors.shape[1])

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).contiguous() for name in TENSOR_DTYPES}

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
        return EmbeddingBatch(self.vectors[index], self.cell_facts()[index])

    def input_bytes(self, row: int) -> bytes:
        """What a material's structure contributes to the data fingerprint: its atoms and vector."""
        n0, n1 = int(self.node_ptr[row]), int(self.node_ptr[row + 1])
        return self.atomic_numbers[n0:n1].numpy().tobytes() + self.vectors[row].numpy().tobytes()

    def finite(self) -> torch.Tensor:
        return torch.isfinite(self.vectors).all(dim=1)


class EmbeddingStoreWriter:
    """Vectors appended chunk by chunk to raw files in ``directory`` (or kept in memory).

    Only one chunk is in memory at a time; the files become the cache entry's tensors
    (:meth:`parts`) or a memory-mapped store (:meth:`store`).
    """

    def __init__(self, width: int, directory: Path | None = None) -> None:
        self.width = width
        self.directory = directory
        self._chunks: dict[str, list[np.ndarray]] = {"vectors": [], "atomic_numbers": []}
        self._node_counts: list[np.ndarray] = []
        self._finite: list[np.ndarray] = []
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            for name in self._chunks:
                (directory / name).write_bytes(b"")

    def __len__(self) -> int:
        return int(sum(len(c) for c in self._node_counts))

    def add(self, vectors: np.ndarray, atomic_numbers: Sequence[np.ndarray]) -> None:
        """Keep one chunk: vectors [n, width] and each crystal's atomic numbers."""
        if not len(atomic_numbers):
            return
        arrays: dict[str, np.ndarray] = {
            "vectors": np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.width),
            "atomic_numbers": np.ascontiguousarray(np.concatenate(atomic_numbers), dtype=np.int64),
        }
        self._node_counts.append(np.array([len(z) for z in atomic_numbers], dtype=np.int64))
        self._finite.append(np.isfinite(arrays["vectors"]).all(axis=1))
        for name, array in arrays.items():
            if self.directory is None:
                self._chunks[name].append(array)
            else:
                with (self.directory / name).open("ab") as out:
                    out.write(array.tobytes())

    def finite(self) -> np.ndarray:
        return np.concatenate(self._finite) if self._finite else np.zeros(0, dtype=bool)

    def pointers(self) -> dict[str, torch.Tensor]:
        counts = np.concatenate(self._node_counts) if self._node_counts else np.zeros(0, dtype=np.int64)
        return {"node_ptr": torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))}

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        atoms = int(sum(c.sum() for c in self._node_counts))
        return {"vectors": (len(self), self.width), "atomic_numbers": (atoms,)}

    def has_files_for(self, store: GraphStore | EmbeddingStore | None) -> bool:
        """Whether ``store`` is this writer's, written to files (so its parts can be streamed)."""
        return (
            self.directory is not None
            and isinstance(store, EmbeddingStore)
            and len(self) > 0
            and len(store) == len(self)
        )

    def parts(self) -> dict[str, tuple[np.dtype, tuple[int, ...], Path]]:
        """Each raw file with its dtype and shape (for streaming into a cache file)."""
        if self.directory is None:
            raise ValueError("an in-memory writer has no files")
        shapes = self._shapes()
        dtypes: dict[str, np.dtype] = {"vectors": np.dtype(np.float32), "atomic_numbers": np.dtype(np.int64)}
        return {name: (dtypes[name], shapes[name], self.directory / name) for name in self._chunks}

    def store(self) -> EmbeddingStore:
        """Every crystal added: memory-mapped from the files, or joined in memory."""
        shapes = self._shapes()
        tensors = {}
        for name, dtype in (("vectors", np.float32), ("atomic_numbers", np.int64)):
            if self.directory is None or np.prod(shapes[name]) == 0:
                chunks = self._chunks[name]
                array = np.concatenate(chunks) if chunks else np.zeros(shapes[name], dtype=dtype)
            else:
                array = np.memmap(self.directory / name, dtype=dtype, mode="c", shape=shapes[name])
            tensors[name] = torch.from_numpy(np.asarray(array).reshape(shapes[name]))
        return EmbeddingStore({**tensors, **self.pointers()})
