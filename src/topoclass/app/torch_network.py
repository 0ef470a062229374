"""A run's network as the PyTorch model: what training and evaluation use, and prediction's fallback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from topoclass.app.predict import TrainedRun
from topoclass.app.runs import RunLayout, checkpoint_target
from topoclass.checkpoint.manager import LoadedCheckpoint, load_component, read_checkpoint
from topoclass.config import Config, TaskConfig
from topoclass.data.arrays import FeatureArrays
from topoclass.data.featureset import FeatureSet
from topoclass.errors import DamagedCheckpointError
from topoclass.inference.rules import load_serving
from topoclass.model.inference import raw_outputs
from topoclass.model.multitask import MultitaskModel
from topoclass.threads import configure_threads
from topoclass.trainer.averaging import inference_weights
from topoclass.trainer.device import select_device
from topoclass.trainer.loop import VALIDATION_BATCH, build_model


@dataclass
class TorchNetwork:
    """The model with the weights to serve, on ``device``, in evaluation mode."""

    model: MultitaskModel
    device: torch.device
    name = "pytorch"
    overlaps = False  # PyTorch spreads one call over the threads it was given

    def outputs(self, features: FeatureArrays) -> dict[str, np.ndarray]:
        """Raw outputs per task for every material of ``features`` (float32, on the CPU)."""
        outputs = raw_outputs(
            self.model,
            FeatureSet.from_arrays(features),
            torch.arange(len(features)),
            batch_size=VALIDATION_BATCH,
            device=self.device,
        )
        return {name: values.numpy() for name, values in outputs.items()}


def load_torch_run(layout: RunLayout, config: Config, device: str) -> TrainedRun:
    """The run with its best checkpoint's weights in a PyTorch model (see ``load_run``)."""
    threads = configure_threads(config.train.num_threads, announce=False)
    target = select_device(device)
    path, loaded = _read_best(layout)
    tasks = [TaskConfig.model_validate(t) for t in loaded.metadata["tasks"]]
    model = build_model(config, tasks)
    load_component(loaded, "model", model, inference_weights(loaded.state))
    model.backbone_live = model.backbone is not None  # a fine-tuned backbone is no longer the cached one
    network = TorchNetwork(model.to(target).eval(), target)
    return TrainedRun(
        config, tasks, network, layout, path, load_serving(layout.serving_dir(), threads=threads)
    )


def torch_network(run: TrainedRun) -> TorchNetwork:
    """The PyTorch model of a run loaded with ``backend="torch"``."""
    if not isinstance(run.network, TorchNetwork):
        raise TypeError(f"{run.layout.root} was loaded for ONNX Runtime, not PyTorch")
    return run.network


def _read_best(layout: RunLayout, attempts: int = 3) -> tuple[Path, LoadedCheckpoint]:
    """The run's best checkpoint, read; a trainer may replace it meanwhile, so look again if it changed."""
    path = checkpoint_target(layout.checkpoints).single(prefer_best=True)
    for _ in range(attempts - 1):
        try:
            return path, read_checkpoint(path)
        except DamagedCheckpointError:
            path = checkpoint_target(layout.checkpoints).single(prefer_best=True)
    return path, read_checkpoint(path)
