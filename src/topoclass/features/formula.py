"""Chemical formulas parsed once: every feature of a formula reads the same parsed composition."""

from __future__ import annotations

from functools import lru_cache

from pymatgen.core import Composition


@lru_cache(maxsize=1 << 11)
def composition(formula: str) -> Composition:
    """pymatgen's composition of ``formula`` (cached; raises as pymatgen does for a bad formula).

    The cache is bounded (about 3 MB full): the features of one formula are read in a few
    passes close together. A parsed composition keeps the reduced and fractional compositions
    derived from it, about 1.5 kB in all, so even ten thousand of them would grow the memory a
    featurization needs with its dataset; parsing again costs 50 microseconds.
    """
    return Composition(formula)
