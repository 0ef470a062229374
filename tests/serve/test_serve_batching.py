"""Micro-batching: requests waiting together share one call, and one bad request spoils no other."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from topoclass.serve.batching import MicroBatcher


class Recorder:
    """A predict call that squares numbers, takes 20 ms, records its batches and refuses negatives."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()

    def __call__(self, items: list[int]) -> list[dict]:
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        time.sleep(0.02)
        if any(item < 0 for item in items):
            raise ValueError("negative")
        return [{"square": item * item} for item in items]


async def _run_all(batcher: MicroBatcher, call: Recorder, requests: list[list[int]]):
    results = await asyncio.gather(
        *(batcher.run("key", call, items) for items in requests), return_exceptions=True
    )
    batcher.close()
    return results


def test_concurrent_requests_share_calls_and_get_their_own_rows():
    call = Recorder()
    requests = [[i, i + 100] for i in range(20)]
    results = asyncio.run(_run_all(MicroBatcher(max_rows=1000), call, requests))
    assert results == [[{"square": i * i}, {"square": (i + 100) ** 2}] for i in range(20)]
    # All twenty were waiting when the worker began: one call.
    assert [len(batch) for batch in call.batches] == [40]
    assert len(call.threads) == 1


def test_requests_arriving_during_a_call_go_together_into_the_next():
    async def scenario():
        batcher, call = MicroBatcher(max_rows=100), Recorder()
        first = asyncio.ensure_future(batcher.run("key", call, [1]))
        await asyncio.sleep(0.005)  # the first call is running
        later = [asyncio.ensure_future(batcher.run("key", call, [n])) for n in (2, 3, 4)]
        results = await asyncio.gather(first, *later)
        batcher.close()
        return call.batches, results

    batches, results = asyncio.run(scenario())
    assert batches == [[1], [2, 3, 4]]
    assert results == [[{"square": n * n}] for n in (1, 2, 3, 4)]


def test_batches_stay_within_max_rows():
    call = Recorder()
    results = asyncio.run(_run_all(MicroBatcher(max_rows=5), call, [[i] for i in range(12)]))
    assert [row["square"] for result in results for row in result] == [i * i for i in range(12)]
    assert max(len(batch) for batch in call.batches) <= 5


def test_a_failing_request_fails_alone():
    call = Recorder()
    results = asyncio.run(_run_all(MicroBatcher(max_rows=100), call, [[1], [2], [-3], [4]]))
    assert results[0] == [{"square": 1}]
    assert results[1] == [{"square": 4}] and results[3] == [{"square": 16}]
    assert isinstance(results[2], ValueError)


def test_a_cancelled_request_leaves_the_others_answered():
    async def scenario():
        batcher, call = MicroBatcher(max_rows=100), Recorder()
        first = asyncio.ensure_future(batcher.run("key", call, [1]))
        waiting = [asyncio.ensure_future(batcher.run("key", call, [n])) for n in (2, 3)]
        await asyncio.sleep(0.005)
        waiting[0].cancel()  # its client went away while the first call ran
        done = await asyncio.gather(first, waiting[1])
        batcher.close()
        return done

    assert asyncio.run(scenario()) == [[{"square": 1}], [{"square": 9}]]


@pytest.fixture(autouse=True)
def _bounded():
    start = time.perf_counter()
    yield
    assert time.perf_counter() - start < 5
