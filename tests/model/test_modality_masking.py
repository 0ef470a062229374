"""A missing structure is masked out of fusion, never treated as a real (zero) structure,
and the band-filling facts assumed from a formula reach a model only where no structure
gives the real cell."""

from __future__ import annotations

import numpy as np
import torch
from pymatgen.core import Lattice, Structure

from topoclass.config import GraphConfig, ModelConfig, TaskConfig
from topoclass.data.featureset import FeatureSet
from topoclass.data.records import StructureRef
from topoclass.features.composition import NUM_FORMULA_FACTS, encode_compositions, material_descriptors
from topoclass.features.structure_pipeline import featurize_structures
from topoclass.inference.tree_inputs import baseline_features, cell_fact_features
from topoclass.model.multitask import MultitaskModel

TASKS = [TaskConfig(name="topo_class", classes=["trivial", "TI", "SM"])]
GRAPH = GraphConfig(cutoff=5.0, max_neighbors=8, num_rbf=8, spectral_k=4)


def _features() -> FeatureSet:
    rocksalt = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    diamond = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    refs = [StructureRef(text=s.to_json(), format="json") for s in (rocksalt, diamond)]
    structures = featurize_structures(refs, GRAPH, workers=1, progress=False)
    assert structures.reason == [None, None]
    formulas = ["Bi2Se3", "NaCl", "Si"]  # the first one has no structure
    spacegroups = [166, 225, 227]
    index, fraction = encode_compositions(formulas)
    return FeatureSet(
        ids=["formula-only", "nacl", "si"],
        formulas=formulas,
        tasks=TASKS,
        element_index=torch.from_numpy(index),
        element_fraction=torch.from_numpy(fraction),
        descriptors=torch.from_numpy(material_descriptors(formulas, spacegroups)),
        spacegroup=torch.tensor(spacegroups),
        labels=torch.zeros(3, 1),
        graph_index=torch.tensor([-1, int(structures.graph_index[0]), int(structures.graph_index[1])]),
        graphs=structures.store,
    )


def _model(use_structure: bool = True) -> MultitaskModel:
    torch.manual_seed(0)
    config = ModelConfig(
        hidden_dim=16, element_embedding_dim=8, spacegroup_embedding_dim=8, composition_heads=2
    )
    return MultitaskModel(config, TASKS, use_structure=use_structure, graph=GRAPH).eval()


def test_formula_only_prediction_unchanged_by_structured_batch_mates():
    features, model = _features(), _model()
    alone = model(features.batch(torch.tensor([0]), with_graphs=True))["topo_class"]
    mixed = model(features.batch(torch.tensor([1, 0, 2]), with_graphs=True))["topo_class"]
    assert torch.allclose(alone[0], mixed[1], atol=1e-6)


def test_structure_changes_the_prediction_when_present():
    features, model = _features(), _model()
    batch = features.batch(torch.tensor([1]), with_graphs=True)
    with_graph = model(batch)["topo_class"]
    without = model({k: v for k, v in batch.items() if k not in ("graph", "graph_rows")})["topo_class"]
    assert not torch.allclose(with_graph, without, atol=1e-4)


def test_missing_structure_is_not_a_zero_structure():
    """Masking differs from feeding a zero embedding as if it were a real structure."""
    features, model = _features(), _model()
    batch = features.batch(torch.tensor([0]), with_graphs=True)
    masked = model(batch)["topo_class"]
    original = model.structure.forward
    model.structure.forward = lambda graph, context: torch.zeros(graph.num_graphs, 16)
    fake = features.batch(torch.tensor([1]), with_graphs=True)
    fake.update({k: batch[k] for k in ("element_index", "element_fraction", "descriptors", "spacegroup")})
    zero_filled = model(fake)["topo_class"]
    model.structure.forward = original
    assert not torch.allclose(masked, zero_filled, atol=1e-4)


def test_filling_facts_reach_a_model_only_for_materials_without_a_structure():
    """A structure gives the real cell; the assumed one must not reach the model beside it."""
    features = _features()  # row 0 has no structure, rows 1 and 2 have one
    altered = FeatureSet(**{**vars(features), "descriptors": features.descriptors.clone()})
    altered.descriptors[:, NUM_FORMULA_FACTS:] = 1.0 - altered.descriptors[:, NUM_FORMULA_FACTS:]
    rows = torch.arange(3)
    structure_model, formula_model = _model(use_structure=True), _model(use_structure=False)
    before = structure_model(features.batch(rows, with_graphs=True))["topo_class"]
    after = structure_model(altered.batch(rows, with_graphs=True))["topo_class"]
    assert torch.equal(before[1:], after[1:])
    assert not torch.allclose(before[0], after[0])
    before = formula_model(features.batch(rows, with_graphs=False))["topo_class"]
    after = formula_model(altered.batch(rows, with_graphs=False))["topo_class"]
    assert not torch.allclose(before, after)


def test_descriptors_read_flag_the_materials_whose_filling_is_assumed():
    features = _features()
    read = features.descriptors_read(torch.arange(3), with_graphs=True)
    assert read.shape[1] == features.descriptors.shape[1] + 1
    assert read[:, -1].tolist() == [1.0, 0.0, 0.0]
    assert torch.equal(read[0, :-1], features.descriptors[0])
    assert not read[1:, NUM_FORMULA_FACTS:].any()
    assert torch.equal(features.descriptors_read(torch.arange(3), with_graphs=False), features.descriptors)


def test_trees_read_the_descriptors_the_network_reads():
    """The baseline of a structure run gets the same per-material filling rule, plus cell facts."""
    features = _features()
    with_structures = baseline_features(features.arrays(), use_structure=True)
    formula_only = baseline_features(features.arrays(), use_structure=False)
    assert with_structures.shape[1] == formula_only.shape[1] + 1
    read = features.descriptors_read(torch.arange(3), with_graphs=True).numpy()
    assert any(np.array_equal(column, read[:, -1]) for column in with_structures.T)
    cells = cell_fact_features(features.arrays())
    assert np.isnan(cells[0]).all() and np.isfinite(cells[1:]).all()
