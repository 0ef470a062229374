"""Using a trained run: load its best model and predict new materials.

Loading only reads: it never cleans up or renames anything in the checkpoint
folder, so predicting from a run while it trains cannot disturb the trainer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from topoclass.app.runs import RunLayout, checkpoint_target
from topoclass.app.serving import Serving, load_serving, not_applicable, predictions_for
from topoclass.checkpoint.manager import LoadedCheckpoint, load_component, read_checkpoint
from topoclass.config import Config, TaskConfig
from topoclass.data.build import featurize_materials
from topoclass.data.records import Material, Reject
from topoclass.errors import DamagedCheckpointError
from topoclass.model.backbones import structure_embedder
from topoclass.model.inference import raw_outputs
from topoclass.model.multitask import MultitaskModel
from topoclass.tasks import task_type
from topoclass.threads import configure_threads
from topoclass.trainer.averaging import inference_weights
from topoclass.trainer.device import select_device
from topoclass.trainer.loop import VALIDATION_BATCH, build_model

logger = logging.getLogger(__name__)


@dataclass
class TrainedRun:
    """A run directory's config, tasks and best model, ready for inference."""

    config: Config
    tasks: list[TaskConfig]
    model: MultitaskModel
    layout: RunLayout
    checkpoint: Path
    device: torch.device
    serving: Serving | None  # the trees and rules fitted on validation; None before they are


def load_run(run_dir: Path, *, device: str = "auto") -> TrainedRun:
    """A run's resolved config, the weights of its best checkpoint (else its newest intact one) and
    its serving rules."""
    layout = RunLayout.open(Path(run_dir))
    config = layout.read_config()
    configure_threads(config.train.num_threads, announce=False)
    target = select_device(device)
    path, loaded = _read_best(layout)
    tasks = [TaskConfig.model_validate(t) for t in loaded.metadata["tasks"]]
    model = build_model(config, tasks)
    load_component(loaded, "model", model, inference_weights(loaded.state))
    model.backbone_live = model.backbone is not None  # a fine-tuned backbone is no longer the cached one
    return TrainedRun(config, tasks, model.to(target).eval(), layout, path, target, load_serving(layout))


def _read_best(layout: RunLayout, attempts: int = 3) -> tuple[Path, LoadedCheckpoint]:
    """The run's best checkpoint, read; a trainer may replace it meanwhile, so look again if it changed."""
    path = checkpoint_target(layout.checkpoints).single(prefer_best=True)
    for _ in range(attempts - 1):
        try:
            return path, read_checkpoint(path)
        except DamagedCheckpointError:
            path = checkpoint_target(layout.checkpoints).single(prefer_best=True)
    return path, read_checkpoint(path)


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
        materials, run.tasks, run.config.data, structure_embedder(run.config)
    )
    if features is None:
        return Predictions([], skipped)
    outputs = raw_outputs(
        run.model, features, torch.arange(len(features)), batch_size=VALIDATION_BATCH, device=run.device
    )
    probabilities, decisions, sources = predictions_for(
        run.serving,
        run.tasks,
        features,
        outputs,
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
    return Predictions(rows, skipped)
