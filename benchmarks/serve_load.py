"""Latency of ``topoclass serve`` under load: many concurrent clients asking for formulas.

Starts the server as a subprocess on 127.0.0.1 (a free port) with the bundled ``tang2019`` and
``tqc2020`` models, once per way of running it (``--modes``; by default: one process without
the answer cache, the reference; one process as ``serve`` starts by default; two processes,
``--workers 2``; and one call per request in a thread pool, ``--no-batching``). Against each it
sends ``--requests`` requests from ``--clients`` concurrent keep-alive connections, bounded by
``--time-limit`` seconds: first all of Bi2Se3 / 166 (the issue's load: after the first, an
answer the cache keeps), then each of another formula and space group (every one predicted).
Then one client uploads the tqc2020 example CIF ``--structure-requests`` times. Prints p50/p99
latency, requests/s, errors and CPU per request of client and server (all its processes), a
one-client reference, and each mode's p50 against the reference mode's in the same run.

The client runs on the same machine as the server, so its CPU counts: it writes each request's
bytes once and parses answers with httptools (uvicorn's parser), 0.06-0.09 ms of CPU per request
here, where aiohttp's client spent 0.1-0.3 ms and httpx's async client 7-8 ms (whose cost alone
held the load near 35 requests/s on two cores). Every answer is read as JSON and checked
(status 200, the asked formula, an answer, nothing skipped); anything else is an error.

Usage: ``python benchmarks/serve_load.py [--clients 50] [--requests 5000] [--time-limit 120]``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httptools
import httpx

from topoclass.api import bundled_model_dir

CIF = bundled_model_dir("tqc2020") / "examples" / "Bi2Se3.cif"
TARGETS = "targets: 0 errors, p50 <= 10 ms, p99 <= 50 ms (formulas); p50 <= 100 ms (one structure)"
MODES = {
    "uncached": ["--cache-rows", "0"],
    "one process": [],
    "two processes": ["--workers", "2"],
    "thread pool": ["--no-batching", "--cache-rows", "0"],
}
REFERENCE = "uncached"


@dataclass
class Measured:
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_s: float = float("nan")

    def line(self, label: str) -> str:
        if not self.latencies_s:
            return f"{label:<49} no answer, {self.errors} errors"
        ms = sorted(1000 * s for s in self.latencies_s)
        p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
        rate = len(ms) / self.wall_s if self.wall_s else float("nan")
        client, server = (1000 * cpu / len(ms) for cpu in (self.client_cpu_s, self.server_cpu_s))
        return (
            f"{label:<49} {len(ms):>6} ok {self.errors:>4} errors  p50 {statistics.median(ms):6.1f} ms  "
            f"p99 {p99:6.1f} ms  {rate:5.0f} req/s  CPU ms/req: client {client:4.2f}, server {server:4.2f}"
        )

    @property
    def p50_ms(self) -> float:
        return 1000 * statistics.median(self.latencies_s) if self.latencies_s else float("nan")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children alive now (Linux /proc; NaN elsewhere)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        try:
            fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        except OSError:
            continue
        if fields is not None and (int(entry.name) == pid or int(fields[1]) == pid):
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK") if Path("/proc").is_dir() else float("nan")


def timed(server: subprocess.Popen, run: Callable[[], Measured]) -> Measured:
    before = cpu_seconds(server.pid)
    measured = run()
    measured.server_cpu_s = cpu_seconds(server.pid) - before
    return measured


def start_server(port: int, extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "topoclass", "-q", "serve", "tang2019", "tqc2020", "--port", str(port)]
    process = subprocess.Popen(
        [*command, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stderr.read() if process.stderr else ""
            sys.exit(f"the server exited with {process.returncode}: {output}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                wait_until_idle(process.pid, deadline)  # every worker has loaded the models
                return process
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    sys.exit("the server did not start within 300 s")


def wait_until_idle(pid: int, deadline: float) -> None:
    """Until the server's processes spend less than 5% of a CPU over a second."""
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(1)
        if cpu_seconds(pid) - before < 0.05:
            return


class _Answer:
    """httptools' callbacks for one response."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.complete = False

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


def predict_request(formula: str, spacegroup: int) -> bytes:
    body = json.dumps({"rows": [{"formula": formula, "spacegroup": spacegroup}], "model": "tang2019"})
    head = "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
    return f"{head}\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()


def answered(status: int, body: bytes, formula: str) -> bool:
    if status != 200:
        return False
    (row,) = json.loads(body)["rows"]
    return bool(row["formula"] == formula and row["topological"] and row["skipped"] == "")


async def formula_load(port: int, clients: int, asked: Iterator[tuple[str, int]], limit: float) -> Measured:
    """``clients`` keep-alive connections sending the requests of ``asked`` until it ends or ``limit`` s."""
    measured = Measured()
    deadline = time.monotonic() + limit

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for formula, spacegroup in asked:
                if time.monotonic() > deadline:
                    return
                request = predict_request(formula, spacegroup)
                started = time.perf_counter()
                answer = _Answer()
                parser = httptools.HttpResponseParser(answer)
                writer.write(request)
                while not answer.complete:
                    data = await asyncio.wait_for(reader.read(65536), timeout=30)
                    if not data:
                        raise ConnectionError("the server closed the connection")
                    parser.feed_data(data)
                elapsed = time.perf_counter() - started
                if answered(parser.get_status_code(), bytes(answer.body), formula):
                    measured.latencies_s.append(elapsed)
                else:
                    measured.errors += 1
        finally:
            writer.close()

    cpu, wall = time.process_time(), time.perf_counter()
    outcomes = await asyncio.gather(*(client() for _ in range(clients)), return_exceptions=True)
    measured.errors += sum(isinstance(outcome, BaseException) for outcome in outcomes)
    measured.wall_s, measured.client_cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    return measured


def one_formula(count: int) -> Iterator[tuple[str, int]]:
    return itertools.repeat(("Bi2Se3", 166), count)


def distinct_formulas(count: int) -> Iterator[tuple[str, int]]:
    """``count`` different formula / space-group pairs."""
    pairs = (
        (f"{cation}{m}{anion}{n}", group)
        for group in range(1, 231)
        for cation, anion in itertools.product(("Bi", "Sb", "Sn", "Pb", "Ge", "In"), ("Se", "Te", "S"))
        for m, n in itertools.product(range(1, 6), repeat=2)
    )
    return itertools.islice(pairs, count)


def structure_requests(url: str, count: int) -> Measured:
    measured = Measured()
    data = CIF.read_bytes()
    with httpx.Client(timeout=60) as http:
        started_all = time.perf_counter()
        for _ in range(count):
            started = time.perf_counter()
            response = http.post(
                f"{url}/predict/structures", files=[("files", (CIF.name, data))], data={"model": "tqc2020"}
            )
            if response.status_code == 200 and response.json()["rows"][0]["skipped"] == "":
                measured.latencies_s.append(time.perf_counter() - started)
            else:
                measured.errors += 1
        measured.wall_s = time.perf_counter() - started_all
    return measured


def measure_mode(label: str, extra: list[str], args: argparse.Namespace) -> dict[str, Measured]:
    port = free_port()
    server = start_server(port, extra)
    clients, requests, limit = args.clients, args.requests, args.time_limit
    try:
        asyncio.run(formula_load(port, clients, one_formula(200), 30))  # connections and first calls warm
        results = {
            "one client": timed(
                server, lambda: asyncio.run(formula_load(port, 1, one_formula(args.lone_requests), limit))
            ),
            f"{clients} clients, one formula": timed(
                server, lambda: asyncio.run(formula_load(port, clients, one_formula(requests), limit))
            ),
            f"{clients} clients, each another formula": timed(
                server,
                lambda: asyncio.run(formula_load(port, clients, distinct_formulas(requests), limit)),
            ),
            "one structure, one client": timed(
                server, lambda: structure_requests(f"http://127.0.0.1:{port}", args.structure_requests)
            ),
        }
    finally:
        server.terminate()
        server.wait(timeout=30)
    for name, measured in results.items():
        print(measured.line(f"{label}: {name}"), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--lone-requests", type=int, default=300, help="requests of the one-client reference")
    parser.add_argument("--structure-requests", type=int, default=30)
    parser.add_argument("--time-limit", type=float, default=120, help="seconds per load, at most")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {TARGETS}", flush=True)
    modes = [REFERENCE, *(mode for mode in args.modes if mode != REFERENCE)]
    results = {mode: measure_mode(mode, MODES[mode], args) for mode in modes}
    for load in (f"{args.clients} clients, one formula", f"{args.clients} clients, each another formula"):
        reference = results[REFERENCE][load].p50_ms
        ratios = ", ".join(f"{mode} {results[mode][load].p50_ms / reference:.2f}" for mode in modes[1:])
        print(f"p50 against {REFERENCE} ({reference:.1f} ms), {load}: {ratios}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (other processes share these CPUs)")


if __name__ == "__main__":
    main()
