from __future__ import annotations

import itertools

import numpy as np
import torch
from pymatgen.core import Lattice, Structure

from topoclass.features.graph import (
    NUM_CELL_FACTS,
    build_crystal_graph,
    cell_facts,
    gaussian_rbf,
    nearest_per_center,
)
from topoclass.features.structures import periodic_neighbors


def fcc_primitive(a: float = 3.6) -> Structure:
    lattice = Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    return Structure(lattice, ["Cu"], [[0, 0, 0]])


def brute_force_distances(structure: Structure, cutoff: float) -> list[list[float]]:
    """Sorted neighbour distances of each atom by explicit enumeration of periodic images."""
    span = range(-4, 5)
    out: list[list[float]] = [[] for _ in structure]
    for i, j in itertools.product(range(len(structure)), repeat=2):
        for image in itertools.product(span, repeat=3):
            shifted = structure.lattice.get_cartesian_coords(structure.frac_coords[j] + np.array(image))
            distance = float(np.linalg.norm(shifted - structure.cart_coords[i]))
            if 1e-8 < distance <= cutoff:
                out[i].append(distance)
    return [sorted(d) for d in out]


def test_one_atom_fcc_cell_has_its_twelve_images_as_neighbours():
    graph = build_crystal_graph(fcc_primitive(), cutoff=3.0, max_neighbors=12)
    assert graph.atomic_numbers.tolist() == [29]
    assert graph.edge_index.shape == (2, 12) and graph.edge_index.dtype == np.int64
    assert np.all(graph.edge_index == 0)  # all edges go to periodic images of the one atom
    np.testing.assert_allclose(graph.edge_distance, 3.6 / np.sqrt(2), rtol=1e-6)
    assert graph.edge_distance.dtype == np.float32


def test_neighbours_are_capped_at_the_nearest_per_atom():
    # bcc: 8 nearest at a*sqrt(3)/2, then 6 at a; a cap of 12 keeps the 8 and 4 of the 6.
    a = 3.0
    bcc = Structure(Lattice.cubic(a), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    graph = build_crystal_graph(bcc, cutoff=3.5, max_neighbors=12)
    for atom in range(2):
        incoming = np.sort(graph.edge_distance[graph.edge_index[1] == atom])
        assert incoming.size == 12
        np.testing.assert_allclose(incoming[:8], a * np.sqrt(3) / 2, rtol=1e-6)
        np.testing.assert_allclose(incoming[8:], a, rtol=1e-6)


def test_kept_edges_match_brute_force_enumeration():
    rng = np.random.default_rng(3)
    structure = Structure(
        Lattice.from_parameters(3.1, 4.2, 5.3, 80, 95, 110), ["Na", "Cl", "O"], rng.random((3, 3))
    )
    cutoff, cap = 6.0, 12
    graph = build_crystal_graph(structure, cutoff=cutoff, max_neighbors=cap)
    reference = brute_force_distances(structure, cutoff)
    for atom in range(len(structure)):
        kept = np.sort(graph.edge_distance[graph.edge_index[1] == atom])
        np.testing.assert_allclose(kept, reference[atom][:cap], rtol=1e-5)


def test_cells_smaller_than_the_cutoff_find_every_image():
    small = Structure(Lattice.cubic(2.0), ["Po"], [[0, 0, 0]])
    graph = build_crystal_graph(small, cutoff=6.0, max_neighbors=1000)
    assert graph.num_edges == 122  # lattice points within 3 spacings of the origin, origin excluded


def test_selection_does_not_depend_on_the_order_of_the_neighbour_list():
    bcc = Structure(Lattice.cubic(3.0), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    centers, others, images, distances = periodic_neighbors(bcc, 3.5)
    chosen = nearest_per_center(centers, others, images, distances, 12)
    shuffle = np.random.default_rng(0).permutation(centers.size)
    chosen_shuffled = shuffle[
        nearest_per_center(*(a[shuffle] for a in (centers, others, images)), distances[shuffle], 12)
    ]
    assert sorted(chosen.tolist()) == sorted(chosen_shuffled.tolist())


def test_edges_are_ordered_by_centre_then_distance():
    rng = np.random.default_rng(4)
    structure = Structure(Lattice.cubic(5.0), ["Na"] * 4, rng.random((4, 3)))
    graph = build_crystal_graph(structure, cutoff=5.0, max_neighbors=6)
    keys = list(zip(graph.edge_index[1], graph.edge_distance, strict=True))
    assert keys == sorted(keys)
    assert np.bincount(graph.edge_index[1]).max() <= 6


def test_gaussian_rbf_peaks_at_its_centres():
    distances = torch.tensor([0.0, 3.0, 6.0])
    rbf = gaussian_rbf(distances, cutoff=6.0, num_rbf=7)
    assert rbf.shape == (3, 7)
    assert rbf.argmax(dim=1).tolist() == [0, 3, 6]
    torch.testing.assert_close(rbf.max(dim=1).values, torch.ones(3))
    assert torch.all(rbf > 0) and torch.all(rbf <= 1)


def test_cell_facts_count_the_electrons_of_each_cell():
    # Na Cl (11 + 17 = 28 electrons, 2 atoms), then a lone Na atom (11 electrons).
    z = torch.tensor([11, 17, 11])
    facts = cell_facts(z, torch.tensor([0, 0, 1]), num_graphs=2)
    assert facts.shape == (2, NUM_CELL_FACTS)
    parity, cos4, sin4, cos8, sin8, log_atoms = facts.T
    assert parity.tolist() == [1.0, -1.0]  # even, odd
    torch.testing.assert_close(torch.stack([cos4, sin4], 1), torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    torch.testing.assert_close(torch.stack([cos8, sin8], 1)[0], torch.tensor([-1.0, 0.0]))  # 28 % 8 == 4
    torch.testing.assert_close(log_atoms, torch.log(torch.tensor([2.0, 1.0])))
