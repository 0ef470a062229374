"""From a data config to preloaded features: read, featurize structures, clean, encode, cache.

The expensive part (parsing and graphing crystal structures) runs only when
the featurization cache misses; a hit skips straight to loading tensors.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from topoclass.config import DataConfig, GraphConfig, TaskConfig
from topoclass.data.cache import fingerprint, read_entry, write_entry
from topoclass.data.clean import clean_materials
from topoclass.data.featureset import FeatureSet, encode_labels
from topoclass.data.records import Material, Reject
from topoclass.data.registry import RawDataset, load_dataset
from topoclass.features.composition import encode_compositions, material_descriptors

if TYPE_CHECKING:
    from topoclass.features.graph_store import GraphStore

logger = logging.getLogger(__name__)

FEATURIZER_VERSION = 3


@dataclass
class PreparedDataset:
    """Features ready for training plus the cleaning report that produced them."""

    name: str
    features: FeatureSet
    main_task: str
    rejects: list[Reject]
    counts: dict[str, int]
    cache_path: Path
    from_cache: bool
    seconds: float


def _record_fingerprint(material: Material) -> list[Any]:
    structure: Any = None
    if material.structure is not None:
        ref = material.structure
        if ref.path is not None:
            # One os.stat per file: this runs for every structure on every cached load.
            path = os.fspath(ref.path)
            try:
                stat = os.stat(path)
                structure = [path, stat.st_size, stat.st_mtime_ns]
            except OSError:
                structure = [path, None, None]
        else:
            structure = fingerprint([ref.text, ref.format])
    return [material.id, material.formula, material.spacegroup, material.labels, structure]


def _cache_key(raw: RawDataset, data: DataConfig) -> str:
    settings = {
        "featurizer": FEATURIZER_VERSION,
        "dataset": raw.name,
        "tasks": [t.model_dump(mode="json") for t in raw.tasks],
        "graph": data.graph.model_dump(mode="json"),
    }
    records = [_record_fingerprint(m) for m in raw.materials]
    rejects = [dataclasses.astuple(r) for r in raw.rejects]
    return fingerprint([settings, records, rejects])


def attach_structures(
    materials: list[Material], graph: GraphConfig, workers: int
) -> tuple[list[Material], list[Reject], GraphStore | None, list[int]]:
    """Featurize the materials' structures in parallel; fill formula/space group from them when missing.

    A space group the data already gives is kept and not searched for again (the search is
    most of the featurization time).

    Returns the materials that remain (a bad structure is a reject, not an error), the rejects,
    the packed graphs and each remaining material's row in them (-1 without a structure).
    """
    structured = [i for i, m in enumerate(materials) if m.structure is not None]
    if not structured:
        return list(materials), [], None, [-1] * len(materials)
    from topoclass.features.structure_pipeline import featurize_structures

    result = featurize_structures(
        [materials[i].structure for i in structured],
        graph,
        find_spacegroup=[materials[i].spacegroup is None for i in structured],
        workers=workers,
    )
    position = dict(zip(structured, range(len(structured)), strict=True))
    kept: list[Material] = []
    rejects: list[Reject] = []
    graph_rows: list[int] = []
    for i, material in enumerate(materials):
        j = position.get(i)
        if j is None:
            kept.append(material)
            graph_rows.append(-1)
        elif result.reason[j] is not None:
            rejects.append(Reject(material.id, material.source, result.reason[j], "bad_structure"))
        else:
            spacegroup = material.spacegroup if material.spacegroup is not None else result.spacegroup[j]
            kept.append(
                dataclasses.replace(
                    material, formula=material.formula or result.formula[j], spacegroup=spacegroup
                )
            )
            graph_rows.append(int(result.graph_index[j]))
    return kept, rejects, result.store, graph_rows


def _featurize(
    raw: RawDataset, data: DataConfig
) -> tuple[FeatureSet, list[Reject], dict[str, int], list[int]]:
    materials, structure_rejects, store, graph_rows = attach_structures(
        raw.materials, data.graph, data.featurize_workers
    )
    row_of = {id(m): r for m, r in zip(materials, graph_rows, strict=True)}
    cleaned = clean_materials(materials, raw.tasks, prior_rejects=[*raw.rejects, *structure_rejects])
    kept = cleaned.materials
    # Cleaning may canonicalize records (new objects): map back by id.
    graph_by_id = {m.id: row_of[id(m)] for m in materials}
    element_index, element_fraction = encode_compositions([m.formula for m in kept])
    features = FeatureSet(
        ids=[m.id for m in kept],
        formulas=[m.formula for m in kept],
        tasks=cleaned.tasks,
        element_index=torch.from_numpy(element_index),
        element_fraction=torch.from_numpy(element_fraction),
        descriptors=torch.from_numpy(
            material_descriptors([m.formula for m in kept], [m.spacegroup for m in kept])
        ),
        spacegroup=torch.tensor([m.spacegroup for m in kept], dtype=torch.long),
        labels=encode_labels([m.labels for m in kept], cleaned.tasks),
        graph_index=torch.tensor([graph_by_id.get(m.id, -1) for m in kept], dtype=torch.long),
        graphs=store,
    )
    return features, cleaned.rejects, cleaned.counts


def prepare_dataset(data: DataConfig) -> PreparedDataset:
    """Load the configured dataset's features, from the cache when it is current."""
    start = time.perf_counter()
    raw = load_dataset(data)
    key = _cache_key(raw, data)
    entry = data.resolved_cache_dir() / f"{raw.name}-{key[:20]}"
    cached = read_entry(entry)
    if cached is not None:
        logger.info("Loading dataset with preloading from cache %s", entry)
        tensors, meta = cached
        features = _features_from_cache(tensors, meta)
        rejects = [Reject(**r) for r in meta["rejects"]]
        counts = meta["counts"]
    else:
        logger.info(
            "Featurizing %d records of %s (first run; cached afterwards)", len(raw.materials), raw.name
        )
        features, rejects, counts = _featurize(raw, data)
        meta = {
            "ids": features.ids,
            "formulas": features.formulas,
            "tasks": [t.model_dump(mode="json") for t in features.tasks],
            "rejects": [dataclasses.asdict(r) for r in rejects],
            "counts": counts,
        }
        write_entry(entry, features.tensors(), meta)
    return PreparedDataset(
        name=raw.name,
        features=features,
        main_task=raw.main_task,
        rejects=rejects,
        counts=counts,
        cache_path=entry,
        from_cache=cached is not None,
        seconds=time.perf_counter() - start,
    )


def _features_from_cache(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> FeatureSet:
    graph_tensors = {k.removeprefix("graph."): v for k, v in tensors.items() if k.startswith("graph.")}
    graphs = None
    if graph_tensors:
        from topoclass.features.graph_store import GraphStore

        graphs = GraphStore.from_tensors(graph_tensors)
    return FeatureSet(
        ids=meta["ids"],
        formulas=meta["formulas"],
        tasks=[TaskConfig.model_validate(t) for t in meta["tasks"]],
        element_index=tensors["element_index"],
        element_fraction=tensors["element_fraction"],
        descriptors=tensors["descriptors"],
        spacegroup=tensors["spacegroup"],
        labels=tensors["labels"],
        graph_index=tensors["graph_index"],
        graphs=graphs,
    )
