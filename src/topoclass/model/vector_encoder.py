"""Structure token from a frozen backbone's per-crystal vector (``model.structure_encoder: chgnet``)."""

from __future__ import annotations

import torch
from torch import nn

from topoclass.features.embedding_store import EmbeddingBatch
from topoclass.features.graph import NUM_CELL_FACTS


class VectorStructureEncoder(nn.Module):
    """One embedding [hidden_dim] per crystal from its backbone vector and cell facts.

    The vector's parts have different scales (features near one, energies of a few eV), so
    it is normalized per crystal first (LayerNorm: no batch statistics, so a crystal's
    embedding never depends on its batch); the cell facts and the space group's facts join
    it as in the graph encoder's readout.
    """

    def __init__(self, width: int, hidden_dim: int, dropout: float, context_dim: int = 0) -> None:
        super().__init__()
        self.normalize = nn.LayerNorm(width)
        self.project = nn.Sequential(
            nn.Linear(width + NUM_CELL_FACTS + context_dim, hidden_dim),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim),
        )

    def forward(self, batch: EmbeddingBatch, context: torch.Tensor | None = None) -> torch.Tensor:
        parts = [self.normalize(batch.vectors), batch.cell_facts.to(batch.vectors.dtype)]
        if context is not None:
            parts.append(context.to(batch.vectors.dtype))
        return self.project(torch.cat(parts, dim=1))
