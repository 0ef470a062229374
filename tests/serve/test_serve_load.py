"""A bounded load on a real server process: concurrent clients, every request answered correctly."""

from __future__ import annotations

import asyncio
import time

import pytest

pytestmark = pytest.mark.integration  # starts a topoclass process

CLIENTS = 10
REQUESTS_EACH = 20
TIME_CAP_S = 60


async def _client(url: str, http, number: int) -> list[str]:
    """Bi2Se3 (answered once, then kept) every other request, formulas no one asked before between."""
    answers = []
    for i in range(REQUESTS_EACH):
        formula = "Bi2Se3" if i % 2 == 0 else f"Bi{number + 1}Te{i}"
        rows = [{"formula": formula, "spacegroup": 166, "id": f"r{i}"}]
        response = await http.post(f"{url}/predict", json={"rows": rows})
        response.raise_for_status()
        (row,) = response.json()["rows"]
        assert (row["id"], row["formula"], row["skipped"]) == (f"r{i}", formula, "")
        answers.append(row["topo_class"] if formula == "Bi2Se3" else row["topological"])
    return answers


async def _load(url: str) -> list[list[str]]:
    import httpx

    async with httpx.AsyncClient(timeout=TIME_CAP_S) as http:
        return await asyncio.wait_for(
            asyncio.gather(*(_client(url, http, number) for number in range(CLIENTS))), timeout=TIME_CAP_S
        )


def test_concurrent_clients_all_get_their_answer(server_url):
    start = time.monotonic()
    answers = asyncio.run(_load(server_url))
    assert [len(each) for each in answers] == [REQUESTS_EACH] * CLIENTS
    assert {answer for each in answers for answer in each[::2]} == {"TI"}
    assert {answer for each in answers for answer in each[1::2]} <= {"trivial", "topological"}
    assert time.monotonic() - start < TIME_CAP_S
