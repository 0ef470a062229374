"""The features of N materials as NumPy arrays: what the feature builder produces.

Training wraps them as tensors without copying (:meth:`FeatureSet.from_arrays
<topoclass.data.featureset.FeatureSet.from_arrays>`); prediction without PyTorch reads
them as they are. The model's inputs for a set of rows are laid out here once, for both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from topoclass.config import TaskConfig
from topoclass.features.composition import NUM_FORMULA_FACTS
from topoclass.tasks import task_type


@dataclass
class FeatureArrays:
    """Features and labels of N materials for T tasks (the arrays of a FeatureSet)."""

    ids: list[str]
    formulas: list[str]
    tasks: list[TaskConfig]
    element_index: np.ndarray  # int64 [N, E] atomic numbers, 0 = padding
    element_fraction: np.ndarray  # float32 [N, E]
    descriptors: np.ndarray  # float32 [N, D] whole-material facts (counts, electron parity, band filling)
    spacegroup: np.ndarray  # int64 [N] 1..230
    labels: np.ndarray  # float32 [N, T] class index or value; NaN = missing
    graph_index: np.ndarray  # int64 [N] row in `graphs`, -1 = no structure
    graphs: Any = None  # the crystal graphs (a GraphStore or PackedGraphs), or None

    def __len__(self) -> int:
        return len(self.ids)

    def atoms(self) -> np.ndarray:
        """Atoms in each material's crystal graph, [N] int64 (0 without a structure)."""
        if self.graphs is None:
            return np.zeros(len(self), dtype=np.int64)
        counts = np.diff(np.asarray(self.graphs.node_ptr))
        return np.where(self.graph_index >= 0, counts[np.clip(self.graph_index, 0, None)], 0)

    def descriptors_read(self, rows: np.ndarray, *, with_graphs: bool) -> np.ndarray:
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
        flag = assumed.astype(descriptors.dtype)[:, None]
        return np.concatenate(
            [descriptors[:, :NUM_FORMULA_FACTS], descriptors[:, NUM_FORMULA_FACTS:] * flag, flag], axis=1
        )

    def formula_inputs(self, rows: np.ndarray, *, with_graphs: bool) -> dict[str, np.ndarray]:
        """The composition and symmetry inputs of ``rows``. Element slots are padded to the
        dataset's widest formula; a batch needs only its own widest."""
        element_index = self.element_index[rows]
        width = max(1, int((element_index > 0).sum(axis=1).max())) if len(rows) else 1
        return {
            "element_index": element_index[:, :width],
            "element_fraction": self.element_fraction[rows, :width],
            "descriptors": self.descriptors_read(rows, with_graphs=with_graphs),
            "spacegroup": self.spacegroup[rows],
        }


def encode_labels(labels: list[dict[str, Any]], tasks: list[TaskConfig]) -> np.ndarray:
    """Canonical label dicts -> [N, T] float32 (class index or value, NaN if missing)."""
    out = np.full((len(labels), len(tasks)), math.nan, dtype=np.float32)
    for col, task in enumerate(tasks):
        kind = task_type(task)
        for row, record in enumerate(labels):
            value = record.get(task.label_column)
            if value is not None:
                out[row, col] = kind.encode(task, value)
    return out
