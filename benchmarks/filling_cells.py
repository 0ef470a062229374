"""How often is the cell the band-filling facts assume the real one?

A formula does not give the number of formula units per primitive cell; the
filling facts assume the smallest one whose atoms all fit on the space group's
Wyckoff positions. On a dataset with crystal structures the real cell is known,
so this compares the two for every material: the assumed cell should match
often and must never be larger than the real one.

Usage: ``python benchmarks/filling_cells.py [--data-dir DIR] [--dataset tqc2020]``
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

import numpy as np
from pymatgen.core import Composition

from topoclass.config import DataConfig
from topoclass.data.build import prepare_dataset
from topoclass.features.filling import filling_facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("TOPOCLASS_DATA_DIR"))
    parser.add_argument("--dataset", default="tqc2020")
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("give --data-dir or set TOPOCLASS_DATA_DIR")
    data = DataConfig(dataset=args.dataset, data_dir=args.data_dir, use_structure=True)
    features = prepare_dataset(data).features
    if features.graphs is None:
        sys.exit(f"{args.dataset} has no crystal structures")
    rows = np.flatnonzero(features.graph_index.numpy() >= 0)
    atoms_per_cell = features.graphs.node_ptr.diff().numpy()[features.graph_index.numpy()[rows]]
    formulas = [features.formulas[i] for i in rows]
    real = atoms_per_cell / np.array([Composition(f).reduced_composition.num_atoms for f in formulas])
    assumed = np.rint(2.0 ** filling_facts(formulas, features.spacegroup.numpy()[rows])[:, 0])
    ratio = Counter(np.round(real / assumed, 2).tolist())
    print(f"{args.dataset}: {len(rows)} materials with a structure")
    print(f"assumed cell is the real one: {np.mean(assumed == real):.1%}")
    print(f"assumed cell larger than the real one: {np.sum(assumed > real)}")
    print("real / assumed formula units:", ", ".join(f"{k:g}: {v}" for k, v in sorted(ratio.items())[:8]))


if __name__ == "__main__":
    main()
