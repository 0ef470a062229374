"""Train / validation / test splits without formula leakage, saved so every rerun sees the same one.

Materials are grouped by reduced formula: polymorphs (one formula, several
space groups) are near-copies for a composition model, so they must never
straddle two splits. Groups are assigned greedily, largest first, to the split
whose per-class counts are furthest below target. scikit-learn's
StratifiedGroupKFold does the same for equal folds only; the fractions here
are unequal.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from topoclass.config import TaskConfig
from topoclass.data.clean import formula_key
from topoclass.data.records import Material
from topoclass.errors import DataError
from topoclass.files import atomic_write
from topoclass.tasks import task_type

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")


def split_materials(
    materials: Sequence[Material],
    main_task: TaskConfig,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Split into train/val/test index arrays, grouped by reduced formula, stratified by the main label.

    Materials that lack the main label are still assigned, as a stratum of their own.
    """
    targets = _check_fractions(fractions)
    column = main_task.label_column
    if materials and all(column not in material.labels for material in materials):
        raise DataError(f"main task label column '{column}' not found in the materials", field=column)

    strata = _strata(materials, main_task)
    group_of = [_group_key(material) for material in materials]
    group_names = sorted(set(group_of))
    group_index = {name: i for i, name in enumerate(group_names)}
    counts = np.zeros((len(group_names), int(strata.max(initial=-1)) + 1))
    for material_index, name in enumerate(group_of):
        counts[group_index[name], strata[material_index]] += 1

    # Shuffle first so that ties in size are broken by the seed, then place big groups
    # while there is room and let single materials even out the counts at the end.
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(group_names))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    target = np.outer(targets, counts.sum(axis=0))
    filled = np.zeros_like(target)
    assigned = np.empty(len(group_names), dtype=np.int64)
    for group in order:
        group_counts = counts[group]
        # Change in squared distance from the target counts if the group joins each split.
        cost = (group_counts * (2 * (filled - target) + group_counts)).sum(axis=1)
        choice = int(np.argmin(cost))
        filled[choice] += group_counts
        assigned[group] = choice

    material_split = (
        assigned[[group_index[name] for name in group_of]] if materials else np.array([], dtype=np.int64)
    )
    split = {name: np.flatnonzero(material_split == i) for i, name in enumerate(SPLIT_NAMES)}
    logger.info("split (seed %d): %s", seed, ", ".join(f"{k}={len(v)}" for k, v in split.items()))
    return split


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    values = np.asarray(fractions, dtype=float)
    if values.shape != (3,) or (values <= 0).any() or abs(values.sum() - 1.0) > 1e-6:
        raise ValueError(
            f"split fractions must be three positive numbers summing to 1, got {list(fractions)}"
        )
    return values


def _group_key(material: Material) -> str:
    try:
        return formula_key(material.formula)
    except ValueError:
        # Cleaned data always parses; raw text keeps unparsable formulas grouped by spelling.
        return f"unparsed:{material.formula.strip()}"


def _strata(materials: Sequence[Material], task: TaskConfig) -> np.ndarray:
    """One integer stratum per material, as the main task's type defines them."""
    keys = task_type(task).strata([material.labels.get(task.label_column) for material in materials])
    names = {name: i for i, name in enumerate(sorted(set(keys)))}
    return np.array([names[key] for key in keys], dtype=np.int64)


def _ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def save_split(path: str | Path, split: dict[str, np.ndarray], ids: Sequence[str]) -> None:
    """Write the split as ids (not positions), with a SHA-256 of the dataset's sorted ids."""
    tree: dict[str, object] = {name: [ids[int(i)] for i in split[name]] for name in SPLIT_NAMES}
    tree["ids_sha256"] = _ids_digest(ids)
    atomic_write(path, json.dumps(tree, indent=1))


def load_split(path: str | Path, ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Map a saved split back to indices into ``ids``; DataError if the dataset changed since.

    Each part keeps the order of the saved ids, so data read in another order yields the
    same materials in the same order, and a resumed run draws the same batches.
    """
    path = Path(path)
    try:
        tree = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError("split file not found", file=path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"unreadable split file ({exc})", file=path) from None
    if not isinstance(tree, dict) or any(not isinstance(tree.get(name), list) for name in SPLIT_NAMES):
        raise DataError(f"a split file needs lists {', '.join(SPLIT_NAMES)}", file=path)

    position = {identifier: i for i, identifier in enumerate(ids)}
    if len(position) != len(ids):
        raise DataError("material ids are not unique, so a split cannot refer to them", file=path)
    saved = [identifier for name in SPLIT_NAMES for identifier in tree[name]]
    if len(set(saved)) != len(saved):
        raise DataError("an id appears twice in the split file", file=path)
    missing = sorted(set(saved) - position.keys())
    added = sorted(position.keys() - set(saved))
    if missing or added:
        raise DataError(
            f"the dataset changed since this split was made: {len(missing)} saved ids are gone"
            f"{_examples(missing)}, {len(added)} ids are new{_examples(added)};"
            " this run cannot continue on other materials; start a new run with --run-dir",
            file=path,
        )
    if tree.get("ids_sha256") != _ids_digest(ids):
        raise DataError("checksum 'ids_sha256' does not match the ids in the file (edited?)", file=path)
    return {name: np.array([position[i] for i in tree[name]], dtype=np.int64) for name in SPLIT_NAMES}


def _examples(items: Sequence[str], limit: int = 3) -> str:
    return f" (e.g. {', '.join(items[:limit])})" if items else ""
