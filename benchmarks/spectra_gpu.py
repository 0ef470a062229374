"""The Laplacian spectra of real crystal graphs on a CUDA device against NumPy on the CPU.

Featurization computes each graph's ``k`` smallest eigenpairs with one batched ``eigh`` per group
of similar sizes, on the CPU unless told otherwise (``laplacian_spectra(device="cuda")``). This
measures whether a GPU would pay: the same graphs (tqc2020 CIFs, built once), the best of
``--repeats`` interleaved runs of each side after one warm-up (the CUDA context and cuSOLVER's
start are not counted), and the largest eigenvalue difference.

Usage: ``python benchmarks/spectra_gpu.py [--structures 2000] [--repeats 3]`` (CIFs from
``$TOPOCLASS_DATA_DIR/tqc2020/structures``; needs a CUDA device).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from topoclass.config import DATA_DIR_ENV, GraphConfig
from topoclass.data.records import StructureRef
from topoclass.features.graph import build_crystal_graph
from topoclass.features.spectral import laplacian_spectra
from topoclass.features.structures import read_structure


def timed(work) -> tuple[float, list]:
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=os.environ.get(DATA_DIR_ENV))
    parser.add_argument("--structures", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible: nothing to compare")
    if args.data_dir is None:
        sys.exit(f"give --data-dir or set {DATA_DIR_ENV}")
    paths = sorted((args.data_dir / "tqc2020" / "structures").glob("*.cif"))[: args.structures]
    config = GraphConfig()
    seconds, graphs = timed(
        lambda: [
            build_crystal_graph(
                read_structure(StructureRef(path=p)), cutoff=config.cutoff, max_neighbors=config.max_neighbors
            )
            for p in paths
        ]
    )
    nodes = np.array([g.num_nodes for g in graphs])
    print(
        f"{torch.cuda.get_device_name(0)}; {len(graphs)} graphs, {nodes.mean():.1f} atoms on average "
        f"(largest {nodes.max()}); reading + graphs {seconds:.2f} s"
    )

    def spectra(device: str) -> list:
        result = laplacian_spectra(graphs, config.spectral_k, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        return result

    spectra("cuda")  # the CUDA context and the solver's first call
    best = {"cpu": float("inf"), "cuda": float("inf")}
    results = {}
    for _ in range(args.repeats):
        for device in best:
            seconds, results[device] = timed(lambda device=device: spectra(device))
            best[device] = min(best[device], seconds)
    difference = max(
        float(np.abs(a.eigenvalues - b.eigenvalues).max())
        for a, b in zip(results["cpu"], results["cuda"], strict=True)
    )
    print(
        f"spectra on the CPU (NumPy, one thread) {best['cpu']:.3f} s, on CUDA {best['cuda']:.3f} s: "
        f"CUDA takes {best['cuda'] / best['cpu']:.2f}x the CPU's time; largest eigenvalue difference "
        f"{difference:.1e}"
    )


if __name__ == "__main__":
    main()
