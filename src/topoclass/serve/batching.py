"""Running Predictor calls for concurrent requests without blocking the event loop.

A Predictor call has a fixed cost (featurization set-up, the forward pass, the trees, a
DataFrame) of about 10 ms on a CPU, nearly whatever its number of rows (50 rows: 20 ms), and
PyTorch already spreads one call over the threads ``topoclass.threads`` gives it. So the
default, :class:`MicroBatcher`, runs one call at a time in one worker thread, and the requests
that arrive while a call runs go together into the next: under load they share the fixed
cost, and a lone request waits for nothing (there is no batching window). Concurrent calls
never make PyTorch's intra-op threads compete. :class:`ThreadPoolRunner` (one call per
request in a pool of threads) is the simple alternative, kept for comparison
(``--no-batching``; ``benchmarks/serve_load.py`` measures both).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

# Predicts a list of inputs, one output row per input, in order.
PredictCall = Callable[[list[Any]], list[dict[str, Any]]]


class PredictionRunner(Protocol):
    async def run(self, key: Hashable, call: PredictCall, items: list[Any]) -> list[dict[str, Any]]:
        """``call(items)``, off the event loop; ``key`` names the calls that may share a batch."""
        ...

    def close(self) -> None:
        """Stop the worker threads."""
        ...


@dataclass
class _Job:
    items: list[Any]
    future: asyncio.Future[list[dict[str, Any]]]


@dataclass
class _Queue:
    call: PredictCall
    pending: list[_Job] = field(default_factory=list)
    draining: bool = False


class MicroBatcher:
    """Requests with the same key that wait together are answered by one call (at most
    ``max_rows`` inputs; a request larger than that still goes alone)."""

    def __init__(self, max_rows: int) -> None:
        self._max_rows = max_rows
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="topoclass-predict")
        self._queues: dict[Hashable, _Queue] = {}
        self._drains: set[asyncio.Task[None]] = set()  # held so that running drains are not collected

    async def run(self, key: Hashable, call: PredictCall, items: list[Any]) -> list[dict[str, Any]]:
        queue = self._queues.setdefault(key, _Queue(call))
        future: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        queue.pending.append(_Job(items, future))
        if not queue.draining:
            queue.draining = True
            task = asyncio.create_task(self._drain(queue))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)
        return await future

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _drain(self, queue: _Queue) -> None:
        try:
            while queue.pending:
                await self._answer(queue.call, self._take(queue))
        finally:
            queue.draining = False

    def _take(self, queue: _Queue) -> list[_Job]:
        """The oldest waiting requests, up to ``max_rows`` inputs (at least one request)."""
        taken, rows = 0, 0
        for job in queue.pending:
            if taken and rows + len(job.items) > self._max_rows:
                break
            taken += 1
            rows += len(job.items)
        jobs, queue.pending = queue.pending[:taken], queue.pending[taken:]
        return jobs

    async def _answer(self, call: PredictCall, jobs: list[_Job]) -> None:
        """Settle every job's future with its rows of one shared call, or with the call's error."""
        try:
            rows = await self._call(call, [item for job in jobs for item in job.items])
        except Exception as exc:
            if len(jobs) == 1:
                _settle(jobs[0], error=exc)
                return
            # One request's input broke the shared call: answer each request on its own.
            for job in jobs:
                await self._answer(call, [job])
            return
        start = 0
        for job in jobs:
            _settle(job, result=rows[start : start + len(job.items)])
            start += len(job.items)

    async def _call(self, call: PredictCall, items: list[Any]) -> list[dict[str, Any]]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, items)


def _settle(
    job: _Job, *, result: list[dict[str, Any]] | None = None, error: BaseException | None = None
) -> None:
    if job.future.done():  # the client went away
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(result or [])


class ThreadPoolRunner:
    """One call per request, ``threads`` calls at a time."""

    def __init__(self, threads: int = 32) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="topoclass-predict")

    async def run(self, key: Hashable, call: PredictCall, items: list[Any]) -> list[dict[str, Any]]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, items)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
