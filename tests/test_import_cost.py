"""Heavy libraries are imported only by the commands that use them (each costs 0.3-2 s at start)."""

from __future__ import annotations

import pytest

from tests.helpers import heavy_imports
from topoclass.api import bundled_model_dir

pytestmark = pytest.mark.integration  # fresh interpreters

EXAMPLE = bundled_model_dir("tqc2020") / "examples" / "NaCl.cif"
ONE_FORMULA = ["predict", "--model", "tang2019", "--formula", "Bi2Se3", "--spacegroup", "166"]


@pytest.mark.parametrize(
    ("args", "allowed"),
    [
        (["--help"], set()),
        (["checkpoints", "verify", str(bundled_model_dir("tang2019"))], {"torch"}),
        # The bundles' networks run on ONNX Runtime, their trees through LightGBM's C library;
        # spectra of crystal graphs are NumPy's.
        ([*ONE_FORMULA, "--predictor", "network"], set()),
        (ONE_FORMULA, set()),
        (["predict", "--model", "tqc2020", "--formula", "Bi2Se3", "--spacegroup", "166"], set()),
        (["predict", "--model", "tqc2020", "--structure", str(EXAMPLE)], set()),
        (["predict", "--model", "tqc2020", "--predictor", "network", "--structure", str(EXAMPLE)], set()),
        (["screen", "--help"], set()),
        # pyarrow loads pandas on its first array (to recognize pandas objects), PyTorch stays out.
        (["screen", "tqc2020", str(EXAMPLE.parent), "-o", "{tmp}/screened"], {"pandas"}),
        (["slurm-template", "screen", "tqc2020", "cifs/", "-o", "out"], set()),
    ],
    ids=[
        "help",
        "checkpoints",
        "predict-network",
        "predict-served",
        "predict-formula-structure-model",
        "predict-structure-served",
        "predict-structure-network",
        "screen-help",
        "screen",
        "slurm",
    ],
)
def test_commands_import_only_what_they_use(args, allowed, tmp_path):
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    assert heavy_imports(args, tmp_path) <= allowed
