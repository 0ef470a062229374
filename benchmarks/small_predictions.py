"""CPU spent on small predictions, as a server or a screen makes them, when a process may use several CPUs.

A process given N CPUs runs ONNX Runtime and the trees with N threads. For a few rows those
threads have nothing to share, and what they do while idle (spinning, waiting for work) is
paid in CPU that other requests or other processes on the node could have used. This runs the
bundled ``tang2019`` model in fresh processes: one given 1 CPU (the reference) and one given all
of this machine's (``SLURM_CPUS_PER_TASK``, as a batch job would), each answering one formula
and 64 formulas many times with a 2 ms pause between calls (a server's pace), and prints wall
and CPU milliseconds per call and the CPU ratio against the reference. With ``--against``,
another release's ``src`` runs the same in the same run.

Usage: ``python benchmarks/small_predictions.py [--calls 400] [--against OTHER/src]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

CHILD = """
import sys, time
import topoclass as tc
from topoclass.api import formula_inputs
model = tc.load("tang2019")
calls = int(sys.argv[1])
one = formula_inputs(["Bi2Se3"], [166])
many = formula_inputs(["Bi2Se3", "SnTe", "NaCl", "PbTe"] * 16, [166, 225, 225, 225] * 16)
for name, inputs, count in (("1 formula", one, calls), ("64 formulas", many, calls // 4)):
    model.answer(inputs)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        model.answer(inputs)
        time.sleep(0.002)
    wall = time.perf_counter() - wall - 0.002 * count
    print(name, 1000 * wall / count, 1000 * (time.process_time() - cpu) / count)
"""


def measure(cpus: int, calls: int, source: Path | None) -> dict[str, tuple[float, float]]:
    """Wall and CPU ms per call of each request size, in a fresh process given ``cpus`` CPUs."""
    env = {**os.environ, "SLURM_CPUS_PER_TASK": str(cpus)}
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(calls)], capture_output=True, text=True, env=env, check=True
    )
    figures = {}
    for line in done.stdout.splitlines():
        *name, wall, cpu = line.split()
        figures[" ".join(name)] = (float(wall), float(cpu))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--against", type=Path, help="the src/ folder of another topoclass release")
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    if cpus < 2:
        sys.exit("one CPU here: nothing to compare")
    sources = {"this release": None, **({f"{args.against}": args.against} if args.against else {})}
    for label, source in sources.items():
        reference = measure(1, args.calls, source)
        given = measure(cpus, args.calls, source)
        for name, (wall, cpu) in given.items():
            ref_wall, ref_cpu = reference[name]
            print(
                f"{label}, {name}: given {cpus} CPUs {wall:6.2f} ms wall, {cpu:6.2f} ms CPU a call; "
                f"given 1 CPU {ref_wall:6.2f} ms, {ref_cpu:6.2f} ms: CPU {cpu / ref_cpu:.2f}x"
            )


if __name__ == "__main__":
    main()
