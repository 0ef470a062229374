"""``topoclass screen`` at scale: throughput, memory flat in the input size, and random SIGKILLs.

Inputs are tqc2020 CIFs (``$TOPOCLASS_DATA_DIR/tqc2020/structures``) repeated under new ids:
a folder of symlinks (throughput) or a generated table of ids and paths (memory, kills), in a
temporary folder. Every screen runs as its own ``python -m topoclass screen`` process, one
thread each, with the bundled tqc2020 model.

    python benchmarks/screen.py throughput --structures 1000
        rate of one process, end to end and per chunk, against ``predict_structures`` on the same
        files in one call (the path screening replaces), measured in the same run; then two
        processes (``--shard 0/2`` and ``1/2`` at once) against one.
    python benchmarks/screen.py stated --structures 1000 [--models RUN ...]
        the same structures as two Materials Project style JSON dumps, one stating each space
        group found at the model's tolerance (``symmetry.number``, ``symmetry.symprec``) and one
        not: the rate of a screen of each, and whether their rows are the same; then the same
        with each of ``--models`` (runs or bundles for tqc2020 structures, say with another
        network), against the bundled model's rates.
    python benchmarks/screen.py memory --small 10000 --large 200000
        peak RSS of a screen of each size (should differ by < 50 MiB, and stay < 1 GiB).
    python benchmarks/screen.py kills --structures 50000 --kills 5
        SIGKILLs at random moments, the same command again after each, then to the end: the rows
        must equal, as a set, those of an uninterrupted screen.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

DATA = Path(os.environ.get("TOPOCLASS_DATA_DIR", "../shared/data")) / "tqc2020" / "structures"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SYMPREC = 0.1  # the bundled tqc2020 model's, as the Materials Project's


def cifs(count: int) -> list[Path]:
    """``count`` tqc2020 CIFs, cycling through the sorted list when more are asked than exist."""
    files = sorted(DATA.glob("*.cif"))
    if not files:
        raise SystemExit(f"no CIFs in {DATA}: set TOPOCLASS_DATA_DIR")
    return [files[i % len(files)] for i in range(count)]


def symlink_folder(root: Path, count: int) -> Path:
    folder = root / f"cifs-{count}"
    folder.mkdir()
    for i, path in enumerate(cifs(count)):
        (folder / f"s{i:07d}.cif").symlink_to(path.resolve())
    return folder


def table(root: Path, count: int) -> Path:
    path = root / f"table-{count}.csv"
    with path.open("w") as stream:
        stream.write("id,structure\n")
        for i, cif in enumerate(cifs(count)):
            stream.write(f"s{i:07d},{cif.resolve()}\n")
    return path


def screen_command(inputs: Path, out: Path, *extra: str, model: str = "tqc2020") -> list[str]:
    return [sys.executable, "-m", "topoclass", "-q", "screen", model, str(inputs), "-o", str(out), *extra]


def peak_rss_mib(command: list[str]) -> tuple[float, float]:
    """Run ``command`` in a fresh helper process; its peak RSS (MiB) and wall time (s)."""
    helper = (
        "import resource, subprocess, sys, time\n"
        "start = time.perf_counter()\n"
        "code = subprocess.run(sys.argv[1:]).returncode\n"
        "assert code == 0, code\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, time.perf_counter() - start)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", helper, *command], capture_output=True, text=True, env=ENV, check=True
    )
    rss, seconds = done.stdout.split()[-2:]
    return float(rss), float(seconds)


def rows_as_set(out: Path, leave_out: tuple[str, ...] = ()) -> set[tuple]:
    frame = pq.read_table(sorted(out.glob("part-*.parquet"))).to_pandas().drop(columns=list(leave_out))
    return set(frame.astype(str).itertuples(index=False, name=None))


def throughput(args: argparse.Namespace, root: Path) -> None:
    folder = symlink_folder(root, args.structures)
    files = sorted(folder.iterdir())
    reference = (
        "import sys, time, topoclass as tc\n"
        "model = tc.load('tqc2020', device='cpu')\n"
        "model._run.config.data.featurize_workers = 1  # one core, as each screen process\n"
        "model.predict_structures(sys.argv[1:3])  # warm: libraries and trees loaded\n"
        "start, cpu = time.perf_counter(), time.process_time()\n"
        "model.predict_structures(sys.argv[1:])\n"
        "print(time.perf_counter() - start, time.process_time() - cpu)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", reference, *map(str, files)],
        capture_output=True,
        text=True,
        env=ENV,
        check=True,
    )
    wall_ref, cpu_ref = (float(value) for value in done.stdout.split()[-2:])
    out = root / "one"
    _, wall = peak_rss_mib(screen_command(folder, out, "--chunk-size", str(args.chunk_size)))
    chunk_wall, chunk_cpu = _chunk_seconds(out)
    n = args.structures
    print(
        f"predict_structures, one call (reference): {n / wall_ref:7.1f} structures/s, "
        f"{n / cpu_ref:7.1f} per CPU s"
    )
    print(
        f"screen, 1 process, in its chunks:          {n / chunk_wall:7.1f} structures/s, "
        f"{n / chunk_cpu:7.1f} per CPU s "
        f"({cpu_ref / chunk_cpu:.2f}x the reference per CPU s); {n / wall:.1f}/s with start-up"
    )
    two = root / "two"
    start = time.perf_counter()
    shards = [
        subprocess.Popen(
            screen_command(folder, two, "--chunk-size", str(args.chunk_size), "--shard", f"{i}/2"), env=ENV
        )
        for i in range(2)
    ]
    assert all(shard.wait() == 0 for shard in shards)
    two_wall = time.perf_counter() - start
    busiest = max(_shard_seconds(two, shard, 2) for shard in range(2))
    print(
        f"screen, 2 processes, in their chunks:      {n / busiest:7.1f} structures/s, "
        f"{chunk_wall / busiest:.2f}x one process; {n / two_wall:.1f}/s with start-up "
        f"({wall / two_wall:.2f}x); cores here: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}"
    )


def stated(args: argparse.Namespace, root: Path) -> None:
    from topoclass.features.structures import StructureRef, read_structure, spglib_spacegroup

    documents = []
    for i, path in enumerate(cifs(args.structures)):
        structure = read_structure(StructureRef(path=path))
        number = spglib_spacegroup(structure, SYMPREC)  # what the Materials Project states with it
        symmetry = {"number": number, "symprec": SYMPREC}
        documents.append({"material_id": f"s{i:07d}", "structure": structure.as_dict(), "symmetry": symmetry})
    dumps = {}
    for name in ("searched", "stated"):
        dumps[name] = root / name / "dump.json"
        dumps[name].parent.mkdir()
        kept = documents if name == "stated" else [{**d, "symmetry": None} for d in documents]
        dumps[name].write_text(json.dumps(kept))
    reference: dict[str, float] = {}
    for model in ("tqc2020", *args.models):
        rates, rows = {}, {}
        for name, dump in dumps.items():
            out = root / f"out-{len(reference)}-{name}"
            peak_rss_mib(screen_command(dump, out, "--chunk-size", str(args.chunk_size), model=model))
            chunk_wall, chunk_cpu = _chunk_seconds(out)
            rates[name] = args.structures / chunk_wall
            rows[name] = rows_as_set(out, leave_out=("source",))  # the dumps' paths differ
            against = f" ({rates[name] / reference[name]:.2f}x the bundle's)" if reference else ""
            print(
                f"{model}, space groups {name:>8}: {rates[name]:7.1f} structures/s in chunks, "
                f"{args.structures / chunk_cpu:7.1f} per CPU s{against}"
            )
        reference = reference or rates
        print(
            f"{model}, stated against searched: {rates['stated'] / rates['searched']:.2f}x; "
            f"rows the same: {rows['stated'] == rows['searched']}; load average {os.getloadavg()[0]:.1f}"
        )


def _shard_seconds(out: Path, shard: int, shards: int) -> float:
    """Wall seconds shard ``shard`` of ``shards`` spent in its chunks."""
    records = [json.loads(path.read_text()) for path in (out / "_chunks").glob("chunk-*.json")]
    return sum(r["counts"]["seconds"] for r in records if r["chunk"] % shards == shard)


def _chunk_seconds(out: Path) -> tuple[float, float]:
    """Wall and CPU seconds the screen spent in its chunks (start-up and the input survey left out)."""
    summary = json.loads((out / "summary.json").read_text())
    return float(summary["chunk_seconds"]), float(summary["chunk_cpu_seconds"])


def memory(args: argparse.Namespace, root: Path) -> None:
    peaks = {}
    for count in (args.small, args.large):
        rss, seconds = peak_rss_mib(
            screen_command(table(root, count), root / f"mem-{count}", "--chunk-size", str(args.chunk_size))
        )
        peaks[count] = rss
        print(f"{count:>8} structures: peak RSS {rss:7.1f} MiB, {seconds:7.1f} s ({count / seconds:.1f}/s)")
    growth = peaks[args.large] - peaks[args.small]
    verdict = "flat" if abs(growth) < 50 and max(peaks.values()) < 1024 else "NOT flat"
    print(f"growth {growth:+.1f} MiB from {args.small} to {args.large} structures: {verdict}")


def kills(args: argparse.Namespace, root: Path) -> None:
    inputs = table(root, args.structures)
    reference = root / "uninterrupted"
    _, wall = peak_rss_mib(screen_command(inputs, reference, "--chunk-size", str(args.chunk_size)))
    print(f"uninterrupted: {args.structures} structures in {wall:.1f} s")
    rng = random.Random(args.seed)
    out = root / "killed"
    command = screen_command(inputs, out, "--chunk-size", str(args.chunk_size))
    total = -(-args.structures // args.chunk_size)
    killed = 0
    for kill in range(args.kills):
        # A random number of chunks more, leaving room for the kills still to come, then a random
        # moment inside the next chunk (its featurization, its write, or its commit).
        done = _committed(out)
        target = done + rng.randint(1, max(1, (total - done) // (args.kills - kill + 1)))
        process = subprocess.Popen(command, env=ENV)
        while _committed(out) < target and process.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.9 * wall / total))
        if process.poll() is not None:
            print(f"kill {kill + 1}: the screen had already finished")
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed += 1
        print(f"kill {kill + 1}: SIGKILL with {_committed(out)} of {total} chunks committed")
    subprocess.run(command, env=ENV, check=True)
    same = rows_as_set(out) == rows_as_set(reference)
    rows = pq.read_table(sorted(out.glob("part-*.parquet")), columns=["id"]).num_rows
    print(f"after {killed} kills: {rows} rows ({args.structures} inputs), same as uninterrupted: {same}")
    if not same or rows != args.structures:
        raise SystemExit(1)


def _committed(out: Path) -> int:
    return len(list((out / "_chunks").glob("chunk-*.json"))) if (out / "_chunks").is_dir() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    rate = modes.add_parser("throughput")
    rate.add_argument("--structures", type=int, default=1000)
    rate.add_argument("--chunk-size", type=int, default=250)
    given = modes.add_parser("stated")
    given.add_argument("--structures", type=int, default=1000)
    given.add_argument("--chunk-size", type=int, default=250)
    given.add_argument("--models", nargs="*", default=[], help="runs to screen the dumps with too")
    rss = modes.add_parser("memory")
    rss.add_argument("--small", type=int, default=10_000)
    rss.add_argument("--large", type=int, default=200_000)
    rss.add_argument("--chunk-size", type=int, default=1000)
    kill = modes.add_parser("kills")
    kill.add_argument("--structures", type=int, default=50_000)
    kill.add_argument("--kills", type=int, default=5)
    kill.add_argument("--chunk-size", type=int, default=1000)
    kill.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="screen-bench-") as scratch:
        run = {"throughput": throughput, "stated": stated, "memory": memory, "kills": kills}[args.mode]
        run(args, Path(scratch))


if __name__ == "__main__":
    main()
