"""Export a run's network to ONNX, for prediction with ONNX Runtime (:mod:`topoclass.inference`).

PyTorch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``, which needs ``onnx``
and ``onnxscript``) is used: the TorchScript exporter bakes the batch size into the
attention's reshapes. Batch size, formula width and graph sizes are dynamic.

The file holds the graph alone (about 80 kB): every weight is an external initializer
naming its tensor in the checkpoint it was exported from, which the loader reads and
verifies (a bundle would otherwise carry its weights twice). The file goes into
``RunLayout.network_export_dir()`` with the checkpoint and the SHA-256 of its tensors, so a
later change of weights makes it stale instead of wrong.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from topoclass.app.predict import load_run
from topoclass.app.runs import RunLayout, checkpoint_target
from topoclass.app.torch_network import torch_network
from topoclass.checkpoint import storage
from topoclass.checkpoint.serialize import TENSOR_TAG
from topoclass.config import Config
from topoclass.errors import CheckpointError
from topoclass.features.composition import NUM_DESCRIPTORS
from topoclass.features.graph_store import GraphBatch
from topoclass.inference.onnx_network import (
    CHECKPOINT_LOCATION,
    FORMULA_INPUTS,
    GRAPH_INPUTS,
    GRAPH_ROWS,
    NETWORK_FILE,
    ExportRecord,
    architecture_digest,
)
from topoclass.model.multitask import MultitaskModel
from topoclass.trainer.averaging import inference_weights

logger = logging.getLogger(__name__)

OPSET = 18


class _FormulaNetwork(nn.Module):
    """The model with flat tensor inputs and a tuple of outputs in task order (what ONNX takes)."""

    def __init__(self, model: MultitaskModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        element_index: torch.Tensor,
        element_fraction: torch.Tensor,
        descriptors: torch.Tensor,
        spacegroup: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        return self.outputs(
            {
                "element_index": element_index,
                "element_fraction": element_fraction,
                "descriptors": descriptors,
                "spacegroup": spacegroup,
            }
        )

    def outputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        outputs = self.model(batch)
        return tuple(outputs[name] for name in self.model.task_names)


class _StructureNetwork(_FormulaNetwork):
    """A structure model's inputs: the formula inputs, then the crystal graphs of the rows that have one."""

    def forward(  # type: ignore[override]
        self,
        element_index: torch.Tensor,
        element_fraction: torch.Tensor,
        descriptors: torch.Tensor,
        spacegroup: torch.Tensor,
        z: torch.Tensor,
        edge_index: torch.Tensor,
        edge_distance: torch.Tensor,
        pe: torch.Tensor,
        eigenvalues: torch.Tensor,
        eigenvalue_mask: torch.Tensor,
        node_graph: torch.Tensor,
        ptr: torch.Tensor,
        graph_rows: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        graph = GraphBatch(z, edge_index, edge_distance, pe, eigenvalues, eigenvalue_mask, node_graph, ptr)
        return self.outputs(
            {
                "element_index": element_index,
                "element_fraction": element_fraction,
                "descriptors": descriptors,
                "spacegroup": spacegroup,
                "graph": graph,
                "graph_rows": graph_rows,
            }
        )


def _example(
    model: MultitaskModel, config: Config
) -> tuple[dict[str, torch.Tensor], dict[str, dict[int, Any]]]:
    """Example inputs of distinct sizes (equal sizes would tie their dimensions) and their dynamic axes."""
    materials = 4
    descriptors = NUM_DESCRIPTORS + int(config.data.use_structure)
    formula = [
        torch.tensor([[83, 34, 0], [11, 17, 0], [26, 0, 0], [1, 8, 6]]),
        torch.tensor([[0.4, 0.6, 0], [0.5, 0.5, 0], [1, 0, 0], [0.25, 0.5, 0.25]]),
        torch.zeros(materials, descriptors),
        torch.tensor([166, 225, 229, 14]),
    ]
    inputs = dict(zip(FORMULA_INPUTS, formula, strict=True))
    batch, elements = torch.export.Dim("materials", min=1), torch.export.Dim("elements", min=1)
    dims: dict[str, dict[int, Any]] = {
        "element_index": {0: batch, 1: elements},
        "element_fraction": {0: batch, 1: elements},
        "descriptors": {0: batch},
        "spacegroup": {0: batch},
    }
    if model.structure is None:
        return inputs, dims
    k = config.data.graph.spectral_k
    nodes, edges = 7, 11  # two graphs of 3 and 4 atoms
    graph = [
        torch.tensor([83, 83, 34, 11, 17, 11, 17]),
        torch.stack([torch.arange(edges) % nodes, (torch.arange(edges) * 3 + 1) % nodes]),
        torch.linspace(2.0, 4.0, edges),
        torch.randn(nodes, k),
        torch.rand(2, k),
        torch.ones(2, k, dtype=torch.bool),
        torch.tensor([0, 0, 0, 1, 1, 1, 1]),
        torch.tensor([0, 3, 7]),
        torch.tensor([0, 2]),
    ]
    inputs.update(zip((*GRAPH_INPUTS, GRAPH_ROWS), graph, strict=True))
    graphs, node_dim = torch.export.Dim("graphs", min=1), torch.export.Dim("nodes", min=1)
    edge_dim = torch.export.Dim("edges", min=1)
    dims.update(
        z={0: node_dim},
        edge_index={1: edge_dim},
        edge_distance={0: edge_dim},
        pe={0: node_dim},
        eigenvalues={0: graphs},
        eigenvalue_mask={0: graphs},
        node_graph={0: node_dim},
        ptr={0: graphs + 1},
        **{GRAPH_ROWS: {0: graphs}},
    )
    return inputs, dims


def export_network(model: MultitaskModel, config: Config, directory: Path, *, checkpoint: Path) -> Path:
    """Export ``model`` (``config``'s, with the inference weights of ``checkpoint``) into ``directory``,
    verified like a checkpoint. The file holds the graph; its weights stay in the checkpoint."""
    copied = copy.deepcopy(model).cpu().eval()
    wrapped = _StructureNetwork(copied) if model.structure is not None else _FormulaNetwork(copied)
    inputs, dims = _example(model, config)
    with warnings.catch_warnings(), torch.no_grad(), _quiet_exporter():
        warnings.simplefilter("ignore")  # the exporter's notes on renamed axes and its own internals
        program = torch.onnx.export(
            wrapped,
            tuple(inputs.values()),
            input_names=list(inputs),
            output_names=list(model.task_names),
            dynamic_shapes=tuple(dims[name] for name in inputs),
            opset_version=OPSET,
            dynamo=True,
            optimize=False,  # folded constants (transposed weights) would copy the weights into the file
            verbose=False,
        )
    if program is None:
        raise RuntimeError("the exporter returned no program")
    proto = program.model_proto
    record = ExportRecord(
        checkpoint.name,
        _weights_sha256(checkpoint),
        architecture_digest(config),
        list(model.task_names),
        model.structure is not None,
        config.data.graph.spectral_k if model.structure is not None else 0,
        _refer_to_checkpoint(proto, checkpoint),
    )
    for node in proto.graph.node:
        del node.metadata_props[:]  # the exporter's stack traces: nine tenths of the file
    with storage.CheckpointStorage() as writer:
        writer.write(
            directory,
            {},
            metadata=dataclasses.asdict(record),
            epoch=0,
            step=None,
            extra_files={NETWORK_FILE: proto.SerializeToString()},
        )
    logger.info("Network exported to ONNX: %s", directory / NETWORK_FILE)
    return directory


def _refer_to_checkpoint(proto: Any, checkpoint: Path) -> dict[str, list[str]]:
    """Empty every initializer that is a weight of ``checkpoint`` (marked external, as ONNX Runtime
    expects initializers given at load); {initializer: [checkpoint tensor, dtype]} for the loader."""
    import onnx

    tree = json.loads(storage.read_file(checkpoint, storage.STATE_FILE))["tree"]
    # The exported module holds the model as ``model``: its initializers are named "model.<state key>".
    entries: dict[str, Any] = inference_weights(tree)  # the same choice, on the tensors' JSON references
    tensors = {f"model.{key}": entry[TENSOR_TAG] for key, entry in entries.items()}
    weights = {}
    for initializer in proto.graph.initializer:
        if initializer.name not in tensors:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(initializer.data_type)
        length = int(np.prod(initializer.dims, dtype=np.int64)) * dtype.itemsize
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
            initializer.ClearField(field)
        initializer.data_location = onnx.TensorProto.EXTERNAL
        del initializer.external_data[:]
        for key, value in (("location", CHECKPOINT_LOCATION), ("offset", "0"), ("length", str(length))):
            entry = initializer.external_data.add()
            entry.key, entry.value = key, value
        weights[initializer.name] = [tensors[initializer.name], dtype.name]
    return weights


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's libraries log every graph pass at INFO: keep the run's log about the run."""
    # Its operator registry also warns that torchvision is missing: no topoclass model uses its ops.
    thresholds = {
        "onnx_ir": logging.WARNING,
        "onnxscript": logging.WARNING,
        "torch.onnx": logging.WARNING,
        "torch.onnx._internal.exporter._registration": logging.ERROR,
    }
    loggers = [logging.getLogger(name) for name in thresholds]
    levels = [each.level for each in loggers]
    for each, threshold in zip(loggers, thresholds.values(), strict=True):
        each.setLevel(threshold)
    try:
        yield
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)


def _weights_sha256(checkpoint: Path) -> str:
    return str(storage.read_manifest(checkpoint)["files"][storage.TENSORS_FILE]["sha256"])


def _export_is_current(directory: Path, config: Config, checkpoint: Path) -> bool:
    try:
        storage.verify(directory)
        record = ExportRecord.from_metadata(storage.read_metadata(directory))
    except (CheckpointError, KeyError, TypeError, ValueError, OSError):
        return False
    current = (_weights_sha256(checkpoint), architecture_digest(config))
    return (record.weights_sha256, record.architecture) == current


def ensure_network_export(layout: RunLayout) -> Path | None:
    """Export the run's best weights next to its serving rules, unless a current export is there.
    A failed export is logged, not fatal: prediction then runs the PyTorch model."""
    directory = layout.network_export_dir()
    config = layout.read_config()
    if config.model.structure_encoder != "cgconv" and config.data.use_structure:
        # A pretrained backbone's vectors come from its own PyTorch model: prediction needs it anyway.
        logger.info("No ONNX export: the structures go through a pretrained backbone on PyTorch")
        return None
    best = checkpoint_target(layout.checkpoints).single(prefer_best=True)
    if _export_is_current(directory, config, best):
        return directory
    run = load_run(layout.root, backend="torch")
    try:
        return export_network(torch_network(run).model, run.config, directory, checkpoint=run.checkpoint)
    except Exception as error:  # the exporter raises many types; none should fail a finished training
        logger.warning("Could not export the network to ONNX (%s): predictions will use PyTorch", error)
        return None
