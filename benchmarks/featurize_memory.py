"""Peak memory of featurizing crystal structures, against their number: does it grow with the dataset?

Each run featurizes the first N tqc2020 structures into a fresh cache, in a fresh process,
and its peak resident memory is read from the kernel (``wait4``). Streaming (graphs written a
chunk at a time to the cache, then memory-mapped) is measured against keeping the packed
graphs in memory, in the same run. A line through the points extrapolates to a million.

Usage: ``python benchmarks/featurize_memory.py [--sizes 1000 4000 14000] [--workers 2]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = """
import sys
from pathlib import Path
from topoclass.config import DataConfig, TaskConfig
from topoclass.data import build
n, cache, workers, stream = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "stream"
table = Path(cache) / "subset.csv"
data = DataConfig(dataset="table", table=table, use_structure=True, cache_dir=Path(cache) / "c",
                  featurize_workers=workers, tasks=[TaskConfig(name="topo_class")])
if not stream:
    build.begin_entry = lambda entry: None  # no staging folder: the graphs stay in memory
prepared = build.prepare_dataset(data)
print(len(prepared.features))
"""


def subset_table(data_dir: Path, n: int, out: Path) -> Path:
    labels = (data_dir / "tqc2020" / "labels.csv").read_text().splitlines()[1:]
    rows = ["id,structure,topo_class"]
    for line in labels:
        fields = [f.strip().strip("*†").strip() for f in line.split(";")]
        cif = data_dir / "tqc2020" / "structures" / f"{fields[0]}.cif"
        if cif.exists():
            rows.append(f"{fields[0]},{cif},{fields[1]}")
        if len(rows) > n:
            break
    out.write_text("\n".join(rows) + "\n")
    return out


def peak_rss_mib(n: int, workers: int, stream: bool, data_dir: Path) -> float:
    with tempfile.TemporaryDirectory(prefix=".featurize-memory-", dir=".") as cache:
        subset_table(data_dir, n, Path(cache) / "subset.csv")
        process = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(n), cache, str(workers), "stream" if stream else "memory"],
            stdout=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(process.pid, 0)
        if status != 0:
            sys.exit(f"featurizing {n} structures failed")
        return usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("TOPOCLASS_DATA_DIR"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 14000])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("give --data-dir or set TOPOCLASS_DATA_DIR")
    peaks: dict[str, list[float]] = {"streamed": [], "in memory": []}
    for n in args.sizes:
        for mode in peaks:
            peaks[mode].append(peak_rss_mib(n, args.workers, mode == "streamed", Path(args.data_dir)))
            print(f"{n:>6} structures, {mode:<9}: peak RSS {peaks[mode][-1]:7.1f} MiB", flush=True)
    for mode, values in peaks.items():
        slope, intercept = np.polyfit(args.sizes, values, 1)
        growth = values[-1] - values[0]
        print(
            f"{mode}: +{growth:.0f} MiB from {args.sizes[0]} to {args.sizes[-1]} structures "
            f"({slope * 1024:.2f} KiB per structure); a million would need about "
            f"{(intercept + slope * 1e6) / 1024:.1f} GiB"
        )


if __name__ == "__main__":
    main()
