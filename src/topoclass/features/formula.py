"""Chemical formulas parsed once: every feature of a formula reads the same parsed composition."""

from __future__ import annotations

from functools import lru_cache

from pymatgen.core import Composition


@lru_cache(maxsize=1 << 14)
def composition(formula: str) -> Composition:
    """pymatgen's composition of ``formula`` (cached; raises as pymatgen does for a bad formula).

    The cache is bounded (about 30 MB full): the features of one formula are read in a few
    passes close together; a dataset of a million formulas must not keep them all.
    """
    return Composition(formula)
