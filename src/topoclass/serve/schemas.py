"""The JSON the API reads and writes (pydantic models: validated, and documented in /openapi.json)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Choice = Literal["network", "trees", "blend"]
PREDICTOR_HELP = "serve every task by this source (default: each task's choice on validation, see the card)"
MODEL_HELP = "a served model's name (default: the first one the server was started with)"


class MaterialRow(BaseModel):
    """One material: a formula and its space group."""

    model_config = ConfigDict(extra="forbid")

    formula: str = Field(min_length=1, max_length=200, examples=["Bi2Se3"])
    spacegroup: int = Field(ge=1, le=230, examples=[166], description="international number, 1-230")
    id: str | None = Field(None, max_length=200, description="echoed back in the answer (default: formula)")


class PredictRequest(BaseModel):
    """Materials to predict, in order."""

    model_config = ConfigDict(extra="forbid")

    rows: list[MaterialRow] = Field(min_length=1)
    model: str | None = Field(None, description=MODEL_HELP)
    predictor: Choice | None = Field(None, description=PREDICTOR_HELP)


class PredictResponse(BaseModel):
    """One row per material (or file), in the order given.

    Each row has ``id``, ``formula``, ``spacegroup``; per task the answer (``TASK``; null where
    the task does not apply), every class probability (``TASK:p(CLASS)``) and the source that
    answered (``TASK:predictor``); ``skipped``: why there is no prediction (empty when there
    is one). Models may add columns (applicability flags, for instance).
    """

    model: str
    tasks: list[str]
    rows: list[dict[str, Any]]


class ModelInfo(BaseModel):
    """A served model: what it predicts, and where its card is."""

    name: str
    tasks: list[str]
    classes: dict[str, list[str]] = Field(description="each classification task's classes")
    uses_structures: bool = Field(description="whether it reads crystal structures (it predicts without too)")
    card: str | None = Field(description="URL of the model card (Markdown; ?format=html for a page)")


class Problem(BaseModel):
    """Why a request was refused, in one line naming the field, row, file or limit."""

    detail: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    models: list[str]
