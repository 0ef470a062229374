"""Crystal-graph encoder: element embeddings plus sign-invariant Laplacian encodings, CGCNN layers."""

from __future__ import annotations

import torch
from torch import nn

from topoclass.features.graph import NUM_CELL_FACTS, cell_facts, gaussian_rbf, nodes_per_graph
from topoclass.features.graph_store import GraphBatch
from topoclass.model.crystal_conv import CrystalGraphConv


class SignInvariantPositionalEncoding(nn.Module):
    """Laplacian eigenvectors to node features, unchanged when any eigenvector flips sign.

    Each eigenvector entry ``v`` goes through ``phi(v, lambda) + phi(-v, lambda)`` (SignNet's
    construction, applied entrywise), masked channels are zeroed, and ``rho`` mixes the k
    channels. Entries are scaled by sqrt(graph size) so a unit eigenvector's entries are of
    order one in every crystal. Rotations inside a degenerate eigenspace are not
    neutralized; the eigenvalues passed alongside let the model learn how far to trust them.
    """

    def __init__(self, spectral_k: int, hidden_dim: int, phi_dim: int = 16) -> None:
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(2, phi_dim), nn.SiLU(), nn.Linear(phi_dim, phi_dim))
        self.rho = nn.Linear(spectral_k * phi_dim, hidden_dim)

    def forward(
        self, pe: torch.Tensor, eigenvalues: torch.Tensor, mask: torch.Tensor, batch: torch.Tensor
    ) -> torch.Tensor:
        sizes = nodes_per_graph(batch, eigenvalues.shape[0]).to(pe.dtype)
        scaled = pe * sizes.sqrt()[batch].unsqueeze(1)
        values = eigenvalues[batch].to(pe.dtype)
        plus = self.phi(torch.stack([scaled, values], dim=-1))
        minus = self.phi(torch.stack([-scaled, values], dim=-1))
        channels = (plus + minus) * mask[batch].unsqueeze(-1).to(pe.dtype)
        return self.rho(channels.flatten(1))


class StructureEncoder(nn.Module):
    """One embedding [hidden_dim] per crystal from its graph (a batch from ``GraphStore.batch``)."""

    def __init__(
        self,
        hidden_dim: int,
        num_layers: int,
        num_rbf: int,
        cutoff: float,
        spectral_k: int,
        dropout: float,
        num_elements: int = 119,
        context_dim: int = 0,
    ) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.num_rbf = num_rbf
        self.element_embedding = nn.Embedding(num_elements, hidden_dim)
        self.positional = SignInvariantPositionalEncoding(spectral_k, hidden_dim)
        # Per-node LayerNorm rather than BatchNorm: a crystal's embedding must not depend on
        # which other crystals share its batch.
        self.convolutions = nn.ModuleList(CrystalGraphConv(hidden_dim, num_rbf) for _ in range(num_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_dim) for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        self.readout = nn.Sequential(
            nn.Linear(2 * hidden_dim + NUM_CELL_FACTS + context_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
        )

    def forward(self, batch: GraphBatch, context: torch.Tensor | None = None) -> torch.Tensor:
        """Crystal embeddings [num_graphs, hidden_dim].

        ``context`` [num_graphs, context_dim] joins the cell facts at the readout: the space
        group's facts, because whether a filling can be insulating depends on the symmetry
        (nonsymmorphic groups force bands to stick together in sets of two or four).
        """
        nodes = self.element_embedding(batch.z) + self.positional(
            batch.pe, batch.eigenvalues, batch.eigenvalue_mask, batch.batch
        )
        edge_features = gaussian_rbf(batch.edge_distance, cutoff=self.cutoff, num_rbf=self.num_rbf)
        for convolution, norm in zip(self.convolutions, self.norms, strict=True):
            update = convolution(nodes, batch.edge_index, edge_features)
            nodes = norm(nodes + self.dropout(update))
        num_graphs = batch.num_graphs
        pooled = torch.cat(
            [
                *mean_and_max_pool(nodes, batch.batch, num_graphs),
                cell_facts(batch.z, batch.batch, num_graphs).to(nodes.dtype),
                *([] if context is None else [context.to(nodes.dtype)]),
            ],
            dim=1,
        )
        return self.readout(pooled)


def mean_and_max_pool(
    nodes: torch.Tensor, graph: torch.Tensor, num_graphs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each graph's mean and maximum of its nodes' features [num_graphs, features] (``graph``: the
    graph of each node); a graph without nodes gets zeros."""
    index = graph.unsqueeze(1).expand_as(nodes)
    shape = (num_graphs, nodes.shape[1])
    sums = nodes.new_zeros(shape).scatter_add_(0, index, nodes)
    counts = nodes_per_graph(graph, num_graphs).clamp_min(1).to(nodes.dtype).unsqueeze(1)
    maxima = nodes.new_zeros(shape).scatter_reduce_(0, index, nodes, "amax", include_self=False)
    return sums / counts, maxima
