from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from scipy.sparse.csgraph import laplacian

from topoclass.data.records import StructureRef
from topoclass.features.graph import CrystalGraph, build_crystal_graph
from topoclass.features.spectral import SpectralCache, graph_key, laplacian_spectra, random_sign_flip
from topoclass.features.structures import read_structure

K = 8


def make_graph(num_nodes: int, edges: list[tuple[int, int]] | np.ndarray) -> CrystalGraph:
    edge_index = np.asarray(edges, dtype=np.int64).reshape(-1, 2).T.copy()
    return CrystalGraph(
        atomic_numbers=np.full(num_nodes, 6, dtype=np.int64),
        edge_index=edge_index,
        edge_distance=np.ones(edge_index.shape[1], dtype=np.float32),
    )


def random_graph(rng: np.random.Generator, num_nodes: int, num_edges: int) -> CrystalGraph:
    """Directed multigraph with self-loops (periodic self-images), one-way and repeated edges."""
    edges = rng.integers(0, num_nodes, size=(num_edges, 2))
    return make_graph(num_nodes, edges)


def reference(graph: CrystalGraph) -> tuple[np.ndarray, np.ndarray]:
    """Per-graph SciPy/NumPy reference: all eigenvalues and eigenvectors of the normed Laplacian."""
    n = graph.num_nodes
    counts = np.zeros((n, n))
    source, target = graph.edge_index
    distinct = source != target
    np.add.at(counts, (source[distinct], target[distinct]), 1.0)
    adjacency = 0.5 * (counts + counts.T)
    return np.linalg.eigh(laplacian(adjacency, normed=True))


def assert_matches_reference(graph: CrystalGraph, spectrum, k: int = K) -> None:
    values, vectors = reference(graph)
    n = graph.num_nodes
    kept = min(k, n)
    assert spectrum.mask.tolist() == [True] * kept + [False] * (k - kept)
    np.testing.assert_allclose(spectrum.eigenvalues[:kept], values[:kept], atol=1e-5)
    assert np.all(spectrum.eigenvalues[kept:] == 0) and np.all(spectrum.eigenvectors[:, kept:] == 0)
    ours = spectrum.eigenvectors[:, :kept].astype(np.float64)
    # Eigenvectors are unique only up to sign and rotation inside a degenerate eigenspace:
    # compare projectors onto each eigenspace (clusters of equal eigenvalues).
    start = 0
    while start < kept:
        stop = start + 1
        while stop < n and abs(values[stop] - values[start]) < 1e-6:
            stop += 1
        full_space = vectors[:, start:stop] @ vectors[:, start:stop].T
        mine = ours[:, start : min(stop, kept)]
        if stop <= kept:
            np.testing.assert_allclose(mine @ mine.T, full_space, atol=1e-5)
        else:  # the cluster is cut at k: ours must still lie inside the reference eigenspace
            np.testing.assert_allclose(full_space @ mine, mine, atol=1e-5)
        start = stop


def test_random_graphs_match_the_per_graph_reference():
    rng = np.random.default_rng(0)
    sizes, edge_counts = rng.integers(1, 40, 60), rng.integers(0, 200, 60)
    graphs = [random_graph(rng, int(n), int(e)) for n, e in zip(sizes, edge_counts, strict=True)]
    for graph, spectrum in zip(graphs, laplacian_spectra(graphs, K, device="cpu"), strict=True):
        assert_matches_reference(graph, spectrum)


def test_disconnected_graph_and_isolated_nodes():
    # Two triangles and an isolated node: eigenvalue 0 three times.
    graph = make_graph(7, [(0, 1), (1, 2), (2, 0), (3, 4), (4, 5), (5, 3), (6, 6)])
    (spectrum,) = laplacian_spectra([graph], K, device="cpu")
    np.testing.assert_allclose(spectrum.eigenvalues[:3], 0.0, atol=1e-6)
    assert_matches_reference(graph, spectrum)


def test_graph_smaller_than_k_is_padded_with_a_mask():
    graph = make_graph(3, [(0, 1), (1, 0), (1, 2), (2, 1)])
    (spectrum,) = laplacian_spectra([graph], K, device="cpu")
    assert spectrum.eigenvectors.shape == (3, K)
    assert spectrum.mask.sum() == 3
    np.testing.assert_allclose(spectrum.eigenvalues[:3], [0.0, 1.0, 2.0], atol=1e-6)  # path graph P3
    assert_matches_reference(graph, spectrum)


def test_one_atom_cell_gives_eigenvalue_zero():
    a = 3.6
    fcc = Structure(Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]]), ["Cu"], [[0, 0, 0]])
    graph = build_crystal_graph(fcc, cutoff=6.0, max_neighbors=12)
    (spectrum,) = laplacian_spectra([graph], K, device="cpu")
    assert spectrum.mask.tolist() == [True] + [False] * (K - 1)
    assert spectrum.eigenvalues.tolist() == [0.0] * K
    assert spectrum.eigenvectors.tolist() == [[1.0] + [0.0] * (K - 1)]


def test_batched_results_do_not_depend_on_the_other_graphs():
    rng = np.random.default_rng(1)
    graphs = [random_graph(rng, int(n), 3 * int(n)) for n in rng.integers(2, 30, 25)]
    together = laplacian_spectra(graphs, K, device="cpu")
    for graph, spectrum in zip(graphs, together, strict=True):
        (alone,) = laplacian_spectra([graph], K, device="cpu")
        np.testing.assert_allclose(spectrum.eigenvalues, alone.eigenvalues, atol=1e-6)
        np.testing.assert_allclose(
            np.abs(spectrum.eigenvectors @ spectrum.eigenvectors.T),
            np.abs(alone.eigenvectors @ alone.eigenvectors.T),
            atol=1e-5,
        )


def test_cache_hits_return_the_stored_result_and_evict_oldest():
    rng = np.random.default_rng(2)
    graphs = [random_graph(rng, 5 + i, 20) for i in range(4)]
    first = laplacian_spectra(graphs[:3], K, device="cpu")
    # Room for exactly three of these spectra: the cache is bounded by bytes, not entries.
    cache = SpectralCache(max_bytes=sum(spectrum.nbytes for spectrum in first) + 1)
    first = laplacian_spectra(graphs[:3], K, device="cpu", cache=cache)
    assert (cache.hits, cache.misses, len(cache)) == (0, 3, 3)
    again = laplacian_spectra(graphs[:3], K, device="cpu", cache=cache)
    assert cache.hits == 3 and all(a is b for a, b in zip(first, again, strict=True))
    laplacian_spectra(graphs[3:], K, device="cpu", cache=cache)
    assert 2 <= len(cache) <= 3  # the newest spectrum is the largest: it may push out two
    assert cache.get(graph_key(graphs[3].num_nodes, graphs[3].edge_index, K)) is not None
    key0 = graph_key(graphs[0].num_nodes, graphs[0].edge_index, K)
    assert cache.get(key0) is None  # least recently used went first
    assert graph_key(graphs[0].num_nodes, graphs[0].edge_index, K + 1) != key0
    assert cache.bytes <= cache.max_bytes


def test_repeated_graphs_are_computed_once_and_match_the_uncached_result():
    rng = np.random.default_rng(4)
    distinct = [random_graph(rng, 6 + i, 24) for i in range(3)]
    graphs = [distinct[0], distinct[1], distinct[0], distinct[2], distinct[0]]
    cache = SpectralCache()
    cached = laplacian_spectra(graphs, K, device="cpu", cache=cache)
    assert (cache.misses, len(cache)) == (3, 3)
    assert cached[0] is cached[2] is cached[4]
    for got, expected in zip(cached, laplacian_spectra(graphs, K, device="cpu"), strict=True):
        np.testing.assert_array_equal(got.eigenvalues, expected.eigenvalues)
        np.testing.assert_array_equal(got.eigenvectors, expected.eigenvectors)


def test_random_sign_flip_flips_whole_eigenvectors_per_graph():
    rng = np.random.default_rng(3)
    graphs = [random_graph(rng, n, 4 * n) for n in (6, 9)]
    spectra = laplacian_spectra(graphs, K, device="cpu")
    pe = torch.from_numpy(np.concatenate([s.eigenvectors for s in spectra]))
    batch = torch.tensor([0] * 6 + [1] * 9)
    flipped = random_sign_flip(pe, batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(flipped.abs(), pe.abs())
    ratio = torch.where(pe.abs() > 1e-6, flipped / pe, torch.nan)
    for g in range(2):
        per_column = ratio[batch == g]
        for column in range(K):
            signs = per_column[:, column][~torch.isnan(per_column[:, column])]
            assert signs.numel() == 0 or bool(torch.all(signs == signs[0]))
    again = random_sign_flip(pe, batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(flipped, again)
    assert not torch.equal(random_sign_flip(pe, batch, torch.Generator().manual_seed(1)), flipped)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(4)
    graphs = [random_graph(rng, int(n), 3 * int(n)) for n in rng.integers(2, 50, 20)]
    for on_gpu, on_cpu in zip(
        laplacian_spectra(graphs, K, device="cuda"), laplacian_spectra(graphs, K, device="cpu"), strict=True
    ):
        np.testing.assert_allclose(on_gpu.eigenvalues, on_cpu.eigenvalues, atol=1e-5)


def test_real_crystal_graphs_match_the_reference():
    value = os.environ.get("TOPOCLASS_DATA_DIR")
    folder = Path(value) / "tqc2020" / "structures" if value else None
    if folder is None or not folder.is_dir():
        pytest.skip("set TOPOCLASS_DATA_DIR to a folder holding tqc2020/ to run this test")
    names = ["mp-1.cif", "mp-66.cif", "mp-149.cif", "mp-541837.cif", "mp-20898.cif", "mp-22875.cif"]
    paths = [folder / name for name in names if (folder / name).exists()]
    graphs = [
        build_crystal_graph(read_structure(StructureRef(path=p)), cutoff=6.0, max_neighbors=12) for p in paths
    ]
    assert len(graphs) >= 4
    for graph, spectrum in zip(graphs, laplacian_spectra(graphs, K, device="cpu"), strict=True):
        assert_matches_reference(graph, spectrum)
