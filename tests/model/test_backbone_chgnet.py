"""The CHGNet backbone: verified weights, frozen vectors in the featurization cache, clear errors."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from tests.helpers import SMALL_MODEL
from topoclass.config import DataConfig, TaskConfig, load_config
from topoclass.errors import ConfigError, TopoclassError

# Primitive cells built directly (pymatgen's from_spacegroup costs seconds per call):
# name -> (lattice kind, a, species, fractional coordinates).
CRYSTALS = {
    "a": ("fcc", 5.6, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    "b": ("fcc", 6.5, ["Pb", "Te"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    "c": ("cubic", 4.1, ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    "d": ("fcc", 5.43, ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
}


def crystal(name: str) -> Structure:
    kind, a, species, coords = CRYSTALS[name]
    return primitive(kind, a, species, coords)


def primitive(kind: str, a: float, species: list[str], coords: list[list[float]]) -> Structure:
    if kind == "cubic":
        return Structure(Lattice.cubic(a), species, coords)
    h = a / 2
    return Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), species, coords)


@pytest.fixture(scope="module")
def chgnet():
    pytest.importorskip("chgnet")
    from topoclass.model.backbones import chgnet

    return chgnet


@pytest.fixture(scope="module")
def embedder(chgnet):
    return chgnet.ChgnetEmbedder()


def structure_table(tmp_path) -> DataConfig:
    rows = ["id,structure,topo"]
    for name in CRYSTALS:
        (tmp_path / f"{name}.vasp").write_text(crystal(name).to(fmt="poscar"))
        rows.append(f"{name},{name}.vasp,{'xy'[name in 'bd']}")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    return DataConfig(
        dataset="table",
        table=tmp_path / "t.csv",
        use_structure=True,
        featurize_workers=1,
        tasks=[TaskConfig(name="topo")],
        cache_dir=tmp_path / "cache",
    )


def test_weights_are_verified_and_a_tampered_copy_is_refused(chgnet, tmp_path):
    genuine = chgnet.weights_path().read_bytes()
    copy = tmp_path / "weights.pth.tar"
    copy.write_bytes(genuine)
    assert chgnet.load(copy).version == chgnet.MODEL_NAME
    tampered = bytearray(genuine)
    tampered[len(tampered) // 2] ^= 0x01
    copy.write_bytes(bytes(tampered))
    with pytest.raises(chgnet.BackboneWeightsError, match="SHA-256"):
        chgnet.load(copy)


def test_frozen_vectors_are_the_backbones_own_forward_pass(embedder):
    structures = [crystal(name) for name in CRYSTALS]
    vectors = embedder.embed(structures)
    model = embedder.features.chgnet
    reference = model.predict_structure(structures, return_crystal_feas=True, return_atom_feas=True)
    width = 64
    for row, expected in zip(vectors, reference, strict=True):
        np.testing.assert_allclose(row[:width], expected["crystal_fea"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(row[width : 2 * width], expected["atom_fea"].mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            row[2 * width : 3 * width], expected["atom_fea"].max(0), rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(row[-3], expected["e"], rtol=1e-5)
        np.testing.assert_allclose(
            row[-2:], [expected["m"].mean(), expected["m"].max()], rtol=1e-4, atol=1e-6
        )
    # Batched or alone, a crystal gets the same vector.
    np.testing.assert_allclose(embedder.embed(structures[1:2])[0], vectors[1], rtol=1e-4, atol=1e-5)


def test_frozen_vectors_are_cached_under_the_weights_digest(embedder, tmp_path):
    from topoclass.data.build import prepare_dataset
    from topoclass.features.embedding_store import EmbeddingStore

    config = structure_table(tmp_path)
    first = prepare_dataset(config, embedder)
    store = first.features.graphs
    assert isinstance(store, EmbeddingStore) and not first.from_cache
    rows = first.features.graph_index
    expected = embedder.embed([crystal(name) for name in first.features.ids])
    np.testing.assert_allclose(store.vectors[rows].numpy(), expected, rtol=1e-4, atol=1e-5)
    again = prepare_dataset(config, embedder)
    assert again.from_cache and again.cache_path == first.cache_path
    assert torch.equal(again.features.graphs.vectors, store.vectors)  # type: ignore[union-attr]
    batch = again.features.batch(torch.arange(len(again.features)), with_graphs=True)
    assert batch["graph"].vectors.shape == (len(CRYSTALS), embedder.width)

    class OtherWeights(type(embedder)):  # type: ignore[misc]
        key = "0" * 64

    other = OtherWeights()
    other._features = embedder.features  # same model, other digest: must not share the entry
    assert prepare_dataset(config, other).cache_path != first.cache_path


def test_a_frozen_backbone_model_trains_and_predicts_from_the_vectors(embedder, tmp_path):
    from topoclass.data.build import prepare_dataset
    from topoclass.model.inference import raw_outputs
    from topoclass.trainer.loop import build_model

    config = load_config(None, {"model.structure_encoder": "chgnet", "model.hidden_dim": 16})
    config.data = structure_table(tmp_path)
    features = prepare_dataset(config.data, embedder).features
    model = build_model(config, features.tasks)
    outputs = raw_outputs(model.eval(), features, torch.arange(len(features)), batch_size=2, device="cpu")
    assert outputs["topo"].shape == (len(CRYSTALS), 2) and torch.isfinite(outputs["topo"]).all()
    loss = model(features.batch(torch.arange(len(features)), with_graphs=True))["topo"].sum()
    loss.backward()
    assert model.structure is not None and all(p.grad is not None for p in model.structure.parameters())


def test_a_missing_backbone_fails_in_one_line_naming_the_extra(monkeypatch):
    from topoclass.model.backbones import pin_backbone, structure_embedder

    monkeypatch.setitem(sys.modules, "chgnet", None)  # import chgnet now raises ImportError
    config = load_config(None, {"model.structure_encoder": "chgnet", "data.use_structure": True})
    for call in (structure_embedder, pin_backbone):
        with pytest.raises(TopoclassError) as error:
            call(config)
        message = str(error.value)
        assert "topoclass[chgnet]" in message and "\n" not in message


def test_a_run_pinned_to_other_weights_is_refused(chgnet):
    from topoclass.model.backbones import pin_backbone

    config = load_config(None, {"model.structure_encoder": "chgnet", "data.use_structure": True})
    assert pin_backbone(config) is not None
    assert config.model.backbone_weights_sha256 == chgnet.WEIGHTS_SHA256
    config.model.backbone_weights_sha256 = "f" * 64
    with pytest.raises(ConfigError, match="backbone_weights_sha256"):
        pin_backbone(config)


def test_the_default_structure_encoder_needs_no_backbone():
    from topoclass.model.backbones import pin_backbone, structure_embedder

    config = load_config(None, {"data.use_structure": True})
    assert config.model.structure_encoder == "cgconv"
    assert structure_embedder(config) is None and pin_backbone(config) is None
    with pytest.raises(ConfigError, match="structure_encoder"):
        load_config(None, {"model.structure_encoder": "resnet"})


def finetune_trainer(root, data: DataConfig):
    from topoclass.checkpoint.manager import CheckpointManager
    from topoclass.data.build import prepare_dataset
    from topoclass.data.fingerprint import split_digest
    from topoclass.model.backbones import structure_embedder
    from topoclass.trainer.loop import Trainer
    from topoclass.trainer.signals import StopRequest

    overrides = {
        **SMALL_MODEL,
        "model.structure_encoder": "chgnet",
        "model.backbone_lr": 1e-3,
        "model.backbone_frozen_epochs": 1,
        "train.epochs": 2,
        "train.batch_size": 2,
        "train.warmup_epochs": 0,
        "train.progress_bar": False,
        "checkpoint.every_epochs": 1,
        "checkpoint.every_steps": 1,
        "checkpoint.every_minutes": 0,
        "checkpoint.keep_last": 20,
    }
    config = load_config(None, overrides)
    config.data = data
    features = prepare_dataset(data, structure_embedder(config)).features
    split = {"train": torch.arange(0, 4), "val": torch.arange(4, 6), "test": torch.arange(4, 6)}
    digest = split_digest(features.ids, {k: v.numpy() for k, v in split.items()})
    return Trainer(
        config,
        features,
        split,
        device=torch.device("cpu"),
        checkpoints=CheckpointManager(root / "checkpoints", config.checkpoint),
        stop=StopRequest(),
        metrics_file=root / "metrics.jsonl",
        run_metadata={"split_ids_sha256": digest, "data_fingerprint": "x", "code_revision": None},
    )


def test_fine_tuning_resumes_bit_exact_from_a_mid_epoch_checkpoint(chgnet, tmp_path):
    from topoclass.checkpoint.manager import read_checkpoint

    data = structure_table(tmp_path)
    extra = [("e", 5.9, ["K", "Br"]), ("f", 6.1, ["Sn", "Te"])]
    rows = (tmp_path / "t.csv").read_text().splitlines()
    for name, a, species in extra:
        structure = primitive("fcc", a, species, [[0, 0, 0], [0.5, 0.5, 0.5]])
        (tmp_path / f"{name}.vasp").write_text(structure.to(fmt="poscar"))
        rows.append(f"{name},{name}.vasp,{'xy'[name == 'f']}")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")

    whole = finetune_trainer(tmp_path / "a", data)
    assert whole.model.backbone is not None
    pretrained = {k: v.clone() for k, v in whole.model.backbone.state_dict().items()}
    with whole.checkpoints:
        whole.fit()
    expected = whole.model.state_dict()
    # The live epoch moved the backbone: the comparison below covers its training too.
    assert any(not torch.equal(pretrained[k], v) for k, v in whole.model.backbone.state_dict().items())

    # What a run killed after the first step of its live epoch resumes from.
    resumed = finetune_trainer(tmp_path / "b", data)
    resumed.restore(read_checkpoint(tmp_path / "a" / "checkpoints" / "checkpoint_epoch_2_step_3"))
    with resumed.checkpoints:
        resumed.fit()
    got = resumed.model.state_dict()
    assert expected.keys() == got.keys() and any(k.startswith("backbone.") for k in got)
    for key in expected:
        assert torch.equal(expected[key], got[key]), f"{key} differs after resuming"


def test_formula_models_can_read_chgnets_element_vectors(chgnet):
    from topoclass.model.multitask import MultitaskModel

    config = load_config(None, {"model.element_vectors": "chgnet", "model.hidden_dim": 16})
    model = MultitaskModel(config.model, [TaskConfig(name="topo", classes=["x", "y"])], use_structure=False)
    vectors = model.composition.pretrained_elements
    table = chgnet.element_table()
    assert vectors is not None and torch.equal(vectors[0], torch.zeros(table.shape[1]))
    assert torch.equal(vectors[1 : chgnet.ELEMENTS + 1], table)  # row z: atomic number z
    assert not vectors[chgnet.ELEMENTS + 1 :].any()  # elements CHGNet never saw
    assert "composition.pretrained_elements" in model.state_dict()
    assert not any(p is vectors for p in model.parameters())  # frozen


@pytest.mark.integration
def test_a_fine_tuning_run_killed_while_checkpointing_resumes_to_the_same_weights(chgnet, tmp_path):
    """A real training process, SIGKILLed while it writes a mid-epoch checkpoint of its live
    (backbone-training) epoch, then the same command: the weights end as an uninterrupted run's."""
    from tests.helpers import run_cli
    from topoclass.checkpoint.manager import CheckpointManager
    from topoclass.config import CheckpointConfig

    rows = ["id,structure,topo"]
    for i, (kind, a, species, coords) in enumerate([*CRYSTALS.values(), *CRYSTALS.values()]):
        name = f"s{i}"
        stretched = primitive(kind, a * (1 + 0.02 * i), species, coords)
        (tmp_path / f"{name}.vasp").write_text(stretched.to(fmt="poscar"))
        rows.append(f"{name},{name}.vasp,{'xy'[i % 3 == 0]}")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    small = ", ".join(f"{key.split('.')[1]}: {value}" for key, value in SMALL_MODEL.items())
    config = tmp_path / "config.yaml"
    config.write_text(
        f"data: {{dataset: table, table: {tmp_path / 't.csv'}, use_structure: true, featurize_workers: 1,\n"
        "       tasks: [{name: topo}], split: {train: 0.5, val: 0.25, test: 0.25}}\n"
        f"model: {{{small}, structure_encoder: chgnet, backbone_lr: 0.001, backbone_frozen_epochs: 1}}\n"
        "train: {epochs: 2, batch_size: 2, warmup_epochs: 0, progress_bar: false}\n"
        "checkpoint: {every_epochs: 1, every_steps: 1, every_minutes: 0}\n"
    )

    def final_weights(run: Path) -> dict[str, torch.Tensor]:
        with CheckpointManager(run / "checkpoints", CheckpointConfig()) as manager:
            loaded = manager.find_latest()
        assert loaded is not None and loaded.state["trainer"]["completed_epochs"] == 2
        return loaded.state["model"]

    def train(run: Path, kill_at_commit: int | None = None):
        args = ["train", "--config", str(config), "--run-dir", str(run), "--resume", "auto"]
        return run_cli(args, tmp_path, kill_at_commit=kill_at_commit)

    reference = train(tmp_path / "reference")
    assert reference.returncode == 0, reference.stdout + reference.stderr
    killed = train(tmp_path / "run", kill_at_commit=4)  # epoch 1's steps and end, then one live step
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    resumed = train(tmp_path / "run")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resuming from epoch 2" in resumed.stdout
    expected, got = final_weights(tmp_path / "reference"), final_weights(tmp_path / "run")
    assert expected.keys() == got.keys() and any(key.startswith("backbone.") for key in got)
    for key in expected:
        assert torch.equal(expected[key], got[key]), f"{key} differs after the kill and resume"
