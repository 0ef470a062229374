"""The Python interface as a notebook uses it: load, predict from formulas, structures and tables, train."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import topoclass as tc
from tests.helpers import cli_env, write_synthetic_table
from topoclass.errors import ConfigError, TopoclassError

EXAMPLE = Path(__file__).parents[2] / "examples" / "notebook.py"


@pytest.fixture(scope="module")
def model():
    return tc.load("tang2019")


def test_rows_follow_the_input_and_say_why_one_was_skipped(model):
    frame = model.predict(["Bi2Se3", "Xx2", "NaCl"], [166, 12, 225], ids=["a", "b", "c"])
    assert list(frame["id"]) == ["a", "b", "c"]
    assert list(frame["formula"]) == ["Bi2Se3", "Xx2", "NaCl"]
    assert list(frame["spacegroup"]) == [166, 12, 225]  # whole numbers beside the skipped row
    assert frame.at[0, "skipped"] == "" and "Xx2" in frame.at[1, "skipped"]
    assert frame["topological"].isna().tolist() == [False, True, False]
    probabilities = frame.loc[[0, 2], [f"topo_class:p({c})" for c in model.classes["topo_class"]]]
    assert probabilities.sum(axis=1).round(4).tolist() == [1.0, 1.0]
    assert model.tasks == ["topological", "topo_class"]


def test_one_source_can_answer_every_task(model):
    frame = model.predict("Bi2Se3", 166, predictor="trees")
    assert frame.at[0, "topological:predictor"] == "trees" and frame.at[0, "topo_class:predictor"] == "trees"
    with pytest.raises(ConfigError, match="predictor must be one of"):
        model.predict("Bi2Se3", 166, predictor="oracle")


def test_bad_calls_are_one_line_errors(model, tmp_path):
    with pytest.raises(ConfigError, match="2 formulas but 1 space groups"):
        model.predict(["Bi2Se3", "NaCl"], [166])
    with pytest.raises(TopoclassError, match="cannot read a structure from a int"):
        model.predict_structures([42])
    with pytest.raises(
        ConfigError, match=r"neither a run directory nor a bundled model \(tang2019, tqc2020\)"
    ):
        tc.load(tmp_path / "nothing")


def test_a_table_with_an_unreadable_row(model, tmp_path):
    table = tmp_path / "new.csv"
    table.write_text("id,formula,spacegroup\nm1,Bi2Se3,166\nm2,SnTe,abc\nm3,NaCl,225\nm4,SnTe,999\n")
    frame = model.predict_table(table)
    assert list(frame["id"]) == ["m1", "m3", "m4", "m2"]  # rows that cannot be read come last
    assert frame["skipped"].eq("").tolist() == [True, True, False, False]
    assert "new.csv:5" in frame.at[2, "skipped"] and "999" in frame.at[2, "skipped"]
    assert "new.csv:3" in frame.at[3, "skipped"]


def test_train_from_a_dict_returns_a_run_that_loads(tmp_path):
    table = write_synthetic_table(tmp_path / "materials.csv", 80)
    config = {
        "data": {
            "dataset": "table",
            "table": str(table),
            "tasks": [{"name": "topological"}],
            "cache_dir": str(tmp_path),
        },
        "model": {"hidden_dim": 16, "element_embedding_dim": 8, "spacegroup_embedding_dim": 8},
        "train": {"epochs": 2, "batch_size": 16, "progress_bar": False, "loggers": []},
        "run_dir": str(tmp_path / "run"),
    }
    run = tc.train(config)
    assert run == tmp_path / "run" and (run / "checkpoints" / "best").is_dir()
    frame = tc.load(run).predict(["Bi2Se3"], [166])
    assert frame.at[0, "topological"] in ("trivial", "topological")
    config["train"]["epochs"] = 3  # train again: resumes the run for the extra epoch
    assert tc.train(config) == run
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.mark.integration  # fresh interpreters
def test_import_is_light_and_the_notebook_example_runs(tmp_path):
    check = "import sys, topoclass; topoclass.bundled_models(); print('torch' in sys.modules)"
    light = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, env=cli_env(tmp_path)
    )
    assert light.stdout.strip() == "False", light.stderr
    notebook = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, env=cli_env(tmp_path), timeout=300
    )
    assert notebook.returncode == 0, notebook.stderr
    assert "same answer for Structure, Atoms, CIF path and CIF read by ASE" in notebook.stdout
