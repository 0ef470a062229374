"""Pretrained structure backbones, imported only when a config names one.

``model.structure_encoder`` picks the structure encoder: ``cgconv`` (the crystal-graph
convolutions trained from scratch, no backbone) or a backbone named here. A backbone module
provides ``info()``, ``load()`` and an embedder for frozen per-crystal vectors.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from topoclass.config import Config
from topoclass.errors import ConfigError
from topoclass.features.composition import MAX_Z
from topoclass.features.embedding_store import StructureEmbedder
from topoclass.model.backbones.info import BackboneInfo

BACKBONES = {"chgnet": "topoclass.model.backbones.chgnet"}


def backbone_module(name: str) -> ModuleType:
    """The module of backbone ``name`` (its own package is imported only when it is used)."""
    return importlib.import_module(BACKBONES[name])


def backbone_info(name: str) -> BackboneInfo | None:
    """The backbone's identity, or None for an encoder without one (cgconv)."""
    return backbone_module(name).info() if name in BACKBONES else None


def structure_embedder(config: Config) -> StructureEmbedder | None:
    """The frozen backbone that featurizes a run's structures; None for cgconv or without structures.

    Fails in one line naming the extra to install when the backbone's package is missing.
    """
    name = config.model.structure_encoder
    if name not in BACKBONES or not config.data.use_structure:
        return None
    _check_pin(config, backbone_module(name).info())  # or a one-line error names the extra
    embedder: StructureEmbedder = backbone_module(name).Embedder(
        keep_structures=config.model.backbone_lr is not None
    )
    return embedder


def pretrained_element_vectors(name: str) -> torch.Tensor | None:
    """A backbone's per-element vectors, [119, D] by atomic number (zeros where it has none); None
    for ``learned`` (``model.element_vectors``)."""
    if name not in BACKBONES:
        return None
    table = backbone_module(name).element_table()
    vectors = torch.zeros(MAX_Z + 1, table.shape[1], dtype=torch.float32)
    vectors[1 : table.shape[0] + 1] = table[:MAX_Z].float()
    return vectors


def used_backbone(config: Config) -> str | None:
    """The pretrained backbone a config uses: for structures, or for its element vectors."""
    if config.data.use_structure and config.model.structure_encoder in BACKBONES:
        return config.model.structure_encoder
    return config.model.element_vectors if config.model.element_vectors in BACKBONES else None


def pin_backbone(config: Config) -> BackboneInfo | None:
    """The backbone a run uses, checked against the weights its config pins (pinned now when unset).

    None without a backbone. A config pinned to other weights than the installed ones is an
    error: the vectors, the cache and the trained weights would not belong together.
    """
    name = used_backbone(config)
    if name is None:
        return None
    info = backbone_info(name)
    if info is None:
        return None
    _check_pin(config, info)
    config.model.backbone_weights_sha256 = info.weights_sha256
    return info


def _check_pin(config: Config, info: BackboneInfo) -> None:
    pinned = config.model.backbone_weights_sha256
    if pinned is not None and pinned != info.weights_sha256:
        raise ConfigError(
            f"model.backbone_weights_sha256: the run uses {info.name} weights {pinned[:16]}..., "
            f"the installed ones are {info.weights_sha256[:16]}... ({info.describe()})"
        )
