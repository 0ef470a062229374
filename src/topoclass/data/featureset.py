"""The featurized dataset: every sample as rows of preloaded tensors.

Nothing is computed per sample at training time: a batch is a set of row
indices sliced out of these tensors (and out of the packed graph store for
samples that have a structure).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from topoclass.config import TaskConfig
from topoclass.features.composition import NUM_FORMULA_FACTS
from topoclass.tasks import task_type

if TYPE_CHECKING:
    from topoclass.features.embedding_store import EmbeddingStore
    from topoclass.features.graph_store import GraphStore


@dataclass
class FeatureSet:
    """Preloaded features and labels of N materials for T tasks."""

    ids: list[str]
    formulas: list[str]
    tasks: list[TaskConfig]
    element_index: torch.Tensor  # [N, E] atomic numbers, 0 = padding
    element_fraction: torch.Tensor  # [N, E]
    descriptors: torch.Tensor  # [N, D] whole-material facts (counts, electron parity, band filling)
    spacegroup: torch.Tensor  # [N] 1..230
    labels: torch.Tensor  # [N, T] class index or value; NaN = missing
    graph_index: torch.Tensor  # [N] row in `graphs`, -1 = no structure
    # The structures: crystal graphs, or a frozen backbone's vectors (model.structure_encoder).
    graphs: GraphStore | EmbeddingStore | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_structures(self) -> bool:
        return self.graphs is not None and bool((self.graph_index >= 0).any())

    def subset(self, rows: torch.Tensor) -> FeatureSet:
        """The materials at ``rows``, in that order (the graph store is shared, not copied)."""
        index = rows.tolist()
        return FeatureSet(
            ids=[self.ids[i] for i in index],
            formulas=[self.formulas[i] for i in index],
            tasks=self.tasks,
            element_index=self.element_index[rows],
            element_fraction=self.element_fraction[rows],
            descriptors=self.descriptors[rows],
            spacegroup=self.spacegroup[rows],
            labels=self.labels[rows],
            graph_index=self.graph_index[rows],
            graphs=self.graphs,
        )

    def atoms(self) -> torch.Tensor:
        """Atoms in each material's crystal graph, [N] (0 without a structure)."""
        if self.graphs is None:
            return torch.zeros(len(self), dtype=torch.long)
        counts = self.graphs.node_ptr.diff()
        return torch.where(self.graph_index >= 0, counts[self.graph_index.clamp_min(0)], 0)

    def batch(self, rows: torch.Tensor, *, with_graphs: bool) -> dict[str, Any]:
        """Slice one mini-batch; graphs only for rows that have a structure."""
        element_index = self.element_index[rows]
        # Element slots are padded to the dataset's widest formula; a batch needs only its own widest.
        width = max(1, int((element_index > 0).sum(dim=1).max())) if len(rows) else 1
        batch: dict[str, Any] = {
            "element_index": element_index[:, :width],
            "element_fraction": self.element_fraction[rows, :width],
            "descriptors": self.descriptors_read(rows, with_graphs=with_graphs),
            "spacegroup": self.spacegroup[rows],
            "labels": self.labels[rows],
        }
        if with_graphs and self.graphs is not None:
            graph_rows = self.graph_index[rows]
            present = torch.nonzero(graph_rows >= 0).squeeze(1)
            if len(present) > 0:
                batch["graph"] = self.graphs.batch(graph_rows[present].tolist())
                batch["graph_rows"] = present
        return batch

    def descriptors_read(self, rows: torch.Tensor, *, with_graphs: bool) -> torch.Tensor:
        """The descriptors a model (neural or trees) reads: [B, D], plus a flag column with graphs.

        The band-filling facts assume the smallest plausible cell. Where a structure gives
        the real cell, its electron count reaches the model as cell facts and the
        assumption would only contradict it (for about one material in five), so there
        they are zeroed; the flag marks the materials that keep them.
        """
        descriptors = self.descriptors[rows]
        if not with_graphs:
            return descriptors
        assumed = (self.graph_index[rows] < 0) | (self.graphs is None)
        flag = assumed.to(descriptors.dtype).unsqueeze(1)
        return torch.cat(
            [descriptors[:, :NUM_FORMULA_FACTS], descriptors[:, NUM_FORMULA_FACTS:] * flag, flag], dim=1
        )

    @property
    def store_prefix(self) -> str:
        """The cache's name prefix of the structure store: ``graph`` or ``embedding``."""
        return "graph" if self.graphs is None or hasattr(self.graphs, "edge_ptr") else "embedding"

    def tensors(self, *, with_graphs: bool = True) -> dict[str, torch.Tensor]:
        """Flat tensor dict for the cache (the structure store's prefixed with :attr:`store_prefix`,
        unless left out)."""
        out = {
            "element_index": self.element_index,
            "element_fraction": self.element_fraction,
            "descriptors": self.descriptors,
            "spacegroup": self.spacegroup,
            "labels": self.labels,
            "graph_index": self.graph_index,
        }
        if with_graphs and self.graphs is not None:
            out.update({f"{self.store_prefix}.{k}": v for k, v in self.graphs.to_tensors().items()})
        return out


def encode_labels(labels: list[dict[str, Any]], tasks: list[TaskConfig]) -> torch.Tensor:
    """Canonical label dicts -> [N, T] float tensor (class index or value, NaN if missing)."""
    out = np.full((len(labels), len(tasks)), math.nan, dtype=np.float32)
    for col, task in enumerate(tasks):
        kind = task_type(task)
        for row, record in enumerate(labels):
            value = record.get(task.label_column)
            if value is not None:
                out[row, col] = kind.encode(task, value)
    return torch.from_numpy(out)
