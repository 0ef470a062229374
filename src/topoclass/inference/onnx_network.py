"""The network run by ONNX Runtime: the same raw outputs as the PyTorch model, without PyTorch.

A run's network is exported at the end of training into ``<run>/onnx/`` (a directory
written and verified like a checkpoint: ``network.onnx`` with a SHA-256 manifest, and in
its metadata the checkpoint and the SHA-256 of the weights it was exported from). The file
holds the graph; its weights are read from that checkpoint's tensors file, verified against
the checkpoint's manifest. An export from other weights than the run's best checkpoint now
holds, or for other model settings, is stale and never used; neither is a damaged one:
prediction then runs the PyTorch model.

Inputs are a batch as :meth:`FeatureArrays.formula_inputs` lays it out, plus for structure
models the crystal graphs of the materials that have one. A structure model's batch always
gets one placeholder material with a one-atom graph appended (its outputs are dropped):
no layer uses batch statistics, so it changes no other row, and the exported graph never
meets an empty graph batch (a batch of formulas alone, say).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from topoclass.checkpoint import storage
from topoclass.config import Config
from topoclass.data.arrays import FeatureArrays
from topoclass.errors import CheckpointError

logger = logging.getLogger(__name__)

NETWORK_FILE = "network.onnx"
# Where the file's weights are, as its external initializers say: the checkpoint's tensors.
CHECKPOINT_LOCATION = "checkpoint:tensors.safetensors"
FORMULA_INPUTS = ("element_index", "element_fraction", "descriptors", "spacegroup")
GRAPH_INPUTS = (
    "z",
    "edge_index",
    "edge_distance",
    "pe",
    "eigenvalues",
    "eigenvalue_mask",
    "node_graph",
    "ptr",
)
# The materials of a batch that have a graph, in the order of their graphs.
GRAPH_ROWS = "graph_rows"
BATCH_SIZE = 256  # materials per run of the session: bounds memory; 64 to 1024 measured alike
# Graph edges per run of the session, at most (a material with more goes alone): the memory of a
# run grows with its edges, and ONNX Runtime keeps what its largest run needed, so without this
# bound the process's peak memory would follow the largest cells an input happens to hold.
EDGE_BUDGET = 16_384
# ONNX Runtime's graph rewrites left out. SkipLayerNormFusion merges each residual Add with the
# LayerNormalization after it; on the CPU the fused kernel ran the transformers' narrow (128-wide)
# rows about 4x slower than the two ops it replaces (150 ms against 39 ms of kernel time for
# 10,000 formulas): the formula network is 1.2x faster without it, crystal graphs no slower
# (benchmarks/onnx_rewrites.py).
UNFUSED = ("SkipLayerNormFusion",)


@dataclass(frozen=True)
class ExportRecord:
    """What a network file was exported from: checked before it is used."""

    checkpoint: str  # the checkpoint directory's name
    weights_sha256: str  # SHA-256 of its tensors file, from its manifest
    architecture: str  # architecture_digest of the config it was exported with
    tasks: list[str]  # the outputs, in order
    uses_structure: bool
    spectral_k: int  # Laplacian eigenpairs per graph (structure models)
    weights: dict[str, list[str]]  # initializer -> [tensor in the checkpoint, dtype]

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> ExportRecord:
        return cls(
            str(metadata["checkpoint"]),
            str(metadata["weights_sha256"]),
            str(metadata["architecture"]),
            [str(name) for name in metadata["tasks"]],
            bool(metadata["uses_structure"]),
            int(metadata["spectral_k"]),
            {str(name): [str(tensor), str(dtype)] for name, (tensor, dtype) in metadata["weights"].items()},
        )


def architecture_digest(config: Config) -> str:
    """SHA-256 of the settings that shape the network: an export for other settings is stale even
    with the same weights file (the PyTorch loader would refuse those weights)."""
    settings = {
        "model": config.model.model_dump(mode="json"),
        # The space-group search feeds the network but does not shape it.
        "graph": config.data.graph.model_dump(mode="json", exclude={"symmetry"}),
        "use_structure": config.data.use_structure,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


class OnnxNetwork:
    """Raw outputs (logits, values) per task from an exported network, on the CPU."""

    name = "onnx"

    def __init__(
        self, model: bytes, record: ExportRecord, tensors: dict[str, np.ndarray], *, threads: int
    ) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle pool threads wait asleep rather than spinning: between the small runs of a server
        # or a screen, spinning cost more CPU than the runs themselves (benchmarks/small_predictions.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        names = list(record.weights)
        # Weights stored in half precision are widened as PyTorch's load_state_dict does (exactly).
        self._weights = [
            onnxruntime.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(tensors[tensor], dtype=dtype))
            for tensor, dtype in record.weights.values()
        ]
        options.add_external_initializers(names, self._weights)
        self.record = record
        self.overlaps = threads == 1
        self._session = inference_session(model, options)

    def outputs(self, features: FeatureArrays) -> dict[str, np.ndarray]:
        """Every task's raw outputs for all materials of ``features``, float32, in their order."""
        collected: dict[str, np.ndarray] = {}
        for rows in batches(features, edges=self.record.uses_structure):
            inputs = features.formula_inputs(rows, with_graphs=self.record.uses_structure)
            if self.record.uses_structure:
                graphs = graph_inputs(features, rows, spectral_k=self.record.spectral_k)
                inputs = _with_placeholder({**inputs, **graphs})
            results = self._session.run(self.record.tasks, inputs)
            for name, result in zip(self.record.tasks, results, strict=True):
                if name not in collected:
                    collected[name] = np.empty((len(features), *result.shape[1:]), result.dtype)
                collected[name][rows] = result[: len(rows)]
        return collected


def inference_session(model: bytes, options: Any) -> Any:
    """An ONNX Runtime session of ``model`` on the CPU, its graph rewritten by every optimization
    but :data:`UNFUSED` (``options``: an ``onnxruntime.SessionOptions``)."""
    import onnxruntime

    return onnxruntime.InferenceSession(
        model, options, providers=["CPUExecutionProvider"], disabled_optimizers=list(UNFUSED)
    )


def batches(features: FeatureArrays, *, edges: bool) -> list[np.ndarray]:
    """The rows in runs of at most :data:`BATCH_SIZE` materials and, with ``edges``, at most
    :data:`EDGE_BUDGET` graph edges (a material with more edges is a run of its own).

    Rows are taken in order of their formula's element count (stable), so that a run's element
    slots, padded to its widest formula, are mostly filled: 20% less time for a table of
    formulas, the outputs bit for bit the same (padded slots are masked out).
    """
    order = np.argsort((features.element_index > 0).sum(axis=1), kind="stable")
    if not edges or features.graphs is None:
        return [order[start : start + BATCH_SIZE] for start in range(0, len(order), BATCH_SIZE)]
    per_graph = np.diff(np.asarray(features.graphs.edge_ptr))
    graph_rows = features.graph_index[order]
    row_edges = np.where(graph_rows >= 0, per_graph[np.clip(graph_rows, 0, None)], 0)
    runs, start, total = [], 0, 0
    for position, count in enumerate(row_edges.tolist()):
        if position > start and (position - start == BATCH_SIZE or total + count > EDGE_BUDGET):
            runs.append(order[start:position])
            start, total = position, 0
        total += count
    if start < len(order):
        runs.append(order[start:])
    return runs


def graph_inputs(features: FeatureArrays, rows: np.ndarray, *, spectral_k: int) -> dict[str, np.ndarray]:
    """The crystal graphs of the materials at ``rows`` that have one, as the exported network reads them."""
    graph_rows = features.graph_index[rows]
    present = np.nonzero(graph_rows >= 0)[0]
    k = spectral_k
    if features.graphs is None or not present.size:
        return {
            "z": np.zeros(0, np.int64),
            "edge_index": np.zeros((2, 0), np.int64),
            "edge_distance": np.zeros(0, np.float32),
            "pe": np.zeros((0, k), np.float32),
            "eigenvalues": np.zeros((0, k), np.float32),
            "eigenvalue_mask": np.zeros((0, k), bool),
            "node_graph": np.zeros(0, np.int64),
            "ptr": np.zeros(1, np.int64),
            GRAPH_ROWS: np.zeros(0, np.int64),
        }
    arrays = features.graphs.batch_arrays(graph_rows[present])
    arrays["node_graph"] = arrays.pop("batch")
    return {**arrays, GRAPH_ROWS: present.astype(np.int64)}


def _with_placeholder(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batch with one more material, hydrogen in space group 1 with a one-atom graph."""
    size, k = len(inputs["spacegroup"]), inputs["eigenvalues"].shape[1]
    nodes = len(inputs["z"])

    def row(name: str, value: np.ndarray) -> np.ndarray:
        return np.concatenate([inputs[name], value.astype(inputs[name].dtype)])

    element = np.zeros((1, inputs["element_index"].shape[1]))
    element[0, 0] = 1
    return {
        "element_index": row("element_index", element),
        "element_fraction": row("element_fraction", element),
        "descriptors": row("descriptors", np.zeros((1, inputs["descriptors"].shape[1]))),
        "spacegroup": row("spacegroup", np.ones(1)),
        "z": row("z", np.ones(1)),
        "edge_index": np.concatenate([inputs["edge_index"], np.full((2, 1), nodes, np.int64)], axis=1),
        "edge_distance": row("edge_distance", np.ones(1)),
        "pe": row("pe", np.zeros((1, k))),
        "eigenvalues": row("eigenvalues", np.zeros((1, k))),
        "eigenvalue_mask": row("eigenvalue_mask", np.zeros((1, k))),
        "node_graph": row("node_graph", np.full(1, len(inputs["eigenvalues"]))),
        "ptr": row("ptr", np.full(1, nodes + 1)),
        GRAPH_ROWS: row(GRAPH_ROWS, np.full(1, size)),
    }


def load_network(
    directory: Path, config: Config, checkpoint: Path, *, threads: int
) -> tuple[OnnxNetwork | None, str]:
    """The network exported into ``directory`` with the weights of ``checkpoint``, if the export is
    intact and current (exported from those very weights, with ``config``'s architecture) and ONNX
    Runtime is installed; otherwise None and why not."""
    if not (directory / storage.MANIFEST_FILE).is_file():
        return None, f"no exported network in {directory}"
    try:
        storage.verify(directory, full=False)
        record = ExportRecord.from_metadata(storage.read_metadata(directory))
        weights_sha256 = storage.read_manifest(checkpoint)["files"][storage.TENSORS_FILE]["sha256"]
    except (CheckpointError, KeyError, TypeError, ValueError) as error:
        return None, f"exported network unusable ({error})"
    if record.weights_sha256 != weights_sha256:
        return None, f"exported network in {directory} is stale (its weights are not the best checkpoint's)"
    if record.architecture != architecture_digest(config):
        return None, f"exported network in {directory} is stale (exported for other model settings)"
    try:
        import onnxruntime  # noqa: F401  (checked before any file is read)
    except ImportError:
        return None, "onnxruntime is not installed"
    try:
        graph = storage.read_file(directory, NETWORK_FILE)
        tensors = _read_tensors(checkpoint)
        return OnnxNetwork(graph, record, tensors, threads=threads), ""
    except (CheckpointError, KeyError) as error:
        return None, f"exported network unusable ({error})"


def _read_tensors(checkpoint: Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors as NumPy arrays, from bytes checked against its manifest."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    data = storage.read_file(checkpoint, storage.TENSORS_FILE)
    try:
        return load(data)
    except SafetensorError as error:
        raise CheckpointError(f"{checkpoint}: undecodable tensors ({error})") from None
