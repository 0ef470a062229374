"""topoclass: multitask classifiers of topological materials that never lose training progress.

    >>> import topoclass as tc
    >>> tc.load("tang2019").predict(["Bi2Se3"], [166])

``import topoclass`` stays light: the calls below import PyTorch on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.8.0"
__all__ = ["Predictor", "__version__", "bundled_models", "load", "train"]

if TYPE_CHECKING:
    from topoclass.api import Predictor, bundled_models, load, train


def __getattr__(name: str) -> Any:
    if name in __all__:
        from topoclass import api

        return getattr(api, name)
    raise AttributeError(f"module 'topoclass' has no attribute {name!r}")
