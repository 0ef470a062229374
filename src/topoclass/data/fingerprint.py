"""What a dataset holds, per material, so a resumed run can tell whether its data changed.

A run records one short digest of each material's inputs (formula, space group and,
when it has one, its crystal graph or backbone vector) and one of its labels. Order does not matter:
the same records read in another order have the same fingerprint. On resume the
digests are compared, and a change is named: materials added or gone, labels
changed, inputs changed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from topoclass.data.featureset import FeatureSet
from topoclass.tasks import task_type

FINGERPRINT_VERSION = 1
_DIGEST_CHARS = 16  # 64 bits per material: collisions are not a practical concern at 10^6 materials


def material_digests(features: FeatureSet) -> dict[str, list[str]]:
    """Per material id: [digest of its inputs, digest of its labels]."""
    graphs = features.graphs
    rows = features.graph_index.tolist()
    labels = features.labels.numpy()
    digests: dict[str, list[str]] = {}
    for i, (material_id, formula) in enumerate(zip(features.ids, features.formulas, strict=True)):
        inputs = hashlib.sha256(f"{formula}\0{int(features.spacegroup[i])}".encode())
        if graphs is not None and rows[i] >= 0:
            inputs.update(graphs.input_bytes(rows[i]))
        decoded = [
            task_type(task).decode(task, float(labels[i, column]))
            for column, task in enumerate(features.tasks)
        ]
        label_digest = hashlib.sha256(json.dumps(decoded).encode())
        digests[material_id] = [inputs.hexdigest()[:_DIGEST_CHARS], label_digest.hexdigest()[:_DIGEST_CHARS]]
    return digests


def fingerprint_record(features: FeatureSet) -> dict[str, Any]:
    """The fingerprint a run saves: the per-material digests and one digest of them all."""
    materials = material_digests(features)
    return {"version": FINGERPRINT_VERSION, "digest": overall_digest(materials), "materials": materials}


def overall_digest(materials: dict[str, list[str]]) -> str:
    """One SHA-256 of every material's digests, independent of their order."""
    lines = sorted(f"{key}\0{inputs}\0{labels}" for key, (inputs, labels) in materials.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def describe_changes(saved: dict[str, list[str]], current: dict[str, list[str]]) -> list[str]:
    """What differs between two fingerprints' materials, one phrase per kind of change."""
    added = sorted(current.keys() - saved.keys())
    gone = sorted(saved.keys() - current.keys())
    common = saved.keys() & current.keys()
    inputs = sorted(k for k in common if saved[k][0] != current[k][0])
    labels = sorted(k for k in common if saved[k][1] != current[k][1])
    changes = [
        (added, "new"),
        (gone, "gone"),
        (labels, "with other labels"),
        (inputs, "with another formula, space group or structure"),
    ]
    return [f"{len(ids)} materials {what}{_examples(ids)}" for ids, what in changes if ids]


def _examples(ids: list[str], limit: int = 3) -> str:
    return f" (e.g. {', '.join(ids[:limit])})"


def split_digest(ids: list[str], split: dict[str, np.ndarray]) -> str:
    """SHA-256 of the ids in each part of a split, in order: equal exactly when the split is."""
    tree = {name: [ids[int(i)] for i in rows] for name, rows in sorted(split.items())}
    return hashlib.sha256(json.dumps(tree).encode()).hexdigest()
