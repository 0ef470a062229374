# %% [markdown]
# # topoclass from Python
# Cells of a notebook (open with Jupyter's jupytext, or VS Code, or run as a script).
# The bundled models need no data directory, no training and no network.

# %%
import tempfile
from pathlib import Path

from ase.io import read as ase_read
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

import topoclass as tc

print(tc.bundled_models())

# %% [markdown]
# ## From formula and space group

# %%
model = tc.load("tang2019")
table = model.predict(["Bi2Se3", "NaCl", "SnTe"], [166, 225, 225])
print(table[["formula", "spacegroup", "topological", "topo_class", "topological:p(topological)"]])

# %% [markdown]
# ## From crystal structures: a pymatgen Structure, an ASE Atoms, a CIF file

# %%
bi2se3 = Structure.from_spacegroup(
    166, Lattice.hexagonal(4.143, 28.636), ["Bi", "Se", "Se"], [[0, 0, 0.4008], [0, 0, 0], [0, 0, 0.2117]]
)
cif = Path(tempfile.mkdtemp()) / "Bi2Se3.cif"
bi2se3.to(filename=str(cif))
atoms = AseAtomsAdaptor.get_atoms(bi2se3)

structures = tc.load("tqc2020")
answers = structures.predict_structures([bi2se3, atoms, cif, ase_read(cif)])
print(answers[["id", "formula", "spacegroup", "topo_class", "topo_class:p(TI)", "topo_class:predictor"]])

# %%
# The same crystal, given four ways, gets the same answer.
columns = [c for c in answers.columns if c.startswith(("topo_class", "sub_class", "cross_type"))]
assert (answers["formula"] == "Bi2Se3").all() and (answers["spacegroup"] == 166).all()
for row in range(1, len(answers)):
    for column in columns:
        first, other = answers.at[0, column], answers.at[row, column]
        assert first == other or abs(first - other) < 1e-5, (column, first, other)
print("same answer for Structure, Atoms, CIF path and CIF read by ASE")
