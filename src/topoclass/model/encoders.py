"""Encoders for the always-available modalities: composition and symmetry.

Each encoder maps its input to one embedding of width ``hidden_dim`` per
material. Neither uses batch statistics (LayerNorm, never BatchNorm), so a
material's prediction never depends on which other materials share its batch.
"""

from __future__ import annotations

import torch
from torch import nn

from topoclass.features.composition import element_property_table
from topoclass.features.symmetry import spacegroup_feature_table


def mlp(in_dim: int, hidden_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    """Two-layer perceptron with LayerNorm and SiLU: the building block used throughout."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.LayerNorm(hidden_dim),
        nn.SiLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden_dim, out_dim),
    )


class CompositionEncoder(nn.Module):
    """Set encoder over (element, fraction) pairs: self-attention, then fraction-weighted pooling.

    An element token combines a learned embedding, the tabulated element
    properties and its fraction; attention lets elements see each other (a
    heavy p-block element next to a chalcogen matters, not each alone).
    """

    element_properties: torch.Tensor
    pretrained_elements: torch.Tensor | None

    def __init__(
        self,
        embedding_dim: int,
        hidden_dim: int,
        heads: int,
        dropout: float,
        num_descriptors: int,
        pretrained_elements: torch.Tensor | None = None,
    ) -> None:
        """``pretrained_elements`` [Z, D], row z for atomic number z (row 0 and unknown elements zero):
        a backbone's learned element vectors, kept frozen, joining each element's token."""
        super().__init__()
        table = torch.from_numpy(element_property_table().copy())
        self.register_buffer("element_properties", table)
        self.register_buffer("pretrained_elements", pretrained_elements)
        extra = 0 if pretrained_elements is None else pretrained_elements.shape[1]
        self.element_embedding = nn.Embedding(table.shape[0], embedding_dim, padding_idx=0)
        self.token = mlp(embedding_dim + table.shape[1] + 2 + extra, hidden_dim, hidden_dim, dropout)
        self.attention = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(
                hidden_dim, heads, dim_feedforward=2 * hidden_dim, dropout=dropout, batch_first=True
            ),
            num_layers=2,
            enable_nested_tensor=False,
        )
        self.gate = nn.Linear(hidden_dim, 1)
        self.summary = mlp(num_descriptors + 4 * table.shape[1], hidden_dim, hidden_dim, dropout)
        self.combine = mlp(2 * hidden_dim, hidden_dim, hidden_dim, dropout)

    def forward(
        self, element_index: torch.Tensor, element_fraction: torch.Tensor, descriptors: torch.Tensor
    ) -> torch.Tensor:
        padding = element_index == 0
        fraction = element_fraction.unsqueeze(-1)
        tokens = torch.cat(
            [
                self.element_embedding(element_index),
                self.element_properties[element_index],
                *([] if self.pretrained_elements is None else [self.pretrained_elements[element_index]]),
                fraction,
                torch.log(fraction.clamp_min(1e-4)),
            ],
            dim=-1,
        )
        hidden = self.attention(self.token(tokens), src_key_padding_mask=padding)
        # Attention pooling, biased by the log fraction so majority elements weigh more.
        scores = self.gate(hidden).squeeze(-1) + torch.log(element_fraction.clamp_min(1e-4))
        weights = torch.softmax(scores.masked_fill(padding, float("-inf")), dim=-1)
        pooled = torch.einsum("be,beh->bh", weights, hidden)
        return self.combine(
            torch.cat(
                [pooled, self.summary(self._statistics(element_index, element_fraction, descriptors))], dim=-1
            )
        )

    def _statistics(
        self, element_index: torch.Tensor, element_fraction: torch.Tensor, descriptors: torch.Tensor
    ) -> torch.Tensor:
        """Fraction-weighted mean and spread, max and min of element properties, plus formula facts.

        Attention could learn these from the tokens, but on a few thousand
        materials stating them outright trains faster and generalizes better.
        """
        props = self.element_properties[element_index]  # [B, E, P]
        present = (element_index > 0).unsqueeze(-1)
        weights = element_fraction.unsqueeze(-1)
        mean = (weights * props).sum(dim=1)
        spread = (weights * (props - mean.unsqueeze(1)) ** 2).sum(dim=1).clamp_min(1e-8).sqrt()
        largest = props.masked_fill(~present, float("-inf")).amax(dim=1)
        smallest = props.masked_fill(~present, float("inf")).amin(dim=1)
        return torch.cat([descriptors, mean, spread, largest, smallest], dim=-1)


class SymmetryEncoder(nn.Module):
    """Space-group embedding plus derived facts (crystal system, point group, inversion...)."""

    spacegroup_facts: torch.Tensor

    def __init__(self, embedding_dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        table = torch.from_numpy(spacegroup_feature_table().copy())
        self.register_buffer("spacegroup_facts", table)
        self.embedding = nn.Embedding(table.shape[0], embedding_dim)
        self.project = mlp(embedding_dim + table.shape[1], hidden_dim, hidden_dim, dropout)

    def forward(self, spacegroup: torch.Tensor) -> torch.Tensor:
        return self.project(
            torch.cat([self.embedding(spacegroup), self.spacegroup_facts[spacegroup]], dim=-1)
        )
