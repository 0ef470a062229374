"""CHGNet as a structure backbone: the pretrained weights its wheel ships, verified before use.

CHGNet 0.3.0 was trained on the Materials Project trajectory set (about 1.5 million DFT
structures). Its package ships the weights; nothing is downloaded. The file is hashed and
compared with the SHA-256 recorded here before it is deserialized, and the bytes that were
hashed are the bytes loaded, so a replaced or damaged file is refused, never used.

A crystal's vector: the mean of its atoms' final features (CHGNet's own crystal feature),
the mean and maximum of the atoms' features before the last convolution, and the
predicted energy per atom and magnetic moments (mean and maximum), 195 numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from topoclass.errors import TopoclassError
from topoclass.features.embedding_store import EmbeddingBatch
from topoclass.model.backbones.info import BackboneInfo

if TYPE_CHECKING:
    from chgnet.model import CHGNet

NAME = "chgnet"
MODEL_NAME = "0.3.0"
WEIGHTS_FILE = "pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar"  # inside the chgnet package
WEIGHTS_SHA256 = "d14ab7c0f093efe64b60a7bcd540bca10e74fb7f46c86108a079af60524659d1"
FEATURE_DIM = 64  # CHGNet 0.3.0's atom feature width
WIDTH = 3 * FEATURE_DIM + 3
ELEMENTS = 94  # rows of its element embedding table: H..Pu


class BackboneWeightsError(TopoclassError):
    """The backbone's weights file is missing or is not the file it should be."""


def _package() -> Any:
    try:
        import chgnet
    except ImportError as error:
        raise TopoclassError(
            "model.structure_encoder 'chgnet' needs the CHGNet package: pip install 'topoclass[chgnet]' "
            f"({error})"
        ) from None
    return chgnet


def info() -> BackboneInfo:
    """Name, package version and weights digest of this backbone (for configs, checkpoints, cards)."""
    _package()
    return BackboneInfo(NAME, importlib.metadata.version("chgnet"), MODEL_NAME, WEIGHTS_SHA256, WIDTH)


def weights_path() -> Path:
    return Path(_package().__file__).parent / WEIGHTS_FILE


def load(path: Path | None = None, *, expected_sha256: str = WEIGHTS_SHA256) -> CHGNet:
    """The pretrained CHGNet in evaluation mode, from weights whose SHA-256 was checked first."""
    _package()
    from chgnet.model import CHGNet

    path = path or weights_path()
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BackboneWeightsError(f"{path}: cannot read the CHGNet weights ({error.strerror})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise BackboneWeightsError(
            f"{path}: SHA-256 {digest[:16]}... is not the CHGNet {MODEL_NAME} weights' "
            f"{expected_sha256[:16]}...; reinstall chgnet"
        )
    # weights_only: plain tensors and dicts; nothing in the file may run code.
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    # mlp_out_bias=False is how CHGNet itself builds 0.3.0 (CHGNet.load).
    with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints a greeting; predictions own stdout
        model = CHGNet.from_dict(state["model"], mlp_out_bias=False, version=MODEL_NAME)
    return model.eval()


def element_table(model: CHGNet | None = None) -> torch.Tensor:
    """CHGNet's learned per-element vectors, [ELEMENTS, FEATURE_DIM], row i for atomic number i + 1."""
    model = model if model is not None else load()
    return model.atom_embedding.embedding.weight.detach().clone()


class ChgnetFeatures(nn.Module):
    """CHGNet's forward pass reduced to one vector per crystal (trainable when fine-tuned)."""

    def __init__(self, model: CHGNet) -> None:
        super().__init__()
        self.chgnet = model

    def forward(self, graphs: Sequence[Any]) -> torch.Tensor:
        """[len(graphs), WIDTH] from CHGNet crystal graphs (``model.graph_converter`` output)."""
        out = self.chgnet(list(graphs), task="em", return_atom_feas=True, return_crystal_feas=True)
        counts = out["atoms_per_graph"]
        owner = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
        atom_features = torch.cat(out["atom_fea"])
        index = owner.unsqueeze(1).expand_as(atom_features)
        shape = (len(counts), atom_features.shape[1])
        mean = atom_features.new_zeros(shape).index_add_(0, owner, atom_features) / counts.unsqueeze(1)
        maximum = atom_features.new_zeros(shape).scatter_reduce_(
            0, index, atom_features, "amax", include_self=False
        )
        moments = torch.cat(out["m"]).reshape(-1)
        moment_mean = moments.new_zeros(len(counts)).index_add_(0, owner, moments) / counts
        moment_max = moments.new_zeros(len(counts)).scatter_reduce_(
            0, owner, moments, "amax", include_self=False
        )
        scalars = torch.stack([out["e"], moment_mean, moment_max], dim=1)
        return torch.cat([out["crystal_fea"], mean, maximum, scalars], dim=1)


class TrainableChgnet(nn.Module):
    """CHGNet inside the model, fine-tuned end to end: crystals of a batch in, vectors out.

    Each step converts the batch's crystals to CHGNet graphs with CHGNet's own converter
    (milliseconds per crystal, small beside the forward and backward passes).
    """

    def __init__(self, model: CHGNet | None = None) -> None:
        super().__init__()
        self.features = ChgnetFeatures(model if model is not None else load())

    def forward(self, batch: EmbeddingBatch) -> torch.Tensor:
        from pymatgen.core import Lattice, Structure

        if batch.lattice is None or batch.frac_coords is None or batch.node_ptr is None:
            raise ValueError("fine-tuning CHGNet needs the crystals (a store that keeps structures)")
        ptr = batch.node_ptr.tolist()
        converter = self.features.chgnet.graph_converter
        graphs = [
            converter(
                Structure(
                    Lattice(batch.lattice[g].cpu().numpy()),
                    batch.atomic_numbers[ptr[g] : ptr[g + 1]].tolist(),  # type: ignore[index]
                    batch.frac_coords[ptr[g] : ptr[g + 1]].cpu().numpy(),
                )
            ).to(batch.vectors.device)
            for g in range(batch.num_graphs)
        ]
        return self.features(graphs).to(batch.vectors.dtype)


class ChgnetEmbedder:
    """Frozen CHGNet vectors for featurization (a :class:`StructureEmbedder`); loads on first use."""

    name = NAME
    key = WEIGHTS_SHA256
    width = WIDTH

    def __init__(self, *, keep_structures: bool = False) -> None:
        self.keep_structures = keep_structures
        self._features: ChgnetFeatures | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Workers load their own copy: the weights never travel through a pipe.
        return {"keep_structures": self.keep_structures}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.keep_structures = state["keep_structures"]
        self._features = None

    @property
    def features(self) -> ChgnetFeatures:
        if self._features is None:
            self._features = ChgnetFeatures(load())
        return self._features

    def embed(self, structures: Sequence[Any]) -> np.ndarray:
        """[len(structures), WIDTH] float32: graph conversion, then one batched forward pass."""
        converter = self.features.chgnet.graph_converter
        graphs = [converter(structure) for structure in structures]
        with torch.no_grad():
            return self.features(graphs).numpy().astype(np.float32)


Embedder = ChgnetEmbedder
Trainable = TrainableChgnet
