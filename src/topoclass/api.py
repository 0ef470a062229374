"""The Python interface: load a model (bundled or trained), predict new materials, train.

    >>> import topoclass as tc
    >>> model = tc.load("tang2019")                      # bundled; or a run directory
    >>> model.predict(["Bi2Se3", "NaCl"], [166, 225])    # a pandas DataFrame

The command line's ``predict`` and ``train`` go through these same calls.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from topoclass.errors import ConfigError, ResumableStop, TopoclassError

if TYPE_CHECKING:
    import pandas as pd
    from pymatgen.core import Structure

    from topoclass.app.predict import TrainedRun
    from topoclass.config import Config
    from topoclass.data.records import Material, Reject
    from topoclass.screen.runner import ScreenOutcome

__all__ = ["Inputs", "PredictionTable", "Predictor", "bundled_models", "load", "train"]

logger = logging.getLogger(__name__)

BUNDLED_ROOT = Path(__file__).with_name("pretrained")
PREDICTORS = ("network", "trees", "blend")

StructureItem = Any  # a pymatgen Structure, an ASE Atoms, or a path to a CIF/POSCAR/extxyz/JSON file


def bundled_models() -> list[str]:
    """Names of the models that ship inside the package, e.g. ``["tang2019", "tqc2020"]``."""
    if not BUNDLED_ROOT.is_dir():
        return []
    return sorted(entry.name for entry in BUNDLED_ROOT.iterdir() if (entry / "config.yaml").is_file())


def bundled_model_dir(name: str) -> Path:
    """The directory of bundled model ``name`` (ConfigError naming the choices if there is none)."""
    if name not in bundled_models():
        known = ", ".join(bundled_models()) or "none installed"
        raise ConfigError(f"'{name}' is neither a run directory nor a bundled model ({known})")
    return BUNDLED_ROOT / name


def model_dir(model: str | os.PathLike[str]) -> Path:
    """The directory a model argument means: an existing directory wins over a bundled name."""
    path = Path(model)
    return path if path.is_dir() else bundled_model_dir(str(model))


def load(model: str | os.PathLike[str], *, device: str = "auto") -> Predictor:
    """A predictor from a bundled model's name or a run directory (its best checkpoint).

    An existing directory wins over a bundled name::

        model = tc.load("tang2019")        # shipped with the package
        model = tc.load("runs/my-run")     # trained with ``topoclass train``
    """
    from topoclass.app.predict import load_run

    return Predictor(load_run(model_dir(model), device=device))


def train(config: Config | Mapping[str, Any] | str | os.PathLike[str]) -> Path:
    """Train (or resume, as ``checkpoint.resume`` says) the run a config describes; its directory.

    ``config`` is a :class:`~topoclass.config.Config`, a mapping of the same keys, or a YAML
    file. Calling it again on a run that stopped resumes it::

        run = tc.train({"data": {"dataset": "tang2019", "data_dir": "data"}, "train": {"epochs": 30}})
        tc.load(run).predict(["Bi2Se3"], [166])

    Raises :class:`~topoclass.errors.ResumableStop` when a stop signal or a fault ended the run
    before its last epoch (its last checkpoint is kept: train again to continue).
    """
    from topoclass.app.runs import RunLayout
    from topoclass.app.training import run_training
    from topoclass.config import Config, config_from_dict, load_config

    if isinstance(config, Config):
        resolved = config
    elif isinstance(config, Mapping):
        resolved = config_from_dict(dict(config))
    else:
        resolved = load_config(Path(os.fspath(config)))
    root = RunLayout.for_config(resolved).root
    if run_training(resolved) != 0:
        raise ResumableStop(f"training of {root} stopped before its last epoch; train again to resume")
    return root


@dataclass
class Inputs:
    """Materials to predict, in the order given: their ids are their positions, ``names`` the ids
    the user gave; ``unreadable`` are table rows that could not be read (reported last)."""

    materials: list[Material]
    names: list[str]
    unreadable: list[Reject] = field(default_factory=list)
    from_formulas: bool = False  # formula and space group only, no structures


def formula_inputs(
    formulas: str | Sequence[str], spacegroups: int | Sequence[int], *, ids: Sequence[str] | None = None
) -> Inputs:
    """Inputs from formulas and space-group numbers (one of each, or two lists of one length)."""
    from topoclass.data.records import Material

    formulas = [formulas] if isinstance(formulas, str) else list(formulas)
    groups = [spacegroups] if isinstance(spacegroups, int) else list(spacegroups)
    if len(groups) != len(formulas):
        raise ConfigError(f"{len(formulas)} formulas but {len(groups)} space groups")
    names = _ids(ids, formulas)
    materials = [
        Material(id=str(i), formula=formula, spacegroup=int(group), source=names[i])
        for i, (formula, group) in enumerate(zip(formulas, groups, strict=True))
    ]
    return Inputs(materials, names, from_formulas=True)


def structure_inputs(
    items: StructureItem | Sequence[StructureItem], *, ids: Sequence[str] | None = None
) -> Inputs:
    """Inputs from pymatgen Structures, ASE Atoms or structure files (CIF, POSCAR, extxyz, JSON)."""
    from topoclass.data.records import Material

    listed = list(items) if isinstance(items, list | tuple) else [items]
    names = _ids(ids, [_default_id(item, i) for i, item in enumerate(listed)])
    materials = [
        Material(id=str(i), formula="", spacegroup=None, structure=_structure_ref(item), source=names[i])
        for i, item in enumerate(listed)
    ]
    return Inputs(materials, names)


def table_inputs(path: str | os.PathLike[str]) -> Inputs:
    """Inputs from a CSV, TSV or JSONL table (see :meth:`Predictor.predict_table`)."""
    from topoclass.data.tables import read_table

    materials, unreadable = read_table(Path(path))
    names = [material.id for material in materials]
    indexed = [_with_id(material, str(i)) for i, material in enumerate(materials)]
    return Inputs(indexed, names, unreadable)


@dataclass
class PredictionTable:
    """Prediction rows in input order with their columns, before any DataFrame is made: the command
    line and the server write them straight out, without loading pandas."""

    columns: list[str]
    rows: list[dict[str, Any]]

    def to_frame(self) -> pd.DataFrame:
        """The rows as a pandas DataFrame (``spacegroup`` whole numbers beside a skipped row's gap)."""
        import pandas as pd

        frame = pd.DataFrame(self.rows, columns=self.columns)
        frame["spacegroup"] = frame["spacegroup"].astype("Int64")
        return frame

    def records(self) -> list[dict[str, Any]]:
        """Every row with every column, JSON-ready: what is missing (or not a number) is None."""
        return [{column: _json_value(row.get(column)) for column in self.columns} for row in self.rows]

    @property
    def skipped(self) -> list[str]:
        """Why each skipped input could not be predicted."""
        return [row["skipped"] for row in self.rows if row["skipped"]]

    def answered_csv(self) -> str:
        """The answered rows as CSV text, without the ``skipped`` column."""
        columns = [column for column in self.columns if column != "skipped"]
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(columns)
        answered = (row for row in self.rows if not row["skipped"])
        writer.writerows([row.get(column, "") for column in columns] for row in answered)
        return text.getvalue()


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


class Predictor:
    """A trained model with the rules it is served by: predictions as pandas DataFrames.

    Every call returns one row per material, in the order given: ``id``, ``formula``,
    ``spacegroup``, per task the predicted class (or value), every class probability
    (``task:p(class)``) and which source answered (``task:predictor``: network, trees or
    blend), and ``skipped``: why a material could not be predicted (empty when it was).
    """

    def __init__(self, run: TrainedRun) -> None:
        self._run = run
        self.last_screen: ScreenOutcome | None = None  # what the last ``screen`` call did

    def __repr__(self) -> str:
        return f"Predictor({str(self._run.layout.root)!r}, tasks={self.tasks})"

    @property
    def tasks(self) -> list[str]:
        """The tasks it predicts, main task first."""
        return [task.name for task in self._run.tasks]

    @property
    def classes(self) -> dict[str, list[str]]:
        """Each classification task's classes, in the order of its probability columns."""
        return {task.name: list(task.classes) for task in self._run.tasks if task.classes}

    @property
    def uses_structures(self) -> bool:
        """Whether the model reads crystal structures (it predicts without them too)."""
        return self._run.config.data.use_structure

    def predict(
        self,
        formulas: str | Sequence[str],
        spacegroups: int | Sequence[int],
        *,
        ids: Sequence[str] | None = None,
        predictor: str | None = None,
    ) -> pd.DataFrame:
        """Predictions from formulas and space-group numbers (1-230)::

        model.predict(["Bi2Se3", "NaCl"], [166, 225])
        model.predict("Bi2Se3", 166, predictor="network")   # one source for every task
        """
        return self.answer(formula_inputs(formulas, spacegroups, ids=ids), predictor=predictor).to_frame()

    def predict_structures(
        self,
        items: StructureItem | Sequence[StructureItem],
        *,
        ids: Sequence[str] | None = None,
        predictor: str | None = None,
    ) -> pd.DataFrame:
        """Predictions from crystal structures: pymatgen ``Structure``, ASE ``Atoms``, or paths
        to CIF, POSCAR, extxyz or pymatgen-JSON files. Formula and space group come from the
        structure (spglib, ``symprec`` of the model's config)::

        model.predict_structures([Structure.from_file("Bi2Se3.cif"), atoms, "NaCl.cif"])
        """
        return self.answer(structure_inputs(items, ids=ids), predictor=predictor).to_frame()

    def predict_table(self, path: str | os.PathLike[str], *, predictor: str | None = None) -> pd.DataFrame:
        """Predictions for a CSV, TSV or JSONL table with ``formula`` and ``spacegroup`` columns
        (or a ``structure`` column of file paths) and an optional ``id`` column. Rows that cannot
        be read come last, with the reason in ``skipped``."""
        return self.answer(table_inputs(path), predictor=predictor).to_frame()

    def screen(
        self,
        inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        out: str | os.PathLike[str],
        *,
        chunk_size: int = 1000,
        rank: Sequence[str] = (),
        top: int = 100,
        shard: str | None = None,
        workers: int = 1,
        predictor: str | None = None,
        max_atoms: int = 2000,
        oversize_atoms: int = 0,
        progress: bool | None = None,
    ) -> dict[str, Any] | None:
        """Screen any number of crystals into the folder ``out``: Parquet parts, ``candidates.csv``
        (the ``top`` materials of each class in ``rank``) and ``summary.json`` (see docs/screening.md)::

            model.screen(["cifs/", "mp.json.gz"], "screen-out", rank=["TI", "TCI"], top=50)

        ``inputs``: folders (CIF/POSCAR, recursive), globs, extended XYZ, ASE databases, tables,
        pymatgen JSON dumps. Calling it again continues an interrupted screen. Returns the summary,
        or None while other shards (``shard="I/N"``) still have chunks to do. Raises
        :class:`~topoclass.errors.ResumableStop` when a stop signal ended it early.
        """
        try:
            from topoclass.screen.runner import ScreenSettings
            from topoclass.screen.runner import screen as run_screen
            from topoclass.screen.sharding import Shard, parse_shard
        except ModuleNotFoundError as missing:
            raise TopoclassError(f"screening needs {missing.name}: pip install 'topoclass[screen]'") from None

        if predictor is not None and predictor not in PREDICTORS:
            raise ConfigError(f"predictor must be one of {', '.join(PREDICTORS)}, not '{predictor}'")
        listed = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
        settings = ScreenSettings(
            chunk_size=chunk_size,
            predictor=predictor,
            max_atoms=max_atoms,
            oversize_atoms=oversize_atoms,
            rank=tuple(rank),
            top=top,
            shard=parse_shard(shard) if shard else Shard(),
            workers=workers,
            progress=progress,
        )
        outcome = run_screen(self._run, listed, Path(out), settings)
        self.last_screen = outcome
        if outcome.stopped:
            raise ResumableStop(outcome.line())
        return outcome.summary

    def answer(self, inputs: Inputs, *, predictor: str | None = None) -> PredictionTable:
        """Predictions for ``inputs`` (from :func:`formula_inputs`, :func:`structure_inputs` or
        :func:`table_inputs`) as plain rows: the ``predict`` calls without pandas."""
        from topoclass.app.predict import predict_materials

        if predictor is not None and predictor not in PREDICTORS:
            raise ConfigError(f"predictor must be one of {', '.join(PREDICTORS)}, not '{predictor}'")
        if inputs.from_formulas and self.uses_structures:
            logger.warning(
                "%s was trained on crystal structures: answers from formula and space group alone are "
                "less reliable (predict_structures takes structures)",
                self._run.layout.root.name,
            )
        result = predict_materials(self._run, inputs.materials, predictor=predictor)
        predicted = {row["id"]: row for row in result.rows}
        reasons = {reject.id: _reason(reject) for reject in result.skipped}
        rows: list[dict[str, Any]] = []
        for material in inputs.materials:
            row = predicted.get(material.id)
            if row is None:
                row = {"formula": material.formula, "spacegroup": material.spacegroup}
            name = inputs.names[int(material.id)]
            rows.append({**row, "id": name, "skipped": reasons.get(material.id, "")})
        for reject in inputs.unreadable:
            rows.append({"id": reject.id, "skipped": _reason(reject)})
        columns = ["id", "formula", "spacegroup", *_prediction_columns(result.rows), "skipped"]
        return PredictionTable(columns, rows)


def _reason(reject: Reject) -> str:
    return f"{reject.source}: {reject.reason}" if reject.source else reject.reason


def _prediction_columns(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    return [key for key in rows[0] if key not in ("id", "formula", "spacegroup")]


def _ids(ids: Sequence[str] | None, defaults: list[str]) -> list[str]:
    if ids is None:
        return defaults
    names = [str(name) for name in ids]
    if len(names) != len(defaults):
        raise ConfigError(f"{len(defaults)} materials but {len(names)} ids")
    return names


def _default_id(item: StructureItem, position: int) -> str:
    if isinstance(item, str | os.PathLike):
        return Path(item).name
    return f"structure {position}"


def _structure_ref(item: StructureItem) -> Any:
    """A structure reference for a path, a pymatgen Structure or an ASE Atoms (TopoclassError otherwise)."""
    from topoclass.features.structures import StructureRef

    if isinstance(item, str | os.PathLike):
        return StructureRef(path=Path(item))
    structure = _as_pymatgen(item)
    return StructureRef(text=structure.to_json(), format="json")


def _as_pymatgen(item: Any) -> Structure:
    from pymatgen.core import Structure

    if isinstance(item, Structure):
        return item
    from ase import Atoms

    if isinstance(item, Atoms):
        from pymatgen.io.ase import AseAtomsAdaptor

        return AseAtomsAdaptor.get_structure(item)
    raise TopoclassError(
        f"cannot read a structure from a {type(item).__name__}: give a pymatgen Structure, "
        "an ASE Atoms or the path of a structure file"
    )


def _with_id(material: Material, new_id: str) -> Material:
    from dataclasses import replace

    return replace(material, id=new_id)
