"""Small synthetic crystals in every input format a screen reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

import topoclass as tc


def fcc(a: float, first: str, second: str, offset: float) -> Structure:
    """A two-atom face-centred cubic cell: rock salt (offset 1/2) or zinc blende (offset 1/4)."""
    lattice = Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    return Structure(lattice, [first, second], [[0, 0, 0], [offset] * 3])


def crystals(n: int) -> list[Structure]:
    """``n`` distinct ordinary crystals (rock salts and zinc blendes of several sizes)."""
    return [
        fcc(5.6 + 0.02 * i, "Ga", "As", 0.25) if i % 2 else fcc(5.6 + 0.02 * i, "Na", "Cl", 0.5)
        for i in range(n)
    ]


def write_folder(root: Path, n: int) -> Path:
    """``n`` CIFs, some in a subfolder, plus a hidden file and a README that are not structures."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    for i, structure in enumerate(crystals(n)):
        folder = root / "sub" if i % 3 == 0 else root
        structure.to(filename=str(folder / f"c{i:03d}.cif"))
    (root / "README.txt").write_text("not a structure\n")
    (root / ".hidden.cif").write_text("junk\n")
    return root


@pytest.fixture(scope="session")
def model():
    """The bundled structure model (loaded once)."""
    return tc.load("tqc2020", device="cpu")
