"""How much faster is the structure featurization pipeline than a plain per-structure loop?

On a random subset of the tqc2020 CIFs, in the same run (files pre-read once so both
paths find them in the page cache), it times two pairs that do the same work:

1. read CIF + periodic neighbour graph + Laplacian spectrum, the featurization proper
   (what a table that gives the space group needs):
   (a) a straightforward reference, one structure at a time in one process: pymatgen
       ``Structure.from_file``, ``get_neighbor_list`` with the nearest ``max_neighbors``
       kept per atom, and NumPy ``eigh`` of the normalized Laplacian;
   (b) ``featurize_structures`` without the space-group search, with its default workers
       (gemmi CIF reading, worker processes, spectra batched by graph size);
2. the same plus the reduced formula and the spglib space group (what the tqc2020 adapter
   needs): (a) adds ``SpacegroupAnalyzer``, (b) runs its spglib search.

The best of ``--repeats`` interleaved runs is kept (other processes only add time). It
then checks that both give the same formulas, space groups, edges, distances and
eigenvalues, and prints times, ratios and any disagreement. ``--full`` also featurizes
every structure and prints the wall time.

Usage: ``python benchmarks/featurize_structures.py [--data-dir DIR] [--subset 500] [--full]``
(the data directory defaults to the environment variable TOPOCLASS_DATA_DIR).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from scipy.sparse.csgraph import laplacian

from topoclass.config import DATA_DIR_ENV, GraphConfig
from topoclass.data.records import StructureRef
from topoclass.features.spectral import SpectralCache
from topoclass.features.structure_pipeline import featurize_structures
from topoclass.features.structures import reduced_formula

GRAPH = GraphConfig()


def reference_one(path: Path) -> dict:
    """The plain path for one CIF; returns its results and the seconds each part took."""
    start = time.perf_counter()
    structure = Structure.from_file(path)
    centers, neighbors, images, distances = structure.get_neighbor_list(GRAPH.cutoff)
    sources, targets, kept = [], [], []
    for atom in range(len(structure)):
        mine = np.flatnonzero(centers == atom)
        order = np.lexsort((*images[mine].T[::-1], neighbors[mine], np.rint(distances[mine] * 1e5)))
        chosen = mine[order[: GRAPH.max_neighbors]]
        sources.extend(neighbors[chosen])
        targets.extend(centers[chosen])
        kept.extend(distances[chosen])
    n = len(structure)
    counts = np.zeros((n, n))
    distinct = np.array(sources) != np.array(targets)
    np.add.at(counts, (np.array(sources)[distinct], np.array(targets)[distinct]), 1.0)
    eigenvalues = np.linalg.eigh(laplacian(0.5 * (counts + counts.T), normed=True))[0][: GRAPH.spectral_k]
    core = time.perf_counter() - start
    start = time.perf_counter()
    spacegroup = SpacegroupAnalyzer(structure, symprec=GRAPH.symprec).get_space_group_number()
    formula = reduced_formula(structure)
    symmetry = time.perf_counter() - start
    edges = sorted(zip(sources, targets, np.round(kept, 4), strict=True))
    return {
        "formula": formula,
        "spacegroup": spacegroup,
        "edges": edges,
        "eigenvalues": eigenvalues,
        "core": core,
        "symmetry": symmetry,
    }


def run_reference(paths: list[Path]) -> tuple[list[dict | None], float, float]:
    results: list[dict | None] = []
    core = symmetry = 0.0
    for path in paths:
        start = time.perf_counter()
        try:
            result = reference_one(path)
        except Exception:  # the pymatgen parser fails on a few files the pipeline reads
            results.append(None)
            core += time.perf_counter() - start
            continue
        core += result["core"]
        symmetry += result["symmetry"]
        results.append(result)
    return results, core, symmetry


def compare(reference: list[dict | None], features) -> dict[str, int]:
    """Counts of agreement between the reference and the pipeline, per quantity."""
    tally = {"compared": 0, "formula": 0, "spacegroup": 0, "edges": 0, "eigenvalues": 0}
    for i, expected in enumerate(reference):
        if expected is None or features.graph_index[i] < 0:
            continue
        tally["compared"] += 1
        graph = features.store.graph(int(features.graph_index[i]))
        edges = sorted(
            zip(graph.edge_index[0], graph.edge_index[1], np.round(graph.edge_distance, 4), strict=True)
        )
        row = int(features.graph_index[i])
        ours = features.store.eigenvalues[row][features.store.eigenvalue_mask[row]].numpy()
        tally["formula"] += features.formula[i] == expected["formula"]
        tally["spacegroup"] += features.spacegroup[i] == expected["spacegroup"]
        tally["edges"] += len(edges) == len(expected["edges"]) and all(
            a[:2] == b[:2] and abs(a[2] - b[2]) < 2e-4 for a, b in zip(edges, expected["edges"], strict=True)
        )
        tally["eigenvalues"] += ours.shape == expected["eigenvalues"].shape and bool(
            np.allclose(ours, expected["eigenvalues"], atol=1e-5)
        )
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=os.environ.get(DATA_DIR_ENV))
    parser.add_argument("--subset", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="0: one per CPU core (the default)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs; the best of each is kept")
    parser.add_argument("--full", action="store_true", help="also featurize every structure")
    args = parser.parse_args()
    if args.data_dir is None:
        sys.exit(f"give --data-dir or set {DATA_DIR_ENV}")
    folder = Path(args.data_dir) / "tqc2020" / "structures"
    every = sorted(folder.glob("*.cif"))
    paths = random.Random(args.seed).sample(every, min(args.subset, len(every)))
    refs = [StructureRef(path=p) for p in paths]
    for path in paths:  # both paths then read from the page cache
        path.read_bytes()
    warnings.filterwarnings("ignore")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"{len(paths)} tqc2020 CIFs, {os.cpu_count()} CPU cores (load average {load}), {GRAPH.model_dump()}"
    )

    # Best of interleaved repeats: other processes on a shared machine only ever add time.
    core = symmetry = fast_core = fast = float("inf")
    without_search = [False] * len(refs)
    for _ in range(args.repeats):
        reference, core_run, symmetry_run = run_reference(paths)
        if core_run + symmetry_run < core + symmetry:
            core, symmetry = core_run, symmetry_run
        # A fresh spectra cache for every call: no run may reuse what an earlier one computed.
        start = time.perf_counter()
        featurize_structures(
            refs,
            GRAPH,
            find_spacegroup=without_search,
            workers=args.workers,
            progress=False,
            spectral_cache=SpectralCache(),
        )
        fast_core = min(fast_core, time.perf_counter() - start)
        start = time.perf_counter()
        features = featurize_structures(
            refs, GRAPH, workers=args.workers, progress=False, spectral_cache=SpectralCache()
        )
        fast = min(fast, time.perf_counter() - start)

    n = len(paths)
    rows = [
        ("1 (a) reference: read + neighbours + eigh", core),
        ("1 (b) featurize_structures, same work", fast_core),
        ("2 (a) reference, plus formula and space group", core + symmetry),
        ("2 (b) featurize_structures, same work", fast),
    ]
    for label, seconds in rows:
        print(f"{label:<48}{seconds:7.2f} s  ({1e3 * seconds / n:.2f} ms/structure)")
    print(f"{'speed-up 1, featurization (a / b)':<48}{core / fast_core:7.2f} x")
    print(f"{'speed-up 2, with the space-group search (a / b)':<48}{(core + symmetry) / fast:7.2f} x")
    shares = f"reference {symmetry / (core + symmetry):.0%}, pipeline {1 - fast_core / fast:.0%}"
    print(f"space-group search share of the time: {shares}")
    failed_reference = sum(r is None for r in reference)
    reasons = ", ".join(sorted({r for r in features.reason if r})) or "none"
    print(f"failures: reference {failed_reference}, pipeline {features.num_failed} ({reasons})")
    tally = compare(reference, features)
    print(
        "agreement on {compared} structures: formula {formula}, space group {spacegroup}, "
        "edges+distances {edges}, eigenvalues {eigenvalues}".format(**tally)
    )

    if args.full:
        start = time.perf_counter()
        everything = featurize_structures(
            [StructureRef(path=p) for p in every],
            GRAPH,
            workers=args.workers,
            progress=False,
            spectral_cache=SpectralCache(),
        )
        print(
            f"full: {len(every)} structures featurized in {time.perf_counter() - start:.1f} s, "
            f"{everything.num_failed} failed"
        )


if __name__ == "__main__":
    main()
