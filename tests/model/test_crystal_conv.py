"""The node-projection convolution computes PyTorch Geometric's CGConv, minus its built-in residual."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.nn import CGConv

from topoclass.model.crystal_conv import CrystalGraphConv


def copy_cgconv_weights(ours: CrystalGraphConv, reference: CGConv) -> None:
    """Split CGConv's maps on [x_i, x_j, e] into the centre, neighbour and edge blocks ours keeps."""
    c = ours.channels
    with torch.no_grad():
        f = reference.lin_f.weight.split([c, c, reference.lin_f.weight.shape[1] - 2 * c], dim=1)
        s = reference.lin_s.weight.split([c, c, reference.lin_s.weight.shape[1] - 2 * c], dim=1)
        ours.nodes.weight.copy_(torch.cat([f[0], s[0], f[1], s[1]], dim=0))
        ours.edges.weight.copy_(torch.cat([f[2], s[2]], dim=0))
        ours.edges.bias.copy_(torch.cat([reference.lin_f.bias, reference.lin_s.bias]))


@pytest.mark.parametrize("seed", range(5))
def test_equal_to_pyg_cgconv_without_its_residual_on_random_graphs(seed):
    generator = torch.Generator().manual_seed(seed)
    nodes, edges, channels, edge_dim = 7 + 5 * seed, 60 + 40 * seed, 16, 8
    x = torch.randn(nodes, channels, generator=generator)
    edge_index = torch.randint(0, nodes, (2, edges), generator=generator)
    edge_attr = torch.randn(edges, edge_dim, generator=generator)
    torch.manual_seed(seed)
    reference = CGConv(channels, dim=edge_dim, aggr="add", batch_norm=False)
    ours = CrystalGraphConv(channels, edge_dim)
    copy_cgconv_weights(ours, reference)
    expected = reference(x, edge_index, edge_attr) - x  # CGConv returns x + messages
    torch.testing.assert_close(ours(x, edge_index, edge_attr), expected, atol=1e-5, rtol=1e-5)


def test_isolated_nodes_receive_nothing_and_gradients_reach_every_weight():
    conv = CrystalGraphConv(4, 3)
    x = torch.randn(5, 4, requires_grad=True)
    edge_index = torch.tensor([[0, 1], [1, 0]])
    out = conv(x, edge_index, torch.randn(2, 3))
    assert torch.equal(out[2:], torch.zeros(3, 4))
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in conv.parameters())
