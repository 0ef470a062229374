from __future__ import annotations

import numpy as np
import pytest
import torch

from topoclass.features.graph import CrystalGraph
from topoclass.features.graph_store import GraphStore
from topoclass.features.spectral import laplacian_spectra, random_sign_flip
from topoclass.model.structure_encoder import StructureEncoder, mean_and_max_pool

HIDDEN, K, RBF, CUTOFF = 16, 4, 8, 6.0


def make_store(seed: int = 0) -> GraphStore:
    rng = np.random.default_rng(seed)
    graphs = []
    for n in (5, 3, 7):
        e = 4 * n
        graphs.append(
            CrystalGraph(
                atomic_numbers=rng.integers(1, 84, n).astype(np.int64),
                edge_index=rng.integers(0, n, (2, e)).astype(np.int64),
                edge_distance=rng.uniform(1.5, CUTOFF, e).astype(np.float32),
            )
        )
    return GraphStore.from_graphs(graphs, laplacian_spectra(graphs, K, device="cpu"))


@pytest.fixture
def encoder() -> StructureEncoder:
    torch.manual_seed(0)
    return StructureEncoder(
        HIDDEN, num_layers=2, num_rbf=RBF, cutoff=CUTOFF, spectral_k=K, dropout=0.1
    ).eval()


def test_one_embedding_per_crystal(encoder):
    out = encoder(make_store().batch([0, 1, 2]))
    assert out.shape == (3, HIDDEN) and torch.isfinite(out).all()


def test_gradients_reach_every_parameter(encoder):
    encoder.train()
    encoder(make_store().batch([0, 1, 2])).pow(2).sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())


def test_invariant_to_eigenvector_signs(encoder):
    batch = make_store().batch([0, 1, 2])
    reference = encoder(batch)
    batch.pe = random_sign_flip(batch.pe, batch.batch, torch.Generator().manual_seed(3))
    torch.testing.assert_close(encoder(batch), reference)


def test_invariant_to_the_order_of_atoms(encoder):
    store = make_store()
    batch = store.batch([2])
    reference = encoder(batch)
    n = batch.z.numel()
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(0))  # new position -> old atom
    new_index_of_old = torch.empty_like(permutation)
    new_index_of_old[permutation] = torch.arange(n)
    batch.z = batch.z[permutation]
    batch.pe = batch.pe[permutation]
    batch.edge_index = new_index_of_old[batch.edge_index]
    torch.testing.assert_close(encoder(batch), reference, atol=1e-5, rtol=1e-5)


def test_batching_does_not_change_a_crystal_embedding(encoder):
    store = make_store()
    together = encoder(store.batch([0, 2]))
    torch.testing.assert_close(together[0], encoder(store.batch([0]))[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together[1], encoder(store.batch([2]))[0], atol=1e-5, rtol=1e-5)


def test_pooling_equals_pytorch_geometric_global_pools():
    from torch_geometric.nn import global_max_pool, global_mean_pool

    generator = torch.Generator().manual_seed(0)
    nodes = torch.randn(40, 8, generator=generator)
    graph = torch.sort(torch.randint(0, 6, (40,), generator=generator)).values
    graph[graph == 2] = 3  # graph 2 and graph 6 have no nodes
    mean, maximum = mean_and_max_pool(nodes, graph, 7)
    assert torch.equal(mean, global_mean_pool(nodes, graph, size=7))
    assert torch.equal(maximum, global_max_pool(nodes, graph, size=7))
    assert mean[2].abs().sum() == 0 and maximum[6].abs().sum() == 0
