"""Latency of ``topoclass serve`` under load: many concurrent clients asking for one formula.

Starts the server as a subprocess on 127.0.0.1 (a free port) with the bundled ``tang2019`` and
``tqc2020`` models, once per way of running predictions (concurrent requests batched into one
Predictor call, the default; and one call per request in a thread pool, ``--no-batching``),
and sends ``--requests`` requests of Bi2Se3 / 166 from ``--clients`` concurrent keep-alive
clients (aiohttp, asyncio), bounded by ``--time-limit`` seconds. Then one client uploads the
tqc2020 example CIF ``--structure-requests`` times. Prints p50/p99 latency, throughput and
errors per mode, the reference of one lone client in the same run, and the targets.

The client runs on the same machine as the server, so its CPU cost counts: aiohttp's client
spends about 0.3 ms of CPU per request where httpx's async client spent 7-8 ms (measured
here), which alone capped the load near 35 requests/s on two cores. CPU per request of
client and server are printed; on a small machine the latencies are an upper bound of the
server's.

Usage: ``python benchmarks/serve_load.py [--clients 50] [--requests 5000] [--time-limit 120]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx

from topoclass.api import bundled_model_dir

ROW = {"rows": [{"formula": "Bi2Se3", "spacegroup": 166}], "model": "tang2019"}
CIF = bundled_model_dir("tqc2020") / "examples" / "Bi2Se3.cif"
TARGETS = "targets: 0 errors, p50 <= 10 ms, p99 <= 50 ms (formulas); p50 <= 100 ms (one structure)"


@dataclass
class Measured:
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_s: float = float("nan")

    def line(self, label: str) -> str:
        if not self.latencies_s:
            return f"{label:<34} no answer, {self.errors} errors"
        ms = sorted(1000 * s for s in self.latencies_s)
        p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
        rate = len(ms) / self.wall_s if self.wall_s else float("nan")
        client, server = (1000 * cpu / len(ms) for cpu in (self.client_cpu_s, self.server_cpu_s))
        return (
            f"{label:<34} {len(ms):>6} ok {self.errors:>4} errors  p50 {statistics.median(ms):7.1f} ms  "
            f"p99 {p99:7.1f} ms  {rate:5.0f} req/s  CPU ms/req: client {client:4.1f}, server {server:4.1f}"
        )

    @property
    def p50_ms(self) -> float:
        return 1000 * statistics.median(self.latencies_s) if self.latencies_s else float("nan")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
                return process
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    sys.exit("the server did not start within 300 s")


async def formula_load(url: str, clients: int, requests: int, time_limit: float) -> Measured:
    """``clients`` keep-alive connections asking for one formula until ``requests`` or ``time_limit``."""
    measured = Measured()
    remaining = requests
    deadline = time.monotonic() + time_limit
    timeout = aiohttp.ClientTimeout(total=30)

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal remaining
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            started = time.perf_counter()
            try:
                async with http.post(f"{url}/predict", json=ROW, timeout=timeout) as response:
                    answer = await response.json()
                ok = response.status == 200 and answer["rows"][0]["topo_class"] == "TI"
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ok = False
            if ok:
                measured.latencies_s.append(time.perf_counter() - started)
            else:
                measured.errors += 1

    cpu, wall = time.process_time(), time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    measured.wall_s, measured.client_cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    return measured


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
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(formula_load(url, 1, 20, 30))  # connections and first calls warm
        results = {
            "one client": timed(
                server, lambda: asyncio.run(formula_load(url, 1, args.lone_requests, args.time_limit))
            ),
            f"{args.clients} clients": timed(
                server,
                lambda: asyncio.run(formula_load(url, args.clients, args.requests, args.time_limit)),
            ),
            "one structure, one client": timed(
                server, lambda: structure_requests(url, args.structure_requests)
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
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {TARGETS}", flush=True)
    batched = measure_mode("batched", [], args)
    pooled = measure_mode("thread pool", ["--no-batching"], args)
    key = f"{args.clients} clients"
    ratio = pooled[key].p50_ms / batched[key].p50_ms
    print(f"p50 under load, thread pool / batched: {ratio:.2f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (other processes share these CPUs)")


if __name__ == "__main__":
    main()
