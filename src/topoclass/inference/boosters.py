"""LightGBM boosters evaluated through LightGBM's own C library, without its Python package.

``import lightgbm`` imports scikit-learn, pandas and SciPy when they are installed (1.2 to
3 s at every start, measured beside 0.03 s to parse the bundled trees and 0.01 s to predict
one material); serving needs only two calls of the C API the package wraps:
``LGBM_BoosterLoadModelFromString`` and ``LGBM_BoosterPredictForMat``. They are called here
through ctypes on the very library the package ships, so the predictions are LightGBM's own,
bit for bit (tests/inference/test_boosters.py compares them with ``lightgbm.Booster``).
Alternatives measured on the bundled trees: Treelite's GTIL (0.6 s to import, 3 s to parse
the text models, and float32 results that differ by up to 6e-8) and LightGBM imported with
scikit-learn hidden (1.2 s, and a LightGBM whose scikit-learn classes stay broken for the
rest of the process).
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
from functools import cache
from pathlib import Path

import numpy as np

from topoclass.errors import TopoclassError

_DTYPE_FLOAT32 = 0  # C_API_DTYPE_FLOAT32
_PREDICT_NORMAL = 0  # C_API_PREDICT_NORMAL: probabilities (classification) or values
ROWS_PER_THREAD = 256  # rows a prediction needs before each further thread pays for itself


class BoosterError(TopoclassError):
    """LightGBM's library is missing or refused a model."""


@cache
def _library() -> ctypes.CDLL:
    """lib_lightgbm from the installed lightgbm package (found without importing the package)."""
    spec = importlib.util.find_spec("lightgbm")
    if spec is None or not spec.submodule_search_locations:
        raise BoosterError("serving trees needs LightGBM: pip install lightgbm")
    package = Path(next(iter(spec.submodule_search_locations)))
    name = {"win32": "lib_lightgbm.dll", "darwin": "lib_lightgbm.dylib"}.get(sys.platform, "lib_lightgbm.so")
    # The places lightgbm.libpath looks in, in its order.
    for folder in (package.parent, package / "bin", package / "lib"):
        if (folder / name).is_file():
            library = ctypes.CDLL(str(folder / name))
            library.LGBM_GetLastError.restype = ctypes.c_char_p
            return library
    raise BoosterError(f"LightGBM's library {name} is not in {package}")


def _check(status: int) -> None:
    if status != 0:
        raise BoosterError(f"LightGBM: {_library().LGBM_GetLastError().decode(errors='replace')}")


class Booster:
    """A trained LightGBM model, from the text ``Booster.model_to_string`` writes."""

    def __init__(self, model_text: str, *, threads: int = 1) -> None:
        self.threads = threads
        library = _library()
        self._handle = ctypes.c_void_p()
        iterations = ctypes.c_int()
        _check(
            library.LGBM_BoosterLoadModelFromString(
                ctypes.c_char_p(model_text.encode()), ctypes.byref(iterations), ctypes.byref(self._handle)
            )
        )
        classes = ctypes.c_int()
        _check(library.LGBM_BoosterGetNumClasses(self._handle, ctypes.byref(classes)))
        self.num_classes = classes.value

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None and self._handle.value:
            _library().LGBM_BoosterFree(self._handle)

    def threads_for(self, rows: int) -> int:
        """Threads for predicting ``rows`` rows: one per ``ROWS_PER_THREAD``, at most ``threads``.

        OpenMP's threads spin for a while after each call: for a few rows that costs more CPU
        than the trees themselves (a server's batches), so a second thread starts paying at a
        few hundred rows (``benchmarks/small_predictions.py``).
        """
        return max(1, min(self.threads, rows // ROWS_PER_THREAD))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities [n, C] (binary: the probability of class 1, [n]) or values [n],
        as ``lightgbm.Booster.predict`` gives them for the same rows."""
        data = np.ascontiguousarray(x, dtype=np.float32)
        rows, columns = data.shape
        out = np.empty(rows * self.num_classes, dtype=np.float64)
        written = ctypes.c_int64()
        if rows:
            _check(
                _library().LGBM_BoosterPredictForMat(
                    self._handle,
                    data.ctypes.data_as(ctypes.c_void_p),
                    ctypes.c_int(_DTYPE_FLOAT32),
                    ctypes.c_int32(rows),
                    ctypes.c_int32(columns),
                    ctypes.c_int(1),  # row-major
                    ctypes.c_int(_PREDICT_NORMAL),
                    ctypes.c_int(0),  # from the first iteration
                    ctypes.c_int(-1),  # to the last
                    ctypes.c_char_p(f"num_threads={self.threads_for(rows)}".encode()),
                    ctypes.byref(written),
                    out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
                )
            )
        return out if self.num_classes == 1 else out.reshape(rows, self.num_classes)
