"""Using a trained run: load its best model and predict new materials.

The network runs on ONNX Runtime when the run holds a current export of its best weights
(``RunLayout.network_export_dir``) and ``onnxruntime`` is installed: predicting then
imports neither PyTorch nor scikit-learn. Otherwise, and always for training and
evaluation, it runs the PyTorch model (:mod:`topoclass.app.torch_network`). Both give the
same raw outputs to the same features and serving rules (:mod:`topoclass.inference.rules`).

Loading only reads: it never cleans up or renames anything in the checkpoint
folder, so predicting from a run while it trains cannot disturb the trainer.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from topoclass.app.runs import RunLayout, checkpoint_target
from topoclass.checkpoint import storage
from topoclass.config import Config, TaskConfig
from topoclass.data.arrays import FeatureArrays
from topoclass.data.build import featurize_materials
from topoclass.data.records import Material, Reject
from topoclass.errors import CheckpointError
from topoclass.inference.onnx_network import load_network
from topoclass.inference.rules import NetworkOutputs, Serving, load_serving, not_applicable, predictions_for
from topoclass.tasks import task_type
from topoclass.threads import choose_threads, cpu_share

if TYPE_CHECKING:
    from topoclass.features.embedding_store import StructureEmbedder

logger = logging.getLogger(__name__)

Backend = Literal["auto", "torch"]
# Materials from which a prediction computes the network beside the trees (one ONNX run's worth).
OVERLAP_ROWS = 256


class Network(Protocol):
    """What predicts a run's raw outputs: the PyTorch model or its ONNX export."""

    name: str
    # Whether its outputs may be computed in a second thread while the trees predict: it runs on
    # one thread and leaves Python's lock while it computes.
    overlaps: bool

    def outputs(self, features: FeatureArrays) -> dict[str, np.ndarray]:
        """Logits [n, C] (classification) or values [n] per task, float32, in the materials' order."""
        ...


@dataclass
class TrainedRun:
    """A run directory's config, tasks and best network, ready for inference."""

    config: Config
    tasks: list[TaskConfig]
    network: Network
    layout: RunLayout
    checkpoint: Path
    serving: Serving | None  # the trees and rules fitted on validation; None before they are


def load_run(run_dir: Path, *, device: str = "auto", backend: Backend = "auto") -> TrainedRun:
    """A run's resolved config, the network of its best checkpoint (else its newest intact one) and
    its serving rules. ``backend="torch"`` always loads the PyTorch model (training and evaluation
    need it); otherwise the ONNX export is used where it is current and ``device`` allows the CPU."""
    layout = RunLayout.open(Path(run_dir))
    config = layout.read_config()
    if backend == "auto" and device in ("auto", "cpu"):
        run = _onnx_run(layout, config)
        if run is not None:
            return run
    from topoclass.app.torch_network import load_torch_run

    return load_torch_run(layout, config, device)


def _onnx_run(layout: RunLayout, config: Config) -> TrainedRun | None:
    """The run served by its ONNX export, or None (and one log line why) when it cannot be."""
    threads = choose_threads(config.train.num_threads)[0]
    try:
        best = checkpoint_target(layout.checkpoints).single(prefer_best=True)
        storage.verify(best, full=False)
        tasks = [TaskConfig.model_validate(t) for t in storage.read_metadata(best)["tasks"]]
    except (CheckpointError, KeyError, TypeError, ValueError):
        return None  # the PyTorch loader reads the checkpoint again and says what is wrong
    network, reason = load_network(layout.network_export_dir(), config, best, threads=threads)
    if network is None:
        # A run without an export (trained with train.export_onnx off, or before it) is the plain
        # case, not news; an export that cannot be used, or a missing onnxruntime, is said once.
        exported = layout.network_export_dir().exists()
        logger.log(logging.INFO if exported else logging.DEBUG, "Predicting with PyTorch: %s", reason)
        return None
    serving = load_serving(layout.serving_dir(), threads=threads)
    return TrainedRun(config, tasks, network, layout, best, serving)


@dataclass
class Predictions:
    """One row per material that could be featurized, and the records that could not."""

    rows: list[dict[str, Any]]
    skipped: list[Reject] = field(default_factory=list)


def predict_materials(
    run: TrainedRun, materials: list[Material], *, predictor: str | None = None
) -> Predictions:
    """Predicted class (with every class probability) or value per task, for each usable material.

    Each task is served by the source its run chose on validation (network, trees or blend),
    or by ``predictor`` when given; the row says which.
    """
    features, skipped = featurize_materials(
        materials, run.tasks, run.config.data, backbone_embedder(run.config)
    )
    if features is None:
        return Predictions([], skipped)
    return Predictions(prediction_rows(run, features, predictor=predictor), skipped)


def prediction_rows(
    run: TrainedRun, features: FeatureArrays, *, predictor: str | None = None, overlap: bool = True
) -> list[dict[str, Any]]:
    """One row per material of ``features``: id, formula, space group, and per task the answer,
    its probabilities and the source that gave it. The one call from features to answers.

    ``overlap``: the network may run in a second thread beside the trees (see
    :func:`_network_outputs`); a screen, which runs one process per core, says no."""
    probabilities, decisions, sources = predictions_for(
        run.serving,
        run.tasks,
        features,
        _network_outputs(run, features) if overlap else run.network.outputs(features),
        use_structure=run.config.data.use_structure,
        predictor=predictor,
    )
    outside = not_applicable(run.tasks, decisions)
    rows = []
    for i, (material_id, formula) in enumerate(zip(features.ids, features.formulas, strict=True)):
        row: dict[str, Any] = {
            "id": material_id,
            "formula": formula,
            "spacegroup": int(features.spacegroup[i]),
        }
        for task in run.tasks:
            kind = task_type(task)
            row.update(kind.prediction_row(task, probabilities[task.name][i], decisions[task.name][i]))
            if task.name in outside and outside[task.name][i]:
                row[task.name] = None  # no such label here; the probabilities say "if it had one"
            row[f"{task.name}:predictor"] = sources[task.name]
        rows.append(row)
    return rows


def _network_outputs(run: TrainedRun, features: FeatureArrays) -> NetworkOutputs:
    """The network's outputs, or (many materials, and a second CPU for this process) a call that
    waits for them while a second thread computes them and the trees predict. ONNX Runtime and
    LightGBM both leave Python's lock while they compute, so the two overlap: a 10,000-formula
    table takes about 0.5 s less. Neither waits for the other at every operation (as threads of
    one computation do), so a busy second core costs no more than computing in turn."""
    if not run.network.overlaps or run.serving is None or len(features) < OVERLAP_ROWS or _cpus() < 2:
        return run.network.outputs(features)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="topoclass-network")
    pending = pool.submit(run.network.outputs, features)
    pool.shutdown(wait=False)
    return pending.result


@cache
def _cpus() -> int:
    return cpu_share()


def backbone_embedder(config: Config) -> StructureEmbedder | None:
    """The frozen pretrained backbone that turns a run's structures into vectors, if it has one
    (its module imports PyTorch, so a crystal-graph run never loads it)."""
    if config.model.structure_encoder == "cgconv" or not config.data.use_structure:
        return None
    from topoclass.model.backbones import structure_embedder

    return structure_embedder(config)
