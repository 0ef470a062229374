"""Formula answers already given, kept so that a material asked again costs no prediction.

A loaded model answers a formula and space group the same way every time, and a service is
asked for the same materials over and over (Bi2Se3 from the page, a pipeline polling its
candidates). So the server keeps the last ``max_rows`` answered rows, keyed by all that an
answer depends on: the model, the requested predictor, the formula as written and the space
group. A row's ``id`` is the request's, set on the way out. Rows that were skipped are not
kept: their reason names the request's id, and a failure costs no prediction anyway.

The cache lives on the event loop (looked up before a request waits for the runner, filled
after): no lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any

from topoclass.serve.schemas import MaterialRow

DEFAULT_ROWS = 10_000  # about 0.6 KiB a row (measured with tracemalloc): 6 MiB


class AnswerCache:
    """The last ``max_rows`` formula rows answered (least recently used out first); 0 keeps none."""

    def __init__(self, max_rows: int = DEFAULT_ROWS) -> None:
        self.max_rows = max_rows
        self._rows: OrderedDict[Hashable, dict[str, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    async def answer(
        self,
        scope: Hashable,
        rows: Sequence[MaterialRow],
        predict: Callable[[list[MaterialRow]], Awaitable[list[dict[str, Any]]]],
    ) -> list[dict[str, Any]]:
        """One answer per row, in order: kept ones for rows asked before under ``scope`` (the model
        and predictor), ``predict`` for the others."""
        keys = [(scope, row.formula, row.spacegroup) for row in rows]
        answers = {i: kept for i, key in enumerate(keys) if (kept := self._get(key)) is not None}
        missing = [i for i in range(len(rows)) if i not in answers]
        if missing:
            predicted = await predict([rows[i] for i in missing])
            for i, answer in zip(missing, predicted, strict=True):
                answers[i] = answer
                if not answer.get("skipped"):
                    self._put(keys[i], answer)
        # A new dict for every row: what goes out is never the kept object.
        return [{**answers[i], "id": row.id or row.formula} for i, row in enumerate(rows)]

    def _get(self, key: Hashable) -> dict[str, Any] | None:
        kept = self._rows.get(key)
        if kept is not None:
            self._rows.move_to_end(key)
        return kept

    def _put(self, key: Hashable, row: dict[str, Any]) -> None:
        if self.max_rows <= 0:
            return
        self._rows[key] = row
        self._rows.move_to_end(key)
        while len(self._rows) > self.max_rows:
            self._rows.popitem(last=False)
