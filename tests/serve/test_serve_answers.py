"""Formula answers kept for repeated requests: what is kept, under which key, and for how long."""

from __future__ import annotations

import asyncio
from typing import Any

from topoclass.serve.answers import AnswerCache
from topoclass.serve.schemas import MaterialRow


class CountingModel:
    """Answers every row with a fresh dict, counting the rows it was asked to predict."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def predict(self, rows: list[MaterialRow]) -> list[dict[str, Any]]:
        self.asked += [row.formula for row in rows]
        return [
            {
                "id": row.id or row.formula,
                "formula": row.formula,
                "p": len(self.asked),
                "skipped": f"{row.id or row.formula}: not an element" if row.formula.startswith("Xx") else "",
            }
            for row in rows
        ]


def rows(
    *formulas: str, spacegroup: int = 166, ids: tuple[str | None, ...] | None = None
) -> list[MaterialRow]:
    ids = ids or (None,) * len(formulas)
    return [MaterialRow(formula=f, spacegroup=spacegroup, id=i) for f, i in zip(formulas, ids, strict=True)]


def ask(cache: AnswerCache, model: CountingModel, asked: list[MaterialRow], scope="tang2019") -> list[dict]:
    return asyncio.run(cache.answer(scope, asked, model.predict))


def test_a_row_asked_again_is_answered_without_predicting_under_its_own_id():
    cache, model = AnswerCache(), CountingModel()
    first = ask(cache, model, rows("Bi2Se3"))
    again = ask(cache, model, rows("Bi2Se3", ids=("mine",)))
    assert model.asked == ["Bi2Se3"]
    assert again == [{**first[0], "id": "mine"}] and first[0]["id"] == "Bi2Se3"
    again[0]["p"] = "changed by the caller"
    assert ask(cache, model, rows("Bi2Se3"))[0]["p"] == first[0]["p"]


def test_only_the_rows_not_kept_are_predicted_and_the_order_is_the_request_s():
    cache, model = AnswerCache(), CountingModel()
    ask(cache, model, rows("SnTe"))
    answered = ask(cache, model, rows("Bi2Se3", "SnTe", "PbTe"))
    assert model.asked == ["SnTe", "Bi2Se3", "PbTe"]
    assert [row["formula"] for row in answered] == ["Bi2Se3", "SnTe", "PbTe"]


def test_another_model_predictor_or_space_group_is_another_answer():
    cache, model = AnswerCache(), CountingModel()
    ask(cache, model, rows("SnTe"), scope=("tang2019", None))
    ask(cache, model, rows("SnTe"), scope=("tang2019", "trees"))
    ask(cache, model, rows("SnTe"), scope=("tqc2020", None))
    ask(cache, model, rows("SnTe", spacegroup=225), scope=("tqc2020", None))
    assert model.asked == ["SnTe"] * 4


def test_skipped_rows_are_not_kept_their_reason_names_the_request_s_id():
    cache, model = AnswerCache(), CountingModel()
    ask(cache, model, rows("Xx2", ids=("first",)))
    (again,) = ask(cache, model, rows("Xx2", ids=("second",)))
    assert model.asked == ["Xx2", "Xx2"] and again["skipped"] == "second: not an element"
    assert len(cache) == 0


def test_the_least_recently_used_row_leaves_first_and_zero_keeps_none():
    cache, model = AnswerCache(max_rows=2), CountingModel()
    ask(cache, model, rows("A1", "B1"))
    ask(cache, model, rows("A1"))  # B1 is now the least recently used
    ask(cache, model, rows("C1"))
    ask(cache, model, rows("A1", "C1", "B1"))
    assert model.asked == ["A1", "B1", "C1", "B1"] and len(cache) == 2
    none, model = AnswerCache(max_rows=0), CountingModel()
    ask(none, model, rows("A1"))
    ask(none, model, rows("A1"))
    assert model.asked == ["A1", "A1"] and len(none) == 0
