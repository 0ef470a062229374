"""Chemical formulas parsed once: every feature of a formula reads the same parsed composition."""

from __future__ import annotations

from functools import lru_cache

from pymatgen.core import Composition


@lru_cache(maxsize=1 << 16)
def composition(formula: str) -> Composition:
    """pymatgen's composition of ``formula`` (cached; raises as pymatgen does for a bad formula)."""
    return Composition(formula)
