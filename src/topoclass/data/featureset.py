"""The featurized dataset: every sample as rows of preloaded tensors.

Nothing is computed per sample at training time: a batch is a set of row
indices sliced out of these tensors (and out of the packed graph store for
samples that have a structure).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from topoclass.config import TaskConfig
from topoclass.data.arrays import FeatureArrays

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

    @classmethod
    def from_arrays(cls, arrays: FeatureArrays) -> FeatureSet:
        """The builder's arrays as tensors that share their memory (no copy)."""
        return cls(
            ids=arrays.ids,
            formulas=arrays.formulas,
            tasks=arrays.tasks,
            element_index=torch.from_numpy(arrays.element_index),
            element_fraction=torch.from_numpy(arrays.element_fraction),
            descriptors=torch.from_numpy(arrays.descriptors),
            spacegroup=torch.from_numpy(arrays.spacegroup),
            labels=torch.from_numpy(arrays.labels),
            graph_index=torch.from_numpy(arrays.graph_index),
            graphs=arrays.graphs,
        )

    def arrays(self) -> FeatureArrays:
        """The same features as NumPy arrays that share their memory (no copy)."""
        return FeatureArrays(
            ids=self.ids,
            formulas=self.formulas,
            tasks=self.tasks,
            element_index=self.element_index.numpy(),
            element_fraction=self.element_fraction.numpy(),
            descriptors=self.descriptors.numpy(),
            spacegroup=self.spacegroup.numpy(),
            labels=self.labels.numpy(),
            graph_index=self.graph_index.numpy(),
            graphs=self.graphs,
        )

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
        return torch.from_numpy(self.arrays().atoms())

    def batch(self, rows: torch.Tensor, *, with_graphs: bool) -> dict[str, Any]:
        """Slice one mini-batch; graphs only for rows that have a structure."""
        inputs = self.arrays().formula_inputs(rows.numpy(), with_graphs=with_graphs)
        batch: dict[str, Any] = {name: torch.from_numpy(value) for name, value in inputs.items()}
        batch["labels"] = self.labels[rows]
        if with_graphs and self.graphs is not None:
            graph_rows = self.graph_index[rows]
            present = torch.nonzero(graph_rows >= 0).squeeze(1)
            if len(present) > 0:
                batch["graph"] = self.graphs.batch(graph_rows[present].tolist())
                batch["graph_rows"] = present
        return batch

    def descriptors_read(self, rows: torch.Tensor, *, with_graphs: bool) -> torch.Tensor:
        """:meth:`FeatureArrays.descriptors_read` as a tensor."""
        return torch.from_numpy(self.arrays().descriptors_read(rows.numpy(), with_graphs=with_graphs))

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
