"""A run's data: features, the split, and the fingerprint that says whether the data changed.

Nothing here writes into the run directory: the trainer decides when the new
state is known to be valid and only then saves it, so a failure never leaves a
run half-overwritten.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from topoclass.app.runs import RunLayout
from topoclass.config import Config
from topoclass.data.build import PreparedDataset, prepare_dataset
from topoclass.data.fingerprint import describe_changes, fingerprint_record, split_digest
from topoclass.data.records import Material
from topoclass.data.split import SPLIT_NAMES, load_split, split_materials
from topoclass.errors import DataError
from topoclass.model.backbones import structure_embedder
from topoclass.tasks import task_type

logger = logging.getLogger(__name__)


def prepare_data(config: Config) -> PreparedDataset:
    """Load (or featurize and cache) the configured dataset, with a timing line."""
    data = prepare_dataset(config.data, structure_embedder(config))
    how = "from cache" if data.from_cache else "featurized and cached"
    logger.info("Dataset %s: %d materials, %s in %.2f s", data.name, len(data.features), how, data.seconds)
    return data


@dataclass
class RunData:
    """The data of one run, checked: features, split (new or saved), fingerprint."""

    prepared: PreparedDataset
    split: dict[str, np.ndarray]
    split_is_new: bool
    fingerprint: dict[str, Any]

    @property
    def split_digest(self) -> str:
        return split_digest(self.prepared.features.ids, self.split)

    def split_tensors(self) -> dict[str, torch.Tensor]:
        return {name: torch.as_tensor(rows, dtype=torch.long) for name, rows in self.split.items()}


def run_data(config: Config, layout: RunLayout, *, resuming: bool, accept_data_change: bool) -> RunData:
    """Features, split and fingerprint of a run; when resuming, checked against what the run recorded.

    A resumed run refuses data that changed since it started (naming what changed)
    unless ``accept_data_change``; a new run refuses data too small to split.
    """
    prepared = prepare_data(config)
    fingerprint = fingerprint_record(prepared.features)
    if resuming and layout.fingerprint_file().is_file():
        _check_unchanged(layout, fingerprint, accept_data_change)
    if resuming and layout.split_file().is_file():
        split, new = load_split(layout.split_file(), prepared.features.ids), False
    else:
        split, new = make_split(config, prepared), True
    check_split_sizes(split, prepared.counts)
    return RunData(prepared, split, new, fingerprint)


def make_split(config: Config, prepared: PreparedDataset) -> dict[str, np.ndarray]:
    """A new formula-grouped split, stratified by the main task."""
    fractions = (config.data.split.train, config.data.split.val, config.data.split.test)
    return split_materials(
        materials_for_split(prepared), prepared.main_task, fractions, config.data.split.seed
    )


def materials_for_split(prepared: PreparedDataset) -> list[Material]:
    """Light records (id, formula, main label) that the splitter needs."""
    features, task = prepared.features, prepared.main_task
    column = next(i for i, t in enumerate(features.tasks) if t.name == task.name)
    kind = task_type(task)
    return [
        Material(id=i, formula=f, spacegroup=None, labels={task.label_column: kind.decode(task, float(v))})
        for i, f, v in zip(features.ids, features.formulas, features.labels[:, column].tolist(), strict=True)
    ]


def check_split_sizes(split: dict[str, np.ndarray], counts: dict[str, int]) -> None:
    """Every part of the split needs materials: training and validation cannot run on nothing."""
    sizes = {name: len(split[name]) for name in SPLIT_NAMES}
    if all(sizes.values()):
        return
    read, kept = counts.get("read", 0), counts.get("kept", 0)
    raise DataError(
        f"too little data to split: {kept} of {read} records remain after cleaning (see rejects.csv), "
        f"giving {'/'.join(str(sizes[name]) for name in SPLIT_NAMES)} train/val/test materials; "
        "each part needs at least one (more formulas, or other data.split fractions)"
    )


def _check_unchanged(layout: RunLayout, current: dict[str, Any], accept: bool) -> None:
    try:
        saved = json.loads(layout.fingerprint_file().read_text())
        saved_materials = saved["materials"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError("unreadable data fingerprint", file=layout.fingerprint_file()) from None
    if saved.get("digest") == current["digest"]:
        return
    changes = describe_changes(saved_materials, current["materials"])
    if accept:
        logger.warning(
            "The data changed since this run started (%s); continuing as asked", "; ".join(changes)
        )
        return
    raise DataError(
        f"the data changed since this run started: {'; '.join(changes)}. Resume on the same data, start a "
        "new run with --run-dir, or pass --accept-data-change to continue on this data"
    )
