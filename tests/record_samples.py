"""Run the topoclass command line, recording the samples of every optimizer step it completes.

``python record_samples.py PREFIX ARGS...`` appends one JSON line per step to ``PREFIX-<pid>.jsonl``:
the epoch, the sampler's position before the step, and this process's rows of weight 1 (padding
rows are left out). Tests use it to count that every sample is seen exactly once per epoch.
"""

from __future__ import annotations

import json
import os
import sys

from topoclass.cli import main
from topoclass.data import loader


def record(prefix: str) -> None:
    """Record every completed step of this process to ``prefix-<pid>.jsonl``."""
    original = loader.ResumableSampler.advance
    path = f"{prefix}-{os.getpid()}.jsonl"

    def advance(self: loader.ResumableSampler) -> None:
        rows, weight = self.next_rows()
        kept = (
            rows.tolist()
            if weight is None
            else [r for r, w in zip(rows.tolist(), weight.tolist(), strict=True) if w > 0]
        )
        with open(path, "a") as out:
            out.write(json.dumps({"epoch": self.epoch, "position": self.position, "rows": kept}) + "\n")
        original(self)

    loader.ResumableSampler.advance = advance  # type: ignore[method-assign]


if __name__ == "__main__":
    record(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
