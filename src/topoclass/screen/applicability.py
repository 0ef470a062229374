"""Where a model's answers can be trusted: flags for materials unlike the ones it was trained on.

Three flags, each a column of the screen's output (the rows are answered all the same):

- ``unknown_elements``: elements no training material had; the model never learned them.
- ``out_of_distribution``: the material's feature vector (composition fractions, the
  standardized whole-material descriptors and the crystal system) lies farther from its
  nearest training material than ``percentile`` % of validation materials do from theirs.
  Validation is split from training by formula, so that is how far a genuinely new but
  ordinary material lies. The feature vector, not the network's internal representation,
  is used so that the flags do not depend on how the network is run.
- ``oversize``: more atoms in the cell than any training structure had.

Fitting needs the training data once; the result is a small file beside the model
(``RunLayout.applicability_file``), which bundled models ship.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from topoclass.app.predict import TrainedRun
from topoclass.data.arrays import FeatureArrays
from topoclass.data.split import load_split
from topoclass.errors import TopoclassError, WriteError
from topoclass.files import atomic_write

logger = logging.getLogger(__name__)

MAX_Z = 118
REFERENCE_SIZE = 2048  # training materials kept as neighbours: enough for a stable threshold, small on disk
PERCENTILE = 99.0
# Lower bounds of the crystal systems' space-group numbers (triclinic .. cubic).
_CRYSTAL_SYSTEM_STARTS = np.array([1, 3, 16, 75, 143, 168, 195])


@dataclass
class Applicability:
    """The training set's elements, a sample of its feature vectors and the distance threshold."""

    elements: np.ndarray  # [MAX_Z + 1] bool: seen in training
    reference: np.ndarray  # [R, D] float32 feature vectors of training materials
    mean: np.ndarray  # [descriptors] for standardizing
    scale: np.ndarray
    threshold: float  # nearest-reference distance above which a material is out of distribution
    percentile: float
    max_atoms: int  # the largest training cell

    def vectors(self, features: FeatureArrays) -> np.ndarray:
        """Feature vectors [N, D] of ``features``' materials."""
        return feature_vectors(features, self.mean, self.scale)

    def flags(self, features: FeatureArrays, atoms: np.ndarray) -> dict[str, np.ndarray]:
        """Per material: unknown elements (text), nearest-training distance, and the three flags."""
        index = features.element_index
        unseen = (index > 0) & ~self.elements[index]
        unknown = np.array(
            [",".join(_symbols(row[mask])) for row, mask in zip(index, unseen, strict=True)], dtype=object
        )
        distance = nearest_distance(self.vectors(features), self.reference)
        return {
            "unknown_elements": unknown,
            "nearest_train_distance": distance.astype(np.float32),
            "out_of_distribution": distance > self.threshold,
            "oversize": atoms > self.max_atoms,
        }

    def save(self, path: Path) -> None:
        from safetensors.numpy import save

        tensors: dict[str, np.ndarray] = {
            "elements": self.elements.astype(np.uint8),
            "reference": self.reference.astype(np.float16),  # half the size; distances need no more
            "mean": self.mean.astype(np.float32),
            "scale": self.scale.astype(np.float32),
        }
        meta = {"threshold": self.threshold, "percentile": self.percentile, "max_atoms": self.max_atoms}
        atomic_write(path, save(tensors, metadata={"applicability": json.dumps(meta, sort_keys=True)}))

    @classmethod
    def load(cls, path: Path) -> Applicability:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            meta = json.loads((handle.metadata() or {})["applicability"])
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118  # not a dict
        return cls(
            elements=tensors["elements"].astype(bool),
            reference=tensors["reference"].astype(np.float32),
            mean=tensors["mean"],
            scale=tensors["scale"],
            threshold=float(meta["threshold"]),
            percentile=float(meta["percentile"]),
            max_atoms=int(meta["max_atoms"]),
        )


def fit_applicability(
    features: FeatureArrays,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    *,
    percentile: float = PERCENTILE,
    reference_size: int = REFERENCE_SIZE,
    seed: int = 0,
) -> Applicability:
    """Fit the flags on a run's training rows, the threshold on its validation rows."""
    train_index = features.element_index[train_rows]
    elements = np.zeros(MAX_Z + 1, dtype=bool)
    elements[np.unique(train_index)] = True
    elements[0] = False  # padding
    descriptors = features.descriptors[train_rows].astype(np.float64)
    mean, scale = descriptors.mean(axis=0), descriptors.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(train_rows), size=min(reference_size, len(train_rows)), replace=False))
    vectors = feature_vectors(features, mean, scale)
    reference = vectors[np.asarray(train_rows)[sample]]
    distances = nearest_distance(vectors[np.asarray(val_rows)], reference)
    threshold = float(np.percentile(distances, percentile)) if len(distances) else float("inf")
    atoms = features.atoms()[train_rows]
    return Applicability(
        elements, reference, mean, scale, threshold, percentile, int(atoms.max(initial=0)) or 2**31 - 1
    )


def applicability_for(run: TrainedRun) -> Applicability | None:
    """The run's applicability file, fitted and saved first if it has none (once: it needs the
    training data). None, with a warning, when the data to fit it cannot be read."""
    path = run.layout.applicability_file()
    if path.is_file():
        return Applicability.load(path)
    logger.info("Fitting the applicability flags of %s on its training data (once)", run.layout.root)
    from topoclass.app.prepare import make_split, prepare_data  # the training path: PyTorch

    try:
        prepared = prepare_data(run.config)
        split_file = run.layout.split_file()
        if split_file.is_file():
            split = load_split(split_file, prepared.features.ids)
        else:
            split = make_split(run.config, prepared)
    except TopoclassError as error:
        logger.warning("No applicability flags (the training data is needed once to fit them): %s", error)
        return None
    fitted = fit_applicability(prepared.features.arrays(), split["train"], split["val"])
    try:
        fitted.save(path)
    except WriteError as error:
        logger.warning("The applicability flags could not be saved beside the model (%s)", error.reason)
    return fitted


def feature_vectors(features: FeatureArrays, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Composition fractions [119], standardized descriptors scaled to a comparable weight, and the
    crystal system one-hot (halved: a different system alone is not a different material)."""
    index = features.element_index
    fraction = features.element_fraction
    composition = np.zeros((len(index), MAX_Z + 1), dtype=np.float32)
    np.add.at(composition, (np.arange(len(index))[:, None], index), fraction)
    composition[:, 0] = 0.0
    descriptors = (features.descriptors - mean) / scale / np.sqrt(max(len(mean), 1))
    system = np.searchsorted(_CRYSTAL_SYSTEM_STARTS, features.spacegroup, side="right") - 1
    crystal = np.eye(len(_CRYSTAL_SYSTEM_STARTS), dtype=np.float32)[system] * 0.5
    return np.hstack([composition, descriptors.astype(np.float32), crystal]).astype(np.float32)


def nearest_distance(vectors: np.ndarray, reference: np.ndarray, block: int = 1024) -> np.ndarray:
    """Euclidean distance from each row of ``vectors`` to its nearest row of ``reference``.

    Brute force in blocks: a few thousand references make it one matrix product per chunk,
    faster than building a tree for it.
    """
    if len(reference) == 0:
        return np.full(len(vectors), np.inf)
    vectors, reference = vectors.astype(np.float64), reference.astype(np.float64)  # no rounding noise at 0
    squared = (reference * reference).sum(axis=1)
    out = np.empty(len(vectors))
    for start in range(0, len(vectors), block):
        part = vectors[start : start + block]
        d2 = (part * part).sum(axis=1)[:, None] + squared[None, :] - 2.0 * part @ reference.T
        out[start : start + block] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out


def _symbols(numbers: np.ndarray) -> list[str]:
    from pymatgen.core import Element

    return [Element.from_Z(int(z)).symbol for z in numbers]
