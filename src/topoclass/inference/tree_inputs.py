"""What the gradient-boosted trees read: the network's inputs flattened into one vector per material.

Element fractions, fraction-weighted statistics of element properties, the formula and
band-filling facts, and the space group's number and derived facts; for runs with crystal
structures also the cell facts the structure encoder is given (electrons per cell modulo 2,
4 and 8, atoms per cell), so trees know as much about band filling as the network is told.
"""

from __future__ import annotations

import numpy as np

from topoclass.data.arrays import FeatureArrays
from topoclass.features.composition import MAX_Z, element_property_table
from topoclass.features.graph import NUM_CELL_FACTS
from topoclass.features.symmetry import spacegroup_features


def baseline_features(features: FeatureArrays, *, use_structure: bool = False) -> np.ndarray:
    """Fixed-length descriptor per material, [N, D]: what the neural encoders see, flattened."""
    index = features.element_index
    fraction = features.element_fraction.astype(np.float64)
    n = len(index)
    fractions = np.zeros((n, MAX_Z + 1))
    np.add.at(fractions, (np.arange(n)[:, None], index), fraction)
    props = element_property_table()[index]  # [N, E, P]
    present = (index > 0)[..., None]
    weighted_mean = np.einsum("ne,nep->np", fraction, props)
    spread = np.sqrt(np.einsum("ne,nep->np", fraction, (props - weighted_mean[:, None, :]) ** 2))
    largest = np.where(present, props, -np.inf).max(axis=1)
    smallest = np.where(present, props, np.inf).min(axis=1)
    spacegroup = features.spacegroup
    return np.hstack(
        [
            fractions[:, 1:],
            weighted_mean,
            spread,
            largest,
            smallest,
            largest - smallest,
            features.descriptors_read(np.arange(n), with_graphs=use_structure),
            spacegroup[:, None],
            spacegroup_features(spacegroup),
        ]
    ).astype(np.float32)


def tree_inputs(features: FeatureArrays, *, use_structure: bool, with_cell_facts: bool) -> np.ndarray:
    """What the trees read: the network's inputs flattened, plus the cell facts when asked."""
    x = baseline_features(features, use_structure=use_structure)
    if with_cell_facts:
        x = np.hstack([x, cell_fact_features(features)]).astype(np.float32)
    return x


def cell_fact_features(features: FeatureArrays) -> np.ndarray:
    """The structure encoder's cell facts per material, [N, NUM_CELL_FACTS]; NaN without a structure
    (the trees treat NaN as missing), also for materials predicted from formula and space group."""
    if features.graphs is None:
        return np.full((len(features), NUM_CELL_FACTS), np.nan, dtype=np.float32)
    facts = np.asarray(features.graphs.cell_facts())
    row = features.graph_index
    return np.where((row >= 0)[:, None], facts[np.clip(row, 0, None)], np.nan)
