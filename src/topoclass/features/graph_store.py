"""Many crystal graphs packed into a few flat arrays, batched by slicing.

Layout (CSR-like): graph ``g`` owns nodes ``node_ptr[g]:node_ptr[g+1]`` and edges
``edge_ptr[g]:edge_ptr[g+1]``; ``edge_index`` holds node indices local to each graph.
No per-graph Python objects are kept, so a store of every structure in a dataset stays
compact, saves as safetensors (plain tensors, no pickle) and batches without copying
anything but the requested slices. The arrays are NumPy, so prediction reads graphs without
PyTorch; training gets its batches as tensors (:meth:`GraphStore.batch`), sharing memory.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from topoclass.features.chunked_writer import ChunkedWriter
from topoclass.features.graph import CrystalGraph, cell_facts_from_counts
from topoclass.features.spectral import Spectrum

if TYPE_CHECKING:
    import torch


ARRAY_DTYPES: dict[str, np.dtype] = {
    "atomic_numbers": np.dtype(np.int64),
    "node_ptr": np.dtype(np.int64),
    "edge_index": np.dtype(np.int64),
    "edge_distance": np.dtype(np.float32),
    "edge_ptr": np.dtype(np.int64),
    "eigenvalues": np.dtype(np.float32),
    "eigenvalue_mask": np.dtype(np.bool_),
    "eigenvectors": np.dtype(np.float32),
}


@dataclass(slots=True)
class GraphBatch:
    """The crystal graphs of one batch, nodes and edges concatenated in order.

    A plain container rather than PyTorch Geometric's ``Batch``: importing PyG costs about
    2 s at every start, and nothing here needs more than these tensors.
    """

    z: torch.Tensor  # [nodes] atomic numbers
    edge_index: torch.Tensor  # [2, edges] node indices within the batch
    edge_distance: torch.Tensor  # [edges] in angstrom
    pe: torch.Tensor  # [nodes, k] Laplacian eigenvector entries
    eigenvalues: torch.Tensor  # [graphs, k]
    eigenvalue_mask: torch.Tensor  # [graphs, k] which of the k channels a graph has
    batch: torch.Tensor  # [nodes] the graph of each node
    ptr: torch.Tensor  # [graphs + 1] the first node of each graph, then the node count

    @property
    def num_graphs(self) -> int:
        return self.ptr.numel() - 1

    @property
    def num_nodes(self) -> int:
        return self.z.numel()

    def to(self, device: torch.device | str) -> GraphBatch:
        return GraphBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


class GraphStore:
    """Packed crystal graphs with their Laplacian spectra."""

    def __init__(self, arrays: dict[str, Any]) -> None:
        """From NumPy arrays or CPU tensors (shared, not copied) named as in :data:`ARRAY_DTYPES`."""
        missing = sorted(set(ARRAY_DTYPES) - set(arrays))
        if missing:
            raise ValueError(f"graph store: missing tensors {missing}")
        unpacked = {name: np.asarray(arrays[name]) for name in ARRAY_DTYPES}
        for name, dtype in ARRAY_DTYPES.items():
            if unpacked[name].dtype != dtype:
                raise ValueError(f"graph store: '{name}' is {unpacked[name].dtype}, expected {dtype}")
        self.atomic_numbers = unpacked["atomic_numbers"]
        self.node_ptr = unpacked["node_ptr"]
        self.edge_index = unpacked["edge_index"]
        self.edge_distance = unpacked["edge_distance"]
        self.edge_ptr = unpacked["edge_ptr"]
        self.eigenvalues = unpacked["eigenvalues"]
        self.eigenvalue_mask = unpacked["eigenvalue_mask"]
        self.eigenvectors = unpacked["eigenvectors"]
        self._check_shapes()

    def _check_shapes(self) -> None:
        graphs = self.node_ptr.size - 1
        nodes = self.atomic_numbers.size
        edges = self.edge_distance.size
        consistent = (
            graphs >= 0
            and self.edge_ptr.size == graphs + 1
            and int(self.node_ptr[-1]) == nodes
            and int(self.edge_ptr[-1]) == edges
            and tuple(self.edge_index.shape) == (2, edges)
            and self.eigenvalues.shape == self.eigenvalue_mask.shape
            and self.eigenvalues.shape[0] == graphs
            and tuple(self.eigenvectors.shape) == (nodes, self.eigenvalues.shape[1])
        )
        if not consistent:
            raise ValueError("graph store: tensor shapes do not agree with each other")

    @classmethod
    def from_graphs(
        cls, graphs: Sequence[CrystalGraph], spectra: Sequence[Spectrum], *, spectral_k: int | None = None
    ) -> GraphStore:
        """Pack graphs and their spectra (same order); ``spectral_k`` is needed only when empty."""
        if len(graphs) != len(spectra):
            raise ValueError(f"{len(graphs)} graphs but {len(spectra)} spectra")
        k = spectra[0].eigenvalues.shape[0] if spectra else (spectral_k or 0)
        node_counts = np.array([g.num_nodes for g in graphs], dtype=np.int64)
        edge_counts = np.array([g.num_edges for g in graphs], dtype=np.int64)

        def packed(arrays: list[np.ndarray], empty_shape: tuple[int, ...], dtype: type, axis: int = 0):
            joined = np.concatenate(arrays, axis=axis) if arrays else np.zeros(empty_shape, dtype=dtype)
            return np.ascontiguousarray(joined, dtype=dtype)

        return cls(
            {
                "atomic_numbers": packed([g.atomic_numbers for g in graphs], (0,), np.int64),
                "node_ptr": _pointer(node_counts),
                "edge_index": packed([g.edge_index for g in graphs], (2, 0), np.int64, axis=1),
                "edge_distance": packed([g.edge_distance for g in graphs], (0,), np.float32),
                "edge_ptr": _pointer(edge_counts),
                "eigenvalues": packed([s.eigenvalues[None] for s in spectra], (0, k), np.float32),
                "eigenvalue_mask": packed([s.mask[None] for s in spectra], (0, k), np.bool_),
                "eigenvectors": packed([s.eigenvectors for s in spectra], (0, k), np.float32),
            }
        )

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The packed arrays as tensors by name (contiguous, ready for ``safetensors.torch.save_file``)."""
        import torch

        return {name: torch.from_numpy(np.ascontiguousarray(getattr(self, name))) for name in ARRAY_DTYPES}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Any]) -> GraphStore:
        """Rebuild a store from :meth:`to_tensors` output; raises ``ValueError`` when inconsistent."""
        return cls(dict(tensors))

    def __len__(self) -> int:
        return self.node_ptr.size - 1

    @property
    def spectral_k(self) -> int:
        return int(self.eigenvalues.shape[1])

    def cell_facts(self) -> np.ndarray:
        """The cell facts (:func:`~topoclass.features.graph.cell_facts`) of every stored graph,
        [len(self), NUM_CELL_FACTS] float32."""
        return cell_facts_from_counts(self.atomic_numbers, self.node_ptr)

    def finite(self) -> np.ndarray:
        """Whether each graph holds only finite distances and spectra, [len(self)] bool."""
        per_node = np.isfinite(self.eigenvectors).all(axis=1)
        return (
            np.isfinite(self.eigenvalues).all(axis=1)
            & _all_per_graph(per_node, np.diff(self.node_ptr))
            & _all_per_graph(np.isfinite(self.edge_distance), np.diff(self.edge_ptr))
        )

    def input_bytes(self, index: int) -> bytes:
        """What a material's graph contributes to the data fingerprint: atoms, edges, distances."""
        n0, n1 = int(self.node_ptr[index]), int(self.node_ptr[index + 1])
        e0, e1 = int(self.edge_ptr[index]), int(self.edge_ptr[index + 1])
        return (
            self.atomic_numbers[n0:n1].tobytes()
            + np.ascontiguousarray(self.edge_index[:, e0:e1]).tobytes()
            + self.edge_distance[e0:e1].tobytes()
        )

    def graph(self, index: int) -> CrystalGraph:
        """One graph back as a :class:`CrystalGraph` (for inspection and tests)."""
        n0, n1 = int(self.node_ptr[index]), int(self.node_ptr[index + 1])
        e0, e1 = int(self.edge_ptr[index]), int(self.edge_ptr[index + 1])
        return CrystalGraph(
            atomic_numbers=self.atomic_numbers[n0:n1].copy(),
            edge_index=self.edge_index[:, e0:e1].copy(),
            edge_distance=self.edge_distance[e0:e1].copy(),
        )

    def batch_arrays(self, graph_indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """The given graphs as one batch, in that order, as NumPy arrays named as the fields of
        :class:`GraphBatch`; built by vectorized slicing."""
        index = np.asarray(graph_indices, dtype=np.int64).reshape(-1)
        if index.size and (int(index.min()) < 0 or int(index.max()) >= len(self)):
            raise IndexError(f"graph index out of range for a store of {len(self)} graphs")
        node_gather, node_counts, node_offsets = _ranges(self.node_ptr, index)
        edge_gather, edge_counts, _ = _ranges(self.edge_ptr, index)
        shift = np.repeat(node_offsets, edge_counts)
        return {
            "z": self.atomic_numbers[node_gather],
            "edge_index": self.edge_index[:, edge_gather] + shift,
            "edge_distance": self.edge_distance[edge_gather],
            "pe": self.eigenvectors[node_gather],
            "eigenvalues": self.eigenvalues[index],
            "eigenvalue_mask": self.eigenvalue_mask[index],
            "batch": np.repeat(np.arange(index.size), node_counts),
            "ptr": _pointer(node_counts),
        }

    def batch(self, graph_indices: Sequence[int] | np.ndarray | torch.Tensor) -> GraphBatch:
        """:meth:`batch_arrays` as tensors, for the model."""
        import torch

        index = graph_indices.numpy() if isinstance(graph_indices, torch.Tensor) else graph_indices
        arrays = self.batch_arrays(index)
        return GraphBatch(**{name: torch.from_numpy(array) for name, array in arrays.items()})


def _pointer(counts: np.ndarray) -> np.ndarray:
    """[0, c0, c0+c1, ...]: where each of ``counts`` consecutive ranges starts, then the total."""
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


_COPY_BLOCK = 1 << 20  # bytes read at a time when joining part files

# What a writer keeps per graph chunk, with the dtype of its raw file.
_PARTS: dict[str, np.dtype] = {
    "atomic_numbers": np.dtype(np.int64),
    "edge_source": np.dtype(np.int64),
    "edge_target": np.dtype(np.int64),
    "edge_distance": np.dtype(np.float32),
    "eigenvalues": np.dtype(np.float32),
    "eigenvalue_mask": np.dtype(np.bool_),
    "eigenvectors": np.dtype(np.float32),
}


class GraphStoreWriter(ChunkedWriter):
    """Graphs packed chunk by chunk, in memory or appended to raw files in ``directory``.

    Featurizing a dataset of any size then holds one chunk of graphs at a time: on disk,
    the packed graphs of a million structures (a few GB) never need the memory. The
    finished parts become the cache file (:meth:`parts`) or a store (:meth:`store`).
    """

    store_type = GraphStore

    def __init__(self, spectral_k: int, directory: Path | None = None) -> None:
        super().__init__(_PARTS, directory)
        self.spectral_k = spectral_k
        self._edge_counts: list[np.ndarray] = []

    def add(self, graphs: Sequence[CrystalGraph], spectra: Sequence[Spectrum]) -> None:
        """Pack and keep one chunk of graphs with their spectra (same order)."""
        if not graphs:
            return
        arrays = {
            "atomic_numbers": np.concatenate([g.atomic_numbers for g in graphs]),
            "edge_source": np.concatenate([g.edge_index[0] for g in graphs]),
            "edge_target": np.concatenate([g.edge_index[1] for g in graphs]),
            "edge_distance": np.concatenate([g.edge_distance for g in graphs]),
            "eigenvalues": np.stack([s.eigenvalues for s in spectra]),
            "eigenvalue_mask": np.stack([s.mask for s in spectra]),
            "eigenvectors": np.concatenate([s.eigenvectors for s in spectra]),
        }
        node_counts = np.array([g.num_nodes for g in graphs], dtype=np.int64)
        edge_counts = np.array([g.num_edges for g in graphs], dtype=np.int64)
        self._edge_counts.append(edge_counts)
        finite = (
            np.isfinite(arrays["eigenvalues"]).all(axis=1)
            & _all_per_graph(np.isfinite(arrays["eigenvectors"]).all(axis=1), node_counts)
            & _all_per_graph(np.isfinite(arrays["edge_distance"]), edge_counts)
        )
        self._append(arrays, node_counts, finite)

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        nodes = int(sum(c.sum() for c in self._node_counts))
        edges = int(sum(c.sum() for c in self._edge_counts))
        graphs, k = len(self), self.spectral_k
        return {
            "atomic_numbers": (nodes,),
            "edge_source": (edges,),
            "edge_target": (edges,),
            "edge_distance": (edges,),
            "eigenvalues": (graphs, k),
            "eigenvalue_mask": (graphs, k),
            "eigenvectors": (nodes, k),
        }

    def pointers(self) -> dict[str, np.ndarray]:
        """``node_ptr`` and ``edge_ptr``: small, kept in memory."""
        ptrs = {}
        for name, counts in (("node_ptr", self._node_counts), ("edge_ptr", self._edge_counts)):
            ptrs[name] = _pointer(np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64))
        return ptrs

    def store(self) -> GraphStore:
        """A store of every graph added: read from the raw files (memory-mapped) or joined in memory."""
        arrays = self._arrays()
        edges = len(arrays["edge_source"])
        packed = {name: a for name, a in arrays.items() if not name.startswith("edge_")}
        packed["edge_distance"] = arrays["edge_distance"]
        if self.directory is None or edges == 0:
            packed["edge_index"] = np.stack([arrays["edge_source"], arrays["edge_target"]])
        else:
            packed["edge_index"] = _joined_edge_file(self.directory, edges)
        return GraphStore({**packed, **self.pointers()})


def _all_per_graph(flags: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per graph, whether all its ``counts[g]`` consecutive ``flags`` hold (True for none)."""
    owner = np.repeat(np.arange(len(counts)), counts)
    return np.bincount(owner[~flags], minlength=len(counts)) == 0


def _joined_edge_file(directory: Path, edges: int) -> np.memmap:
    """The edges in ``directory`` as one [2, E] array, memory-mapped from a file of both rows:
    stacking the two files in memory would hold every edge of the dataset at once."""
    path = directory / "edge_index"
    with path.open("wb") as out:
        for name in ("edge_source", "edge_target"):
            with (directory / name).open("rb") as source:
                shutil.copyfileobj(source, out, _COPY_BLOCK)
    return np.memmap(path, dtype=_PARTS["edge_source"], mode="c", shape=(2, edges))


def _ranges(ptr: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat positions of the ranges ``ptr[i]:ptr[i+1]`` for each i in ``index``, their lengths and
    where each range starts in the output."""
    starts = ptr[index]
    counts = ptr[index + 1] - starts
    offsets = np.cumsum(counts) - counts
    return np.arange(int(counts.sum())) + np.repeat(starts - offsets, counts), counts, offsets
