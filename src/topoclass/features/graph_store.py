"""Many crystal graphs packed into a few flat tensors, batched by slicing.

Layout (CSR-like): graph ``g`` owns nodes ``node_ptr[g]:node_ptr[g+1]`` and edges
``edge_ptr[g]:edge_ptr[g+1]``; ``edge_index`` holds node indices local to each graph.
No per-graph Python objects are kept, so a store of every structure in a dataset stays
compact, saves as safetensors (plain tensors, no pickle) and batches without copying
anything but the requested slices.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from topoclass.features.graph import CrystalGraph, cell_facts

if TYPE_CHECKING:
    from topoclass.features.embedding_store import EmbeddingStore
from topoclass.features.spectral import Spectrum

TENSOR_DTYPES: dict[str, torch.dtype] = {
    "atomic_numbers": torch.int64,
    "node_ptr": torch.int64,
    "edge_index": torch.int64,
    "edge_distance": torch.float32,
    "edge_ptr": torch.int64,
    "eigenvalues": torch.float32,
    "eigenvalue_mask": torch.bool,
    "eigenvectors": torch.float32,
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

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(TENSOR_DTYPES) - set(tensors))
        if missing:
            raise ValueError(f"graph store: missing tensors {missing}")
        for name, dtype in TENSOR_DTYPES.items():
            if tensors[name].dtype != dtype:
                raise ValueError(f"graph store: '{name}' is {tensors[name].dtype}, expected {dtype}")
        self.atomic_numbers = tensors["atomic_numbers"]
        self.node_ptr = tensors["node_ptr"]
        self.edge_index = tensors["edge_index"]
        self.edge_distance = tensors["edge_distance"]
        self.edge_ptr = tensors["edge_ptr"]
        self.eigenvalues = tensors["eigenvalues"]
        self.eigenvalue_mask = tensors["eigenvalue_mask"]
        self.eigenvectors = tensors["eigenvectors"]
        self._check_shapes()

    def _check_shapes(self) -> None:
        graphs = self.node_ptr.numel() - 1
        nodes = self.atomic_numbers.numel()
        edges = self.edge_distance.numel()
        consistent = (
            graphs >= 0
            and self.edge_ptr.numel() == graphs + 1
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
            return torch.from_numpy(np.ascontiguousarray(joined, dtype=dtype))

        return cls(
            {
                "atomic_numbers": packed([g.atomic_numbers for g in graphs], (0,), np.int64),
                "node_ptr": torch.from_numpy(np.concatenate([[0], np.cumsum(node_counts)]).astype(np.int64)),
                "edge_index": packed([g.edge_index for g in graphs], (2, 0), np.int64, axis=1),
                "edge_distance": packed([g.edge_distance for g in graphs], (0,), np.float32),
                "edge_ptr": torch.from_numpy(np.concatenate([[0], np.cumsum(edge_counts)]).astype(np.int64)),
                "eigenvalues": packed([s.eigenvalues[None] for s in spectra], (0, k), np.float32),
                "eigenvalue_mask": packed([s.mask[None] for s in spectra], (0, k), np.bool_),
                "eigenvectors": packed([s.eigenvectors for s in spectra], (0, k), np.float32),
            }
        )

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The packed tensors by name (contiguous, ready for ``safetensors.torch.save_file``)."""
        return {name: getattr(self, name).contiguous() for name in TENSOR_DTYPES}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> GraphStore:
        """Rebuild a store from :meth:`to_tensors` output; raises ``ValueError`` when inconsistent."""
        return cls(dict(tensors))

    def __len__(self) -> int:
        return self.node_ptr.numel() - 1

    @property
    def spectral_k(self) -> int:
        return int(self.eigenvalues.shape[1])

    def cell_facts(self) -> torch.Tensor:
        """:func:`cell_facts` of every stored graph, [len(self), NUM_CELL_FACTS]."""
        graph_of_node = torch.repeat_interleave(torch.arange(len(self)), self.node_ptr.diff())
        return cell_facts(self.atomic_numbers, graph_of_node, len(self))

    def finite(self) -> torch.Tensor:
        """Whether each graph holds only finite distances and spectra, [len(self)] bool."""
        node_graph = torch.repeat_interleave(torch.arange(len(self)), self.node_ptr.diff())
        edge_graph = torch.repeat_interleave(torch.arange(len(self)), self.edge_ptr.diff())
        broken = torch.zeros(len(self), dtype=torch.bool)
        broken[node_graph[~torch.isfinite(self.eigenvectors).all(dim=1)]] = True
        broken[edge_graph[~torch.isfinite(self.edge_distance)]] = True
        broken |= ~torch.isfinite(self.eigenvalues).all(dim=1)
        return ~broken

    def input_bytes(self, index: int) -> bytes:
        """What a material's graph contributes to the data fingerprint: atoms, edges, distances."""
        n0, n1 = int(self.node_ptr[index]), int(self.node_ptr[index + 1])
        e0, e1 = int(self.edge_ptr[index]), int(self.edge_ptr[index + 1])
        return (
            self.atomic_numbers[n0:n1].numpy().tobytes()
            + self.edge_index[:, e0:e1].numpy().tobytes()
            + self.edge_distance[e0:e1].numpy().tobytes()
        )

    def graph(self, index: int) -> CrystalGraph:
        """One graph back as a :class:`CrystalGraph` (for inspection and tests)."""
        n0, n1 = int(self.node_ptr[index]), int(self.node_ptr[index + 1])
        e0, e1 = int(self.edge_ptr[index]), int(self.edge_ptr[index + 1])
        return CrystalGraph(
            atomic_numbers=self.atomic_numbers[n0:n1].numpy().copy(),
            edge_index=self.edge_index[:, e0:e1].numpy().copy(),
            edge_distance=self.edge_distance[e0:e1].numpy().copy(),
        )

    def batch(self, graph_indices: Sequence[int] | torch.Tensor) -> GraphBatch:
        """The given graphs as one batch, in that order, built by vectorized slicing."""
        index = torch.as_tensor(graph_indices, dtype=torch.long).reshape(-1)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(self)):
            raise IndexError(f"graph index out of range for a store of {len(self)} graphs")
        node_gather, node_counts, node_offsets = _ranges(self.node_ptr, index)
        edge_gather, edge_counts, _ = _ranges(self.edge_ptr, index)
        shift = torch.repeat_interleave(node_offsets, edge_counts)
        return GraphBatch(
            z=self.atomic_numbers[node_gather],
            edge_index=self.edge_index[:, edge_gather] + shift,
            edge_distance=self.edge_distance[edge_gather],
            pe=self.eigenvectors[node_gather],
            eigenvalues=self.eigenvalues[index],
            eigenvalue_mask=self.eigenvalue_mask[index],
            batch=torch.repeat_interleave(torch.arange(index.numel()), node_counts),
            ptr=torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(node_counts, 0)]),
        )


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


class GraphStoreWriter:
    """Graphs packed chunk by chunk, in memory or appended to raw files in ``directory``.

    Featurizing a dataset of any size then holds one chunk of graphs at a time: on disk,
    the packed graphs of a million structures (a few GB) never need the memory. The
    finished parts become the cache file (:meth:`parts`) or a store (:meth:`store`).
    """

    def __init__(self, spectral_k: int, directory: Path | None = None) -> None:
        self.spectral_k = spectral_k
        self.directory = directory
        self._chunks: dict[str, list[np.ndarray]] = {name: [] for name in _PARTS}
        self._node_counts: list[np.ndarray] = []
        self._edge_counts: list[np.ndarray] = []
        self._finite: list[np.ndarray] = []
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            for name in _PARTS:
                (directory / name).write_bytes(b"")

    def __len__(self) -> int:
        return int(sum(len(counts) for counts in self._node_counts))

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
        self._node_counts.append(node_counts)
        self._edge_counts.append(edge_counts)
        self._finite.append(
            np.isfinite(arrays["eigenvalues"]).all(axis=1)
            & _all_per_graph(np.isfinite(arrays["eigenvectors"]).all(axis=1), node_counts)
            & _all_per_graph(np.isfinite(arrays["edge_distance"]), edge_counts)
        )
        for name, array in arrays.items():
            array = np.ascontiguousarray(array, dtype=_PARTS[name])
            if self.directory is None:
                self._chunks[name].append(array)
            else:
                with (self.directory / name).open("ab") as out:
                    out.write(array.tobytes())

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

    def pointers(self) -> dict[str, torch.Tensor]:
        """``node_ptr`` and ``edge_ptr``: small, kept in memory."""
        ptrs = {}
        for name, counts in (("node_ptr", self._node_counts), ("edge_ptr", self._edge_counts)):
            joined = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
            ptrs[name] = torch.from_numpy(np.concatenate([[0], np.cumsum(joined)]).astype(np.int64))
        return ptrs

    def finite(self) -> np.ndarray:
        """Whether each graph added holds only finite distances and spectra, [len(self)] bool.

        Known from each chunk as it is added: checking a store on disk afterwards would page
        every graph of the dataset into memory.
        """
        return np.concatenate(self._finite) if self._finite else np.zeros(0, dtype=bool)

    def has_files_for(self, store: GraphStore | EmbeddingStore | None) -> bool:
        """Whether ``store`` is this writer's, written to files (so its parts can be streamed)."""
        return (
            self.directory is not None
            and isinstance(store, GraphStore)
            and len(self) > 0
            and len(store) == len(self)
        )

    def parts(self) -> dict[str, tuple[np.dtype, tuple[int, ...], Path]]:
        """Each raw file on disk with its dtype and shape (for streaming into a cache file)."""
        if self.directory is None:
            raise ValueError("an in-memory writer has no files")
        shapes = self._shapes()
        return {name: (dtype, shapes[name], self.directory / name) for name, dtype in _PARTS.items()}

    def store(self) -> GraphStore:
        """A store of every graph added: read from the raw files (memory-mapped) or joined in memory."""
        shapes = self._shapes()
        arrays = {}
        for name, dtype in _PARTS.items():
            if self.directory is None:
                chunks = self._chunks[name]
                arrays[name] = np.concatenate(chunks) if chunks else np.zeros(shapes[name], dtype=dtype)
            elif np.prod(shapes[name]) == 0:
                arrays[name] = np.zeros(shapes[name], dtype=dtype)
            else:
                arrays[name] = np.memmap(self.directory / name, dtype=dtype, mode="c", shape=shapes[name])
        tensors = {
            name: torch.from_numpy(np.asarray(a))
            for name, a in arrays.items()
            if not name.startswith("edge_")
        }
        tensors["edge_distance"] = torch.from_numpy(np.asarray(arrays["edge_distance"]))
        if self.directory is None or shapes["edge_source"][0] == 0:
            edge_index = np.stack([arrays["edge_source"], arrays["edge_target"]])
        else:
            edge_index = _joined_edge_file(self.directory, shapes["edge_source"][0])
        tensors["edge_index"] = torch.from_numpy(np.asarray(edge_index))
        return GraphStore({**tensors, **self.pointers()})


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


def _ranges(ptr: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat positions of the ranges ``ptr[i]:ptr[i+1]`` for each i in ``index``, their lengths and
    where each range starts in the output."""
    starts = ptr[index]
    counts = ptr[index + 1] - starts
    offsets = torch.cumsum(counts, 0) - counts
    total = int(counts.sum())
    gather = torch.arange(total) + torch.repeat_interleave(starts - offsets, counts, output_size=total)
    return gather, counts, offsets
