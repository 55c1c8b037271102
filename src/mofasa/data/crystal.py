"""`Crystal`: the one data contract between mofasa's rooms.

A crystal is (atomic numbers A, fractional coordinates F, lattice L). pymatgen and ASE are
imported lazily inside the conversion methods, so that models and training import without them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mofasa.data.elements import MAX_Z, SYMBOLS, symbol_to_z
from mofasa.geometry.lattice import (
    frac_to_cart,
    lattice_from_parameters,
    lattice_to_parameters,
    volume,
    wrap_frac,
)

if TYPE_CHECKING:  # pragma: no cover
    from ase import Atoms
    from pymatgen.core import Structure

__all__ = ["Crystal"]


@dataclass
class Crystal:
    """A periodic crystal.

    Attributes:
        numbers: (N,) int64 atomic numbers, 1..100.
        frac: (N, 3) float64 fractional coordinates, wrapped into [0, 1).
        lattice: (3, 3) float64 cell, rows are the vectors a, b, c in Å.
        id: optional identifier (for example a QMOF id or a file name).
        metadata: free-form JSON-serialisable extras.
    """

    numbers: np.ndarray
    frac: np.ndarray
    lattice: np.ndarray
    id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        frac = np.asarray(self.frac, dtype=np.float64).reshape(-1, 3)
        self.lattice = np.asarray(self.lattice, dtype=np.float64).reshape(3, 3)
        if frac.shape[0] != self.numbers.shape[0]:
            raise ValueError(
                f"{frac.shape[0]} coordinates for {self.numbers.shape[0]} atomic numbers"
            )
        if self.numbers.size and (self.numbers.min() < 1 or self.numbers.max() > MAX_Z):
            raise ValueError(f"atomic numbers must lie in 1..{MAX_Z}")
        if np.isfinite(frac).all():
            frac = wrap_frac(frac)
        self.frac = frac

    # ------------------------------------------------------------------ properties
    @property
    def num_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def cart(self) -> np.ndarray:
        """(N, 3) Cartesian positions in Å."""
        return frac_to_cart(self.frac, self.lattice)

    @property
    def volume(self) -> float:
        """Absolute cell volume in Å^3."""
        return abs(volume(self.lattice))

    @property
    def parameters(self) -> tuple[float, float, float, float, float, float]:
        """(a, b, c, alpha, beta, gamma) in Å and degrees."""
        return lattice_to_parameters(self.lattice)

    @property
    def symbols(self) -> list[str]:
        return [SYMBOLS[z] for z in self.numbers]

    @property
    def formula(self) -> str:
        """Hill-like formula with counts in canonical element order (e.g. ``C8H4O5Zn2``)."""
        zs, counts = np.unique(self.numbers, return_counts=True)
        parts = {SYMBOLS[z]: int(c) for z, c in zip(zs, counts, strict=True)}
        order = [s for s in ("C", "H") if s in parts] + sorted(
            s for s in parts if s not in ("C", "H")
        )
        return "".join(f"{s}{parts[s] if parts[s] > 1 else ''}" for s in order)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_parameters(
        cls,
        numbers: np.ndarray,
        frac: np.ndarray,
        parameters: tuple[float, float, float, float, float, float],
        **kwargs: Any,
    ) -> Crystal:
        """Build a crystal from lattice parameters (standard orientation)."""
        return cls(numbers, frac, lattice_from_parameters(*parameters), **kwargs)

    @classmethod
    def from_pymatgen(cls, structure: Structure, id: str | None = None) -> Crystal:
        """From an ordered pymatgen ``Structure`` (raises ValueError if disordered)."""
        if not structure.is_ordered:
            raise ValueError("structure is disordered (partial occupancy)")
        numbers = [symbol_to_z(site.specie.symbol) for site in structure]
        return cls(numbers, structure.frac_coords, structure.lattice.matrix, id=id)

    @classmethod
    def from_ase(cls, atoms: Atoms, id: str | None = None) -> Crystal:
        """From a periodic ASE ``Atoms`` object."""
        if not all(atoms.pbc):
            raise ValueError("ASE Atoms must be periodic in all three directions")
        return cls(atoms.numbers, atoms.get_scaled_positions(wrap=False), atoms.cell[:], id=id)

    # ------------------------------------------------------------------ conversions
    def to_pymatgen(self) -> Structure:
        from pymatgen.core import Lattice, Structure

        return Structure(Lattice(self.lattice), self.symbols, self.frac, coords_are_cartesian=False)

    def to_ase(self) -> Atoms:
        from ase import Atoms

        return Atoms(numbers=self.numbers, scaled_positions=self.frac, cell=self.lattice, pbc=True)

    def copy(self, **changes: Any) -> Crystal:
        """A deep copy, optionally with some fields replaced."""
        values = {
            "numbers": self.numbers.copy(),
            "frac": self.frac.copy(),
            "lattice": self.lattice.copy(),
            "id": self.id,
            "metadata": dict(self.metadata),
        }
        values.update(changes)
        return Crystal(**values)

    def __repr__(self) -> str:
        a, b, c, al, be, ga = self.parameters
        return (
            f"Crystal(id={self.id!r}, formula={self.formula}, N={self.num_atoms}, "
            f"abc=({a:.3f}, {b:.3f}, {c:.3f}), angles=({al:.2f}, {be:.2f}, {ga:.2f}))"
        )
