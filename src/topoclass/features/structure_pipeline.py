"""Featurize many structures: read, vet, derive formula and space group, build graphs, in parallel.

Each structure is independent, so worker processes take them in chunks; a structure that
fails at any step yields a one-line reason and never stops the others. Spectra are then
computed in the parent, batched by graph size (on the GPU when training has one). The space-group
search (spglib) costs more than everything else together, so it runs only for the structures
whose space group is not already known.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from topoclass.config import GraphConfig
from topoclass.errors import DataError
from topoclass.features.graph import CrystalGraph, build_crystal_graph
from topoclass.features.graph_store import GraphStore, GraphStoreWriter
from topoclass.features.spectral import SpectralCache, laplacian_spectra
from topoclass.features.structures import (
    StructureRef,
    check_structure,
    periodic_neighbors,
    read_structure,
    reduced_formula,
    search_spacegroup,
)
from topoclass.threads import available_cpus

if TYPE_CHECKING:
    from topoclass.features.embedding_store import EmbeddingStore

logger = logging.getLogger(__name__)

# Below this many structures a process pool costs more than it saves.
_MIN_STRUCTURES_FOR_POOL = 16

# What one worker returns for one structure: formula, space group (None when not searched),
# reject reason, graph.
_Outcome = tuple[str | None, int | None, str | None, CrystalGraph | None]


@dataclass
class StructureFeatures:
    """Per input reference: derived formula and space group, or the reason it failed, and its graph.

    ``spacegroup[i]`` is None where the search was not asked for. ``graph_index[i]`` is the
    position of reference i's graph in ``store``, or -1 when it failed.
    """

    formula: list[str | None]
    spacegroup: list[int | None]
    reason: list[str | None]
    graph_index: np.ndarray
    store: GraphStore | EmbeddingStore  # the vectors of a frozen backbone (embedding_pipeline)

    def __len__(self) -> int:
        return len(self.reason)

    @property
    def num_failed(self) -> int:
        return sum(reason is not None for reason in self.reason)


def featurize_one(
    ref: StructureRef,
    find_spacegroup: bool,
    *,
    cutoff: float,
    max_neighbors: int,
    symprec: float,
    symmetry: str,
    with_graph: bool = True,
    max_atoms: int = 0,
) -> _Outcome:
    """Read -> check -> formula (and space group) -> graph for one structure; failures become reasons.

    Without ``with_graph`` only the formula (and space group) are derived: no neighbour search.
    A structure of more than ``max_atoms`` atoms (0: no limit) is turned away right after reading:
    its neighbour search and spectrum would cost more than a whole chunk of ordinary ones.
    """
    try:
        structure = read_structure(ref)
        if 0 < max_atoms < len(structure):
            return None, None, f"{len(structure)} atoms in the cell, more than the limit of {max_atoms}", None
        if not with_graph:
            spacegroup = search_spacegroup(structure, symprec, symmetry) if find_spacegroup else None
            return reduced_formula(structure), spacegroup, None, None
        neighbors = periodic_neighbors(structure, cutoff)
        problem = check_structure(structure, cutoff=cutoff, neighbors=neighbors)
        if problem is not None:
            return None, None, problem, None
        formula = reduced_formula(structure)
        spacegroup = search_spacegroup(structure, symprec, symmetry) if find_spacegroup else None
        graph = build_crystal_graph(
            structure, cutoff=cutoff, max_neighbors=max_neighbors, neighbors=neighbors
        )
    except DataError as exc:
        return None, None, exc.reason, None
    except Exception as exc:  # a library failing on one odd structure must not stop the others
        first_line = (str(exc).strip().splitlines() or [""])[0]
        logger.debug("featurizing %s failed", ref.describe(), exc_info=True)
        return None, None, f"featurization failed: {type(exc).__name__}: {first_line}", None
    return formula, spacegroup, None, graph


def featurize_structures(
    refs: Sequence[StructureRef],
    graph: GraphConfig,
    *,
    find_spacegroup: Sequence[bool] | None = None,
    workers: int = 0,
    with_graphs: bool = True,
    progress: bool | None = None,
    device: str = "cpu",
    spectral_cache: SpectralCache | None = None,
    writer: GraphStoreWriter | None = None,
    chunk: int = 1024,
    max_atoms: int = 0,
) -> StructureFeatures:
    """Featurize ``refs`` with ``workers`` processes (0: one per CPU given to this process; 1: here).

    ``find_spacegroup[i]`` says whether to search reference i's space group (default: all).
    Without ``with_graphs`` only formulas and space groups are derived. Graphs go, ``chunk``
    at a time with their spectra, to ``writer`` (default: in memory; one writing to disk keeps
    the memory bounded whatever the number of structures). Each distinct graph's spectrum
    is computed once, through ``spectral_cache`` (default: one for this call only). The
    progress bar (default) is drawn only on a terminal: redrawn into a batch job's log it is
    thousands of lines of noise. A structure of more than ``max_atoms`` atoms (0: no limit) fails.
    Spectra are solved on ``device`` (see :func:`laplacian_spectra`: the CPU unless told).
    """
    searches = [True] * len(refs) if find_spacegroup is None else list(find_spacegroup)
    if len(searches) != len(refs):
        raise ValueError(f"find_spacegroup has {len(searches)} entries for {len(refs)} structures")
    start = time.perf_counter()
    # A few structures are featurized here: starting worker processes would cost more.
    workers = 1 if len(refs) < _MIN_STRUCTURES_FOR_POOL else workers or available_cpus()[0]
    if progress is None:
        progress = sys.stderr.isatty()
    # Not `writer or ...`: writers and caches have a length, so an empty one passed in is falsy.
    writer = writer if writer is not None else GraphStoreWriter(graph.spectral_k)
    cache = spectral_cache if spectral_cache is not None else SpectralCache()
    formulas: list[str | None] = []
    spacegroups: list[int | None] = []
    reasons: list[str | None] = []
    graph_index = np.full(len(refs), -1, dtype=np.int64)
    pending: list[tuple[int, CrystalGraph]] = []
    spectra_seconds = 0.0

    def flush() -> None:
        nonlocal spectra_seconds
        started = time.perf_counter()
        graphs = [g for _, g in pending]
        first = len(writer)
        writer.add(graphs, laplacian_spectra(graphs, graph.spectral_k, device=device, cache=cache))
        graph_index[[i for i, _ in pending]] = np.arange(first, first + len(graphs))
        pending.clear()
        spectra_seconds += time.perf_counter() - started

    with tqdm(total=len(refs), desc="featurizing structures", unit="structure", disable=not progress) as bar:
        for index, (formula, spacegroup, reason, crystal) in enumerate(
            _outcomes(refs, searches, graph, workers=workers, with_graphs=with_graphs, max_atoms=max_atoms)
        ):
            formulas.append(formula)
            spacegroups.append(spacegroup)
            reasons.append(reason)
            if crystal is not None:
                pending.append((index, crystal))
                if len(pending) >= chunk:
                    flush()
            bar.update()
        flush()
    logger.info(
        "featurized %d structure(s) with %d process(es) in %.1f s (%.1f s of it for Laplacian spectra)",
        len(refs),
        workers,
        time.perf_counter() - start,
        spectra_seconds,
    )
    features = StructureFeatures(formulas, spacegroups, reasons, graph_index, writer.store())
    if features.num_failed:
        logger.info("%d of %d structures could not be featurized", features.num_failed, len(features))
    return features


def _outcomes(
    refs: Sequence[StructureRef],
    searches: Sequence[bool],
    graph: GraphConfig,
    *,
    workers: int,
    with_graphs: bool,
    max_atoms: int = 0,
) -> Iterator[_Outcome]:
    """Each reference's outcome, in order, from worker processes (or here, with one)."""
    work = partial(
        featurize_one,
        cutoff=graph.cutoff,
        max_neighbors=graph.max_neighbors,
        symprec=graph.symprec,
        symmetry=graph.symmetry,
        with_graph=with_graphs,
        max_atoms=max_atoms,
    )
    if workers == 1:
        for ref, search in zip(refs, searches, strict=True):
            yield work(ref, search)
        return
    chunksize = max(1, min(32, len(refs) // (workers * 8)))
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=_pool_context(), initializer=_one_thread_per_worker
    )
    try:
        yield from pool.map(work, refs, searches, chunksize=chunksize)
    except BaseException:
        # A stop signal or an error: drop the work not started rather than wait for it.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _one_thread_per_worker() -> None:
    """The workers already fill every CPU: a worker's own NumPy and PyTorch threads would oversubscribe."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    torch = sys.modules.get("torch")  # forked from a parent that loaded it (training)
    if torch is not None:
        torch.set_num_threads(1)


def _pool_context() -> multiprocessing.context.BaseContext | None:
    """Fork on Linux: workers inherit the imported libraries instead of importing them again
    (seconds per worker). Workers run only NumPy, pymatgen, spglib and gemmi code, never torch,
    so forking a parent that has torch threads is safe here."""
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return None
