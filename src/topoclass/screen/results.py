"""A screen's rows as Parquet, and what is merged from all of them: the summary and the candidates.

Every part file has the same columns (the model decides them, not the rows of a chunk):
``id``, ``source``, ``formula``, ``spacegroup``, per task its answer, class probabilities
(``task:p(class)``) and ``task:predictor``, then ``skipped`` (why a row has no answer, empty
when it has one) and the applicability columns. Merging reads one part at a time, so it needs
memory for the candidates only.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from topoclass.config import TaskConfig
from topoclass.errors import ConfigError
from topoclass.files import atomic_write

FLAG_COLUMNS = ("unknown_elements", "out_of_distribution", "oversize")


def row_schema(tasks: Sequence[TaskConfig]) -> pa.Schema:
    """The columns of every part file of a screen by a model with ``tasks``."""
    fields = [
        pa.field("id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("formula", pa.string()),
        pa.field("spacegroup", pa.int16()),
    ]
    for task in tasks:
        if task.type == "classification":
            fields.append(pa.field(task.name, pa.string()))
            fields.extend(pa.field(f"{task.name}:p({c})", pa.float32()) for c in task.classes or [])
        else:
            fields.append(pa.field(task.name, pa.float64()))
        fields.append(pa.field(f"{task.name}:predictor", pa.string()))
    fields += [
        pa.field("skipped", pa.string()),
        pa.field("num_atoms", pa.int32()),
        pa.field("unknown_elements", pa.string()),
        pa.field("nearest_train_distance", pa.float32()),
        pa.field("out_of_distribution", pa.bool_()),
        pa.field("oversize", pa.bool_()),
        pa.field("flagged", pa.bool_()),
    ]
    return pa.schema(fields)


def part_bytes(rows: list[dict[str, Any]], schema: pa.Schema) -> bytes:
    """One chunk's rows as the bytes of a Parquet file (zstd; written whole, then committed)."""
    table = pa.Table.from_pylist(rows, schema=schema)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def chunk_counts(rows: list[dict[str, Any]], main_task: TaskConfig) -> dict[str, Any]:
    """What a chunk's manifest entry says of its rows (summed into the summary)."""
    answered = [row for row in rows if not row["skipped"]]
    classes: dict[str, int] = {}
    for row in answered:
        label = row.get(main_task.name)
        if label is not None and main_task.type == "classification":
            classes[str(label)] = classes.get(str(label), 0) + 1
    return {
        "items": len(rows),
        "screened": len(answered),
        "skipped": len(rows) - len(answered),
        "flagged": sum(bool(row["flagged"]) for row in answered),
        **{flag: sum(bool(row[flag]) for row in answered) for flag in FLAG_COLUMNS},
        "classes": classes,
    }


def add_counts(total: dict[str, Any], counts: dict[str, Any]) -> dict[str, Any]:
    """``total`` plus one chunk's ``counts`` (nested class counts included)."""
    merged = dict(total)
    for key, value in counts.items():
        if isinstance(value, dict):
            inner = dict(merged.get(key, {}))
            for name, number in value.items():
                inner[name] = inner.get(name, 0) + number
            merged[key] = inner
        else:
            merged[key] = merged.get(key, 0) + value
    return merged


@dataclass(frozen=True)
class RankedClass:
    """A class of interest: candidates are ranked by ``task:p(label)``."""

    task: str
    label: str

    @property
    def column(self) -> str:
        return f"{self.task}:p({self.label})"


def ranked_classes(names: Sequence[str], tasks: Sequence[TaskConfig]) -> list[RankedClass]:
    """``TI`` (the first task that has that class) or ``task:TI`` for each name; ConfigError for
    a class no task has."""
    resolved = []
    for name in names:
        task_name, _, label = name.rpartition(":")
        owners = [t for t in tasks if label in (t.classes or []) and task_name in ("", t.name)]
        if not owners:
            known = "; ".join(f"{t.name}: {', '.join(t.classes or [])}" for t in tasks if t.classes)
            raise ConfigError(f"--rank: no task has a class '{name}' (classes are {known})")
        resolved.append(RankedClass(owners[0].name, label))
    return resolved


def candidates(parts: Sequence[Path], ranked: Sequence[RankedClass], top: int) -> list[dict[str, Any]]:
    """The ``top`` answered rows by probability for each ranked class, best first, read part by part."""
    best: dict[RankedClass, list[dict[str, Any]]] = {entry: [] for entry in ranked}
    wanted = ["id", "source", "formula", "spacegroup", "skipped", "flagged", *FLAG_COLUMNS]
    for part in parts:
        columns = list(dict.fromkeys([*wanted, *(e.task for e in ranked), *(e.column for e in ranked)]))
        table = pq.read_table(part, columns=columns).to_pydict()
        answered = np.array([not reason for reason in table["skipped"]], dtype=bool)
        for entry in ranked:
            scores = np.asarray(table[entry.column], dtype=np.float64)
            scores = np.where(answered, scores, -np.inf)
            order = np.argsort(-scores, kind="stable")[:top]
            rows = [
                {
                    "class": f"{entry.task}:{entry.label}",
                    "probability": float(scores[i]),
                    "predicted": table[entry.task][i],
                    **{key: table[key][i] for key in wanted if key != "skipped"},
                }
                for i in order
                if np.isfinite(scores[i])
            ]
            merged = best[entry] + rows
            merged.sort(key=lambda row: -row["probability"])  # stable: earlier chunks win ties
            best[entry] = merged[:top]
    out: list[dict[str, Any]] = []
    for entry in ranked:
        out.extend({"rank": i + 1, **row} for i, row in enumerate(best[entry]))
    return out


def write_candidates(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = [
        "class",
        "rank",
        "id",
        "source",
        "formula",
        "spacegroup",
        "probability",
        "predicted",
        "flagged",
    ]
    columns += list(FLAG_COLUMNS)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({**row, "probability": round(row["probability"], 6)} for row in rows)
    atomic_write(path, text.getvalue())


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
