"""The multitask model: modality encoders, a fusion block, one head per task.

Fusion attends over whichever modality embeddings a material has; a missing
modality (no structure) is masked out of the attention, never zero-filled as if
it were real data.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from topoclass.config import GraphConfig, ModelConfig, TaskConfig
from topoclass.features.composition import NUM_DESCRIPTORS
from topoclass.model.backbones import backbone_module, pretrained_element_vectors
from topoclass.model.encoders import CompositionEncoder, SymmetryEncoder, mlp
from topoclass.model.heads import TaskHeads
from topoclass.model.structure_encoder import StructureEncoder
from topoclass.model.vector_encoder import VectorStructureEncoder

MODALITIES = ("composition", "symmetry", "structure")


class MultitaskModel(nn.Module):
    """Predicts every task from composition, symmetry and (optionally) the crystal graph."""

    def __init__(
        self,
        config: ModelConfig,
        tasks: list[TaskConfig],
        *,
        use_structure: bool,
        graph: GraphConfig | None = None,
    ) -> None:
        super().__init__()
        self.task_names = [task.name for task in tasks]
        hidden = config.hidden_dim
        self.composition = CompositionEncoder(
            config.element_embedding_dim,
            hidden,
            config.composition_heads,
            config.dropout,
            # With structures, a flag says whose band-filling facts are assumed (FeatureSet.descriptors_read).
            num_descriptors=NUM_DESCRIPTORS + int(use_structure),
            pretrained_elements=pretrained_element_vectors(config.element_vectors),
        )
        self.symmetry = SymmetryEncoder(config.spacegroup_embedding_dim, hidden, config.dropout)
        self.structure: nn.Module | None = None
        # A backbone fine-tuned end to end (model.backbone_lr); while not ``backbone_live`` the
        # structure token reads the frozen vectors cached at featurization instead (warm-up).
        self.backbone: nn.Module | None = None
        self.backbone_live = False
        if use_structure:
            if graph is None:
                raise ValueError("a structure model needs the graph settings it was featurized with")
            context_dim = self.symmetry.spacegroup_facts.shape[1]
            if config.structure_encoder == "cgconv":
                self.structure = StructureEncoder(
                    hidden_dim=hidden,
                    num_layers=config.graph_layers,
                    num_rbf=graph.num_rbf,
                    cutoff=graph.cutoff,
                    spectral_k=graph.spectral_k,
                    dropout=config.dropout,
                    context_dim=context_dim,
                )
            else:  # a frozen backbone's vectors, computed at featurization
                module = backbone_module(config.structure_encoder)
                self.structure = VectorStructureEncoder(module.WIDTH, hidden, config.dropout, context_dim)
                if config.backbone_lr is not None:
                    self.backbone = module.Trainable()
        self.modality_embedding = nn.Parameter(torch.zeros(len(MODALITIES), hidden))
        self.fusion = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(
                hidden,
                config.composition_heads,
                dim_feedforward=2 * hidden,
                dropout=config.dropout,
                batch_first=True,
            ),
            num_layers=config.fusion_layers,
            enable_nested_tensor=False,
        )
        self.readout = mlp(hidden, hidden, hidden, config.dropout)
        self.heads = TaskHeads(tasks, hidden, config.dropout)

    def embed(self, batch: dict[str, Any]) -> torch.Tensor:
        """Fused material embeddings [B, hidden]."""
        tokens = [
            self.composition(batch["element_index"], batch["element_fraction"], batch["descriptors"]),
            self.symmetry(batch["spacegroup"]),
        ]
        size = tokens[0].shape[0]
        present = [torch.ones(size, dtype=torch.bool, device=tokens[0].device)] * 2
        if self.structure is not None:
            structure_token = tokens[0].new_zeros(tokens[0].shape)
            has_graph = torch.zeros(size, dtype=torch.bool, device=tokens[0].device)
            if batch.get("graph") is not None:
                rows = batch["graph_rows"]
                context = self.symmetry.spacegroup_facts[batch["spacegroup"][rows]]
                graph = batch["graph"]
                if self.backbone is not None and self.backbone_live:
                    graph = dataclasses.replace(graph, vectors=self.backbone(graph))
                structure_token = structure_token.index_put((rows,), self.structure(graph, context))
                has_graph[rows] = True
            tokens.append(structure_token)
            present.append(has_graph)
        stacked = torch.stack(tokens, dim=1) + self.modality_embedding[: len(tokens)]
        mask = torch.stack(present, dim=1)
        fused = self.fusion(stacked, src_key_padding_mask=~mask)
        weights = mask.float() / mask.float().sum(dim=1, keepdim=True)
        return self.readout(torch.einsum("bm,bmh->bh", weights, fused))

    def parameter_groups(self, lr: float, backbone_lr: float | None) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: the backbone's at its own rate. ``lr_factor`` (the
        backbone's rate over the others') lets the schedule move both together."""
        if self.backbone is None or backbone_lr is None:
            return [{"params": list(self.parameters())}]
        own = {id(p) for p in self.backbone.parameters()}
        return [
            {"params": [p for p in self.parameters() if id(p) not in own]},
            {"params": list(self.backbone.parameters()), "lr": backbone_lr, "lr_factor": backbone_lr / lr},
        ]

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Raw outputs per task: logits [B, C] or regression values [B]."""
        embedding = self.embed(batch)
        outputs = {}
        for name in self.task_names:
            out = self.heads[name](embedding)
            outputs[name] = out.squeeze(-1) if out.shape[-1] == 1 else out
        return outputs
