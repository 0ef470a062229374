"""The bundled models: each matches its card (files, SHA-256, stored outputs) and fails cleanly when stale."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import topoclass as tc
from tests.helpers import DATA_DIR, run_cli
from topoclass.api import bundled_model_dir
from topoclass.app.evaluate import evaluate_run
from topoclass.app.predict import load_run
from topoclass.app.torch_network import torch_network
from topoclass.errors import CheckpointError

BUNDLES = ["tang2019", "tqc2020"]

# How far a stored probability may move on another machine (`python benchmarks/output_spread.py`
# measures it). From a formula, only float32 sums in another order (threads, batch order, SIMD
# kernels, deterministic algorithms): none moved an output by the 6th decimal the card keeps, so
# 1e-5 is 20x that rounding. From a structure, the Laplacian eigenvectors of a degenerate
# eigenspace come back in whichever basis the CPU's LAPACK kernels give (Bi2Se3's rhombohedral
# cell has such spaces): 20 random bases moved a probability by at most 7.2e-4 (another machine was
# seen at 1.5e-4), so 3e-3 leaves a 4x margin. Classes must match exactly: the card's materials
# are far from any decision boundary.
FORMULA_TOLERANCE = 1e-5
STRUCTURE_TOLERANCE = 3e-3
# A test-split metric may move by a near-tie material whose class flips on another CPU.
METRIC_TOLERANCE = 0.005


def card_of(name: str) -> tuple[Path, dict]:
    directory = bundled_model_dir(name)
    return directory, json.loads((directory / "card.json").read_text())


def assert_same_rows(frame, expected: list[dict], tolerance: float) -> None:
    """Classes and every other field exact; probabilities within ``tolerance``."""
    got = json.loads(frame.drop(columns="skipped").to_json(orient="records"))
    assert len(got) == len(expected)
    for row, stored in zip(got, expected, strict=True):
        assert row.keys() == stored.keys()
        for key, value in stored.items():
            if isinstance(value, float):
                assert math.isclose(row[key], value, abs_tol=tolerance), (
                    row["formula"],
                    key,
                    row[key],
                    value,
                )
            else:
                assert row[key] == value, (row["formula"], key)


def structure_tolerance(card: dict) -> float:
    """A model that reads no structure answers a structure from its formula and space group."""
    return STRUCTURE_TOLERANCE if card["uses_structures"] else FORMULA_TOLERANCE


def test_both_models_ship_with_the_package():
    assert set(BUNDLES) <= set(tc.bundled_models())


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_files_match_the_sha256_on_its_card(name):
    directory, card = card_of(name)
    files = {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()} - {"card.json"}
    assert set(card["files"]) == files
    for relative, digest in card["files"].items():
        assert hashlib.sha256((directory / relative).read_bytes()).hexdigest() == digest, relative
    size = sum((directory / relative).stat().st_size for relative in files)
    assert size < 10.5 * 2**20, f"{name} bundle is {size / 2**20:.1f} MiB"
    # The release that built the bundle: this one or an earlier one whose models it still loads
    # (CHANGELOG.md says which; the tests below load and check them).
    built, installed = (
        tuple(int(part) for part in v.split(".")[:3]) for v in (card["package_version"], tc.__version__)
    )
    assert built <= installed


@pytest.mark.parametrize("name", BUNDLES)
def test_known_materials_get_the_outputs_stored_on_the_card(name):
    directory, card = card_of(name)
    model = tc.load(name)
    known = card["known_outputs"]
    from_formulas = model.predict([r["formula"] for r in known], [r["spacegroup"] for r in known])
    assert_same_rows(from_formulas, known, FORMULA_TOLERANCE)
    examples = sorted((directory / "examples").glob("*.cif"))
    assert_same_rows(model.predict_structures(examples), card["example_outputs"], structure_tolerance(card))


def perturbed(name: str, relative: float):
    """Bundle ``name`` with every weight moved by ``relative`` (a seeded Gaussian, per weight)."""
    run = load_run(bundled_model_dir(name), backend="torch")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in torch_network(run).model.parameters():
            parameter.mul_(1 + relative * torch.randn(parameter.shape, generator=generator))
    return tc.Predictor(run)


@pytest.mark.parametrize("name", BUNDLES)
def test_the_tolerances_still_catch_a_slightly_wrong_model(name):
    """Weights 1% off fail the formula check; 5% off fail the structure check (which must leave
    room for the eigenbasis: 1% moves a served structure output by about 8e-4)."""
    directory, card = card_of(name)
    known = card["known_outputs"]
    formulas, groups = [r["formula"] for r in known], [r["spacegroup"] for r in known]
    from_formulas = perturbed(name, 0.01).predict(formulas, groups)
    with pytest.raises(AssertionError):
        assert_same_rows(from_formulas, known, FORMULA_TOLERANCE)
    examples = sorted((directory / "examples").glob("*.cif"))
    from_structures = perturbed(name, 0.05 if card["uses_structures"] else 0.01).predict_structures(examples)
    with pytest.raises(AssertionError):
        assert_same_rows(from_structures, card["example_outputs"], structure_tolerance(card))


@pytest.mark.integration  # featurizes each bundle's whole dataset (about a minute for tqc2020's structures)
@pytest.mark.parametrize("name", BUNDLES)
def test_the_card_test_metrics_are_what_the_bundle_scores(name, tmp_path):
    if DATA_DIR is None:
        pytest.skip("set TOPOCLASS_DATA_DIR to the datasets' folder to recompute the cards' figures")
    directory, card = card_of(name)
    run = tmp_path / name
    shutil.copytree(directory, run)
    results, _ = evaluate_run(run, with_baseline=False)  # its split made again, as training made it
    stored = card["test_metrics"][f"served, {card['weights_dtype']} weights"]
    for task, figures in stored.items():
        for metric, value in figures.items():
            assert results["served"][task][metric] == pytest.approx(value, abs=METRIC_TOLERANCE), (
                task,
                metric,
            )


def test_textbook_materials_are_classified_as_physics_says():
    answers = tc.load("tang2019").predict(["Bi2Se3", "NaCl"], [166, 225]).set_index("formula")
    assert answers.at["Bi2Se3", "topological"] == "topological"
    assert answers.at["Bi2Se3", "topo_class"] == "TI"
    assert answers.at["NaCl", "topological"] == "trivial"
    from_structures = tc.load("tqc2020").predict_structures(
        sorted(card_of("tqc2020")[0].glob("examples/*.cif"))
    )
    assert dict(zip(from_structures["formula"], from_structures["topo_class"], strict=True)) == {
        "Bi2Se3": "TI",
        "NaCl": "trivial",
    }


def test_crossing_type_is_answered_only_for_semimetals():
    _, card = card_of("tqc2020")
    known = card["known_outputs"]
    answers = tc.load("tqc2020").predict([r["formula"] for r in known], [r["spacegroup"] for r in known])
    semimetal = answers["topo_class"] == "SM"
    assert semimetal.any() and (~semimetal).any()  # the card's materials show both cases
    assert answers.loc[semimetal, "cross_type"].notna().all()
    assert answers.loc[~semimetal, "cross_type"].isna().all()
    assert answers["cross_type:p(Line)"].notna().all()  # the probabilities stay, as "if it were one"


def test_a_bundle_that_does_not_fit_the_code_fails_in_one_line(tmp_path):
    stale = tmp_path / "tang2019"
    shutil.copytree(bundled_model_dir("tang2019"), stale)
    config = stale / "config.yaml"
    config.write_text(config.read_text().replace("hidden_dim: 128", "hidden_dim: 96"))
    with pytest.raises(CheckpointError, match="does not fit this version of topoclass") as raised:
        tc.load(stale)
    assert "\n" not in str(raised.value)


@pytest.mark.integration  # starts topoclass as a user would, right after installing it
def test_predict_with_a_bundled_model_needs_no_data_and_no_training(tmp_path):
    env = {"TOPOCLASS_DATA_DIR": str(tmp_path / "no-data-here")}
    result = run_cli(
        ["predict", "--model", "tang2019", "--formula", "Bi2Se3", "--spacegroup", "166"], tmp_path, **env
    )
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.strip().splitlines()
    assert header.startswith("id,formula,spacegroup,topological,")
    assert row.startswith("Bi2Se3,Bi2Se3,166,topological,")
    assert not (tmp_path / "no-data-here").exists()
    both = run_cli(
        ["predict", str(tmp_path), "--model", "tang2019", "--formula", "X", "--spacegroup", "1"], tmp_path
    )
    assert both.returncode == 2 and "one of them" in both.stderr


@pytest.mark.integration
def test_predict_from_structure_files_on_the_command_line(tmp_path):
    directory, card = card_of("tqc2020")
    examples = [str(path) for path in sorted((directory / "examples").glob("*.cif"))]
    output = tmp_path / "out.csv"
    result = run_cli(["predict", "--model", "tqc2020", "--structure", *examples, "-o", str(output)], tmp_path)
    assert result.returncode == 0, result.stderr
    import pandas as pd

    assert_same_rows(
        pd.read_csv(output).assign(skipped=""), card["example_outputs"], structure_tolerance(card)
    )
    mixed = run_cli(
        ["predict", "--model", "tqc2020", "--structure", examples[0], "--table", "t.csv"], tmp_path
    )
    assert mixed.returncode == 2 and "one of" in mixed.stderr
