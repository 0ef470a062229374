"""Using a trained run: load its best model, evaluate it on the test split, predict new materials."""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from topoclass.checkpoint.manager import CheckpointManager, load_component
from topoclass.config import Config, TaskConfig, load_config
from topoclass.data.clean import record_problem
from topoclass.data.featureset import FeatureSet
from topoclass.data.prepare import attach_structures
from topoclass.data.records import Material
from topoclass.data.tables import read_table
from topoclass.errors import ConfigError, DataError
from topoclass.features.composition import encode_compositions, material_descriptors
from topoclass.model.inference import raw_outputs, to_probabilities
from topoclass.model.multitask import MultitaskModel
from topoclass.train.averaging import inference_weights
from topoclass.train.device import select_device
from topoclass.train.loop import build_model
from topoclass.train.run import RunPaths

logger = logging.getLogger(__name__)


@dataclass
class TrainedRun:
    """A run directory's config, tasks and best model, ready for inference."""

    config: Config
    tasks: list[TaskConfig]
    model: MultitaskModel
    paths: RunPaths
    checkpoint: Path
    device: torch.device


def load_run(run_dir: Path, *, device: str = "auto") -> TrainedRun:
    """Load a run's resolved config and the weights of its best checkpoint."""
    config_file = run_dir / "config.yaml"
    if not config_file.exists():
        raise ConfigError(f"{run_dir}: not a topoclass run directory (no config.yaml)")
    config = load_config(config_file)
    paths = RunPaths.for_config(config.model_copy(update={"run_dir": run_dir}))
    manager = CheckpointManager(paths.checkpoints)
    best = paths.checkpoints / "best"
    loaded = manager.load(best) if best.exists() else manager.find_latest()
    if loaded is None:
        raise ConfigError(f"{run_dir}: no verified checkpoint to load")
    tasks = [TaskConfig.model_validate(t) for t in loaded.metadata["tasks"]]
    model = build_model(config, tasks)
    load_component(loaded, "model", model, inference_weights(loaded.state))
    target = select_device(device)
    return TrainedRun(config, tasks, model.to(target).eval(), paths, loaded.path, target)


def _problem(material: Material) -> str | None:
    reject = record_problem(material, [])
    return reject.reason if reject is not None else None


def table_materials(path: Path) -> list[Material]:
    """Materials of a prediction table (formula and space group, or a structure column)."""
    materials, rejects = read_table(path)
    for reject in rejects:
        logger.warning("%s: %s; skipped", reject.source, reject.reason)
    return materials


def prediction_features(materials: list[Material], run: TrainedRun) -> FeatureSet:
    """Features of unlabelled materials; unusable ones are reported and skipped.

    Structures, when given, are featurized with the run's graph settings and
    also supply formula and space group where those are missing.
    """
    data = run.config.data
    materials, rejects, store, graph_rows = attach_structures(materials, data.graph, data.featurize_workers)
    for reject in rejects:
        logger.warning("%s: %s; skipped", reject.source, reject.reason)
    usable = []
    for material, graph_row in zip(materials, graph_rows, strict=True):
        problem = _problem(material)
        if problem is None:
            usable.append((material, graph_row))
        else:
            logger.warning("%s: %s; skipped", material.source, problem)
    if not usable:
        raise DataError("no usable materials to predict")
    formulas = [m.formula for m, _ in usable]
    spacegroups = [m.spacegroup for m, _ in usable]
    element_index, element_fraction = encode_compositions(formulas)
    return FeatureSet(
        ids=[m.id for m, _ in usable],
        formulas=formulas,
        tasks=run.tasks,
        element_index=torch.from_numpy(element_index),
        element_fraction=torch.from_numpy(element_fraction),
        descriptors=torch.from_numpy(material_descriptors(formulas, spacegroups)),
        spacegroup=torch.tensor(spacegroups, dtype=torch.long),
        labels=torch.full((len(usable), len(run.tasks)), float("nan")),
        graph_index=torch.tensor([row for _, row in usable], dtype=torch.long),
        graphs=store,
    )


def predict(run: TrainedRun, features: FeatureSet) -> list[dict[str, Any]]:
    """One row per material: predicted class and class probabilities per task."""
    outputs = to_probabilities(
        raw_outputs(run.model, features, torch.arange(len(features)), batch_size=1024, device=run.device)
    )
    rows = []
    for i, (material_id, formula) in enumerate(zip(features.ids, features.formulas, strict=True)):
        row: dict[str, Any] = {
            "id": material_id,
            "formula": formula,
            "spacegroup": int(features.spacegroup[i]),
        }
        for task in run.tasks:
            values = outputs[task.name][i]
            if task.type == "classification":
                classes = task.classes or []
                row[task.name] = classes[int(values.argmax())]
                row.update(
                    {f"{task.name}:p({c})": round(float(p), 6) for c, p in zip(classes, values, strict=True)}
                )
            else:
                row[task.name] = float(values)
        rows.append(row)
    return rows


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    """CSV text of prediction rows."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["id"])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
