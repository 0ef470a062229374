"""Feature tables derived once from pymatgen and spglib, and shipped with topoclass.

Deriving the element property table (pymatgen's element data) and the space-group table
(spglib's database) takes about 0.3 s in every process that needs them: more than a cold
prediction of one formula spends on anything else after its imports. Reading them takes a
millisecond. Each table is written by :func:`write_tables` from the functions that derive it,
and tests/features/test_shipped_tables.py derives them again and requires the shipped copies
to be equal to the last bit; shipped, they also keep the features of a trained model the same
when a later pymatgen or spglib revises a value.

``python -m topoclass.features.shipped_tables`` rewrites them after a deliberate change.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from importlib.resources import files
from pathlib import Path

import numpy as np

ELEMENT_PROPERTIES = "element_properties.json"
SPACEGROUP_FEATURES = "spacegroup_features.json"


@cache
def shipped_table(name: str) -> np.ndarray:
    """The float32 table ``name`` as shipped (read-only: it is shared by every caller)."""
    stored = json.loads(files("topoclass.features").joinpath(name).read_text())
    table = np.asarray(stored["values"], dtype=np.float32).reshape(stored["shape"])
    table.setflags(write=False)
    return table


def derivations() -> dict[str, Callable[[], np.ndarray]]:
    """Each shipped table's name, and the function that derives it from its library."""
    from topoclass.features.composition import compute_element_property_table
    from topoclass.features.symmetry import compute_spacegroup_feature_table

    return {
        ELEMENT_PROPERTIES: compute_element_property_table,
        SPACEGROUP_FEATURES: compute_spacegroup_feature_table,
    }


def write_tables(folder: Path) -> list[Path]:
    """Derive every table and write it into ``folder`` (float32 values, exact in JSON)."""
    written = []
    for name, derive in derivations().items():
        table = np.asarray(derive(), dtype=np.float32)
        path = folder / name
        path.write_text(json.dumps({"shape": list(table.shape), "values": table.ravel().tolist()}) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_tables(Path(__file__).parent):
        print(f"wrote {path}")
