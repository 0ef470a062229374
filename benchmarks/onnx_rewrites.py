"""The bundled networks on ONNX Runtime with the graph rewrites topoclass leaves out, against without.

ONNX Runtime rewrites a graph when it opens a session; ``topoclass.inference.onnx_network``
turns off the rewrites in its ``UNFUSED`` (SkipLayerNormFusion). This opens each bundle's
network both ways in one process and times the same featurized inputs through both,
interleaved, best of ``--repeats``: the ``tang2019`` network on ``--formulas`` Tang 2019
formulas, the ``tqc2020`` network on ``--structures`` tqc2020 CIFs. It prints seconds, the
ratio (default rewrites over topoclass's) and the largest difference between the two outputs.

Usage: ``python benchmarks/onnx_rewrites.py [--formulas 10000] [--structures 600] [--repeats 5]``
(data from ``$TOPOCLASS_DATA_DIR``; the threads a lone prediction chooses: one on a 2-CPU machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from topoclass.api import bundled_model_dir
from topoclass.app.predict import backbone_embedder, load_run
from topoclass.config import DATA_DIR_ENV, DataConfig
from topoclass.data.build import featurize_materials
from topoclass.data.datasets import load_dataset
from topoclass.data.records import Material, StructureRef
from topoclass.inference import onnx_network


def networks(name: str) -> dict[str, onnx_network.OnnxNetwork]:
    """The bundle's network opened with ONNX Runtime's default rewrites and as topoclass opens it."""
    opened = {}
    for label, unfused in (("default rewrites", ()), ("topoclass", onnx_network.UNFUSED)):
        onnx_network.UNFUSED = unfused
        network = load_run(bundled_model_dir(name)).network
        assert isinstance(network, onnx_network.OnnxNetwork), "the bundle's ONNX export was not used"
        opened[label] = network
    return opened


def compare(name: str, materials: list[Material], repeats: int) -> None:
    run = load_run(bundled_model_dir(name))
    features, _ = featurize_materials(materials, run.tasks, run.config.data, backbone_embedder(run.config))
    assert features is not None
    opened = networks(name)
    best = dict.fromkeys(opened, float("inf"))
    outputs = {}
    for _ in range(repeats):
        for label, network in opened.items():
            start = time.perf_counter()
            outputs[label] = network.outputs(features)
            best[label] = min(best[label], time.perf_counter() - start)
    difference = max(
        float(np.abs(outputs["default rewrites"][task] - outputs["topoclass"][task]).max())
        for task in outputs["topoclass"]
    )
    print(
        f"{name}, {len(features)} materials: default rewrites {best['default rewrites']:.3f} s, "
        f"topoclass {best['topoclass']:.3f} s ({best['default rewrites'] / best['topoclass']:.2f}x); "
        f"largest output difference {difference:.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=os.environ.get(DATA_DIR_ENV))
    parser.add_argument("--formulas", type=int, default=10_000)
    parser.add_argument("--structures", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.data_dir is None:
        sys.exit(f"give --data-dir or set {DATA_DIR_ENV}")
    tang = load_dataset(DataConfig(dataset="tang2019", data_dir=args.data_dir)).materials
    compare("tang2019", tang[: args.formulas], args.repeats)
    paths = sorted((args.data_dir / "tqc2020" / "structures").glob("*.cif"))[: args.structures]
    structures = [Material(path.stem, "", None, structure=StructureRef(path=path)) for path in paths]
    compare("tqc2020", structures, args.repeats)


if __name__ == "__main__":
    main()
