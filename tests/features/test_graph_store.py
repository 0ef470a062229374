from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

from topoclass.features.graph import CrystalGraph
from topoclass.features.graph_store import GraphStore, GraphStoreWriter
from topoclass.features.spectral import laplacian_spectra

K = 4


def random_graphs(count: int, seed: int = 0) -> list[CrystalGraph]:
    rng = np.random.default_rng(seed)
    graphs = []
    for _ in range(count):
        n = int(rng.integers(1, 9))
        e = int(rng.integers(1, 20))
        graphs.append(
            CrystalGraph(
                atomic_numbers=rng.integers(1, 90, n).astype(np.int64),
                edge_index=rng.integers(0, n, (2, e)).astype(np.int64),
                edge_distance=rng.uniform(1, 6, e).astype(np.float32),
            )
        )
    return graphs


@pytest.fixture
def store_and_parts():
    graphs = random_graphs(7)
    spectra = laplacian_spectra(graphs, K, device="cpu")
    return GraphStore.from_graphs(graphs, spectra), graphs, spectra


def test_packing_keeps_every_graph(store_and_parts):
    store, graphs, _ = store_and_parts
    assert len(store) == 7 and store.spectral_k == K
    for i, graph in enumerate(graphs):
        back = store.graph(i)
        assert np.array_equal(back.atomic_numbers, graph.atomic_numbers)
        assert np.array_equal(back.edge_index, graph.edge_index)
        assert np.array_equal(back.edge_distance, graph.edge_distance)


def test_batch_slices_the_requested_graphs_in_order(store_and_parts):
    store, graphs, spectra = store_and_parts
    chosen = [5, 0, 5, 3]
    batch = store.batch(chosen)
    assert batch.num_graphs == 4
    offset = 0
    edge_offset = 0
    for position, index in enumerate(chosen):
        graph, spectrum = graphs[index], spectra[index]
        nodes = slice(offset, offset + graph.num_nodes)
        edges = slice(edge_offset, edge_offset + graph.num_edges)
        assert batch.z[nodes].tolist() == graph.atomic_numbers.tolist()
        assert torch.all(batch.batch[nodes] == position)
        assert (batch.edge_index[:, edges] - offset).tolist() == graph.edge_index.tolist()
        assert batch.edge_distance[edges].tolist() == graph.edge_distance.tolist()
        assert torch.equal(batch.pe[nodes], torch.from_numpy(spectrum.eigenvectors))
        assert torch.equal(batch.eigenvalues[position], torch.from_numpy(spectrum.eigenvalues))
        assert torch.equal(batch.eigenvalue_mask[position], torch.from_numpy(spectrum.mask))
        offset += graph.num_nodes
        edge_offset += graph.num_edges
    assert batch.num_nodes == offset and batch.ptr[-1] == offset
    assert batch.edge_index.shape == (2, edge_offset)


def test_safetensors_round_trip(store_and_parts):
    store = store_and_parts[0]
    restored = GraphStore.from_tensors(load(save(store.to_tensors())))
    for name, tensor in store.to_tensors().items():
        assert torch.equal(restored.to_tensors()[name], tensor), name
    assert torch.equal(restored.batch([1, 2]).pe, store.batch([1, 2]).pe)


def test_inconsistent_tensors_are_refused(store_and_parts):
    tensors = store_and_parts[0].to_tensors()
    with pytest.raises(ValueError, match="missing"):
        GraphStore.from_tensors({k: v for k, v in tensors.items() if k != "edge_ptr"})
    with pytest.raises(ValueError, match="shapes"):
        GraphStore.from_tensors({**tensors, "eigenvectors": tensors["eigenvectors"][:-1]})
    with pytest.raises(ValueError, match="float32"):
        GraphStore.from_tensors({**tensors, "edge_distance": tensors["edge_distance"].double()})


def test_empty_store_and_bad_indices(store_and_parts):
    empty = GraphStore.from_graphs([], [], spectral_k=K)
    assert len(empty) == 0 and empty.eigenvalues.shape == (0, K)
    assert len(GraphStore.from_tensors(empty.to_tensors())) == 0
    with pytest.raises(IndexError):
        store_and_parts[0].batch([7])


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_writer_packs_its_chunks_like_one_store(tmp_path, on_disk):
    graphs = random_graphs(9, seed=1)
    spectra = laplacian_spectra(graphs, K, device="cpu")
    writer = GraphStoreWriter(K, tmp_path / "parts" if on_disk else None)
    writer.add(graphs[:4], spectra[:4])
    writer.add(graphs[4:], spectra[4:])
    expected = GraphStore.from_graphs(graphs, spectra).to_tensors()
    for name, tensor in writer.store().to_tensors().items():
        assert torch.equal(tensor, expected[name]), name
    assert writer.finite().tolist() == [True] * 9


def test_a_writer_knows_which_graphs_are_not_finite():
    graphs = random_graphs(5, seed=2)
    spectra = laplacian_spectra(graphs, K, device="cpu")
    graphs[1].edge_distance[-1] = np.nan
    spectra[3].eigenvectors[0, 0] = np.inf
    writer = GraphStoreWriter(K)
    writer.add(graphs, spectra)
    assert writer.finite().tolist() == [True, False, True, False, True]
