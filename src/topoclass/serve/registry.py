"""The models a server answers with: loaded once at start, each under a short name."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from topoclass.api import formula_inputs, load, model_dir, structure_inputs
from topoclass.errors import ConfigError

if TYPE_CHECKING:
    from topoclass.api import Predictor

logger = logging.getLogger(__name__)

CARD_FILE = "model_card.md"
# The first predict call of a process sets up featurization (element tables, the trees'
# libraries; for structures also pymatgen, spglib and the graph code): seconds, paid at start
# rather than by the first request.
WARM_UP = (["NaCl"], [225])


@dataclass
class ServedModel:
    """A loaded model, its name in URLs and requests, the columns of its answers to formulas, and
    its model card (if it has one)."""

    name: str
    predictor: Predictor
    directory: Path
    formula_columns: list[str]

    @property
    def card(self) -> Path | None:
        path = self.directory / CARD_FILE
        return path if path.is_file() else None


def model_directories(models: Sequence[str]) -> dict[str, Path]:
    """Each bundled model name or run directory's folder, under its name in the API (the bundle's
    or the directory's); a ConfigError for one that is neither, or for two of one name."""
    directories: dict[str, Path] = {}
    for model in models:
        directory = model_dir(model).resolve()
        if directory.name in directories:
            raise ConfigError(
                f"two models are named '{directory.name}' ({directories[directory.name]} and {directory})"
            )
        directories[directory.name] = directory
    return directories


def load_models(models: Sequence[str]) -> dict[str, ServedModel]:
    """Load each bundled model name or run directory once; names are the bundle's or the directory's."""
    served: dict[str, ServedModel] = {}
    for name, directory in model_directories(models).items():
        predictor = load(directory)
        served[name] = ServedModel(name, predictor, directory, formula_columns=warm_up(predictor))
        logger.info("Serving %s (%s) from %s", name, ", ".join(predictor.tasks), directory)
    return served


def warm_up(predictor: Predictor) -> list[str]:
    """One formula (and, for a model that reads structures, one rock-salt cell) through the model;
    the columns of its answer to the formula."""
    columns = predictor.answer(formula_inputs(*WARM_UP)).columns
    if predictor.uses_structures:
        from pymatgen.core import Lattice, Structure

        sites = [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]
        rock_salt = Structure.from_spacegroup(225, Lattice.cubic(5.64), ["Na", "Cl"], sites)
        predictor.answer(structure_inputs(rock_salt))
    return columns
