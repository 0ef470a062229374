"""One validated configuration tree.

Every setting has a default; unknown keys and wrong types are errors that name
the key. The resolved config is saved with every run and every checkpoint, and
its hash identifies the settings that produced a run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from topoclass.errors import ConfigError

DATA_DIR_ENV = "TOPOCLASS_DATA_DIR"
CACHE_DIR_ENV = "TOPOCLASS_CACHE_DIR"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskConfig(_Section):
    """One prediction target: a label column and how it is learned."""

    name: str
    column: str | None = None
    type: Literal["classification", "regression"] = "classification"
    classes: list[str] | None = None
    weight: float = Field(1.0, ge=0)
    loss: Literal["cross_entropy", "focal"] = "cross_entropy"
    class_weighting: bool = False

    @model_validator(mode="after")
    def _check_classes(self) -> TaskConfig:
        if self.type == "classification" and self.classes is not None and len(self.classes) < 2:
            raise ValueError(f"task '{self.name}': a classification task needs at least 2 classes")
        if self.type == "regression" and self.classes:
            raise ValueError(f"task '{self.name}': a regression task takes no classes")
        return self

    @property
    def label_column(self) -> str:
        return self.column or self.name


class SplitConfig(_Section):
    train: float = Field(0.70, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError("split fractions train + val + test must sum to 1")
        return self


class GraphConfig(_Section):
    cutoff: float = Field(6.0, gt=0, description="neighbour cutoff radius in angstrom")
    max_neighbors: int = Field(12, ge=1)
    num_rbf: int = Field(32, ge=2)
    spectral_k: int = Field(8, ge=1, description="smallest Laplacian eigenpairs kept")
    symprec: float = Field(0.1, gt=0, description="spglib tolerance in angstrom")


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
    featurize_workers: int = Field(0, ge=0, description="0 means one per CPU core")
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
    hidden_dim: int = Field(128, ge=4)
    element_embedding_dim: int = Field(64, ge=2)
    spacegroup_embedding_dim: int = Field(32, ge=2)
    composition_heads: int = Field(4, ge=1)
    fusion_layers: int = Field(2, ge=1)
    graph_layers: int = Field(3, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)


class TrainConfig(_Section):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    scheduler: Literal["plateau", "cosine", "none"] = "cosine"
    warmup_epochs: int = Field(2, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm; 0 disables")
    patience: int = Field(10, ge=1, description="epochs without val-loss improvement before stopping")
    focal_gamma: float = Field(2.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="for cross-entropy tasks")
    ema_decay: float = Field(0.995, ge=0, lt=1, description="weight averaging for evaluation; 0 disables")
    seed: int = 0
    device: str = "auto"
    deterministic: bool = True
    amp: bool = False
    progress_bar: bool = True
    clear_caches_every_epochs: int = Field(
        1, ge=0, description="empty in-memory feature caches (spectra) every N epochs; 0 never"
    )


class CheckpointConfig(_Section):
    checkpoint_dir: Path | None = None
    checkpoint_every_epochs: int = Field(5, ge=0, description="0 disables")
    checkpoint_every_minutes: float = Field(30.0, ge=0, description="0 disables")
    checkpoint_every_steps: int = Field(0, ge=0, description="0 disables")
    keep_last: int = Field(3, ge=1)
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


def _dotted_get(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def _format_validation_error(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    extra = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{source}: {key}: {message}{extra}"


def config_from_dict(tree: dict[str, Any], source: str = "config") -> Config:
    """Validate a nested dict; errors name the offending key."""
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML config file (or the defaults) and apply dotted-key overrides."""
    tree: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise ConfigError(f"{where}: not valid YAML") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
        tree = loaded or {}
    for dotted, value in (overrides or {}).items():
        _set_dotted(tree, dotted, value)
    return config_from_dict(tree, source)


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


def save_config(config: Config, path: Path) -> None:
    """Write the resolved config as YAML."""
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


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
