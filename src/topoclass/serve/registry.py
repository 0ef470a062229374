"""The models a server answers with: loaded once at start, each under a short name."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from topoclass.api import load, model_dir
from topoclass.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from topoclass.api import Predictor

logger = logging.getLogger(__name__)

CARD_FILE = "model_card.md"
# The first predict call of a process sets up featurization (element tables, the trees'
# libraries): seconds, paid at start rather than by the first request.
WARM_UP = (["NaCl"], [225])


@dataclass
class ServedModel:
    """A loaded model, its name in URLs and requests, and its model card (if it has one)."""

    name: str
    predictor: Predictor
    directory: Path

    @property
    def card(self) -> Path | None:
        path = self.directory / CARD_FILE
        return path if path.is_file() else None


def load_models(models: Sequence[str]) -> dict[str, ServedModel]:
    """Load each bundled model name or run directory once; names are the bundle's or the directory's."""
    directories: dict[str, Path] = {}
    for model in models:
        directory = model_dir(model).resolve()
        if directory.name in directories:
            raise ConfigError(
                f"two models are named '{directory.name}' ({directories[directory.name]} and {directory})"
            )
        directories[directory.name] = directory
    served: dict[str, ServedModel] = {}
    for name, directory in directories.items():
        predictor = load(directory)
        predictor.predict(*WARM_UP)
        served[name] = ServedModel(name, predictor, directory)
        logger.info("Serving %s (%s) from %s", name, ", ".join(predictor.tasks), directory)
    return served


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A Predictor's rows as JSON-ready dicts (missing values become null)."""
    # pandas' own JSON writer turns NaN, NA and NumPy scalars into JSON in one pass.
    rows: list[dict[str, Any]] = json.loads(frame.to_json(orient="records"))
    return rows
