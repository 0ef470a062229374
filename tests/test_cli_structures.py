"""Training with crystal structures from a user's own table of CIF paths."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from tests.helpers import run_cli

pytestmark = pytest.mark.integration  # starts topoclass processes

PROTOTYPES = [  # (space group, species, fractional sites)
    ("Fm-3m", ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    ("Pm-3m", ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    ("F-43m", ["Zn", "S"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
]
CATIONS = ["Na", "K", "Rb", "Cs", "Mg", "Ca", "Sr", "Ba", "Zn", "Cd", "Hg", "Pb", "Sn", "Bi"]
ANIONS = ["Cl", "Br", "I", "S", "Se", "Te", "O"]


def write_table(folder, n=48, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        group, _, sites = PROTOTYPES[i % len(PROTOTYPES)]
        cation, anion = rng.choice(CATIONS), rng.choice(ANIONS)
        structure = Structure.from_spacegroup(
            group, Lattice.cubic(rng.uniform(4.2, 5.6)), [cation, anion], sites
        )
        path = folder / "cifs" / f"s{i}.cif"
        path.parent.mkdir(exist_ok=True)
        path.write_text(structure.to(fmt="cif"))
        heavy = cation in ("Hg", "Pb", "Sn", "Bi") or anion == "Te"
        rows.append({"id": f"s{i}", "structure": f"cifs/s{i}.cif", "topo": "TI" if heavy else "trivial"})
    (folder / "cifs" / "broken.cif").write_text("data_broken\n_cell_length_a 5\nnonsense\n")
    rows.append({"id": "broken", "structure": "cifs/broken.cif", "topo": "trivial"})
    rows.append({"id": "missing", "structure": "cifs/nowhere.cif", "topo": "trivial"})
    with (folder / "materials.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "structure", "topo"])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "materials.csv"


def test_train_on_a_table_of_cif_paths(tmp_path):
    table = write_table(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"data: {{dataset: table, table: {table}, use_structure: true,"
        " tasks: [{name: topo, classes: [trivial, TI]}], graph: {num_rbf: 8, spectral_k: 4}}\n"
        "model: {hidden_dim: 16, element_embedding_dim: 8, spacegroup_embedding_dim: 8, composition_heads: 2,"
        " graph_layers: 1, fusion_layers: 1}\n"
        "train: {epochs: 2, batch_size: 8, progress_bar: false}\n"
    )
    run = tmp_path / "run"
    result = run_cli(["train", "--config", str(config), "--run-dir", str(run)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rejects = {row["id"]: row for row in csv.DictReader((run / "rejects.csv").open())}
    assert set(rejects) == {"broken", "missing"}
    assert all(row["category"] == "bad_structure" and row["reason"] for row in rejects.values())
    assert json.loads((run / "data_report.json").read_text())["kept"] == 48
    # Formula and space group were derived from each structure.
    split = json.loads((run / "split.json").read_text())
    assert sum(len(split[name]) for name in ("train", "val", "test")) == 48
    # A structure run is measured against trees with and without the cell facts.
    evaluated = run_cli(["evaluate", str(run)], tmp_path)
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert {"network", "served", "baseline", "baseline_cell_facts"} <= set(metrics)
    assert metrics["baseline_cell_facts"]["topo"]["n"] == len(split["test"])
    # Predict from structures alone: formula and space group come from each CIF.
    new = tmp_path / "new.csv"
    new.write_text("id,structure\na,cifs/s0.cif\nb,cifs/s1.cif\nbad,cifs/broken.cif\n")
    predicted = run_cli(["predict", str(run), "--table", str(new)], tmp_path)
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    rows = list(csv.DictReader(io.StringIO(predicted.stdout)))  # progress and warnings go to stderr
    assert [row["id"] for row in rows] == ["a", "b"]
    assert rows[0]["spacegroup"] == "225" and rows[0]["formula"]
    assert "new.csv:4" in predicted.stderr
