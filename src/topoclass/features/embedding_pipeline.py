"""Embed many structures with a pretrained backbone: read, vet, derive formula and space group, embed.

Worker processes take the structures in chunks; each chunk is vetted structure by
structure (as for crystal graphs, so both encoders reject the same structures) and the
survivors go through the backbone in one batched forward pass, the backbone's own graph
conversion included. Each worker runs one thread: the workers already fill the CPUs.
A structure the backbone cannot take becomes a reject with its reason, never an error.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
from tqdm import tqdm

from topoclass.config import GraphConfig
from topoclass.errors import DataError
from topoclass.features.embedding_store import EmbeddingStoreWriter, StructureEmbedder
from topoclass.features.structure_pipeline import (
    _MIN_STRUCTURES_FOR_POOL,
    StructureFeatures,
    _one_thread_per_worker,
    _pool_context,
)
from topoclass.features.structures import (
    StructureRef,
    check_structure,
    periodic_neighbors,
    read_structure,
    reduced_formula,
    search_spacegroup,
)
from topoclass.threads import available_cpus

logger = logging.getLogger(__name__)

# Structures per worker task and per backbone forward pass: large enough to batch well,
# small enough that a worker's memory stays near one chunk's.
CHUNK = 48


@dataclass
class _Embedded:
    """One structure's outcome: formula, space group (None when not searched), reason, atoms, vector."""

    formula: str | None
    spacegroup: int | None
    reason: str | None
    atomic_numbers: np.ndarray | None = None
    vector: np.ndarray | None = None
    frac_coords: np.ndarray | None = None
    lattice: np.ndarray | None = None


def embed_chunk(
    refs: Sequence[StructureRef],
    searches: Sequence[bool],
    *,
    embedder: StructureEmbedder,
    cutoff: float,
    symprec: float,
    symmetry: str,
) -> list[_Embedded]:
    """Vet each structure, then embed the good ones in one pass (one at a time if the pass fails)."""
    outcomes: list[_Embedded] = []
    structures = []
    for ref, search in zip(refs, searches, strict=True):
        try:
            structure = read_structure(ref)
            problem = check_structure(
                structure, cutoff=cutoff, neighbors=periodic_neighbors(structure, cutoff)
            )
            if problem is not None:
                outcomes.append(_Embedded(None, None, problem))
                continue
            spacegroup = search_spacegroup(structure, symprec, symmetry) if search else None
            outcomes.append(_Embedded(reduced_formula(structure), spacegroup, None))
            structures.append((len(outcomes) - 1, structure))
        except DataError as exc:
            outcomes.append(_Embedded(None, None, exc.reason))
        except Exception as exc:  # a library failing on one odd structure must not stop the others
            outcomes.append(_Embedded(None, None, _failure(exc)))
    if not structures:
        return outcomes
    try:
        vectors = embedder.embed([s for _, s in structures])
        done = list(zip(structures, vectors, strict=True))
    except Exception:  # find the structure the backbone refuses, and keep the others
        done = []
        for position, structure in structures:
            try:
                done.append(((position, structure), embedder.embed([structure])[0]))
            except Exception as exc:
                outcomes[position] = _Embedded(None, None, f"{embedder.name}: {_failure(exc)}")
    for (position, structure), vector in done:
        outcome = outcomes[position]
        outcome.atomic_numbers = np.array(structure.atomic_numbers, dtype=np.int64)
        outcome.vector = np.asarray(vector, dtype=np.float32)
        if embedder.keep_structures:
            outcome.frac_coords = np.asarray(structure.frac_coords, dtype=np.float64)
            outcome.lattice = np.asarray(structure.lattice.matrix, dtype=np.float64)
    return outcomes


def _failure(exc: BaseException) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"featurization failed: {type(exc).__name__}: {first_line}"


def embed_structures(
    refs: Sequence[StructureRef],
    graph: GraphConfig,
    embedder: StructureEmbedder,
    *,
    find_spacegroup: Sequence[bool] | None = None,
    workers: int = 0,
    writer: EmbeddingStoreWriter | None = None,
    progress: bool | None = None,
) -> StructureFeatures:
    """Embed ``refs`` with ``workers`` processes (0: one per CPU given to this process; 1: here).

    Vectors go to ``writer`` chunk by chunk (default: in memory). ``graph`` gives the vetting
    cutoff and the space-group tolerance.
    """
    searches = [True] * len(refs) if find_spacegroup is None else list(find_spacegroup)
    start = time.perf_counter()
    workers = 1 if len(refs) < _MIN_STRUCTURES_FOR_POOL else workers or available_cpus()[0]
    writer = (
        writer
        if writer is not None
        else EmbeddingStoreWriter(embedder.width, keep_structures=embedder.keep_structures)
    )
    formulas: list[str | None] = []
    spacegroups: list[int | None] = []
    reasons: list[str | None] = []
    store_rows = np.full(len(refs), -1, dtype=np.int64)
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(
        total=len(refs), desc=f"embedding ({embedder.name})", unit="structure", disable=not show
    ) as bar:
        for outcomes in _chunk_outcomes(refs, searches, graph, embedder, workers=workers):
            first = len(formulas)
            kept = [(first + i, o) for i, o in enumerate(outcomes) if o.vector is not None]
            if kept:
                store_rows[[i for i, _ in kept]] = np.arange(len(writer), len(writer) + len(kept))
                writer.add(
                    np.stack([o.vector for _, o in kept]),  # type: ignore[misc]
                    [o.atomic_numbers for _, o in kept],  # type: ignore[misc]
                    [o.frac_coords for _, o in kept if o.frac_coords is not None],
                    [o.lattice for _, o in kept if o.lattice is not None],
                )
            for outcome in outcomes:
                formulas.append(outcome.formula)
                spacegroups.append(outcome.spacegroup)
                reasons.append(outcome.reason)
            bar.update(len(outcomes))
    logger.info(
        "embedded %d structure(s) with %s using %d process(es) in %.1f s",
        len(refs),
        embedder.name,
        workers,
        time.perf_counter() - start,
    )
    return StructureFeatures(formulas, spacegroups, reasons, store_rows, writer.store())


def _chunk_outcomes(
    refs: Sequence[StructureRef],
    searches: Sequence[bool],
    graph: GraphConfig,
    embedder: StructureEmbedder,
    *,
    workers: int,
) -> Iterator[list[_Embedded]]:
    """Each chunk's outcomes, in order, from worker processes (or here, with one)."""
    work = partial(
        embed_chunk, embedder=embedder, cutoff=graph.cutoff, symprec=graph.symprec, symmetry=graph.symmetry
    )
    chunks = [(refs[i : i + CHUNK], searches[i : i + CHUNK]) for i in range(0, len(refs), CHUNK)]
    if workers == 1:
        for chunk_refs, chunk_searches in chunks:
            yield work(chunk_refs, chunk_searches)
        return
    # Forked workers run the backbone with one thread each (no OpenMP pool of the parent is entered).
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=_pool_context(), initializer=_one_thread_per_worker
    )
    try:
        yield from pool.map(work, [c[0] for c in chunks], [c[1] for c in chunks])
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
