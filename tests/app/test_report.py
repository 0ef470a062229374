from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from topoclass.app.report import (
    format_results_table,
    plot_confusion_matrix,
    plot_roc_curves,
    plot_training_curves,
    write_evaluation,
)
from topoclass.metrics import classification_metrics, regression_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ["trivial", "TI", "TCI", "semimetal"]


def assert_png(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    assert len(data) > 5_000, f"{path} is suspiciously small ({len(data)} bytes)"


def make_history(epochs: int = 4) -> list[dict]:
    return [
        {
            "epoch": epoch,
            "train_loss": 1.0 / epoch,
            "val_loss": 1.2 / epoch,
            "lr": 1e-3 / epoch,
            "val_topology_accuracy": 0.5 + 0.1 * epoch,
            "val_topology_macro_f1": 0.4 + 0.1 * epoch,
        }
        for epoch in range(1, epochs + 1)
    ]


@pytest.fixture()
def results() -> dict:
    y = np.array([0, 0, 1, 1, 2, 3, 3, 3])
    neural = np.eye(4)[[0, 0, 1, 2, 2, 3, 3, 0]] * 0.7 + 0.075
    baseline = np.eye(4)[[0, 1, 1, 2, 2, 3, 0, 0]] * 0.7 + 0.075
    gap = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    return {
        "neural": {"topology": classification_metrics(y, neural, CLASSES), "gap": gap},
        "baseline": {"topology": classification_metrics(y, baseline, CLASSES)},
    }


def test_confusion_matrix_figure_is_a_png(tmp_path):
    path = plot_confusion_matrix(
        [[5, 1, 0], [2, 3, 0], [0, 0, 0]], ["a", "b", "c"], "demo", tmp_path / "c.png"
    )

    assert path == tmp_path / "c.png"
    assert_png(path)


def test_training_curves_figure_is_a_png(tmp_path):
    assert_png(plot_training_curves(make_history(), tmp_path / "curves.png"))


def test_training_curves_tolerate_missing_keys_and_repeated_epochs(tmp_path):
    history = make_history(3)
    history[1].pop("val_loss")
    history.append({"epoch": 3, "train_loss": 0.2, "val_loss": None})  # epoch 3 rerun after a resume

    assert_png(plot_training_curves(history, tmp_path / "curves.png"))


def test_training_curves_need_history(tmp_path):
    with pytest.raises(ValueError, match="history"):
        plot_training_curves([], tmp_path / "curves.png")


@pytest.mark.parametrize("n_classes", [2, 4])
def test_roc_curves_figure_is_a_png(tmp_path, n_classes):
    rng = np.random.default_rng(0)
    y = np.tile(np.arange(n_classes), 10)
    probabilities = rng.dirichlet(np.ones(n_classes), size=len(y))

    assert_png(plot_roc_curves(y, probabilities, CLASSES[:n_classes], "roc", tmp_path / "roc.png"))


def test_results_table_puts_models_side_by_side(results):
    table = format_results_table(results)
    lines = table.splitlines()

    assert lines[0] == "| task | metric | neural | baseline |"
    accuracy_row = next(line for line in lines if line.startswith("| topology | accuracy |"))
    neural, baseline = results["neural"]["topology"], results["baseline"]["topology"]
    assert f"{neural['accuracy']:.3f}" in accuracy_row
    assert f"{baseline['accuracy']:.3f}" in accuracy_row
    assert accuracy_row.index(f"{neural['accuracy']:.3f}") < accuracy_row.index(f"{baseline['accuracy']:.3f}")
    for label in ("balanced accuracy", "macro-F1", "ROC-AUC"):
        assert any(line.startswith(f"| topology | {label} |") for line in lines), label
    assert "| gap | MAE | 0.333 | - |" in lines
    assert "| gap | R2 | 0.500 | - |" in lines
    assert "| topology | n | 8 | 8 |" in lines


def test_results_table_shows_undefined_metrics_as_dash():
    single_class = classification_metrics(np.zeros(3, dtype=int), np.full((3, 2), 0.5), ["a", "b"])

    table = format_results_table({"neural": {"topology": single_class, "empty": {"n": 0}}})

    assert "| topology | ROC-AUC | - |" in table
    assert "| empty | n | 0 |" in table


def test_write_evaluation_writes_metrics_and_figures(tmp_path, results):
    written = write_evaluation(tmp_path / "eval", results, make_history())

    assert set(written) == {
        "metrics",
        "confusion_neural_topology",
        "confusion_baseline_topology",
        "training_curves",
    }
    assert json.loads(written["metrics"].read_text()) == json.loads(json.dumps(results))
    for key, path in written.items():
        assert path.parent == tmp_path / "eval"
        if key != "metrics":
            assert path.name == f"{key}.png"
            assert_png(path)
    assert not list((tmp_path / "eval").glob("*.partial"))


def test_write_evaluation_without_history_and_with_numpy_values(tmp_path):
    results = {"neural": {"gap": {"n": np.int64(2), "mae": np.float64(0.5), "r2": float("nan")}}}

    written = write_evaluation(tmp_path, results, None)

    assert set(written) == {"metrics"}
    assert json.loads(written["metrics"].read_text()) == {"neural": {"gap": {"n": 2, "mae": 0.5, "r2": None}}}


@pytest.mark.integration
def test_importing_report_leaves_matplotlib_state_alone():
    # The importing process may have its own matplotlib setup; the import must not touch it.
    code = "import sys, topoclass.app.report; print('matplotlib.pyplot' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert completed.stdout.strip() == "False"
