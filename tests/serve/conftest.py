"""A real ``topoclass serve`` process on 127.0.0.1, shared by the tests that need one."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import cli_env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_up(process: subprocess.Popen, url: str, seconds: float) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"topoclass serve exited with {process.returncode}: {process.stdout.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"topoclass serve did not answer on {url} within {seconds} s")


@pytest.fixture(scope="session")
def server_url(tmp_path_factory):
    """URL of ``topoclass serve tang2019 tqc2020`` on a free port (stopped after the session)."""
    pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
    port = free_port()
    tmp = tmp_path_factory.mktemp("serve")
    process = subprocess.Popen(
        [sys.executable, "-m", "topoclass", "serve", "tang2019", "tqc2020", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(tmp),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(process, url, seconds=180)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
