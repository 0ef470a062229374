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
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import numpy as np

from topoclass.app.runs import RunLayout, checkpoint_target
from topoclass.checkpoint import storage
from topoclass.config import Config, TaskConfig
from topoclass.data.arrays import FeatureArrays
from topoclass.data.build import featurize_materials
from topoclass.data.records import Material, Reject
from topoclass.errors import CheckpointError
from topoclass.inference.onnx_network import load_network
from topoclass.inference.rules import (
    Outputs,
    Serving,
    load_serving,
    not_applicable,
    predictions_for,
    reads_trees,
)
from topoclass.tasks import task_type
from topoclass.threads import choose_threads, cpu_share, quick_switches

if TYPE_CHECKING:
    from topoclass.features.embedding_store import StructureEmbedder

logger = logging.getLogger(__name__)

Backend = Literal["auto", "torch"]
T = TypeVar("T")
# Materials from which a prediction computes the network in a second thread (one ONNX run's worth),
# and formulas featurized at a time when it does (see predict_materials): parts of 1,024 rather
# than 2,048 start the network sooner and let the two threads' last trees end closer together
# (a 10,000-formula table 0.06 s sooner, median of 5).
OVERLAP_ROWS = 256
PART_ROWS = 1024


class Network(Protocol):
    """What predicts a run's raw outputs: the PyTorch model or its ONNX export."""

    name: str
    # Whether its outputs may be computed in a second thread while this one featurizes and the
    # trees predict: it runs on one thread and leaves Python's lock while it computes.
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
    or by ``predictor`` when given; the row says which. Many materials, and a second CPU for
    this process: the work is shared with a second thread (:func:`_predict_in_two_threads`).
    """
    shared = (
        run.network.overlaps and run.serving is not None and len(materials) >= OVERLAP_ROWS and _cpus() >= 2
    )
    if shared:
        return _predict_in_two_threads(run, materials, predictor)
    features, skipped = featurize_materials(
        materials, run.tasks, run.config.data, backbone_embedder(run.config)
    )
    rows = [] if features is None else prediction_rows(run, features, predictor=predictor)
    return Predictions(rows, skipped)


def _predict_in_two_threads(run: TrainedRun, materials: list[Material], predictor: str | None) -> Predictions:
    """:func:`predict_materials`, the work shared with a second thread; the same answers.

    ONNX Runtime and LightGBM leave Python's lock while they compute. Formulas are featurized
    here in parts of :data:`PART_ROWS` while the second thread computes the network of each part
    as soon as it is ready; then this thread predicts with the trees part by part from the first,
    and the second one, its network done, from the last, until they meet. A 10,000-formula table
    takes about 0.8 s less than in turn. (Structures are featurized at once: their featurization
    has its own worker processes.)
    """
    embedder = backbone_embedder(run.config)
    size = len(materials) if any(m.structure for m in materials) else PART_ROWS
    featurized: list[FeatureArrays] = []
    network_calls: list[Outputs] = []
    skipped: list[Reject] = []
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="topoclass-network")
    try:
        with quick_switches():
            for start in range(0, len(materials), size):
                part = materials[start : start + size]
                features, rejected = featurize_materials(part, run.tasks, run.config.data, embedder)
                skipped.extend(rejected)
                if features is not None:
                    featurized.append(features)
                    network_calls.append(pool.submit(run.network.outputs, features).result)
            tree_calls: list[Outputs | None] = [None] * len(featurized)
            serving = run.serving
            if serving is not None and reads_trees(serving.choice(run.tasks, predictor)):
                trees = partial(serving.tree_outputs, run.tasks, use_structure=run.config.data.use_structure)
                jobs = {i: pool.submit(trees, featurized[i]) for i in reversed(range(len(featurized)))}
                tree_calls = [_first_come(jobs[i], partial(trees, part)) for i, part in enumerate(featurized)]
            rows: list[dict[str, Any]] = []
            for features, network, tree_call in zip(featurized, network_calls, tree_calls, strict=True):
                rows.extend(prediction_rows(run, features, network, trees=tree_call, predictor=predictor))
    finally:
        pool.shutdown(cancel_futures=True)  # an interrupted prediction leaves the parts queued undone
    return Predictions(rows, skipped)


def _first_come(job: Future[T], compute: Callable[[], T]) -> Callable[[], T]:
    """A call for what ``job`` computes: computed by the caller if the job has not started yet."""

    def call() -> T:
        return compute() if job.cancel() else job.result()

    return call


def prediction_rows(
    run: TrainedRun,
    features: FeatureArrays,
    network: Outputs | None = None,
    *,
    trees: Outputs | None = None,
    predictor: str | None = None,
) -> list[dict[str, Any]]:
    """One row per material of ``features``: id, formula, space group, and per task the answer,
    its probabilities and the source that gave it. The one call from features to answers.

    ``network``, ``trees``: the sources' outputs for ``features``, or calls that give them (the
    trees' made first); by default computed here, the trees first."""
    probabilities, decisions, sources = predictions_for(
        run.serving,
        run.tasks,
        features,
        partial(run.network.outputs, features) if network is None else network,
        use_structure=run.config.data.use_structure,
        predictor=predictor,
        trees=trees,
    )
    outside = not_applicable(run.tasks, decisions)
    columns: dict[str, list[Any]] = {
        "id": list(features.ids),
        "formula": list(features.formulas),
        "spacegroup": features.spacegroup.tolist(),
    }
    for task in run.tasks:
        columns.update(
            task_type(task).prediction_columns(task, probabilities[task.name], decisions[task.name])
        )
        if task.name in outside:
            # No such label here; the probabilities say "if it had one".
            columns[task.name] = [
                None if out else answer
                for answer, out in zip(columns[task.name], outside[task.name].tolist(), strict=True)
            ]
        columns[f"{task.name}:predictor"] = [sources[task.name]] * len(features)
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]


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
