import math

import pytest
import torch

from topoclass.config import ModelConfig, TaskConfig
from topoclass.data.featureset import FeatureSet
from topoclass.features.composition import encode_compositions, material_descriptors
from topoclass.model.multitask import MultitaskModel
from topoclass.trainer.loss import MultitaskLoss

TASKS = [
    TaskConfig(name="topological", classes=["trivial", "topological"]),
    TaskConfig(name="topo_class", classes=["trivial", "TI", "TCI", "semimetal"], loss="focal"),
    TaskConfig(name="gap", type="regression"),
]


def _features(formulas, spacegroups, labels):
    index, fraction = encode_compositions(formulas)
    n = len(formulas)
    return FeatureSet(
        ids=[f"m{i}" for i in range(n)],
        formulas=formulas,
        tasks=TASKS,
        element_index=torch.from_numpy(index),
        element_fraction=torch.from_numpy(fraction),
        descriptors=torch.from_numpy(material_descriptors(formulas, spacegroups)),
        spacegroup=torch.tensor(spacegroups),
        labels=torch.tensor(labels, dtype=torch.float32),
        graph_index=torch.full((n,), -1),
    )


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MultitaskModel(
        ModelConfig(hidden_dim=32, element_embedding_dim=8, spacegroup_embedding_dim=8),
        TASKS,
        use_structure=False,
    ).eval()


def test_forward_shapes_and_missing_labels(model):
    nan = math.nan
    features = _features(
        ["Bi2Se3", "NaCl", "SnTe"], [166, 225, 225], [[1, 1, nan], [0, nan, 3.0], [nan, nan, nan]]
    )
    batch = features.batch(torch.arange(3), with_graphs=False)
    outputs = model(batch)
    assert outputs["topological"].shape == (3, 2)
    assert outputs["topo_class"].shape == (3, 4)
    assert outputs["gap"].shape == (3,)
    loss, parts = MultitaskLoss(TASKS, features.labels, focal_gamma=2.0)(outputs, batch["labels"])
    assert torch.isfinite(loss) and set(parts) == {"topological", "topo_class", "gap"}
    loss.backward()
    # A sample with every label missing contributes no gradient at all.
    model.zero_grad()
    only_unlabelled = features.batch(torch.tensor([2]), with_graphs=False)
    loss, parts = MultitaskLoss(TASKS, features.labels, focal_gamma=2.0)(
        model(only_unlabelled), only_unlabelled["labels"]
    )
    assert parts == {} and float(loss) == 0.0


def test_missing_label_does_not_change_the_loss_of_other_samples(model):
    nan = math.nan
    base = _features(["Bi2Se3", "NaCl"], [166, 225], [[1, 1, nan], [0, 0, nan]])
    extra = _features(
        ["Bi2Se3", "NaCl", "SnTe"], [166, 225, 225], [[1, 1, nan], [0, 0, nan], [nan, nan, nan]]
    )
    loss_fn = MultitaskLoss(TASKS, base.labels, focal_gamma=2.0)
    a, _ = loss_fn(model(base.batch(torch.arange(2), with_graphs=False)), base.labels)
    b, _ = loss_fn(model(extra.batch(torch.arange(3), with_graphs=False)), extra.labels)
    assert torch.allclose(a, b)


def test_prediction_independent_of_batch_company(model):
    features = _features(["Bi2Se3", "NaCl", "SnTe", "HgTe"], [166, 225, 225, 216], [[0, 0, 0]] * 4)
    alone = model(features.batch(torch.tensor([0]), with_graphs=False))["topo_class"]
    together = model(features.batch(torch.arange(4), with_graphs=False))["topo_class"][:1]
    assert torch.allclose(alone, together, atol=1e-6)
