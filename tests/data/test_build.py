import dataclasses

import numpy as np
from pymatgen.core import Lattice, Structure

from topoclass.config import GraphConfig
from topoclass.data.build import attach_structures
from topoclass.data.records import Material, StructureRef


def rock_salt_poscar() -> StructureRef:
    structure = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    return StructureRef(text=structure.to(fmt="poscar"), format="poscar")


def test_given_space_groups_are_kept_and_missing_ones_derived():
    ref = rock_salt_poscar()
    materials = [
        Material("derived", "", None, structure=ref),
        Material("declared", "", 216, structure=ref),  # the user's own value wins over the search
        Material("no-structure", "Bi2Se3", 166),
        Material("bad", "", None, structure=StructureRef(text="not a structure", format="poscar")),
    ]
    result = attach_structures(materials, GraphConfig(), workers=1, use_structure=True)
    by_id = {m.id: (m, row) for m, row in zip(result.materials, result.graph_rows, strict=True)}
    assert by_id["derived"][0].spacegroup == 225 and by_id["derived"][0].formula == "NaCl"
    assert by_id["declared"][0].spacegroup == 216 and by_id["declared"][0].formula == "NaCl"
    assert by_id["no-structure"][1] == -1 and by_id["no-structure"][0].spacegroup == 166
    assert [r.id for r in result.rejects] == ["bad"] and result.graphs is not None and len(result.graphs) == 2


def test_a_formula_only_run_reads_structures_only_to_derive_formula_or_space_group(monkeypatch):
    import topoclass.features.structure_pipeline as pipeline

    read = []
    original = pipeline.featurize_structures

    def counting(refs, *args, **kwargs):
        read.extend(refs)
        assert kwargs["with_graphs"] is False  # no graph, no spectra for a run that ignores them
        return original(refs, *args, **kwargs)

    monkeypatch.setattr(pipeline, "featurize_structures", counting)
    ref = rock_salt_poscar()
    materials = [
        Material("complete", "NaCl", 225, structure=ref),  # formula and group given: never read
        Material("derived", "", None, structure=ref),
    ]
    result = attach_structures(materials, GraphConfig(), workers=1, use_structure=False)
    assert len(read) == 1 and result.graphs is None and result.graph_rows == [-1, -1]
    assert [(m.id, m.formula, m.spacegroup, m.structure) for m in result.materials] == [
        ("complete", "NaCl", 225, None),
        ("derived", "NaCl", 225, None),
    ]


def test_a_material_whose_features_are_not_finite_is_rejected_by_id(tmp_path, monkeypatch):
    import topoclass.data.build as build
    from topoclass.config import DataConfig, TaskConfig
    from topoclass.data.build import prepare_dataset

    table = tmp_path / "t.csv"
    table.write_text("id,formula,spacegroup,topo\na,NaCl,225,x\nb,KCl,225,y\nc,Bi2Se3,166,x\n")
    original = build.material_descriptors

    def poisoned(formulas, spacegroups):
        values = original(formulas, spacegroups)
        values[[i for i, f in enumerate(formulas) if f == "KCl"]] = np.nan
        return values

    monkeypatch.setattr(build, "material_descriptors", poisoned)
    config = DataConfig(
        dataset="table", table=table, tasks=[TaskConfig(name="topo")], cache_dir=tmp_path / "c"
    )
    prepared = prepare_dataset(config)
    assert prepared.features.ids == ["a", "c"]
    assert [(r.id, r.category) for r in prepared.rejects] == [("b", "non_finite_features")]
    assert prepared.counts["kept"] == 2 and prepared.counts["non_finite_features"] == 1


def test_a_material_whose_crystal_graph_is_not_finite_is_rejected_by_id(tmp_path, monkeypatch):
    import topoclass.features.structure_pipeline as pipeline
    from topoclass.config import DataConfig, TaskConfig
    from topoclass.data.build import prepare_dataset

    rows = ["id,structure,topo"]
    for name, a in (("a", 5.6), ("b", 6.3), ("c", 7.0)):
        structure = Structure.from_spacegroup(
            "Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
        )
        (tmp_path / f"{name}.vasp").write_text(structure.to(fmt="poscar"))
        rows.append(f"{name},{name}.vasp,{'xy'[name == 'b']}")
    table = tmp_path / "t.csv"
    table.write_text("\n".join(rows) + "\n")
    original = pipeline.laplacian_spectra

    def poisoned(graphs, k, **kwargs):
        spectra = original(graphs, k, **kwargs)
        return [
            # Nearest neighbours a/2 apart tell b's graph; its spectrum may be shared, so copied.
            dataclasses.replace(s, eigenvectors=np.full_like(s.eigenvectors, np.nan))
            if abs(g.edge_distance.min() - 6.3 / 2) < 0.01
            else s
            for g, s in zip(graphs, spectra, strict=True)
        ]

    monkeypatch.setattr(pipeline, "laplacian_spectra", poisoned)
    config = DataConfig(
        dataset="table",
        table=table,
        use_structure=True,
        featurize_workers=1,
        tasks=[TaskConfig(name="topo")],
        cache_dir=tmp_path / "c",
    )
    prepared = prepare_dataset(config)
    assert [(r.id, r.category) for r in prepared.rejects] == [("b", "non_finite_features")]
    assert prepared.features.ids == ["a", "c"] and prepared.counts["non_finite_features"] == 1


def test_each_space_group_search_has_its_own_cache_entry_and_spglibs_keeps_the_old_one(tmp_path, monkeypatch):
    from topoclass.config import DataConfig, TaskConfig
    from topoclass.data import cache
    from topoclass.data.build import prepare_dataset

    keyed = []
    original = cache.fingerprint

    def recording(value):
        if isinstance(value, list) and value and isinstance(value[0], dict) and "graph" in value[0]:
            keyed.append(value[0]["graph"])
        return original(value)

    monkeypatch.setattr(cache, "fingerprint", recording)
    poscar = tmp_path / "salt.vasp"
    poscar.write_text(rock_salt_poscar().text or "")
    table = tmp_path / "t.csv"
    table.write_text(f"id,structure,topo\na,{poscar},x\nb,{poscar},y\n")
    folder = tmp_path / "cache"
    entries = []
    for symmetry in ("spglib", "moyopy", "spglib"):
        config = DataConfig(
            dataset="table",
            table=table,
            tasks=[TaskConfig(name="topo")],
            cache_dir=folder,
            use_structure=True,
            graph=GraphConfig(symmetry=symmetry),
        )
        assert prepare_dataset(config).features.ids == ["a", "b"]
        entries.append(sorted(path.name for path in folder.iterdir()))
    assert len(entries[0]) == 1 and len(entries[1]) == 2 and entries[2] == entries[1]
    # spglib's key is the one releases before moyopy's wrote (no "symmetry"): their caches stay valid.
    assert "symmetry" not in keyed[0] and keyed[1]["symmetry"] == "moyopy"
