"""Fit a bundled model's applicability flags (screening) and list the file on its card.

    python scripts/add_applicability.py tqc2020 --data-dir ../shared/data

The file is fitted on the bundle's training split, recomputed from its config (the split is
deterministic); build_pretrained.py does the same for a new bundle.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os

from topoclass.api import bundled_model_dir
from topoclass.app.predict import load_run
from topoclass.screen.applicability import applicability_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+")
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ["TOPOCLASS_DATA_DIR"] = args.data_dir
    for name in args.names:
        directory = bundled_model_dir(name)
        run = load_run(directory, device="cpu")
        path = run.layout.applicability_file()
        path.unlink(missing_ok=True)
        if applicability_for(run) is None:
            raise SystemExit(f"{name}: the training data could not be read")
        card_file = directory / "card.json"
        card = json.loads(card_file.read_text())
        card["files"][path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        card["files"] = dict(sorted(card["files"].items()))
        card_file.write_text(json.dumps(card, indent=2) + "\n")
        print(f"{name}: {path.name} ({path.stat().st_size / 1024:.0f} KiB) listed on {card_file}")


if __name__ == "__main__":
    main()
