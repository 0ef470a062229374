"""The network exported to ONNX answers as the PyTorch model does, and is used only when it is current.

Tolerance: ONNX Runtime and PyTorch sum the same float32 products in other orders (and PyTorch's
fused attention takes another path than the exported graph), so raw outputs differ in their last
bits. Measured worst |ONNX - PyTorch| over the raw outputs: 9.5e-7 (tang2019) and 1.4e-6 (tqc2020,
structures included) on the bundles' card materials and example structures, 1.5e-7 on the
synthetic run's test split. LOGIT_TOLERANCE keeps a 40-fold margin over that (other CPUs pick
other kernels) and is still far below what moves a decision: the classes must be identical.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import write_synthetic_table
from topoclass.api import bundled_model_dir, train
from topoclass.app.predict import TrainedRun, load_run
from topoclass.app.prepare import run_data
from topoclass.app.runs import RunLayout
from topoclass.app.torch_network import TorchNetwork, torch_network
from topoclass.checkpoint import storage
from topoclass.checkpoint.manager import read_checkpoint
from topoclass.config import load_config
from topoclass.data.arrays import FeatureArrays
from topoclass.data.build import featurize_materials
from topoclass.data.records import Material, StructureRef
from topoclass.inference.onnx_network import NETWORK_FILE, OnnxNetwork, inference_session
from topoclass.inference.rules import predictions_for

LOGIT_TOLERANCE = 5e-5


def card_materials(name: str) -> list[Material]:
    """The card's known materials, then its example structures."""
    directory = bundled_model_dir(name)
    card = json.loads((directory / "card.json").read_text())
    known = [
        Material(id=f"k{i}", formula=row["formula"], spacegroup=row["spacegroup"])
        for i, row in enumerate(card["known_outputs"])
    ]
    examples = [
        Material(id=f"s{i}", formula="", spacegroup=None, structure=StructureRef(path=path))
        for i, path in enumerate(sorted((directory / "examples").glob("*.cif")))
    ]
    return known + examples


def assert_same_answers(onnx_run: TrainedRun, torch_run: TrainedRun, features: FeatureArrays) -> float:
    """Raw outputs within LOGIT_TOLERANCE and identical served decisions; the worst difference."""
    assert isinstance(onnx_run.network, OnnxNetwork) and isinstance(torch_run.network, TorchNetwork)
    onnx_outputs = onnx_run.network.outputs(features)
    torch_outputs = torch_run.network.outputs(features)
    worst = max(float(np.abs(onnx_outputs[t] - torch_outputs[t]).max()) for t in onnx_outputs)
    assert worst <= LOGIT_TOLERANCE
    use_structure = onnx_run.config.data.use_structure
    _, onnx_decisions, _ = predictions_for(
        onnx_run.serving, onnx_run.tasks, features, onnx_outputs, use_structure=use_structure
    )
    _, torch_decisions, _ = predictions_for(
        torch_run.serving, torch_run.tasks, features, torch_outputs, use_structure=use_structure
    )
    for task in onnx_run.tasks:
        if task.type == "classification":
            np.testing.assert_array_equal(onnx_decisions[task.name], torch_decisions[task.name])
        else:  # a value: the network's part of it differs as the outputs do
            onnx_values, torch_values = onnx_decisions[task.name], torch_decisions[task.name]
            np.testing.assert_allclose(onnx_values, torch_values, atol=LOGIT_TOLERANCE)
    return worst


@pytest.mark.parametrize("name", ["tang2019", "tqc2020"])
def test_bundles_answer_card_materials_as_pytorch_does(name):
    onnx_run = load_run(bundled_model_dir(name))
    torch_run = load_run(bundled_model_dir(name), backend="torch")
    features, skipped = featurize_materials(card_materials(name), onnx_run.tasks, onnx_run.config.data)
    assert features is not None and not skipped
    assert (features.graph_index >= 0).any() == onnx_run.config.data.use_structure
    assert_same_answers(onnx_run, torch_run, features)
    # Batches of one and of mixed sizes give each material the same outputs (dynamic shapes).
    alone = onnx_run.network.outputs(features_of(features, [2]))
    together = onnx_run.network.outputs(features)
    for task, values in alone.items():
        np.testing.assert_allclose(values[0], together[task][2], atol=LOGIT_TOLERANCE)


def features_of(features: FeatureArrays, rows: list[int]) -> FeatureArrays:
    index = np.asarray(rows)
    return FeatureArrays(
        ids=[features.ids[i] for i in rows],
        formulas=[features.formulas[i] for i in rows],
        tasks=features.tasks,
        element_index=features.element_index[index],
        element_fraction=features.element_fraction[index],
        descriptors=features.descriptors[index],
        spacegroup=features.spacegroup[index],
        labels=features.labels[index],
        graph_index=features.graph_index[index],
        graphs=features.graphs,
    )


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory) -> Path:
    """A synthetic run trained here, with the network exported at its end."""
    root = tmp_path_factory.mktemp("onnx")
    table = write_synthetic_table(root / "materials.csv", 160)
    config = load_config(
        None,
        {
            "run_dir": str(root / "run"),
            "data.dataset": "table",
            "data.table": str(table),
            "data.cache_dir": str(root / "cache"),
            "data.tasks": [
                {"name": "topological", "classes": ["trivial", "topological"]},
                {"name": "gap", "type": "regression"},
            ],
            "model": {
                "hidden_dim": 16,
                "element_embedding_dim": 8,
                "spacegroup_embedding_dim": 8,
                "composition_heads": 2,
                "fusion_layers": 1,
            },
            "train.epochs": 2,
            "train.batch_size": 16,
            "train.progress_bar": False,
            "train.num_threads": 1,
        },
    )
    return train(config)


def test_a_trained_run_is_exported_and_answers_its_test_split_as_pytorch_does(exported_run):
    layout = RunLayout.open(exported_run)
    assert (layout.network_export_dir() / "network.onnx").is_file()
    onnx_run, torch_run = load_run(exported_run), load_run(exported_run, backend="torch")
    data = run_data(onnx_run.config, layout, resuming=True, accept_data_change=False)
    test = data.prepared.features.subset(torch.as_tensor(data.split["test"])).arrays()
    assert len(test) >= 20
    assert_same_answers(onnx_run, torch_run, test)


def test_an_export_of_other_weights_is_never_used(exported_run, tmp_path, caplog):
    copy = tmp_path / "run"
    shutil.copytree(exported_run, copy)
    best = torch_network(load_run(copy, backend="torch")).model
    with torch.no_grad():
        for parameter in best.parameters():
            parameter.add_(0.5)
    loaded = read_checkpoint(load_run(copy, backend="torch").checkpoint)
    state = {**loaded.state, "model": best.state_dict()}
    state.pop("averaged_model", None)
    before = storage.read_manifest(loaded.path)["files"][storage.TENSORS_FILE]["sha256"]
    with storage.CheckpointStorage() as writer:
        tag = loaded.tag
        writer.write(loaded.path, state, metadata=loaded.metadata, epoch=tag.epoch, step=tag.step)
    assert storage.read_manifest(loaded.path)["files"][storage.TENSORS_FILE]["sha256"] != before
    with caplog.at_level(logging.INFO, logger="topoclass.app.predict"):
        run = load_run(copy)
    assert isinstance(run.network, TorchNetwork)
    assert "stale" in caplog.text


def test_without_onnxruntime_pytorch_answers_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if it were not installed
    with caplog.at_level(logging.INFO, logger="topoclass.app.predict"):
        run = load_run(bundled_model_dir("tang2019"))
    assert isinstance(run.network, TorchNetwork)
    lines = [record.getMessage() for record in caplog.records if record.name == "topoclass.app.predict"]
    assert lines == ["Predicting with PyTorch: onnxruntime is not installed"]


def test_batches_keep_to_the_edge_budget_and_cover_every_row_once(monkeypatch):
    from topoclass.features.graph import CrystalGraph
    from topoclass.features.graph_store import GraphStore
    from topoclass.features.spectral import laplacian_spectra
    from topoclass.inference import onnx_network

    monkeypatch.setattr(onnx_network, "EDGE_BUDGET", 100)
    monkeypatch.setattr(onnx_network, "BATCH_SIZE", 4)
    rng = np.random.default_rng(0)
    edge_counts = [30, 30, 30, 150, 10, 10, 10, 10, 10, 60, 60]
    graphs = []
    for edges in edge_counts:
        index = rng.integers(0, 5, (2, edges))
        graphs.append(CrystalGraph(np.ones(5, np.int64), index, np.ones(edges, np.float32)))
    store = GraphStore.from_graphs(graphs, laplacian_spectra(graphs, 4, device="cpu"))
    # Rows 2 and 6 have no structure (no edges); the rest map to the graphs in order.
    graph_index = np.array([0, 1, -1, 2, 3, 4, -1, 5, 6, 7, 8, 9, 10])
    n = len(graph_index)
    features = FeatureArrays(
        ids=[str(i) for i in range(n)],
        formulas=["H"] * n,
        tasks=[],
        element_index=np.ones((n, 1), np.int64),
        element_fraction=np.ones((n, 1), np.float32),
        descriptors=np.zeros((n, 1), np.float32),
        spacegroup=np.ones(n, np.int64),
        labels=np.zeros((n, 0), np.float32),
        graph_index=graph_index,
        graphs=store,
    )
    ranges = onnx_network.batches(features, edges=True)
    assert np.array_equal(np.sort(np.concatenate(ranges)), np.arange(n))
    row_edges = np.where(graph_index >= 0, np.array(edge_counts)[np.clip(graph_index, 0, None)], 0)
    for rows in ranges:
        assert len(rows) <= 4
        assert row_edges[rows].sum() <= 100 or len(rows) == 1  # the 150-edge cell goes alone
    assert [len(rows) for rows in ranges] == [4, 1, 4, 3, 1]
    assert [len(rows) for rows in onnx_network.batches(features, edges=False)] == [4, 4, 4, 1]


def test_batches_group_formulas_by_element_count(monkeypatch):
    from topoclass.inference import onnx_network

    monkeypatch.setattr(onnx_network, "BATCH_SIZE", 3)
    widths = [3, 1, 2, 1, 3, 2, 1]
    n = len(widths)
    element_index = np.zeros((n, 3), np.int64)
    for row, width in enumerate(widths):
        element_index[row, :width] = np.arange(1, width + 1)
    features = FeatureArrays(
        ids=[str(i) for i in range(n)],
        formulas=["H"] * n,
        tasks=[],
        element_index=element_index,
        element_fraction=np.ones((n, 3), np.float32),
        descriptors=np.zeros((n, 1), np.float32),
        spacegroup=np.ones(n, np.int64),
        labels=np.zeros((n, 0), np.float32),
        graph_index=np.full(n, -1),
        graphs=None,
    )
    runs = [rows.tolist() for rows in onnx_network.batches(features, edges=False)]
    assert runs == [[1, 3, 6], [2, 5, 0], [4]]  # by element count, input order among equals
    assert [
        features.formula_inputs(np.array(rows), with_graphs=False)["element_index"].shape[1] for rows in runs
    ] == [1, 3, 3]


def test_idle_network_threads_wait_asleep():
    run = load_run(bundled_model_dir("tang2019"))
    assert isinstance(run.network, OnnxNetwork)
    options = run.network._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_residual_layer_norms_run_unfused(tmp_path):
    import onnx
    import onnxruntime

    run = load_run(bundled_model_dir("tang2019"))
    assert isinstance(run.network, OnnxNetwork)
    graph = storage.read_file(run.layout.network_export_dir(), NETWORK_FILE)
    options = onnxruntime.SessionOptions()
    options.add_external_initializers(list(run.network.record.weights), run.network._weights)

    def operators_run(make_session) -> set[str]:
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        make_session(graph, options)
        optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
        return {node.op_type for node in optimized.graph.node}

    assert {"LayerNormalization", "Add"} <= operators_run(inference_session)
    assert "SkipLayerNormalization" not in operators_run(inference_session)
    # ONNX Runtime's default rewrites would fuse them: what the exclusion takes away is there.
    default = operators_run(partial(onnxruntime.InferenceSession, providers=["CPUExecutionProvider"]))
    assert "SkipLayerNormalization" in default


def test_a_table_shares_its_work_with_a_second_thread_and_gets_the_same_answers(monkeypatch):
    import threading

    from topoclass.app import predict

    run = load_run(bundled_model_dir("tang2019"))
    assert isinstance(run.network, OnnxNetwork) and run.network.overlaps and run.serving is not None
    formulas = ["Bi2Se3", "NaCl", "SnTe", "Cu", "Bi", "PbTe", "HgTe", "ZrTe5"] * 40
    materials = [Material(id=str(i), formula=f, spacegroup=166 + i % 60) for i, f in enumerate(formulas)]
    materials[130] = Material(id="130", formula="Qq2", spacegroup=1)  # skipped, in the second part
    assert len(materials) >= predict.OVERLAP_ROWS
    network_calls: list[tuple[str, int]] = []
    tree_calls: list[tuple[str, str]] = []
    compute, trees = run.network.outputs, run.serving.tree_outputs

    def network(arrays: FeatureArrays) -> dict[str, np.ndarray]:
        network_calls.append((threading.current_thread().name, len(arrays)))
        return compute(arrays)

    def tree_outputs(tasks, arrays: FeatureArrays, **kwargs):
        tree_calls.append((threading.current_thread().name, arrays.ids[0]))
        return trees(tasks, arrays, **kwargs)

    monkeypatch.setattr(run.network, "outputs", network)
    monkeypatch.setattr(run.serving, "tree_outputs", tree_outputs)
    monkeypatch.setattr(predict, "PART_ROWS", 100)
    monkeypatch.setattr(predict, "_cpus", lambda: 2)
    shared = predict.predict_materials(run, materials)
    main = threading.current_thread().name
    assert [(name != main, rows) for name, rows in network_calls] == [
        (True, 100),
        (True, 99),
        (True, 100),
        (True, 20),
    ]
    assert sorted(first for _, first in tree_calls) == ["0", "100", "200", "300"]  # each part once
    assert (main, "0") in tree_calls  # this thread starts from the first part, the other from the last
    network_calls.clear()
    tree_calls.clear()
    monkeypatch.setattr(predict, "_cpus", lambda: 1)
    in_turn = predict.predict_materials(run, materials)
    assert network_calls == [(main, 319)] and tree_calls == [(main, "0")]
    assert shared.rows == in_turn.rows and [row["id"] for row in shared.rows] == [
        str(i) for i in range(320) if i != 130
    ]
    assert [reject.id for reject in shared.skipped] == [reject.id for reject in in_turn.skipped] == ["130"]
