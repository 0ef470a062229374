"""How long a user waits for predictions, from a cold process, with the bundled ``tang2019`` model.

Each command runs in a fresh interpreter, as typed at a shell; the reference, measured in the
same run, is the floor every PyTorch program pays: starting Python and importing ``torch``.
The table holds 10,000 Tang 2019 formulas with their space groups; the structure is the
``tqc2020`` bundle's Bi2Se3 example.

The bundles' networks run on ONNX Runtime (no PyTorch import); the same commands with
``onnxruntime`` made unimportable show the PyTorch path they replace. Targets: one formula
at most 0.5x the reference, one structure at most 1.0x, and the 10,000-formula table at most
1.5 s of work beyond what one formula costs (the same process start, imports and loading).

Usage: ``python benchmarks/predict_latency.py [--repeats 3] [--against OTHER/src]``
(``git worktree add /tmp/v0.7.0 v0.7.0`` gives an earlier release's ``src`` to compare with).
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cli_runner import topoclass

from topoclass.api import bundled_model_dir


def import_floor() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.perf_counter() - started


def write_table(data_dir: Path, path: Path, rows: int) -> Path:
    """``rows`` formulas and space groups from the Tang 2019 files (``SPACEGROUP, FORMULA`` lines)."""
    lines = ["formula,spacegroup"]
    for source in sorted((data_dir / "tang2019").glob("*_ccmp.txt")):
        for line in source.read_text().splitlines():
            group, _, formula = line.partition(",")
            if formula.strip():
                lines.append(f"{formula.strip()},{group.strip()}")
    path.write_text("\n".join(lines[: rows + 1]) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("TOPOCLASS_DATA_DIR"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument(
        "--against",
        type=Path,
        help="the src/ folder of another topoclass release (a git worktree of its tag, say): its "
        "served commands are timed in the same run, and the ratios printed",
    )
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("give --data-dir or set TOPOCLASS_DATA_DIR")
    # Measured as installed: pip compiles a package's modules, but a checkout run with
    # PYTHONDONTWRITEBYTECODE set would compile topoclass at every start (torch's are compiled).
    for source in [bundled_model_dir("tang2019").parents[1], *([args.against] if args.against else [])]:
        compileall.compile_dir(str(source), quiet=1)
    env = dict(os.environ)
    one = ["predict", "--model", "tang2019", "--formula", "Bi2Se3", "--spacegroup", "166"]
    example = str(bundled_model_dir("tqc2020") / "examples" / "Bi2Se3.cif")
    structure = ["predict", "--model", "tqc2020", "--structure", example]
    with tempfile.TemporaryDirectory() as scratch:
        table = write_table(Path(args.data_dir), Path(scratch) / "table.csv", args.rows)
        many = ["predict", "--model", "tang2019", "--table", str(table), "-o", f"{scratch}/out.csv"]
        hidden = Path(scratch) / "no_onnxruntime"
        hidden.mkdir()
        (hidden / "onnxruntime.py").write_text("raise ImportError('hidden by the benchmark')\n")
        torch_env = {**env, "PYTHONPATH": os.pathsep.join([str(hidden), env.get("PYTHONPATH", "")])}
        commands = {
            "topoclass --help": (["--help"], env),
            "predict one formula (served)": (one, env),
            "predict one formula (--predictor network)": ([*one, "--predictor", "network"], env),
            "predict one formula (served, PyTorch path)": (one, torch_env),
            "predict one structure (tqc2020, served)": (structure, env),
            "predict one structure (tqc2020, served, PyTorch path)": (structure, torch_env),
            f"predict --table, {args.rows:,} formulas (served)": (many, env),
            f"predict --table, {args.rows:,} formulas (--predictor network)": (
                [*many, "--predictor", "network"],
                env,
            ),
            f"predict --table, {args.rows:,} formulas (served, PyTorch path)": (many, torch_env),
        }
        if args.against:
            other = {**env, "PYTHONPATH": os.pathsep.join([str(args.against), env.get("PYTHONPATH", "")])}
            for name in ("predict one formula", "predict one structure (tqc2020,", "predict --table,"):
                served = next(key for key in commands if key.startswith(name) and key.endswith("served)"))
                commands[f"{served} [--against]"] = (commands[served][0], other)
        times: dict[str, list[float]] = {name: [] for name in ["python + import torch", *commands]}
        for _ in range(args.repeats):
            times["python + import torch"].append(import_floor())
            for name, (command, command_env) in commands.items():
                times[name].append(topoclass(command, command_env)[1])
    median = {name: statistics.median(values) for name, values in times.items()}
    floor = median["python + import torch"]
    print(f"cold-process wall time, median of {args.repeats}:")
    for name, seconds in median.items():
        print(f"  {name:58s} {seconds:6.2f} s  ({seconds / floor:.2f}x python + import torch)")
    for path in ("served", "served, PyTorch path"):
        table_seconds = median[f"predict --table, {args.rows:,} formulas ({path})"]
        work = table_seconds - median[f"predict one formula ({path})"]
        print(f"  {args.rows:,} formulas ({path}): {work:.2f} s of work beyond one formula's cold start")
    if args.against:
        print(f"against {args.against}, same run:")
        for name in [key for key in median if key.endswith(" [--against]")]:
            this = median[name.removesuffix(" [--against]")]
            print(f"  {name.removesuffix(' [--against]'):58s} {this / median[name]:.2f}x its time")
        table = f"predict --table, {args.rows:,} formulas (served)"
        one_formula = "predict one formula (served)"
        work = median[table] - median[one_formula]
        other_work = median[f"{table} [--against]"] - median[f"{one_formula} [--against]"]
        print(
            f"  {args.rows:,} formulas, work beyond the cold start: {work:.2f} s against {other_work:.2f} s"
        )


if __name__ == "__main__":
    main()
