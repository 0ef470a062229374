"""Rebuild a bundled model (``src/topoclass/pretrained/NAME``) from a trained run, or train one.

A bundle is a minimal run directory that ``topoclass.load(NAME)`` reads like any run:
``config.yaml``, ``checkpoints/best`` (the inference weights alone, in half precision when
that leaves every test metric unchanged at three decimals), ``serving/`` (the trees and
rules fitted on validation), example structures, ``model_card.md`` and ``card.json`` (the
SHA-256 of every file, test metrics beside the trees, and the outputs for known materials
that the test suite checks).

    python scripts/build_pretrained.py tang2019 --data-dir ../shared/data            # train, then bundle
    python scripts/build_pretrained.py tqc2020 --from-run runs/tqc2020-structures   # bundle a run
    python scripts/build_pretrained.py tang2019 --export-onnx   # add the ONNX export, weights unchanged

A bundle holds its network exported to ONNX (``onnx/``), so predicting with it needs no
PyTorch; ``--export-onnx`` exports it from the bundle's own checkpoint and updates the
card's list of files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

import topoclass
from topoclass.app.evaluate import evaluate_run
from topoclass.app.onnx_export import ensure_network_export
from topoclass.app.predict import load_run
from topoclass.app.runs import RunLayout, checkpoint_target
from topoclass.checkpoint import storage
from topoclass.checkpoint.manager import read_checkpoint
from topoclass.config import config_from_dict, config_yaml, load_config
from topoclass.data.datasets import load_dataset
from topoclass.screen.applicability import applicability_for
from topoclass.trainer.averaging import inference_weights

REPOSITORY = Path(__file__).resolve().parents[1]
PRETRAINED = REPOSITORY / "src" / "topoclass" / "pretrained"

# What each bundle is trained from, and the data it learned (with the licences to cite).
BUNDLES: dict[str, dict[str, str]] = {
    "tang2019": {
        "config": "configs/tang2019.yaml",
        "data": "Tang, Po, Vishwanath, Wan, Nature 566, 486 (2019), Topological Materials Arsenal labels "
        "(10.8k materials, formula + space group), as published in the raw_data folder of "
        "andrewma8/topogivity (MIT licence). Cite Tang et al. 2019 and Ma et al., Nano Letters (2023).",
    },
    "tqc2020": {
        "config": "configs/tqc2020_structures.yaml",
        "data": "Topological Quantum Chemistry labels (Bradlyn et al., Nature 547, 298 (2017); Vergniory "
        "et al., Nature 566, 480 (2019)) as scraped in raymond-yiqunwang/deepKNet (MIT licence), with "
        "Materials Project crystal structures from fxcoudert/topology_databases (CC-BY 4.0). 14.2k "
        "materials with structures.",
        "note": "Every training material had a structure: give structures (`predict_structures`). From "
        "formula and space group alone the answers are outside what it learned (below, Si comes out "
        "as a semimetal and the Weyl semimetal TaAs as trivial). `cross_type` is labelled for semimetals "
        "only: it is answered only where `topo_class` is SM, and its probabilities are those it would "
        "have if the material were one.",
    },
}

# Well-known materials whose outputs the card stores and the tests check: (formula, space group).
KNOWN_MATERIALS = [
    ("Bi2Se3", 166),  # the textbook strong TI
    ("Bi2Te3", 166),
    ("SnTe", 225),  # topological crystalline insulator
    ("NaCl", 225),  # trivial
    ("Si", 227),
    ("GaAs", 216),
    ("TaAs", 109),  # Weyl semimetal
    ("Na3Bi", 194),  # Dirac semimetal
]


def example_structures() -> dict[str, Structure]:
    """Bi2Se3 (R-3m, a 4.143 A, c 28.636 A) and rock-salt NaCl (a 5.64 A) from their Wyckoff positions."""
    bi2se3 = Structure.from_spacegroup(
        166,
        Lattice.hexagonal(4.143, 28.636),
        ["Bi", "Se", "Se"],
        [[0, 0, 0.4008], [0, 0, 0], [0, 0, 0.2117]],
    )
    nacl = Structure.from_spacegroup(225, Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return {"Bi2Se3": bi2se3, "NaCl": nacl}


def train_run(name: str, data_dir: str, run_dir: Path) -> None:
    """Train the bundle's config on ``data_dir`` into ``run_dir`` (resuming a run already there)."""
    overrides = {"data.data_dir": data_dir, "run_dir": str(run_dir), "checkpoint.resume": "auto"}
    topoclass.train(load_config(REPOSITORY / BUNDLES[name]["config"], overrides))


def slim_checkpoint(run: RunLayout, destination: Path, dtype: torch.dtype) -> dict[str, Any]:
    """Write the run's best inference weights alone, in ``dtype``, as ``destination``; its metadata."""
    loaded = read_checkpoint(checkpoint_target(run.checkpoints).single(prefer_best=True))
    weights = {name: tensor.to(dtype) for name, tensor in inference_weights(loaded.state).items()}
    metadata = {
        "config": bundle_config(run).to_dict(),
        "tasks": current_tasks(run, loaded.metadata["tasks"]),
        "package_version": topoclass.__version__,
        "code_revision": loaded.metadata.get("code_revision"),
        "trained_epochs": loaded.tag.epoch,
        "weights_dtype": str(dtype).removeprefix("torch."),
    }
    with storage.CheckpointStorage() as writer:
        writer.write(destination, {"model": weights}, metadata=metadata, epoch=loaded.tag.epoch, step=None)
    return metadata


def current_tasks(run: RunLayout, saved: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The saved tasks, as the dataset defines them now: a run trained before a task gained its
    coarse task (the hierarchy predictions are decided in) gets it, when the classes agree."""
    defined = {task.name: task for task in load_dataset(run.read_config().data).tasks}
    return [
        defined[task["name"]].model_dump(mode="json")
        if task["name"] in defined and defined[task["name"]].classes == task["classes"]
        else task
        for task in saved
    ]


def bundle_config(run: RunLayout):
    """The run's config without the paths of the machine it was trained on."""
    tree = run.read_config().to_dict()
    tree["run_dir"] = None
    tree["data"]["data_dir"] = None
    tree["data"]["cache_dir"] = None
    tree["train"]["num_threads"] = 0  # the CPUs of the machine it runs on
    tree["checkpoint"]["dir"] = None
    return config_from_dict(tree)


def evaluate_weights(run: RunLayout, dtype: torch.dtype, scratch: Path) -> dict[str, Any]:
    """Test metrics of the run served with its best weights cast to ``dtype`` (no baseline)."""
    copy = scratch / f"run-{str(dtype).removeprefix('torch.')}"
    copy.mkdir()
    for name in ("config.yaml", "split.json", "data_fingerprint.json", "metrics.jsonl"):
        if (run.root / name).exists():
            shutil.copy2(run.root / name, copy / name)
    shutil.copytree(run.serving_dir(), copy / "serving")
    slim_checkpoint(run, copy / "checkpoints" / "best", dtype)
    results, _ = evaluate_run(copy, with_baseline=False)
    return results


def headline(results: dict[str, Any], source: str) -> dict[str, dict[str, float]]:
    return {
        task: {key: round(values[key], 3) for key in ("accuracy", "macro_f1") if key in values}
        for task, values in results.get(source, {}).items()
    }


def build(name: str, run_dir: Path, out: Path) -> None:
    run = RunLayout.open(run_dir)
    if not run.serving_dir().is_dir() or not (run.evaluation_dir() / "metrics.json").is_file():
        evaluate_run(run.root)  # fits the serving rules and the baselines
    reference = json.loads((run.evaluation_dir() / "metrics.json").read_text())
    with tempfile.TemporaryDirectory(prefix=".bundle-", dir=REPOSITORY) as scratch:
        full = evaluate_weights(run, torch.float32, Path(scratch))
        half = evaluate_weights(run, torch.float16, Path(scratch))
    changed = {
        source: (headline(full, source), headline(half, source))
        for source in ("network", "served")
        if headline(full, source) != headline(half, source)
    }
    dtype = torch.float32 if changed else torch.float16
    for source, (fp32, fp16) in changed.items():
        logging.info("half precision changes the %s test metrics: %s -> %s", source, fp32, fp16)
    logging.info("weights kept in %s", dtype)

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(config_yaml(bundle_config(run)))
    metadata = slim_checkpoint(run, out / "checkpoints" / "best", dtype)
    shutil.copytree(run.serving_dir(), out / "serving")
    if applicability_for(load_run(run.root, device="cpu")) is not None:  # fitted once, on the run's split
        shutil.copy2(run.applicability_file(), out / run.applicability_file().name)
    examples = out / "examples"
    examples.mkdir()
    for formula, structure in example_structures().items():
        CifWriter(structure).write_file(examples / f"{formula}.cif")

    ensure_network_export(RunLayout.open(out))
    model = topoclass.load(out)
    formulas, groups = zip(*KNOWN_MATERIALS, strict=True)
    known = model.predict(list(formulas), list(groups))
    from_structures = model.predict_structures(sorted(examples.glob("*.cif")))
    card = {
        "name": name,
        "package_version": topoclass.__version__,
        "code_revision": metadata["code_revision"],
        "weights_dtype": metadata["weights_dtype"],
        "trained_epochs": metadata["trained_epochs"],
        "tasks": [task["name"] for task in metadata["tasks"]],
        "uses_structures": model.uses_structures,
        "data": BUNDLES[name]["data"],
        "note": BUNDLES[name].get("note", ""),
        "split": split_note(run),
        "test_metrics": {
            "network": headline(reference, "network"),
            "served": headline(reference, "served"),
            "trees (baseline)": headline(reference, "baseline"),
            **(
                {"trees with cell facts": headline(reference, "baseline_cell_facts")}
                if "baseline_cell_facts" in reference
                else {}
            ),
            f"served, {metadata['weights_dtype']} weights": headline(full if changed else half, "served"),
        },
        "served_by": {
            task: rule["predictor"] for task, rule in storage.read_metadata(out / "serving")["rules"].items()
        },
        "reproduce": f"python scripts/build_pretrained.py {name} --data-dir ../shared/data",
        "known_outputs": records(known),
        "example_outputs": records(from_structures),
    }
    (out / "model_card.md").write_text(model_card(card))
    write_card(out, card)


def write_card(out: Path, card: dict[str, Any]) -> None:
    """``card.json`` with the SHA-256 of every other file of the bundle."""
    card["files"] = {
        str(path.relative_to(out)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(out.rglob("*"))
        if path.is_file() and path.name != "card.json"
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    print(f"{out}: {size / 2**20:.1f} MiB, weights {card['weights_dtype']}")


def export_bundle_network(out: Path) -> None:
    """Export a bundle's network to ONNX from its own checkpoint (the weights stay as they are)."""
    ensure_network_export(RunLayout.open(out))
    write_card(out, json.loads((out / "card.json").read_text()))


def records(frame) -> list[dict[str, Any]]:
    return json.loads(frame.drop(columns="skipped").to_json(orient="records"))


def split_note(run: RunLayout) -> str:
    split = run.read_config().data.split
    counts = {
        name: len(ids)
        for name, ids in json.loads(run.split_file().read_text()).items()
        if isinstance(ids, list)
    }
    fractions = f"{split.train}/{split.val}/{split.test}"
    return (
        f"train/val/test {fractions} grouped by reduced formula (seed {split.seed}): "
        + ", ".join(f"{name} {n}" for name, n in counts.items())
        + " materials; trees and serving rules fitted on validation, metrics on test"
    )


def model_card(card: dict[str, Any]) -> str:
    structures = "yes" if card["uses_structures"] else "no"
    lines = [
        f"# {card['name']} (bundled with topoclass {card['package_version']})",
        "",
        f"Tasks: {', '.join(card['tasks'])}; reads crystal structures: {structures}.",
        f"Weights: {card['weights_dtype']}, {card['trained_epochs']} epochs; "
        f"code revision {card['code_revision']}.",
        "",
        f"**Data and licence.** {card['data']}",
        "",
        f"**Split.** {card['split']}.",
        "",
        "**Test metrics** (accuracy / macro-F1):",
        "",
        "| predictor | " + " | ".join(card["tasks"]) + " |",
        "|---|" + "---:|" * len(card["tasks"]),
    ]
    for source, tasks in card["test_metrics"].items():
        cells = [
            f"{tasks[t]['accuracy']:.3f} / {tasks[t]['macro_f1']:.3f}" if t in tasks else ""
            for t in card["tasks"]
        ]
        lines.append(f"| {source} | " + " | ".join(cells) + " |")
    served = ", ".join(f"{task} by the {source}" for task, source in card["served_by"].items())
    lines += ["", f"Served: {served}.", ""]
    if card["note"]:
        lines += [f"**Use.** {card['note']}", ""]
    lines += ["**Known materials** (formula and space group only):", ""]
    lines += ["| formula | space group | " + " | ".join(card["tasks"]) + " |"]
    lines += ["|---|---:|" + "---|" * len(card["tasks"])]
    for row in card["known_outputs"]:
        answers = " | ".join(
            f"{row[t]} ({max(v for k, v in row.items() if k.startswith(t + ':p(')):.2f})"
            if row[t] is not None
            else "-"
            for t in card["tasks"]
        )
        lines.append(f"| {row['formula']} | {row['spacegroup']} | {answers} |")
    lines += ["", f"Reproduce: `{card['reproduce']}`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(BUNDLES))
    parser.add_argument("--from-run", type=Path, help="bundle this trained run instead of training one")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--run-dir", type=Path, help="where to train (default: runs/pretrained-NAME)")
    parser.add_argument("--out", type=Path, help="default: src/topoclass/pretrained/NAME")
    parser.add_argument(
        "--export-onnx", action="store_true", help="only export the bundle's network to ONNX (no training)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.export_onnx:
        export_bundle_network(args.out or PRETRAINED / args.name)
        return
    run_dir = args.from_run
    if run_dir is None:
        run_dir = args.run_dir or REPOSITORY / "runs" / f"pretrained-{args.name}"
        train_run(args.name, args.data_dir, run_dir)
    build(args.name, run_dir, args.out or PRETRAINED / args.name)


if __name__ == "__main__":
    sys.exit(main())
