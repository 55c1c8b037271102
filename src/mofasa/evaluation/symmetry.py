"""Space groups and crystal systems with spglib (protocol: symprec 0.01, also 0.1)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from mofasa.data.crystal import Crystal

__all__ = ["CRYSTAL_SYSTEMS", "SYMPRECS", "crystal_system", "symmetry"]

SYMPRECS: tuple[float, ...] = (0.01, 0.1)
CRYSTAL_SYSTEMS: tuple[str, ...] = (
    "triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic",
)  # fmt: skip
_FIRST_NUMBER = (1, 3, 16, 75, 143, 168, 195)  # first space-group number of each system


def crystal_system(number: int) -> str:
    """Crystal system of an international space-group number (1-230)."""
    if not 1 <= number <= 230:
        raise ValueError(f"space-group number {number} outside 1..230")
    index = sum(number >= first for first in _FIRST_NUMBER) - 1
    return CRYSTAL_SYSTEMS[index]


def symprec_tag(symprec: float) -> str:
    """Key suffix for a tolerance: 0.01 -> '001', 0.1 -> '01'."""
    return f"{symprec:g}".replace(".", "")


def symmetry(crystal: Crystal, symprecs: tuple[float, ...] = SYMPRECS) -> dict[str, object]:
    """Space-group number and crystal system of the structure as given, per tolerance.

    Returns:
        ``{"spg_001": 14, "crystal_system_001": "monoclinic", "spg_01": ..., ...}``; a tolerance
        at which spglib finds no symmetry dataset gives ``spg_X = 0`` and ``crystal_system_X =
        "undetermined"``.
    """
    import spglib

    cell = (crystal.lattice, crystal.frac, crystal.numbers)
    out: dict[str, object] = {}
    for symprec in symprecs:
        tag = symprec_tag(symprec)
        try:
            with warnings.catch_warnings():  # spglib 2.x warns about its error handling
                warnings.simplefilter("ignore")
                dataset = spglib.get_symmetry_dataset(cell, symprec=symprec)
        except Exception:  # spglib >= 2.5 may raise where older ones returned None
            dataset = None
        number = int(dataset.number) if dataset is not None else 0
        out[f"spg_{tag}"] = number
        out[f"crystal_system_{tag}"] = crystal_system(number) if number else "undetermined"
    return out
