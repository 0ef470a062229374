from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from topoclass.config import GraphConfig
from topoclass.data.records import StructureRef
from topoclass.features.graph import build_crystal_graph
from topoclass.features.graph_store import GraphStoreWriter
from topoclass.features.structure_pipeline import featurize_structures

GRAPH = GraphConfig()


def crystal(index: int) -> Structure:
    """Small cubic crystals of varied size: NaCl-like pairs on a scaled lattice."""
    a = 4.0 + 0.1 * index
    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def mixed_refs(tmp_path: Path) -> tuple[list[StructureRef], dict[int, str]]:
    """Good CIF files and inline POSCARs with bad ones in between; returns refs and expected failures."""
    refs: list[StructureRef] = []
    for i in range(18):
        path = tmp_path / f"good{i}.cif"
        path.write_text(str(CifWriter(crystal(i))))
        refs.append(StructureRef(path=path))
    refs.append(StructureRef(text=crystal(20).to(fmt="poscar"), format="poscar"))
    garbage = tmp_path / "garbage.cif"
    garbage.write_text("no crystal here")
    overlapping = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.02, 0, 0]])
    bad = {
        5: StructureRef(path=garbage),
        9: StructureRef(path=tmp_path / "missing.cif"),
        14: StructureRef(text=overlapping.to(fmt="poscar"), format="poscar"),
    }
    for position, ref in bad.items():
        refs.insert(position, ref)
    return refs, {5: "readable", 9: "cannot read", 14: "overlap"}


@pytest.mark.parametrize("workers", [1, 2])
def test_failures_are_reported_and_never_stop_the_rest(tmp_path, workers):
    refs, failures = mixed_refs(tmp_path)
    features = featurize_structures(refs, GRAPH, workers=workers, progress=False, device="cpu")
    assert len(features) == len(refs) == 22
    assert features.num_failed == 3 and len(features.store) == 19
    for position, words in failures.items():
        assert words in features.reason[position]
        assert features.graph_index[position] == -1
        assert features.formula[position] is None and features.spacegroup[position] is None
    good = [i for i in range(len(refs)) if i not in failures]
    assert features.graph_index[good].tolist() == list(range(19))
    assert all(features.formula[i] == "NaCl" and features.spacegroup[i] == 221 for i in good)
    assert all(features.reason[i] is None for i in good)


def test_pool_and_in_process_give_the_same_store(tmp_path):
    refs, _ = mixed_refs(tmp_path)
    serial = featurize_structures(refs, GRAPH, workers=1, progress=False, device="cpu")
    parallel = featurize_structures(refs, GRAPH, workers=2, progress=False, device="cpu")
    for name, tensor in serial.store.to_tensors().items():
        assert np.array_equal(tensor.numpy(), parallel.store.to_tensors()[name].numpy()), name


def test_space_group_search_runs_only_where_asked(tmp_path):
    refs, failures = mixed_refs(tmp_path)
    search = [i % 2 == 0 for i in range(len(refs))]
    features = featurize_structures(refs, GRAPH, find_spacegroup=search, workers=1, progress=False)
    good = [i for i in range(len(refs)) if i not in failures]
    assert [features.spacegroup[i] for i in good] == [221 if search[i] else None for i in good]
    assert all(features.formula[i] == "NaCl" for i in good)
    with pytest.raises(ValueError, match="find_spacegroup"):
        featurize_structures(refs, GRAPH, find_spacegroup=search[:-1], workers=1, progress=False)


def test_no_structures_gives_an_empty_store():
    features = featurize_structures([], GRAPH, workers=1, progress=False, device="cpu")
    assert len(features) == 0 and len(features.store) == 0 and features.store.spectral_k == GRAPH.spectral_k


def test_real_cifs_agree_with_the_pymatgen_reference():
    value = os.environ.get("TOPOCLASS_DATA_DIR")
    folder = Path(value) / "tqc2020" / "structures" if value else None
    if folder is None or not folder.is_dir():
        pytest.skip("set TOPOCLASS_DATA_DIR to a folder holding tqc2020/ to run this test")
    names = sorted(os.listdir(folder))
    paths = [folder / names[i] for i in np.linspace(0, len(names) - 1, 20).astype(int)]
    features = featurize_structures([StructureRef(path=p) for p in paths], GRAPH, progress=False)
    assert features.num_failed == 0
    for i, path in enumerate(paths):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = Structure.from_file(path)
            spacegroup = SpacegroupAnalyzer(reference, symprec=GRAPH.symprec).get_space_group_number()
        assert features.spacegroup[i] == spacegroup, path.name
        expected = build_crystal_graph(reference, cutoff=GRAPH.cutoff, max_neighbors=GRAPH.max_neighbors)
        got = features.store.graph(int(features.graph_index[i]))
        assert got.num_edges == expected.num_edges, path.name
        np.testing.assert_allclose(np.sort(got.edge_distance), np.sort(expected.edge_distance), atol=1e-4)


def test_the_progress_bar_is_drawn_only_on_a_terminal(tmp_path, capsys):
    refs = [StructureRef(text=crystal(i).to(fmt="poscar"), format="poscar") for i in range(3)]
    featurize_structures(refs, GRAPH, workers=1, device="cpu")  # stderr is captured here: not a terminal
    assert "featurizing structures" not in capsys.readouterr().err
    featurize_structures(refs, GRAPH, workers=1, device="cpu", progress=True)
    assert "featurizing structures" in capsys.readouterr().err


def test_graphs_go_to_the_writer_given_even_while_it_is_empty(tmp_path):
    refs, _ = mixed_refs(tmp_path)
    writer = GraphStoreWriter(GRAPH.spectral_k, tmp_path / "parts")
    features = featurize_structures(refs, GRAPH, workers=1, progress=False, device="cpu", writer=writer)
    in_memory = featurize_structures(refs, GRAPH, workers=1, progress=False, device="cpu")
    assert len(writer) == 19 and (tmp_path / "parts" / "edge_distance").stat().st_size > 0
    for name, tensor in in_memory.store.to_tensors().items():
        assert np.array_equal(tensor.numpy(), features.store.to_tensors()[name].numpy()), name
