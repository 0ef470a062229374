"""From records to preloaded features: the one builder, for training and prediction alike.

Training reads a dataset, featurizes the structures it needs, cleans, builds the
:class:`FeatureSet` and caches it (:func:`prepare_dataset`); prediction takes
unlabelled materials through the same structure step and the same builder
(:func:`featurize_materials`), so a material gets the same features in both.
The expensive part (parsing and graphing crystal structures) runs only when the
featurization cache misses.

The builder computes NumPy arrays (:class:`FeatureArrays`), so prediction runs without
PyTorch; training wraps the same arrays as tensors without copying them. PyTorch and the
cache are imported only by the functions that need them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from topoclass.config import DataConfig, GraphConfig, TaskConfig
from topoclass.data.arrays import FeatureArrays, encode_labels
from topoclass.data.clean import clean_materials, record_problem
from topoclass.data.records import Material, RawDataset, Reject
from topoclass.features.composition import encode_compositions, material_descriptors

if TYPE_CHECKING:
    import torch

    from topoclass.data.featureset import FeatureSet
    from topoclass.features.embedding_store import EmbeddingStore, EmbeddingStoreWriter, StructureEmbedder
    from topoclass.features.graph_store import GraphStore, GraphStoreWriter

    StructureStore = GraphStore | EmbeddingStore
    StoreWriter = GraphStoreWriter | EmbeddingStoreWriter

logger = logging.getLogger(__name__)

# Bumped whenever the features of a record change, so older cache entries are not reused
# (5: Laplacian spectra from NumPy's LAPACK, another basis inside degenerate eigenspaces).
FEATURIZER_VERSION = 5


@dataclass
class PreparedDataset:
    """Features ready for training plus the cleaning report that produced them."""

    name: str
    features: FeatureSet
    main_task: TaskConfig
    rejects: list[Reject]
    counts: dict[str, int]
    cache_path: Path
    from_cache: bool
    seconds: float


@dataclass
class StructuredMaterials:
    """Materials after their structures were featurized: the ones kept, their graphs, the rejects.

    ``graph_rows[i]`` is material i's row in ``graphs`` (crystal graphs, or a backbone's
    vectors), or -1 without a structure (or when the run does not use structures).
    """

    materials: list[Material]
    graph_rows: list[int]
    graphs: StructureStore | None
    rejects: list[Reject]


def attach_structures(
    materials: Sequence[Material],
    graph: GraphConfig,
    *,
    workers: int,
    use_structure: bool,
    writer: StoreWriter | None = None,
    embedder: StructureEmbedder | None = None,
    max_atoms: int = 0,
    progress: bool | None = None,
) -> StructuredMaterials:
    """Featurize the structures the run needs, in parallel; fill formula and space group from them.

    With ``use_structure`` every structure is graphed. Without it, a structure is read
    only when the record lacks its formula or space group (to derive them), and no graph
    is built: a formula-only run never pays for structures it ignores. A space group the
    data already gives is kept and not searched for again (the search is most of the cost).
    With an ``embedder`` (a frozen backbone) each structure becomes the backbone's vector
    instead of a crystal graph. A bad structure (or one of more than ``max_atoms`` atoms, when
    given) makes its record a reject, not an error.
    """
    wanted = [
        i
        for i, m in enumerate(materials)
        if m.structure is not None and (use_structure or not m.formula or m.spacegroup is None)
    ]
    if not wanted:
        plain = [dataclasses.replace(m, structure=None) if m.structure else m for m in materials]
        return StructuredMaterials(plain, [-1] * len(materials), None, [])
    refs = [materials[i].structure for i in wanted]
    searches = [materials[i].spacegroup is None for i in wanted]
    if embedder is not None and use_structure:
        from topoclass.features.embedding_pipeline import embed_structures

        result = embed_structures(
            refs,  # type: ignore[arg-type]
            graph,
            embedder,
            find_spacegroup=searches,
            workers=workers,
            writer=writer,  # type: ignore[arg-type]
        )
    else:
        from topoclass.features.structure_pipeline import featurize_structures

        result = featurize_structures(
            refs,  # type: ignore[arg-type]
            graph,
            find_spacegroup=searches,
            workers=workers,
            with_graphs=use_structure,
            writer=writer,  # type: ignore[arg-type]
            max_atoms=max_atoms,
            progress=progress,
        )
    position = dict(zip(wanted, range(len(wanted)), strict=True))
    kept: list[Material] = []
    rejects: list[Reject] = []
    graph_rows: list[int] = []
    for i, material in enumerate(materials):
        j = position.get(i)
        if j is None:
            kept.append(dataclasses.replace(material, structure=None) if material.structure else material)
            graph_rows.append(-1)
        elif result.reason[j] is not None:
            rejects.append(Reject(material.id, material.source, str(result.reason[j]), "bad_structure"))
        else:
            spacegroup = material.spacegroup if material.spacegroup is not None else result.spacegroup[j]
            derived = dataclasses.replace(
                material, formula=material.formula or str(result.formula[j]), spacegroup=spacegroup
            )
            kept.append(derived if use_structure else dataclasses.replace(derived, structure=None))
            graph_rows.append(int(result.graph_index[j]) if use_structure else -1)
    return StructuredMaterials(kept, graph_rows, result.store if use_structure else None, rejects)


def build_feature_arrays(
    materials: Sequence[Material],
    tasks: list[TaskConfig],
    *,
    graphs: Any,
    graph_rows: Sequence[int],
) -> FeatureArrays:
    """The features of valid materials (labels may be missing): what every model reads."""
    formulas = [m.formula for m in materials]
    spacegroups = [int(m.spacegroup) for m in materials]  # type: ignore[arg-type]
    element_index, element_fraction = encode_compositions(formulas)
    return FeatureArrays(
        ids=[m.id for m in materials],
        formulas=formulas,
        tasks=tasks,
        element_index=element_index,
        element_fraction=element_fraction,
        descriptors=material_descriptors(formulas, spacegroups),
        spacegroup=np.asarray(spacegroups, dtype=np.int64),
        labels=encode_labels([m.labels for m in materials], tasks),
        graph_index=np.asarray(list(graph_rows), dtype=np.int64),
        graphs=graphs,
    )


def build_feature_set(
    materials: Sequence[Material],
    tasks: list[TaskConfig],
    *,
    graphs: StructureStore | None,
    graph_rows: Sequence[int],
) -> FeatureSet:
    """:func:`build_feature_arrays` as tensors (sharing the arrays' memory), for training."""
    from topoclass.data.featureset import FeatureSet

    return FeatureSet.from_arrays(
        build_feature_arrays(materials, tasks, graphs=graphs, graph_rows=graph_rows)
    )


def featurize_materials(
    materials: Sequence[Material],
    tasks: list[TaskConfig],
    data: DataConfig,
    embedder: StructureEmbedder | None = None,
    *,
    max_atoms: int = 0,
    progress: bool | None = None,
) -> tuple[FeatureArrays | None, list[Reject]]:
    """Features of unlabelled materials (for prediction), with the records that cannot have any.

    ``embedder``: a frozen pretrained backbone whose vectors stand for the structures. A structure
    of more than ``max_atoms`` atoms (0: any number) is turned away before its graph is built.
    ``progress``: the featurization's progress bar (default: on a terminal).
    """
    structured = attach_structures(
        materials,
        data.graph,
        workers=data.featurize_workers,
        use_structure=data.use_structure,
        embedder=embedder,
        max_atoms=max_atoms,
        progress=progress,
    )
    rejects = list(structured.rejects)
    usable, rows = [], []
    for material, row in zip(structured.materials, structured.graph_rows, strict=True):
        problem = record_problem(material, [])
        if problem is None:
            usable.append(material)
            rows.append(row)
        else:
            rejects.append(problem)
    if not usable:
        return None, rejects
    return build_feature_arrays(usable, tasks, graphs=structured.graphs, graph_rows=rows), rejects


def _featurize(
    raw: RawDataset,
    data: DataConfig,
    writer: StoreWriter | None = None,
    embedder: StructureEmbedder | None = None,
) -> tuple[FeatureSet, list[Reject], dict[str, int]]:
    structured = attach_structures(
        raw.materials,
        data.graph,
        workers=data.featurize_workers,
        use_structure=data.use_structure,
        writer=writer,
        embedder=embedder,
    )
    cleaned = clean_materials(
        structured.materials, raw.tasks, prior_rejects=[*raw.rejects, *structured.rejects]
    )
    # Cleaning may merge records into new objects; ids are unique after it.
    row_of = {m.id: row for m, row in zip(structured.materials, structured.graph_rows, strict=True)}
    materials = cleaned.materials
    features = build_feature_set(
        materials,
        cleaned.tasks,
        graphs=structured.graphs,
        graph_rows=[row_of.get(m.id, -1) for m in materials],
    )
    # The writer checked each graph as it was written; asking the store would read them all back.
    finite = finite_rows(features, finite_graphs=writer.finite() if writer is not None else None)
    if not bool(finite.all()):
        import torch

        # A NaN in one material's features would poison every step it is drawn in: leave it out, say so.
        bad = set(torch.nonzero(~finite).squeeze(1).tolist())
        for i in sorted(bad):
            reason = "features: not finite (NaN or infinity) after featurization"
            cleaned.rejects.append(
                Reject(materials[i].id, materials[i].source, reason, "non_finite_features")
            )
        materials = [m for i, m in enumerate(materials) if i not in bad]
        features = build_feature_set(
            materials,
            cleaned.tasks,
            graphs=structured.graphs,
            graph_rows=[row_of.get(m.id, -1) for m in materials],
        )
        cleaned.counts["kept"] -= len(bad)
        cleaned.counts["non_finite_features"] = len(bad)
    return features, cleaned.rejects, cleaned.counts


def finite_rows(features: FeatureSet, *, finite_graphs: np.ndarray | None = None) -> torch.Tensor:
    """Which materials' features are all finite, [N] bool (their crystal graph's included).

    ``finite_graphs`` says which of ``features.graphs`` are finite where that is already known
    (:meth:`GraphStoreWriter.finite`); otherwise the graphs are checked here.
    """
    import torch

    finite = torch.isfinite(features.descriptors).all(dim=1) & torch.isfinite(features.element_fraction).all(
        dim=1
    )
    graphs = features.graphs
    if graphs is None or not len(graphs):
        return finite
    known = finite_graphs if finite_graphs is not None else graphs.finite()
    broken = ~torch.from_numpy(np.asarray(known, dtype=bool))
    has_graph = features.graph_index >= 0
    return finite & ~(has_graph & broken[features.graph_index.clamp_min(0)])


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
            from topoclass.data.cache import fingerprint

            structure = fingerprint([ref.text, ref.format])
    return [material.id, material.formula, material.spacegroup, material.labels, structure]


def _cache_key(raw: RawDataset, data: DataConfig, embedder: StructureEmbedder | None) -> str:
    from topoclass.data.cache import fingerprint

    settings = {
        "featurizer": FEATURIZER_VERSION,
        "dataset": raw.name,
        "tasks": [t.model_dump(mode="json") for t in raw.tasks],
        # spglib's search, the only one before moyopy's, leaves the key as it was: caches stay valid.
        "graph": data.graph.model_dump(
            mode="json", exclude={"symmetry"} if data.graph.symmetry == "spglib" else None
        ),
        "use_structure": data.use_structure,
    }
    if embedder is not None and data.use_structure:
        # Other weights make other vectors: the weights' SHA-256 is part of the key.
        kept = ["with structures"] if embedder.keep_structures else []
        settings["backbone"] = [embedder.name, embedder.key, *kept]
    records = [_record_fingerprint(m) for m in raw.materials]
    rejects = [dataclasses.astuple(r) for r in raw.rejects]
    return fingerprint([settings, records, rejects])


def prepare_dataset(data: DataConfig, embedder: StructureEmbedder | None = None) -> PreparedDataset:
    """Load the configured dataset's features, from the cache when it is current.

    With an ``embedder`` (a frozen pretrained backbone) structures become its vectors,
    computed once and cached under its weights' digest.
    """
    from topoclass.data.cache import read_entry
    from topoclass.data.datasets import load_dataset

    start = time.perf_counter()
    raw = load_dataset(data)
    key = _cache_key(raw, data, embedder)
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
        features, rejects, counts = _featurize_into_cache(raw, data, entry, embedder)
    main_task = next(task for task in features.tasks if task.name == raw.main_task)
    return PreparedDataset(
        name=raw.name,
        features=features,
        main_task=main_task,
        rejects=rejects,
        counts=counts,
        cache_path=entry,
        from_cache=cached is not None,
        seconds=time.perf_counter() - start,
    )


def _featurize_into_cache(
    raw: RawDataset, data: DataConfig, entry: Path, embedder: StructureEmbedder | None = None
) -> tuple[FeatureSet, list[Reject], dict[str, int]]:
    """Featurize, streaming the crystal graphs (or backbone vectors) to disk, write the cache entry,
    and read it back memory-mapped: the memory a featurization needs does not grow with the
    number of structures."""
    import torch

    from topoclass.data.cache import begin_entry, read_entry, write_entry
    from topoclass.tensorfile import numpy_code

    staging = begin_entry(entry)
    writer = _store_writer(data, embedder, staging / "structure-parts") if staging is not None else None
    features, rejects, counts = _featurize(raw, data, writer, embedder)
    meta = {
        "ids": features.ids,
        "formulas": features.formulas,
        "tasks": [t.model_dump(mode="json") for t in features.tasks],
        "rejects": [dataclasses.asdict(r) for r in rejects],
        "counts": counts,
    }
    if writer is None or not writer.has_files_for(features.graphs):
        write_entry(entry, features.tensors(), meta, staging=staging)
        return features, rejects, counts
    prefix = f"{features.store_prefix}."
    parts = writer.parts()
    streamed = {
        f"{prefix}{name}": (numpy_code(dtype), shape, [path])
        for name, (dtype, shape, path) in parts.items()
        if not name.startswith("edge_")
    }
    if "edge_source" in parts:
        edges = parts["edge_source"][1][0]
        streamed[f"{prefix}edge_index"] = (
            "I64",
            (2, edges),
            [parts["edge_source"][2], parts["edge_target"][2]],
        )
        streamed[f"{prefix}edge_distance"] = (
            numpy_code(parts["edge_distance"][0]),
            (edges,),
            [parts["edge_distance"][2]],
        )
    small = {
        **features.tensors(with_graphs=False),
        **{f"{prefix}{k}": torch.as_tensor(v) for k, v in writer.pointers().items()},
    }
    if write_entry(entry, small, meta, staging=staging, streamed=streamed):
        cached = read_entry(entry)
        if cached is not None:
            return _features_from_cache(*cached), rejects, counts
    return features, rejects, counts


def _store_writer(data: DataConfig, embedder: StructureEmbedder | None, directory: Path) -> StoreWriter:
    """Where featurization streams each structure's graph, or its backbone vector."""
    if embedder is not None and data.use_structure:
        from topoclass.features.embedding_store import EmbeddingStoreWriter

        return EmbeddingStoreWriter(embedder.width, directory, keep_structures=embedder.keep_structures)
    from topoclass.features.graph_store import GraphStoreWriter

    return GraphStoreWriter(data.graph.spectral_k, directory)


def _features_from_cache(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> FeatureSet:
    from topoclass.data.featureset import FeatureSet

    graph_tensors = {k.removeprefix("graph."): v for k, v in tensors.items() if k.startswith("graph.")}
    vectors = {k.removeprefix("embedding."): v for k, v in tensors.items() if k.startswith("embedding.")}
    graphs: StructureStore | None = None
    if graph_tensors:
        from topoclass.features.graph_store import GraphStore

        graphs = GraphStore.from_tensors(graph_tensors)
    elif vectors:
        from topoclass.features.embedding_store import EmbeddingStore

        graphs = EmbeddingStore.from_tensors(vectors)
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
