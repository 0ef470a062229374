"""One validated configuration tree.

Every setting has a default; unknown keys and wrong types are errors that name
the key. Counts are strict integers (``true`` is not 1) and no number may be NaN
or infinite. The resolved config is saved with every run and every checkpoint,
and its hash identifies the settings that produced a run. Keys renamed by a
release keep loading, with a warning that names the new key.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from topoclass.errors import ConfigError

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "TOPOCLASS_DATA_DIR"
CACHE_DIR_ENV = "TOPOCLASS_CACHE_DIR"


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a number is expected, not a boolean")
    return value


# A number read from YAML: never a boolean, never NaN or infinite (the sections forbid those).
Real = Annotated[float, BeforeValidator(_no_bool)]


def Count(default: int, *, ge: int = 0, description: str | None = None) -> Any:
    """A strict integer field: ``true`` and ``3.0`` are refused, not read as 1 and 3."""
    return Field(default, ge=ge, strict=True, description=description)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class TaskConfig(_Section):
    """One prediction target: a label column and how it is learned."""

    name: str
    column: str | None = None
    type: Literal["classification", "regression"] = "classification"
    classes: list[str] | None = None
    weight: Real = Field(1.0, ge=0)
    loss: Literal["cross_entropy", "focal"] = "cross_entropy"
    class_weighting: bool = False
    coarse_task: str | None = Field(None, description="a task whose classes group this task's classes")
    coarse_classes: dict[str, str] | None = Field(None, description="this task's class -> the coarse task's")
    applies_when: dict[str, list[str]] | None = Field(
        None,
        description="where the label exists, as other tasks' classes (e.g. {topo_class: [SM]}); "
        "elsewhere predict leaves the task's answer empty",
    )

    @model_validator(mode="after")
    def _check_classes(self) -> TaskConfig:
        if self.type == "classification" and self.classes is not None and len(self.classes) < 2:
            raise ValueError(f"task '{self.name}': a classification task needs at least 2 classes")
        if self.type == "regression" and self.classes:
            raise ValueError(f"task '{self.name}': a regression task takes no classes")
        if (self.coarse_task is None) != (self.coarse_classes is None):
            raise ValueError(f"task '{self.name}': coarse_task and coarse_classes go together")
        return self

    @property
    def label_column(self) -> str:
        return self.column or self.name


class SplitConfig(_Section):
    train: Real = Field(0.70, gt=0, lt=1)
    val: Real = Field(0.15, gt=0, lt=1)
    test: Real = Field(0.15, gt=0, lt=1)
    seed: int = Count(0)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError("split fractions train + val + test must sum to 1")
        return self


class GraphConfig(_Section):
    cutoff: Real = Field(6.0, gt=0, description="neighbour cutoff radius in angstrom")
    max_neighbors: int = Count(12, ge=1)
    num_rbf: int = Count(32, ge=2)
    spectral_k: int = Count(8, ge=1, description="smallest Laplacian eigenpairs kept")
    symprec: Real = Field(0.1, gt=0, description="space-group search tolerance in angstrom")
    symmetry: Literal["spglib", "moyopy"] = Field(
        "spglib",
        description="space-group search of structures: spglib (as the Materials Project), or moyopy "
        "(6x faster; another group for 0.4% of tqc2020)",
    )


class DataConfig(_Section):
    dataset: str = "tang2019"
    data_dir: Path | None = None
    table: Path | None = None
    id_column: str = "id"
    formula_column: str = "formula"
    spacegroup_column: str = "spacegroup"
    structure_column: str = "structure"
    tasks: list[TaskConfig] | None = None
    main_task: str | None = None
    use_structure: bool = False
    cache_dir: Path | None = None
    featurize_workers: int = Count(0, description="0 means one per CPU core")
    split: SplitConfig = SplitConfig()
    graph: GraphConfig = GraphConfig()

    def resolved_data_dir(self) -> Path | None:
        if self.data_dir is not None:
            return self.data_dir
        env = os.environ.get(DATA_DIR_ENV)
        return Path(env) if env else None

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        env = os.environ.get(CACHE_DIR_ENV)
        if env:
            return Path(env)
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "topoclass"


class ModelConfig(_Section):
    hidden_dim: int = Count(128, ge=4)
    element_embedding_dim: int = Count(64, ge=2)
    spacegroup_embedding_dim: int = Count(32, ge=2)
    composition_heads: int = Count(4, ge=1)
    fusion_layers: int = Count(2, ge=1)
    graph_layers: int = Count(3, ge=1)
    dropout: Real = Field(0.1, ge=0, lt=1)
    structure_encoder: Literal["cgconv", "chgnet"] = Field(
        "cgconv",
        description="cgconv: crystal-graph convolutions trained here; chgnet: the pretrained CHGNet "
        "(pip install 'topoclass[chgnet]'), frozen vectors computed once at featurization",
    )
    element_vectors: Literal["learned", "chgnet"] = Field(
        "learned",
        description="chgnet: the composition encoder also reads CHGNet's pretrained per-element "
        "vectors (frozen) beside its own learned ones",
    )
    backbone_weights_sha256: str | None = Field(
        None,
        description="the pretrained backbone's weights a run uses; filled in when a run starts, "
        "so the saved config pins them and other weights are refused",
    )
    backbone_lr: Real | None = Field(
        None,
        gt=0,
        description="fine-tune the pretrained backbone end to end at this peak learning rate "
        "(it follows the same schedule); unset: the backbone stays frozen",
    )
    backbone_frozen_epochs: int = Count(
        0, description="when fine-tuning, the first epochs read the cached frozen vectors (a warm-up)"
    )


class TrainConfig(_Section):
    epochs: int = Count(30, ge=1)
    batch_size: int = Count(128, ge=1)
    lr: Real = Field(2e-3, gt=0)
    weight_decay: Real = Field(1e-4, ge=0)
    scheduler: Literal["plateau", "cosine", "none"] = "cosine"
    warmup_epochs: int = Count(2)
    grad_clip: Real = Field(1.0, ge=0, description="max gradient norm; 0 disables")
    patience: int = Count(10, ge=1, description="epochs without val-loss improvement before stopping")
    focal_gamma: Real = Field(2.0, ge=0)
    label_smoothing: Real = Field(0.0, ge=0, lt=1, description="for cross-entropy tasks")
    ema_decay: Real = Field(0.995, ge=0, lt=1, description="weight averaging for evaluation; 0 disables")
    seed: int = Count(0)
    device: str = "auto"
    deterministic: bool = True
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast precision; fp16 (with a grad scaler) needs CUDA, bf16 runs on CPU too"
    )
    accumulate_steps: int = Count(1, ge=1, description="batches whose gradients make one optimizer step")
    max_atoms_per_batch: int = Count(0, description="cap on atoms in one forward pass (structures); 0: none")
    release_memory: bool = Field(True, description="collect garbage, release cached CUDA memory each epoch")
    nonfinite_patience: int = Count(5, ge=1, description="non-finite steps in a row before rolling back")
    rollback_lr_factor: Real = Field(0.5, gt=0, lt=1, description="learning-rate factor on each rollback")
    max_rollbacks: int = Count(3, description="rollbacks before a diverging run stops")
    num_threads: int = Count(0, description="CPU threads for PyTorch; 0: the CPUs this process was given")
    collective_timeout_s: Real = Field(
        300.0, gt=0, description="seconds a process waits for the others before the job stops"
    )
    loggers: list[str] | None = Field(None, description="[tensorboard]; default: TensorBoard when installed")
    progress_bar: bool = True
    export_onnx: bool = Field(
        True, description="export the network to ONNX at the end, so predicting needs no PyTorch"
    )


class CheckpointConfig(_Section):
    """When checkpoints are written and kept; the checkpoint manager owns these decisions."""

    dir: Path | None = Field(None, description="relative paths are inside the run directory")
    every_epochs: int = Count(5, description="at the end of every N-th epoch; 0 disables")
    every_minutes: Real = Field(30.0, ge=0, description="mid-epoch, by wall time; 0 disables")
    every_steps: int = Count(0, description="mid-epoch, every N optimizer steps; 0 disables")
    keep_last: int = Count(3, ge=1)
    max_failed_saves: int = Count(3, ge=1, description="failed saves in a row before the run stops (exit 75)")
    resume: str = "default"


class Config(_Section):
    """The whole configuration of a run."""

    run_dir: Path | None = None
    output_root: Path = Path("runs")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (paths as strings)."""
        return self.model_dump(mode="json")

    def digest(self, *sections: str) -> str:
        """SHA-256 of the canonical JSON of the config, or of the named sections only."""
        tree = self.to_dict()
        if sections:
            tree = {name: _dotted_get(tree, name) for name in sections}
        return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()


# Keys that a release renamed (old -> new) or retired (old -> None): old configs keep loading.
RENAMED_KEYS: dict[str, str | None] = {
    "checkpoint.checkpoint_dir": "checkpoint.dir",
    "checkpoint.checkpoint_every_epochs": "checkpoint.every_epochs",
    "checkpoint.checkpoint_every_minutes": "checkpoint.every_minutes",
    "checkpoint.checkpoint_every_steps": "checkpoint.every_steps",
    "train.clear_caches_every_epochs": None,
    "train.amp": "train.precision",
}
# How a renamed key's old values read under the new name, where they changed.
RENAMED_VALUES: dict[str, Callable[[Any], Any]] = {"train.amp": lambda on: "fp16" if on else "fp32"}


def _dotted_get(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def _migrate(tree: dict[str, Any], source: str) -> dict[str, Any]:
    """A copy of ``tree`` with renamed keys moved to their new names, each with a warning."""
    tree = copy.deepcopy(tree)
    for old, new in RENAMED_KEYS.items():
        section_name, key = old.split(".")
        section = tree.get(section_name)
        if not isinstance(section, dict) or key not in section:
            continue
        value = section.pop(key)
        if new is None:
            logger.warning("%s: %s is no longer used and is ignored", source, old)
            continue
        new_key = new.split(".")[1]
        if new_key in section:
            raise ConfigError(f"{source}: both {old} (its old name) and {new} are set; keep {new}")
        section[new_key] = RENAMED_VALUES.get(old, lambda same: same)(value)
        logger.warning("%s: %s is now called %s", source, old, new)
    return tree


def _format_validation_error(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    extra = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{source}: {key}: {message}{extra}"


def config_from_dict(tree: dict[str, Any], source: str = "config") -> Config:
    """Validate a nested dict; errors name the offending key."""
    try:
        return Config.model_validate(_migrate(tree, source))
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML config file (or the defaults) and apply dotted-key overrides."""
    tree: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        tree = read_yaml_mapping(path)
    for dotted, value in (overrides or {}).items():
        _set_dotted(tree, dotted, value)
    return config_from_dict(tree, source)


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The mapping a YAML file holds; ConfigError naming the file (and line) otherwise."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return loaded or {}


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: '{part}' is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a ``key.sub=value`` command-line override; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def config_yaml(config: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = sorted(set(old) | set(new))
    diffs: list[str] = []
    for key in keys:
        dotted = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs.extend(config_diff(a, b, dotted + "."))
        elif a != b:
            diffs.append(dotted)
    return diffs
