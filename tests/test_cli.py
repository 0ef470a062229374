"""The command line as a user meets it: training, evaluation, prediction and bad input."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tests.helpers import DATA_DIR, run_cli, train_synthetic_run

pytestmark = pytest.mark.integration  # starts topoclass processes


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    result = train_synthetic_run(tmp, n=200)
    return tmp, tmp / "run", result.stdout


def test_train_reports_progress_and_writes_the_run_directory(finished_run):
    _, run, stdout = finished_run
    for message in ("Using device: cpu", "Data loaders created. Train: ", "Starting epoch 1/3", "Results in"):
        assert message in stdout
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert {"train_loss", "val_loss", "val_topological_accuracy", "val_gap_mae"} <= set(history[0])
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert (run / "config.yaml").exists() and (run / "split.json").exists()
    assert (run / "checkpoints" / "best" / "MANIFEST.json").exists()


def test_evaluate_writes_metrics_and_figures(finished_run):
    tmp, run, _ = finished_run
    result = run_cli(["evaluate", str(run)], tmp)
    assert result.returncode == 0, result.stderr
    assert "| topological | accuracy |" in result.stdout
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    sources = {"network", "network + rules", "trees + rules", "blend + rules", "served", "baseline"}
    assert set(metrics) == sources
    neural = metrics["network"]["topological"]
    assert 0.0 <= neural["accuracy"] <= 1.0 and len(neural["confusion_matrix"]) == 2
    assert neural["n"] == len(json.loads((run / "split.json").read_text())["test"])
    assert "Served predictor per task (chosen on validation)" in result.stdout
    assert "| trivial |" in result.stdout  # the per-class table of the served predictor
    assert 0.0 <= metrics["served"]["topological"]["ece"] <= 1.0
    for name in (
        "confusion_network_topological.png",
        "training_curves.png",
        "reliability_served_topological.png",
    ):
        assert (run / "evaluation" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_one_material_and_a_table(finished_run):
    tmp, run, _ = finished_run
    one = run_cli(["predict", str(run), "--formula", "Bi2Se3", "--spacegroup", "166"], tmp)
    assert one.returncode == 0, one.stderr
    (row,) = list(csv.DictReader(io.StringIO(one.stdout)))
    assert row["topological"] in ("trivial", "topological")
    total = float(row["topological:p(trivial)"]) + float(row["topological:p(topological)"])
    assert total == pytest.approx(1.0, abs=1e-4)

    table = tmp / "new.csv"
    table.write_text("formula,spacegroup\nBi2Se3,166\nNaCl,225\nXx2,12\nSnTe,999\n")
    out = tmp / "predictions.csv"
    many = run_cli(["predict", str(run), "--table", str(table), "-o", str(out)], tmp)
    assert many.returncode == 0, many.stderr
    rows = list(csv.DictReader(out.open()))
    assert [r["formula"] for r in rows] == ["Bi2Se3", "NaCl"]
    assert "new.csv:4" in many.stdout + many.stderr and "new.csv:5" in many.stdout + many.stderr


def test_checkpoint_tools(finished_run, tmp_path):
    tmp, run, _ = finished_run
    listed = run_cli(["checkpoints", "list", str(run)], tmp)
    assert listed.returncode == 0 and "checkpoint_epoch_3" in listed.stdout
    assert run_cli(["checkpoints", "verify", str(run)], tmp).returncode == 0
    inspected = run_cli(["checkpoints", "inspect", str(run / "checkpoints" / "best")], tmp)
    assert inspected.returncode == 0 and '"history_length"' in inspected.stdout
    weights = tmp_path / "model.safetensors"
    assert (
        run_cli(["checkpoints", "export", str(run / "checkpoints" / "best"), str(weights)], tmp).returncode
        == 0
    )
    from safetensors.torch import load_file

    assert any(key.startswith("heads.topological") for key in load_file(weights))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--set", "train.epochz=3"], "train.epochz: unknown key"),
        (["train", "--set", "train.epochs=many"], "train.epochs"),
        (["train", "--data-dir", "/nonexistent/data"], "/nonexistent/data"),
        (["train", "--dataset", "nosuch"], "nosuch"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(args, message, tmp_path):
    result = run_cli([*args, "--run-dir", str(tmp_path / "run")], tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    status = tmp_path / "run" / "status.json"
    assert not status.exists() or json.loads(status.read_text())["state"] != "finished"


def test_malformed_table_and_missing_label_column_name_the_file(tmp_path):
    table = tmp_path / "bad.jsonl"
    table.write_text('{"formula": "NaCl", "spacegroup": 225, "topological": "trivial"}\nnot json\n')
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{dataset: table, table: {table}, tasks: [{{name: topological}}]}}\n")
    result = run_cli(["train", "--config", str(config), "--run-dir", str(tmp_path / "r")], tmp_path)
    assert result.returncode == 2 and "bad.jsonl:2" in result.stderr
    table.write_text('{"formula": "NaCl", "spacegroup": 225}\n')
    result = run_cli(["train", "--config", str(config), "--run-dir", str(tmp_path / "r")], tmp_path)
    assert result.returncode == 2 and "topological" in result.stderr and "bad.jsonl" in result.stderr


@pytest.mark.skipif(
    not DATA_DIR or not Path(DATA_DIR, "tang2019").is_dir(), reason="needs TOPOCLASS_DATA_DIR"
)
def test_short_real_training_run_on_tang2019(tmp_path):
    args = [
        "train",
        "--run-dir",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--batch-size",
        "256",
        "--set",
        "model.hidden_dim=32",
        "--set",
        "model.fusion_layers=1",
        "--set",
        "train.progress_bar=false",
    ]
    first = run_cli(args, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Dataset tang2019: 10774 materials, featurized and cached" in first.stdout
    history = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert history["val_topological_accuracy"] > 0.7  # one epoch already beats the majority class (0.57)
    again = run_cli([*args, "--resume", "never"], tmp_path)
    assert "Loading dataset with preloading from cache" in again.stdout
