"""Crystal structures: read a :class:`StructureRef`, vet it, and derive formula and space group.

CIFs are read with gemmi (a C++ parser, about 20x faster than pymatgen's, and tolerant of
the empty bond loops some files end with); CIFs with partial occupancies or unknown element
symbols go through pymatgen's parser instead, which is the reference for correctness and
knows how to build disordered sites. POSCAR and JSON use pymatgen, extended XYZ uses ASE.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pymatgen.core import Composition, DummySpecies, Lattice, Structure

from topoclass.errors import DataError
from topoclass.features.composition import quiet_electronegativity


@dataclass(frozen=True)
class StructureRef:
    """Where a crystal structure comes from: a file, or inline text.

    Structures are referenced, not parsed, when a dataset is read: parsing is the
    expensive part of featurization and runs once, in worker processes, and only
    when the featurization cache misses.
    """

    path: Path | None = None
    text: str | None = None
    format: str | None = None  # "cif", "poscar", "extxyz", "json"; None: inferred

    def describe(self) -> str:
        return str(self.path) if self.path is not None else "<inline structure>"


STRUCTURE_FORMATS = ("cif", "poscar", "extxyz", "json")
_FORMAT_ALIASES = {
    "cif": "cif",
    "mcif": "cif",
    "poscar": "poscar",
    "contcar": "poscar",
    "vasp": "poscar",
    "xyz": "extxyz",
    "extxyz": "extxyz",
    "json": "json",
}
MIN_INTERATOMIC_DISTANCE = 0.5  # angstrom: closer than any real bond, so two atoms in one place
# pymatgen's SpacegroupAnalyzer default, also what the Materials Project uses with symprec 0.1.
ANGLE_TOLERANCE_DEGREES = 5.0

PeriodicNeighbors = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def structure_format(ref: StructureRef) -> str:
    """The format of a reference: ``ref.format``, else the file name, else sniffed from the text."""
    if ref.format is not None:
        fmt = _FORMAT_ALIASES.get(ref.format.lower().lstrip("."))
        if fmt is None:
            raise DataError(f"unknown structure format '{ref.format}'", file=ref.describe())
        return fmt
    if ref.path is not None:
        name = ref.path.name.lower()
        suffix = ref.path.suffix.lower().lstrip(".")
        if suffix in _FORMAT_ALIASES:
            return _FORMAT_ALIASES[suffix]
        if name.startswith(("poscar", "contcar")):
            return "poscar"
        raise DataError("cannot tell the structure format from the file name", file=ref.describe())
    return _sniff_format(ref.text or "")


def _sniff_format(text: str) -> str:
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return "json"
    if stripped.startswith("data_") or "_cell_length_a" in text:
        return "cif"
    lines = stripped.splitlines()
    if len(lines) > 1 and lines[0].strip().isdigit() and "lattice=" in lines[1].lower():
        return "extxyz"
    return "poscar"


def read_structure(ref: StructureRef) -> Structure:
    """Parse the referenced structure; any failure is a one-line :class:`DataError` naming the file."""
    fmt = structure_format(ref)
    text = _read_text(ref)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen and ASE warn about harmless CIF/POSCAR quirks
            if fmt == "cif":
                structure = _read_cif(text)
            elif fmt == "poscar":
                structure = Structure.from_str(text, fmt="poscar")
            elif fmt == "extxyz":
                structure = _read_extxyz(text)
            else:
                structure = Structure.from_dict(json.loads(text))
    except DataError as exc:
        raise DataError(exc.reason, file=ref.describe()) from None
    except Exception as exc:
        raise DataError(f"not a readable {fmt} structure: {_one_line(exc)}", file=ref.describe()) from None
    if len(structure) == 0:
        raise DataError("the structure has no atoms", file=ref.describe())
    return structure


def _read_text(ref: StructureRef) -> str:
    if ref.path is None:
        if ref.text is None:
            raise DataError("structure reference has neither a path nor text")
        return ref.text
    try:
        return Path(ref.path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataError(f"cannot read structure file: {exc.strerror}", file=ref.describe()) from None


def _read_cif(text: str) -> Structure:
    import gemmi

    try:
        document = gemmi.cif.read_string(text)
        block = next(b for b in document if b.find_value("_cell_length_a") is not None)
        small = gemmi.make_small_structure_from_block(block)
        sites = small.get_all_unit_cell_sites()
    except (RuntimeError, ValueError, StopIteration):
        return _read_cif_with_pymatgen(text)
    numbers = [site.element.atomic_number for site in sites]
    if not sites or 0 in numbers or any(abs(site.occ - 1.0) > 1e-6 for site in sites):
        return _read_cif_with_pymatgen(text)
    cell = small.cell
    lattice = Lattice.from_parameters(cell.a, cell.b, cell.c, cell.alpha, cell.beta, cell.gamma)
    frac_coords = _snap_thirds(np.array([site.fract.tolist() for site in sites], dtype=float) % 1.0)
    return Structure(lattice, numbers, frac_coords)  # type: ignore[arg-type]  # atomic numbers are accepted


def _snap_thirds(frac_coords: np.ndarray) -> np.ndarray:
    """Round coordinates within 1e-4 (relative) of 1/3 or 2/3 to the exact value, as pymatgen's
    CIF parser does: CIFs print 0.333333, which nudges atoms on three-fold positions off their
    sites and splits distances that symmetry makes equal."""
    snapped = frac_coords.copy()
    for third in (1 / 3, 2 / 3):
        snapped[np.abs(frac_coords / third - 1.0) <= 1e-4] = third
    return snapped


def _read_cif_with_pymatgen(text: str) -> Structure:
    from pymatgen.io.cif import CifParser

    structures = CifParser.from_str(text).parse_structures(primitive=False)
    if not structures:
        raise DataError("the CIF holds no structure")
    return structures[0]


def _read_extxyz(text: str) -> Structure:
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = ase.io.read(io.StringIO(text), format="extxyz", index=0)
    atoms = atoms[0] if isinstance(atoms, list) else atoms  # index=0 reads one frame
    if not all(atoms.pbc) or atoms.cell.volume <= 0:
        raise DataError("the extended XYZ frame has no periodic cell (set Lattice= and pbc)")
    return AseAtomsAdaptor.get_structure(atoms)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def periodic_neighbors(structure: Structure, cutoff: float) -> PeriodicNeighbors:
    """All (centre, neighbour, image offset, distance) pairs within ``cutoff``, periodic images included.

    pymatgen's C neighbour search is exact for any cell shape, including cells smaller than
    the cutoff (vesin 0.6 misses pairs there). Only an atom's zero-distance self-pair is left out.
    """
    centers, neighbors, images, distances = structure.get_neighbor_list(r=cutoff)
    return (
        centers.astype(np.int64),
        neighbors.astype(np.int64),
        images.astype(np.int64),
        distances.astype(np.float64),
    )


def check_structure(
    structure: Structure, *, cutoff: float, neighbors: PeriodicNeighbors | None = None
) -> str | None:
    """A one-line reason why the structure cannot become a crystal graph, or None when it can.

    ``neighbors`` (from :func:`periodic_neighbors`) avoids a second neighbour search.
    The cell volume is pymatgen's (absolute) volume: a left-handed basis describes a valid
    crystal, a flat or non-finite one does not.
    """
    if len(structure) == 0:
        return "the structure has no atoms"
    volume = float(structure.lattice.volume)
    if not np.isfinite(volume) or volume <= 1e-6:
        return f"cell volume {volume:.3g} Å^3 is zero or not finite"
    if not np.all(np.isfinite(structure.frac_coords)):
        return "atomic coordinates are not finite"
    if not structure.is_ordered:
        return "disordered sites (partial occupancies) cannot become a crystal graph"
    for site in structure:
        species = site.specie
        if isinstance(species, DummySpecies) or getattr(species, "Z", 0) < 1:
            return f"unknown or dummy species '{species}'"
    centers, others, _, distances = (
        neighbors if neighbors is not None else periodic_neighbors(structure, cutoff)
    )
    if distances.size and distances.min() < MIN_INTERATOMIC_DISTANCE:
        at = int(np.argmin(distances))
        return (
            f"atoms {centers[at]} and {others[at]} overlap ({distances[at]:.3f} Å apart, "
            f"< {MIN_INTERATOMIC_DISTANCE} Å)"
        )
    counts = np.bincount(centers, minlength=len(structure))
    if np.any(counts == 0):
        lonely = int(np.flatnonzero(counts == 0)[0])
        return f"atom {lonely} ({structure[lonely].specie}) has no neighbour within {cutoff} Å"
    return None


def search_spacegroup(structure: Structure, symprec: float, symmetry: str) -> int:
    """The space-group number found by ``symmetry`` ("spglib" or "moyopy") at ``symprec`` Å."""
    if symmetry == "moyopy":
        return moyopy_spacegroup(structure, symprec)
    return spglib_spacegroup(structure, symprec)


def moyopy_spacegroup(structure: Structure, symprec: float) -> int:
    """The moyopy space-group number at ``symprec`` Å; :class:`DataError` when it finds none.

    moyopy (spglib's successor, in Rust) takes 0.4 ms where spglib takes 2.7 on average over
    tqc2020, as spglib's search of cubic lattices does not prune (docs/results.md,
    "Screening"). Its angle tolerance is its own: at spglib's 5 degrees some cells (mp-569416)
    never return. It finds another group than spglib for 56 of the 14,193 tqc2020 structures,
    so a model learns the groups of the search it was trained with.
    """
    import moyopy

    moyo = logging.getLogger("moyo")
    if moyo.level == logging.NOTSET:  # a user's setting wins
        # Its warnings are about the orbits it returns (not the group) and fill a log over a dataset.
        moyo.setLevel(logging.ERROR)
    lattice, positions = structure.lattice.matrix.tolist(), structure.frac_coords.tolist()
    cell = moyopy.Cell(lattice, positions, list(structure.atomic_numbers))
    try:
        return int(moyopy.MoyoDataset(cell, symprec=symprec).number)
    except Exception as exc:  # moyopy raises when no group fits the tolerance
        raise DataError(f"moyopy found no space group (symprec {symprec} Å): {exc}") from None


def spglib_spacegroup(structure: Structure, symprec: float) -> int:
    """The spglib space-group number; :class:`DataError` when spglib finds none.

    ``symprec`` is spglib's distance tolerance in Å (0.1 by default, as the Materials Project
    uses for the space groups it reports, which is what the label sources were built from);
    the angle tolerance is pymatgen's 5 degrees, so results equal ``SpacegroupAnalyzer``'s.
    """
    import spglib

    # spglib's C code prints retries ("get_bravais_exact_positions_and_lattice failed") straight
    # to stderr, hundreds over a dataset; the outcome is what matters. A user's setting wins.
    os.environ.setdefault("SPGLIB_WARNING", "OFF")
    cell = (structure.lattice.matrix, structure.frac_coords, np.asarray(structure.atomic_numbers))
    try:
        with warnings.catch_warnings():
            # spglib 2.x warns about its error-handling mode on every call; both modes are handled.
            warnings.simplefilter("ignore", DeprecationWarning)
            dataset = spglib.get_symmetry_dataset(
                cell,  # type: ignore[arg-type]  # NumPy arrays are what spglib wants
                symprec=symprec,
                angle_tolerance=ANGLE_TOLERANCE_DEGREES,
            )
    except Exception:  # newer spglib raises where older versions returned None
        dataset = None
    if dataset is None:
        raise DataError(f"spglib found no space group (symprec {symprec} Å)")
    return int(dataset.number)


def reduced_formula(structure: Structure) -> str:
    """Reduced formula with explicit counts ("Bi2Se3", "O" rather than pymatgen's molecular "O2")."""
    with quiet_electronegativity():
        return _reduced_formula(structure)


def _reduced_formula(structure: Structure) -> str:
    amounts = {element: round(count) for element, count in structure.composition.get_el_amt_dict().items()}
    divisor = math.gcd(*amounts.values())
    # pymatgen's element order (by electronegativity); its reduced_composition is avoided because
    # it keeps molecular formulas such as O2 and H2O2 unreduced.
    tokens = Composition({element: count // divisor for element, count in amounts.items()}).formula.split()
    return "".join(re.sub(r"(?<=[A-Za-z])1$", "", token) for token in tokens)
