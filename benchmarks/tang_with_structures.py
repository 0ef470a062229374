"""Tang 2019 labels with crystal structures where tqc2020 has one: does the structure close the gap?

Tang 2019 gives formula and space group only. tqc2020 ships real CIFs; a Tang
material gets the structure of the tqc2020 entry with the same reduced formula and
space group (the first by id where several match), about half of them do. The
joined data is written as a user table (the generic input format, structure paths
included) with Tang's cleaned materials in their order, so the seeded split is the
Tang default one: the test materials are exactly those of ``benchmarks/train_default.py``
and the formula-only run repeats its figures.

Printed: the network beside both tree references (formula and space group; plus
the real cell's facts where a structure exists), on the whole test split.

Usage: ``python benchmarks/tang_with_structures.py [--data-dir DIR] [--epochs 30] [--out DIR]``
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import yaml
from compare_models import compare_modalities

from topoclass.app.report import format_results_table
from topoclass.config import load_config
from topoclass.data.build import prepare_dataset
from topoclass.data.clean import formula_key
from topoclass.data.datasets.tang2019 import tang2019_tasks


def write_joined_table(data_dir: Path, table: Path) -> tuple[int, int]:
    """Tang's cleaned materials with a tqc2020 structure path where one matches; (rows, with structure)."""
    tang, tqc = (
        prepare_dataset(load_config(None, {"data.dataset": name, "data.data_dir": str(data_dir)}).data)
        for name in ("tang2019", "tqc2020")
    )
    structure_of: dict[tuple[str, int], str] = {}
    for material_id, formula, spacegroup in sorted(
        zip(tqc.features.ids, tqc.features.formulas, tqc.features.spacegroup.tolist(), strict=True)
    ):
        cif = data_dir / "tqc2020" / "structures" / f"{material_id}.cif"
        structure_of.setdefault((formula_key(formula), spacegroup), str(cif.resolve()))
    features = tang.features
    classes = [task.classes for task in features.tasks]
    matched = 0
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "formula", "spacegroup", "structure", *(t.name for t in features.tasks)])
        for row, (material_id, formula) in enumerate(zip(features.ids, features.formulas, strict=True)):
            spacegroup = int(features.spacegroup[row])
            structure = structure_of.get((formula_key(formula), spacegroup), "")
            matched += bool(structure)
            labels = [names[int(index)] for names, index in zip(classes, features.labels[row], strict=True)]
            writer.writerow([material_id, formula, spacegroup, structure, *labels])
    return len(features.ids), matched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("TOPOCLASS_DATA_DIR"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("runs/tang-structures"))
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("give --data-dir or set TOPOCLASS_DATA_DIR")
    data_dir = Path(args.data_dir).resolve()
    env = {**os.environ, "TOPOCLASS_DATA_DIR": str(data_dir)}
    args.out.mkdir(parents=True, exist_ok=True)
    table = args.out / "tang_with_structures.csv"
    rows, matched = write_joined_table(data_dir, table)
    print(f"{rows} Tang materials, {matched} with a tqc2020 structure ({matched / rows:.1%})", flush=True)

    config = args.out / "config.yaml"
    tasks = [task.model_dump(exclude_defaults=True) for task in tang2019_tasks()]
    config.write_text(
        yaml.safe_dump({"data": {"dataset": "table", "table": str(table.resolve()), "tasks": tasks}})
    )
    common = ["--config", str(config), "--epochs", str(args.epochs), "--resume", "never"]
    common += ["--set", "train.progress_bar=false"]
    runs = (args.out / "composition", args.out / "structure")
    names = ("network, formula + space group", "network, with structures")
    print(format_results_table(compare_modalities(common, runs, names, env)))


if __name__ == "__main__":
    main()
