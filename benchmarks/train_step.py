"""A training step (forward, backward, optimizer) now against the previous release's, same batches.

Formula runs (``--dataset tang2019``): element slots padded to the batch's own widest formula
and a fused AdamW, against slots padded to the dataset's widest formula and the for-each AdamW.
Structure runs (``--dataset tqc2020``): the CGCNN convolution from per-node projections, against
PyTorch Geometric's ``CGConv`` on the concatenated edge vectors (with the extra residual the
previous encoder added). Both sides start from the same weights, see the same batches, and
alternate step by step, so the machine's state touches both alike.

Usage: ``python benchmarks/train_step.py --dataset tang2019|tqc2020 [--steps 60] [--threads N]``
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch
from torch import nn

from topoclass.app.prepare import prepare_data
from topoclass.config import load_config
from topoclass.data.featureset import FeatureSet
from topoclass.trainer.loop import build_model
from topoclass.trainer.loss import MultitaskLoss


class PreviousConvolution(nn.Module):
    """The previous release's layer: PyG's CGConv, whose output already holds its input."""

    def __init__(self, channels: int, edge_dim: int) -> None:
        super().__init__()
        from torch_geometric.nn import CGConv

        self.conv = CGConv(channels, dim=edge_dim, aggr="add", batch_norm=False)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        return self.conv(x, edge_index, edge_attr)


def previous_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with the previous release's convolutions in its structure encoder."""
    old = copy.deepcopy(model)
    if old.structure is not None:
        hidden = old.structure.convolutions[0].channels
        edge_dim = old.structure.convolutions[0].edges.in_features
        old.structure.convolutions = nn.ModuleList(
            PreviousConvolution(hidden, edge_dim) for _ in old.structure.convolutions
        )
    return old


def padded_to_the_dataset(features: FeatureSet, rows: torch.Tensor, with_graphs: bool) -> dict:
    """The previous release's batch: element slots as wide as the dataset's widest formula."""
    batch = features.batch(rows, with_graphs=with_graphs)
    batch["element_index"] = features.element_index[rows]
    batch["element_fraction"] = features.element_fraction[rows]
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("TOPOCLASS_DATA_DIR"))
    parser.add_argument("--dataset", default="tang2019", choices=["tang2019", "tqc2020"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("give --data-dir or set TOPOCLASS_DATA_DIR")
    torch.set_num_threads(args.threads)
    structures = args.dataset == "tqc2020"
    config = load_config(
        None, {"data.data_dir": args.data_dir, "data.dataset": args.dataset, "data.use_structure": structures}
    )
    features = prepare_data(config).features
    torch.manual_seed(0)
    new = build_model(config, features.tasks)
    old = previous_model(new)
    sides = {
        "now": (new, torch.optim.AdamW(new.parameters(), lr=1e-3, fused=True), features.batch),
        "previous": (
            old,
            torch.optim.AdamW(old.parameters(), lr=1e-3),
            lambda rows, with_graphs: padded_to_the_dataset(features, rows, with_graphs),
        ),
    }
    loss_fn = MultitaskLoss(features.tasks, features.labels, focal_gamma=2.0)
    generator = torch.Generator().manual_seed(1)
    batches = [
        torch.randperm(len(features), generator=generator)[: args.batch_size] for _ in range(args.steps + 5)
    ]
    times: dict[str, list[float]] = {name: [] for name in sides}
    for index, rows in enumerate(batches):
        for name, (model, optimizer, make_batch) in sides.items():
            started = time.perf_counter()
            batch = make_batch(rows, with_graphs=structures)
            loss, _ = loss_fn(model(batch), batch["labels"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if index >= 5:  # the first steps warm up the allocator and the kernels
                times[name].append(time.perf_counter() - started)
    now, previous = (statistics.median(times[name]) for name in ("now", "previous"))
    print(f"{args.dataset}: {args.steps} steps of {args.batch_size}, {args.threads} thread(s), alternating")
    print(f"previous {previous * 1e3:.1f} ms, now {now * 1e3:.1f} ms per step: {previous / now:.2f}x faster")


if __name__ == "__main__":
    main()
