"""Periodic crystal graphs: atoms as nodes, neighbours within a cutoff (across images) as edges."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from pymatgen.core import Structure

from topoclass.features.structures import PeriodicNeighbors, periodic_neighbors

# Distances closer than this count as ties; ties are broken by neighbour index and image so
# the chosen edges never depend on the order a neighbour search returns pairs in.
_DISTANCE_RESOLUTION = 1e-5


@dataclass
class CrystalGraph:
    """One crystal as a directed graph.

    ``edge_index[0]`` is the neighbour (message source) and ``edge_index[1]`` the centre atom
    (target), so each atom aggregates from its at most ``max_neighbors`` nearest neighbours.
    An atom's periodic images are ordinary edges (``source == target``); a pair of atoms
    appears once per image within the cutoff.
    """

    atomic_numbers: np.ndarray  # int64 [n]
    edge_index: np.ndarray  # int64 [2, E]
    edge_distance: np.ndarray  # float32 [E], angstrom

    @property
    def num_nodes(self) -> int:
        return int(self.atomic_numbers.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])


def build_crystal_graph(
    structure: Structure,
    *,
    cutoff: float,
    max_neighbors: int,
    neighbors: PeriodicNeighbors | None = None,
) -> CrystalGraph:
    """Graph of ``structure``: each atom's ``max_neighbors`` nearest neighbours within ``cutoff``.

    ``neighbors`` (from :func:`periodic_neighbors` with the same cutoff) avoids a second search.
    """
    centers, others, images, distances = (
        neighbors if neighbors is not None else periodic_neighbors(structure, cutoff)
    )
    keep = nearest_per_center(centers, others, images, distances, max_neighbors)
    return CrystalGraph(
        atomic_numbers=np.asarray(structure.atomic_numbers, dtype=np.int64),
        edge_index=np.stack([others[keep], centers[keep]]).astype(np.int64),
        edge_distance=distances[keep].astype(np.float32),
    )


def nearest_per_center(
    centers: np.ndarray,
    others: np.ndarray,
    images: np.ndarray,
    distances: np.ndarray,
    max_neighbors: int,
) -> np.ndarray:
    """Indices of the pairs to keep, ordered by centre then distance: at most ``max_neighbors`` each."""
    if centers.size == 0:
        return np.zeros(0, dtype=np.int64)
    quantized = np.rint(distances / _DISTANCE_RESOLUTION).astype(np.int64)
    # np.lexsort sorts by the last key first.
    order = np.lexsort((images[:, 2], images[:, 1], images[:, 0], others, quantized, centers))
    sorted_centers = centers[order]
    group_start = np.searchsorted(sorted_centers, sorted_centers, side="left")
    rank = np.arange(order.size) - group_start
    return order[rank < max_neighbors]


def gaussian_rbf(distances: torch.Tensor, *, cutoff: float, num_rbf: int) -> torch.Tensor:
    """Expand distances [E] into ``num_rbf`` Gaussians [E, num_rbf] centred evenly on [0, cutoff].

    The width equals the spacing of the centres, so neighbouring basis functions overlap
    and every distance in range lights up at least two of them.
    """
    import torch  # here, not at the top: building graphs needs no PyTorch, only the model's use of them

    centers = torch.linspace(0.0, cutoff, num_rbf, device=distances.device, dtype=distances.dtype)
    width = cutoff / (num_rbf - 1)
    return torch.exp(-0.5 * ((distances.unsqueeze(-1) - centers) / width) ** 2)


NUM_CELL_FACTS = 6


def nodes_per_graph(batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """How many nodes each of ``num_graphs`` graphs has, [num_graphs] int64 (``batch``: each node's graph).

    The counts ``torch.bincount`` gives, as a sum of ones: ONNX export cannot express bincount
    with a number of graphs known only at run time.
    """
    import torch

    return torch.zeros(num_graphs, dtype=torch.long, device=batch.device).index_add_(
        0, batch, torch.ones_like(batch)
    )


def cell_facts(atomic_numbers: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """Electron count of each cell modulo 2, 4 and 8 (as angles), and its log atom count: [G, 6].

    Mean and max pooling forget how many atoms a cell holds, yet band filling depends on the
    electrons per cell: an odd count cannot fill bands and enforces a (semi)metal, and
    nonsymmorphic groups need multiples of 4 or 8 (filling constraints the space-group
    embedding can pair with these). The count is for the cell as given; Materials Project
    and JARVIS cells are primitive, which is the cell these constraints speak of.
    """
    import torch

    electrons = torch.zeros(num_graphs, dtype=torch.long, device=atomic_numbers.device)
    electrons.index_add_(0, batch, atomic_numbers.long())
    atoms = nodes_per_graph(batch, num_graphs).clamp_min(1)
    return cell_fact_columns((electrons % 8).to(torch.float32), atoms.to(torch.float32), torch)


def cell_facts_from_counts(atomic_numbers: np.ndarray, node_ptr: np.ndarray) -> np.ndarray:
    """:func:`cell_facts` in NumPy for packed graphs (graph g owns nodes ``node_ptr[g]:node_ptr[g+1]``)."""
    atoms = np.diff(node_ptr)
    owner = np.repeat(np.arange(len(atoms)), atoms)
    electrons = np.bincount(owner, weights=atomic_numbers, minlength=len(atoms)).astype(np.int64)
    return cell_fact_columns((electrons % 8).astype(np.float32), np.maximum(atoms, 1).astype(np.float32), np)


def cell_fact_columns(electrons_mod_8: Any, atoms: Any, xp: Any) -> Any:
    """The six cell facts from float32 electrons-per-cell modulo 8 and atoms per cell, computed
    with ``xp`` (NumPy or PyTorch: the model and the trees read the same numbers)."""
    quarter_turns = electrons_mod_8 % 4 * (math.pi / 2)
    eighth_turns = electrons_mod_8 * (math.pi / 4)
    columns = [
        1.0 - 2.0 * (electrons_mod_8 % 2),
        xp.cos(quarter_turns),
        xp.sin(quarter_turns),
        xp.cos(eighth_turns),
        xp.sin(eighth_turns),
        xp.log(atoms),
    ]
    return xp.stack(columns, 1)
