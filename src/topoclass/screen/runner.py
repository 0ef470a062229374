"""Screen any number of crystals with a trained model: chunk by chunk, each committed, resumable.

The inputs are read twice, lazily: once to count and fingerprint them (no structure is
parsed), then chunk by chunk to screen the chunks this process owns and has not done yet.
A stop signal (SIGTERM, SIGUSR1, Ctrl-C) lets the current chunk finish and be committed,
then the screen stops (:class:`ResumableStop`, exit 75); the same command continues it.
When every chunk is done, the summary and the candidates are merged from the parts.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from topoclass import distributed
from topoclass.app.predict import TrainedRun, backbone_embedder, prediction_rows
from topoclass.config import GraphConfig
from topoclass.data.arrays import FeatureArrays
from topoclass.data.build import featurize_materials
from topoclass.distributed import ProcessGroup
from topoclass.errors import ConfigError, TopoclassError
from topoclass.screen.applicability import Applicability, applicability_for
from topoclass.screen.chunks import (
    CANDIDATES_FILE,
    SUMMARY_FILE,
    ChunkRecord,
    InputSurvey,
    ScreenFolder,
    survey,
)
from topoclass.screen.inputs import InputItem, InputPath, expand_inputs, iter_items
from topoclass.screen.results import (
    add_counts,
    candidates,
    chunk_counts,
    part_bytes,
    ranked_classes,
    row_schema,
    write_candidates,
    write_summary,
)
from topoclass.screen.sharding import Assignment, Shard
from topoclass.trainer.signals import StopRequest, install_stop_handlers

logger = logging.getLogger(__name__)

# Part of what a resumed screen must match: bump when the rows of a chunk change meaning.
ROW_FORMAT = 1
# How long the processes of a torchrun screen wait for each other at the end.
BARRIER_TIMEOUT_S = 6 * 3600.0
# Featurization logs a line per call, so per chunk: the progress bar says it better.
_QUIET_LOGGERS = ("topoclass.features.structure_pipeline", "topoclass.data.tables")


@dataclass(frozen=True)
class ScreenSettings:
    """How to screen. ``chunk_size``, ``predictor`` and ``max_atoms`` shape the rows and must stay
    the same for a screen to continue; the rest may change between runs."""

    chunk_size: int = 1000
    predictor: str | None = None
    max_atoms: int = 2000  # larger cells are skipped: their graph would cost more than a chunk
    oversize_atoms: int = 0  # flag cells above this many atoms (0: above the largest training cell)
    rank: tuple[str, ...] = ()  # classes of interest ("TI", "topo_class:TI"); default: the main task's
    top: int = 100
    shard: Shard = field(default_factory=Shard)
    workers: int = 1
    progress: bool | None = None  # default: on a terminal

    def fingerprinted(self) -> dict[str, Any]:
        return {
            "chunk_size": self.chunk_size,
            "predictor": self.predictor,
            "max_atoms": self.max_atoms,
            "oversize_atoms": self.oversize_atoms,
            "row_format": ROW_FORMAT,
        }


@dataclass
class ScreenOutcome:
    """What one call did, and the summary once every chunk of the screen is done."""

    out: Path
    chunks: int
    done: int
    screened_here: int
    seconds: float
    stopped: str | None = None  # the signal that stopped it
    summary: dict[str, Any] | None = None
    primary: bool = True  # the process that reports (rank 0 of a torchrun screen)

    def line(self) -> str:
        """The final line a user reads."""
        if self.summary is not None:
            counts = self.summary["counts"]
            return (
                f"Screened {counts['items']} inputs into {self.out}: {counts['screened']} answered, "
                f"{counts['skipped']} skipped, {counts['flagged']} flagged"
            )
        rate = self.screened_here / self.seconds if self.seconds > 0 else 0.0
        state = f"stopped by {self.stopped}" if self.stopped else "other shards still to finish"
        return (
            f"{self.screened_here} inputs screened here ({rate:.0f}/s); {self.done} of {self.chunks} chunks "
            f"done in {self.out} ({state}): run the same command to continue"
        )


def screen(
    run: TrainedRun, inputs: Sequence[str | os.PathLike[str]], out: str | Path, settings: ScreenSettings
) -> ScreenOutcome:
    """Screen ``inputs`` into the folder ``out`` (see the module doc); continue it if it was begun."""
    if settings.chunk_size < 1:
        raise ConfigError(f"--chunk-size must be at least 1, not {settings.chunk_size}")
    start = time.perf_counter()
    paths = expand_inputs(inputs)
    ranked = ranked_classes(settings.rank or _default_rank(run), run.tasks)
    group = distributed.environment_group()
    distributed.start(group, "cpu", BARRIER_TIMEOUT_S)
    try:
        # Until the first chunk starts there is nothing to finish: a stop signal stops at once (75).
        with install_stop_handlers() as stop:
            stop.immediate = True
            found = survey(paths)
            folder = ScreenFolder(Path(out))
            _claim(folder, group, _fingerprint(run, found, settings))
            total = found.chunks(settings.chunk_size)
            done = folder.done()
            todo = [c for c in Assignment.of(settings.shard, group).chunks(total) if c not in done]
            logger.info(
                "%d inputs in %d chunks of %d: %d done before, %d for this process",
                found.items,
                total,
                settings.chunk_size,
                len(done),
                len(todo),
            )
            # Fitted (once, on the training data) by the first process, then read by the others.
            domain = applicability_for(run) if group.is_primary else None
            group.barrier()
            if todo and domain is None and not group.is_primary:
                domain = applicability_for(run)
            stop.immediate = False
            screened = _screen_chunks(run, paths, folder, todo, found, domain, settings, stop)
        group.barrier()
        done = folder.done()
        summary = None
        if group.is_primary and len(done) == total:
            summary = _merge(run, folder, done, found, ranked, settings)
    finally:
        distributed.stop()
    elapsed = time.perf_counter() - start
    return ScreenOutcome(
        folder.root, total, len(done), screened, elapsed, stop.signal_name, summary, group.is_primary
    )


def _claim(folder: ScreenFolder, group: ProcessGroup, fingerprint: dict[str, Any]) -> None:
    """The first process records the fingerprint (or refuses the folder); the others check it then."""
    problem: TopoclassError | None = None
    if group.is_primary:
        try:
            folder.claim(fingerprint)
        except TopoclassError as error:
            problem = error
    refusal = group.gather_objects(str(problem) if problem is not None else None)[0]
    if problem is not None:
        raise problem
    if refusal is not None:
        raise ConfigError(refusal)
    if not group.is_primary:
        folder.claim(fingerprint)


def _screen_chunks(
    run: TrainedRun,
    paths: Sequence[InputPath],
    folder: ScreenFolder,
    todo: list[int],
    found: InputSurvey,
    domain: Applicability | None,
    settings: ScreenSettings,
    stop: StopRequest,
) -> int:
    """Screen and commit the chunks ``todo`` until done or ``stop`` is requested; the inputs screened."""
    if not todo:
        return 0
    wanted = set(todo)
    last = max(todo)
    sizes = sum(min(settings.chunk_size, found.items - c * settings.chunk_size) for c in todo)
    progress = sys.stderr.isatty() if settings.progress is None else settings.progress
    schema = row_schema(run.tasks)
    screened = 0
    quiet = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.WARNING)
    try:
        bar = tqdm(total=sizes, desc="screening", unit="structure", disable=not progress, smoothing=0.1)
        with bar:
            mine = iter_items(
                paths,
                payload=lambda position: position // settings.chunk_size in wanted,
                symprec=_stated_symprec(run.config.data.graph),
            )
            for chunk, items in enumerate(_batched(mine, settings.chunk_size)):
                if chunk not in wanted:
                    if chunk >= last:
                        break
                    continue
                started, cpu = time.perf_counter(), time.process_time()
                rows = screen_chunk(run, items, domain, settings)
                counts = {
                    **chunk_counts(rows, run.tasks[0]),
                    "seconds": round(time.perf_counter() - started, 3),
                    "cpu_seconds": round(time.process_time() - cpu, 3),  # this process's, not its workers'
                }
                folder.commit(chunk, part_bytes(rows, schema), counts)
                screened += len(items)
                bar.update(len(items))
                if stop.requested or chunk >= last:
                    break
    finally:
        for log, level in zip(quiet, levels, strict=True):
            log.setLevel(level)
    return screened


def screen_chunk(
    run: TrainedRun, items: Sequence[InputItem], domain: Applicability | None, settings: ScreenSettings
) -> list[dict[str, Any]]:
    """One row per item, in order: the answers and flags, or why it was skipped."""
    readable = [(i, item.material) for i, item in enumerate(items) if item.material is not None]
    materials = [replace(material, id=str(i)) for i, material in readable]
    data = run.config.data.model_copy(update={"featurize_workers": settings.workers})
    features, rejects = featurize_materials(
        materials,
        run.tasks,
        data,
        backbone_embedder(run.config),
        max_atoms=settings.max_atoms,
        progress=False,
    )
    reasons = {int(reject.id): reject.reason for reject in rejects}
    answered: dict[int, dict[str, Any]] = {}
    if features is not None:
        flags = _flags(features, domain, settings)
        # The network and the trees in turn: a screen fills a node with processes, one per core.
        answers = prediction_rows(run, features, predictor=settings.predictor)
        for j, row in enumerate(answers):
            answered[int(row["id"])] = {**row, **{name: values[j] for name, values in flags.items()}}
    rows = []
    for i, item in enumerate(items):
        found = answered.get(i)
        if found is not None:
            row = {**found, "skipped": ""}
        else:
            material = item.material
            row = {
                "formula": material.formula if material is not None and material.formula else None,
                "spacegroup": material.spacegroup if material is not None else None,
                "skipped": item.problem or reasons.get(i, "not featurized"),
            }
        rows.append({**row, "id": item.id, "source": item.source})
    return rows


def _flags(features: FeatureArrays, domain: Applicability | None, settings: ScreenSettings) -> dict[str, Any]:
    atoms = features.atoms()
    if domain is not None:
        flags = domain.flags(features, atoms)
    else:
        flags = {
            "unknown_elements": np.full(len(atoms), "", dtype=object),
            "nearest_train_distance": np.full(len(atoms), np.nan, dtype=np.float32),
            "out_of_distribution": np.zeros(len(atoms), dtype=bool),
            "oversize": np.zeros(len(atoms), dtype=bool),
        }
    if settings.oversize_atoms > 0:
        flags["oversize"] = atoms > settings.oversize_atoms
    flags["num_atoms"] = np.where(atoms > 0, atoms, 0)
    flags["flagged"] = (flags["unknown_elements"] != "") | flags["out_of_distribution"] | flags["oversize"]
    # Plain Python values: the Parquet writer takes them as they are.
    return {name: values.tolist() for name, values in flags.items()}


def _merge(
    run: TrainedRun,
    folder: ScreenFolder,
    done: dict[int, ChunkRecord],
    found: InputSurvey,
    ranked: Sequence[Any],
    settings: ScreenSettings,
) -> dict[str, Any]:
    """Write ``summary.json`` and ``candidates.csv`` from every committed chunk; the summary."""
    counts: dict[str, Any] = {}
    for chunk in sorted(done):
        counts = add_counts(counts, done[chunk].counts)
    seconds, cpu = counts.pop("seconds", 0.0), counts.pop("cpu_seconds", 0.0)
    summary = {
        "model": str(run.layout.root),
        "inputs": found.paths,
        "chunks": len(done),
        "chunk_size": settings.chunk_size,
        "counts": counts,
        "chunk_seconds": round(seconds, 3),
        "chunk_cpu_seconds": round(cpu, 3),
        "ranked": [entry.column for entry in ranked],
        "top": settings.top,
    }
    write_candidates(folder.root / CANDIDATES_FILE, candidates(folder.parts(done), ranked, settings.top))
    write_summary(folder.root / SUMMARY_FILE, summary)
    return summary


def _default_rank(run: TrainedRun) -> tuple[str, ...]:
    main = run.tasks[0]
    return tuple(f"{main.name}:{label}" for label in main.classes or [])


def _fingerprint(run: TrainedRun, found: InputSurvey, settings: ScreenSettings) -> dict[str, Any]:
    digest = hashlib.sha256()
    for path in (run.checkpoint / "MANIFEST.json", run.layout.serving_dir() / "MANIFEST.json"):
        if path.is_file():
            digest.update(path.read_bytes())
    return {
        "model": {"name": run.layout.root.name, "path": str(run.layout.root), "digest": digest.hexdigest()},
        "inputs": {"paths": found.paths, "items": found.items, "digest": found.digest},
        "settings": settings.fingerprinted(),
    }


def _stated_symprec(graph: GraphConfig) -> float | None:
    """The tolerance at which a document's stated space group is what the model would find: the
    Materials Project states spglib's, so none for a model trained on moyopy's."""
    return graph.symprec if graph.symmetry == "spglib" else None


def _batched(items: Iterable[InputItem], size: int) -> Iterator[list[InputItem]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch
