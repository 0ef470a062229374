"""Laplacian eigenpairs of crystal graphs, as positional encodings, computed in batches.

Each graph gets its own symmetric normalized Laplacian ``L = I - D^-1/2 A D^-1/2`` of the
undirected graph between distinct atoms:

- ``A_ij = (C_ij + C_ji) / 2`` where ``C_ij`` counts the directed edges between atoms i and j,
  one per periodic image: a pair that both atoms keep among their nearest neighbours
  counts once per image, a pair only one of them keeps counts half.
- Edges from an atom to its own periodic images are left out (they are not between
  distinct atoms); they still carry messages in the encoder.
- An isolated node (no edge to another atom, e.g. the atom of a one-atom cell) gets
  ``L_ii = 0``, as ``scipy.sparse.csgraph.laplacian(normed=True)`` does, so it contributes
  eigenvalue 0 with its indicator vector as eigenvector.

The ``k`` smallest eigenvalues are kept with a mask (graphs with fewer than ``k`` nodes are
padded) and the matching eigenvectors become per-node encodings ``[n, k]`` (padded columns
0). Eigenvectors are signed so their largest-magnitude entry is positive, which makes the
stored encodings reproducible (up to ties in magnitude); they remain defined only up to sign
(and up to rotation inside degenerate eigenspaces), which :func:`random_sign_flip` and the
sign-invariant encoder account for.

Everything is NumPy (LAPACK's ``eigh``), so predicting from a structure needs no PyTorch;
a CUDA device takes the batched ``eigh`` only when asked for by name.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from topoclass.features.graph import CrystalGraph

if TYPE_CHECKING:
    import torch

# Diagonal of padded rows: above 2, the largest normalized-Laplacian eigenvalue, so padded
# eigenvalues sort after every real one and block structure keeps real eigenvectors zero there.
_PADDING_DIAGONAL = 3.0
# Graphs are grouped by node count; a group spans sizes up to this factor (+2 nodes) and at
# most this many matrix entries, keeping padding and memory small.
_GROUP_SIZE_FACTOR = 1.25
_GROUP_MAX_ENTRIES = 1 << 22

# A batched symmetric eigensolver: [B, n, n] -> eigenvalues [B, n] ascending, eigenvectors [B, n, n].
Eigh = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class Spectrum:
    """The ``k`` smallest Laplacian eigenpairs of one graph."""

    eigenvalues: np.ndarray  # float32 [k], 0 where masked
    mask: np.ndarray  # bool [k], False for padding (graph has fewer than k nodes)
    eigenvectors: np.ndarray  # float32 [n, k], columns of padding are 0

    @property
    def nbytes(self) -> int:
        return int(self.eigenvalues.nbytes + self.mask.nbytes + self.eigenvectors.nbytes)


class SpectralCache:
    """LRU cache of spectra keyed by :func:`graph_key`, bounded by the bytes its arrays hold.

    Many crystals share a graph (every rock-salt cell has the same one), so one
    featurization computes each distinct graph once. A cache lives as long as the
    featurization that made it: nothing of it stays in the process afterwards.
    """

    def __init__(self, max_bytes: int = 32 << 20) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, Spectrum] = OrderedDict()

    def get(self, key: str) -> Spectrum | None:
        spectrum = self._entries.get(key)
        if spectrum is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return spectrum

    def put(self, key: str, spectrum: Spectrum) -> None:
        previous = self._entries.pop(key, None)
        if previous is not None:
            self.bytes -= previous.nbytes
        self._entries[key] = spectrum
        self.bytes += spectrum.nbytes
        while self.bytes > self.max_bytes and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.nbytes

    def __len__(self) -> int:
        return len(self._entries)


def graph_key(num_nodes: int, edge_index: np.ndarray, k: int) -> str:
    """Content hash of everything the spectrum depends on: node count, edges and k."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.array([num_nodes, k], dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(edge_index, dtype=np.int64).tobytes())
    return digest.hexdigest()


def laplacian_spectra(
    graphs: Sequence[CrystalGraph],
    k: int,
    *,
    device: str = "cpu",
    cache: SpectralCache | None = None,
) -> list[Spectrum]:
    """The ``k`` smallest eigenpairs of each graph's normalized Laplacian, one :class:`Spectrum` each.

    With a ``cache``, graphs found there are not recomputed, and graphs repeated in ``graphs``
    (same node count and edges) are computed once. ``device="cuda"`` solves on a GPU; the CPU
    stays the default on GPU machines too, since the matrices are small (median 12 nodes): on an
    H200 the GPU took 1.14x the CPU's time for 2,000 tqc2020 graphs (``benchmarks/spectra_gpu.py``),
    and features then do not depend on which machine computed them.
    """
    eigh: Eigh = _cuda_eigh(device) if device.startswith("cuda") else np.linalg.eigh
    results: list[Spectrum | None] = [None] * len(graphs)
    to_compute: list[int] = []  # one position per distinct missing graph
    repeats: dict[str, list[int]] = {}  # key of a graph to compute -> its other positions
    keys: list[str] = []
    for position, graph in enumerate(graphs):
        if cache is None:
            to_compute.append(position)
            continue
        key = graph_key(graph.num_nodes, graph.edge_index, k)
        keys.append(key)
        if key in repeats:
            repeats[key].append(position)
        elif (hit := cache.get(key)) is not None:
            results[position] = hit
        else:
            repeats[key] = []
            to_compute.append(position)
    with _one_blas_thread():
        for group in _size_groups([graphs[i].num_nodes for i in to_compute]):
            positions = [to_compute[i] for i in group]
            spectra = _group_spectra([graphs[p] for p in positions], k, eigh)
            for position, spectrum in zip(positions, spectra, strict=True):
                results[position] = spectrum
                if cache is not None:
                    cache.put(keys[position], spectrum)
                    for repeat in repeats[keys[position]]:
                        results[repeat] = spectrum
    return results  # type: ignore[return-value]


def _one_blas_thread() -> AbstractContextManager[object]:
    """LAPACK on one thread for the duration.

    The matrices are small (median 12 nodes); a BLAS library's worker threads spin-wait between
    such small operations and cost far more than they save (measured with PyTorch's solver on
    500 tqc2020 graphs on a 2-core machine with other work running: 3 s with two threads
    against 0.03 s with one).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def _cuda_eigh(device: str) -> Eigh:
    """``eigh`` of a float64 [B, n, n] NumPy stack on the GPU, results back as NumPy."""
    import torch

    def eigh(matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values, vectors = torch.linalg.eigh(torch.from_numpy(matrices).to(device))
        return values.cpu().numpy(), vectors.cpu().numpy()

    return eigh


def _size_groups(sizes: list[int]) -> list[list[int]]:
    """Indices into ``sizes``, grouped so sizes within a group are close and the group fits memory."""
    order = sorted(range(len(sizes)), key=sizes.__getitem__)
    groups: list[list[int]] = []
    current: list[int] = []
    smallest = 0
    for index in order:
        size = sizes[index]
        too_spread = size > smallest * _GROUP_SIZE_FACTOR + 2
        too_big = (len(current) + 1) * size * size > _GROUP_MAX_ENTRIES
        if current and (too_spread or too_big):
            groups.append(current)
            current = []
        if not current:
            smallest = size
        current.append(index)
    if current:
        groups.append(current)
    return groups


def _group_spectra(graphs: Sequence[CrystalGraph], k: int, eigh: Eigh) -> list[Spectrum]:
    """Eigenpairs of several graphs at once via one batched ``eigh`` on padded block matrices."""
    sizes = np.array([g.num_nodes for g in graphs], dtype=np.int64)
    batch, n_max = len(graphs), max(1, int(sizes.max()))  # a node-less graph still gets a padded row
    laplacian = _padded_laplacians(graphs, sizes, n_max)
    eigenvalues, eigenvectors = eigh(laplacian)
    kept = min(k, n_max)
    eigenvalues = eigenvalues[:, :kept]
    eigenvectors = eigenvectors[:, :, :kept]

    real_columns = np.arange(kept)[None, :] < sizes[:, None]  # [B, kept]
    # Canonical sign: the largest-magnitude entry of each eigenvector is positive.
    peak = np.abs(eigenvectors).argmax(axis=1)[:, None, :]
    signs = np.sign(np.take_along_axis(eigenvectors, peak, axis=1))
    eigenvectors = eigenvectors * np.where(signs == 0, 1.0, signs) * real_columns[:, None, :]
    eigenvalues = np.where(real_columns, eigenvalues, 0.0)

    values = np.zeros((batch, k), dtype=np.float32)
    values[:, :kept] = eigenvalues
    mask = np.zeros((batch, k), dtype=bool)
    mask[:, :kept] = real_columns
    vectors = eigenvectors.astype(np.float32)
    spectra = []
    for b, graph in enumerate(graphs):
        per_node = np.zeros((graph.num_nodes, k), dtype=np.float32)
        per_node[:, :kept] = vectors[b, : graph.num_nodes]
        spectra.append(Spectrum(values[b], mask[b], per_node))
    return spectra


def _padded_laplacians(graphs: Sequence[CrystalGraph], sizes: np.ndarray, n_max: int) -> np.ndarray:
    """[B, n_max, n_max] float64 normalized Laplacians; padded diagonals hold a value above 2."""
    batch = len(graphs)
    edge_counts = np.array([g.num_edges for g in graphs], dtype=np.int64)
    edges = np.concatenate([g.edge_index for g in graphs], axis=1).astype(np.int64)
    owner = np.repeat(np.arange(batch), edge_counts)
    distinct = edges[0] != edges[1]  # periodic self-images are not edges between distinct atoms
    source, target, owner = edges[0][distinct], edges[1][distinct], owner[distinct]
    flat = owner * n_max * n_max + source * n_max + target
    counts = np.bincount(flat, minlength=batch * n_max * n_max).astype(np.float64)
    counts = counts.reshape(batch, n_max, n_max)
    adjacency = 0.5 * (counts + counts.transpose(0, 2, 1))

    degree = adjacency.sum(axis=2)
    inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-300)), 0.0)
    laplacian = -(inv_sqrt[:, :, None] * adjacency * inv_sqrt[:, None, :])
    real_nodes = np.arange(n_max)[None, :] < sizes[:, None]
    diagonal = np.where(real_nodes, np.where(degree > 0, 1.0, 0.0), _PADDING_DIAGONAL)
    rows = np.arange(n_max)
    laplacian[:, rows, rows] = diagonal
    return laplacian


def random_sign_flip(
    pe: torch.Tensor, batch_vector: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Flip each eigenvector of each graph by an independent random sign (training augmentation).

    ``pe`` is [total_nodes, k], ``batch_vector`` maps nodes to graphs; one sign per graph
    and eigenvector, so each flipped column is still an eigenvector of its graph.
    """
    num_graphs = int(batch_vector.max()) + 1 if batch_vector.numel() else 0
    import torch

    draws = torch.randint(0, 2, (num_graphs, pe.shape[1]), generator=generator, device="cpu")
    signs = (draws * 2 - 1).to(device=pe.device, dtype=pe.dtype)
    return pe * signs[batch_vector]
