"""How far can a bundled model's outputs move on another machine? The margin the card checks need.

A float32 network summed in another order (other threads, batches, SIMD kernels) moves its
outputs in the last digits. A structure model moves more: Laplacian eigenvectors are defined
only up to a rotation inside each degenerate eigenspace, and which basis LAPACK returns depends
on the kernels of the CPU it runs on (a rhombohedral Bi2Se3 cell has such eigenspaces). This
script predicts every card material of every bundle under each variation, in a fresh process
where the variation is an environment setting, and prints the largest probability difference
from the stored outputs, beside the tolerance ``tests/api/test_pretrained.py`` allows:

    python benchmarks/output_spread.py [--rotations 20]

Variations: 1 and 2 threads; materials in reverse order and one at a time; deterministic
algorithms; PyTorch's and MKL's generic (non-AVX2) kernels; and random rotations (with random
signs) inside every degenerate eigenspace of the spectral encodings, the worst basis any LAPACK
could return.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from tests.api.test_pretrained import (  # noqa: E402  (the tolerances under test)
    FORMULA_TOLERANCE,
    STRUCTURE_TOLERANCE,
)

BUNDLES = ["tang2019", "tqc2020"]
# name -> (environment, options of the child)
VARIATIONS: dict[str, tuple[dict[str, str], list[str]]] = {
    "1 thread": ({"OMP_NUM_THREADS": "1"}, ["--threads", "1"]),
    "2 threads": ({"OMP_NUM_THREADS": "2"}, ["--threads", "2"]),
    "reverse order": ({}, ["--order", "reverse"]),
    "one at a time": ({}, ["--order", "single"]),
    "deterministic algorithms": ({}, ["--deterministic"]),
    "generic PyTorch kernels": ({"ATEN_CPU_CAPABILITY": "default"}, []),
    "MKL without AVX2": ({"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}, []),
}
# Eigenvalues closer than this (they are computed in float64) share an eigenspace.
DEGENERATE = 1e-8


def rotate_degenerate_eigenspaces(seed: int) -> None:
    """Make every spectrum come back in a random basis of each degenerate eigenspace."""
    from topoclass.features import spectral

    rng = np.random.default_rng(seed)
    original = spectral._group_spectra

    def rotated(graphs, k, device):  # type: ignore[no-untyped-def]
        spectra = original(graphs, k, device)
        for spectrum in spectra:
            values, vectors = spectrum.eigenvalues, spectrum.eigenvectors
            kept = int(spectrum.mask.sum())
            start = 0
            while start < kept:
                end = start + 1
                while end < kept and abs(values[end] - values[start]) < DEGENERATE:
                    end += 1
                size = end - start
                rotation = np.linalg.qr(rng.normal(size=(size, size)))[0] * rng.choice([-1, 1], size)
                vectors[:, start:end] = vectors[:, start:end] @ rotation.astype(np.float32)
                start = end
        return spectra

    spectral._group_spectra = rotated


def predict_cards(order: str) -> dict[str, list[dict]]:
    """Every bundle's card materials and examples, predicted; rows as the card stores them."""
    import topoclass as tc
    from topoclass.api import bundled_model_dir

    out: dict[str, list[dict]] = {}
    for name in BUNDLES:
        directory = bundled_model_dir(name)
        card = json.loads((directory / "card.json").read_text())
        model = tc.load(name)
        known = card["known_outputs"]
        formulas = [(r["formula"], r["spacegroup"]) for r in known]
        examples = sorted((directory / "examples").glob("*.cif"))
        if order == "reverse":
            frames = [model.predict(*zip(*formulas[::-1], strict=True))[::-1]]
            frames.append(model.predict_structures(examples[::-1])[::-1])
        elif order == "single":
            frames = [model.predict(f, g) for f, g in formulas]
            frames += [model.predict_structures(path) for path in examples]
        else:
            frames = [model.predict(*zip(*formulas, strict=True)), model.predict_structures(examples)]
        rows = [row for frame in frames for row in json.loads(frame.to_json(orient="records"))]
        out[name] = rows
    return out


def child(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    if args.rotate is not None:
        rotate_degenerate_eigenspaces(args.rotate)
    print(json.dumps(predict_cards(args.order)))


def largest_differences(rows: dict[str, list[dict]]) -> tuple[float, float, int]:
    """Largest |probability - card| for formula rows and structure rows, and class disagreements."""
    from topoclass.api import bundled_model_dir

    worst = {"formula": 0.0, "structure": 0.0}
    disagreements = 0
    for name, got in rows.items():
        card = json.loads((bundled_model_dir(name) / "card.json").read_text())
        stored = [*card["known_outputs"], *card["example_outputs"]]
        kinds = ["formula"] * len(card["known_outputs"]) + ["structure"] * len(card["example_outputs"])
        for row, expected, kind in zip(got, stored, kinds, strict=True):
            for key, value in expected.items():
                if isinstance(value, float):
                    worst[kind] = max(worst[kind], abs(row[key] - value))
                elif key != "id" and row[key] != value:
                    disagreements += 1
    return worst["formula"], worst["structure"], disagreements


def run_variation(environment: dict[str, str], options: list[str]) -> dict[str, list[dict]]:
    command = [sys.executable, __file__, "--child", *options]
    result = subprocess.run(
        command, env={**os.environ, **environment}, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rotations", type=int, default=20, help="random eigenspace bases to try")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--order", default="given", help=argparse.SUPPRESS)
    parser.add_argument("--deterministic", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rotate", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    variations = dict(VARIATIONS)
    for seed in range(args.rotations):
        variations[f"eigenspace basis {seed}"] = ({}, ["--rotate", str(seed)])
    print(f"{'variation':<28} {'formula':>10} {'structure':>10} {'classes':>8}")
    overall = [0.0, 0.0, 0]
    for name, (environment, options) in variations.items():
        formula, structure, disagreements = largest_differences(run_variation(environment, options))
        overall = [max(overall[0], formula), max(overall[1], structure), overall[2] + disagreements]
        print(f"{name:<28} {formula:>10.2e} {structure:>10.2e} {disagreements:>8d}")
    print(f"{'largest':<28} {overall[0]:>10.2e} {overall[1]:>10.2e} {overall[2]:>8d}")
    print(
        f"tolerance in the tests: formula {FORMULA_TOLERANCE:.0e} "
        f"({FORMULA_TOLERANCE / max(overall[0], 1e-12):.0f}x the largest), "
        f"structure {STRUCTURE_TOLERANCE:.0e} ({STRUCTURE_TOLERANCE / max(overall[1], 1e-12):.1f}x)"
    )


if __name__ == "__main__":
    main()
