"""Sanity checks that turn a bad structure into a `CrystalError` with one reason code."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mofasa.data.crystal import Crystal
from mofasa.data.errors import CrystalError

__all__ = ["CheckLimits", "check_crystal", "min_interatomic_distance", "read_checked_cif"]


@dataclass(frozen=True)
class CheckLimits:
    """Limits for `check_crystal`.

    Attributes:
        max_atoms: most atoms allowed (None: no limit).
        min_distance: Å; closer pairs count as overlapping atoms (H2 is 0.74 Å, so 0.5 is safe).
            None: no overlap test (`mofasa evaluate` leaves overlaps to MOFChecker's verdict).
        max_length: Å; longest cell edge allowed.
        min_volume_per_atom: Å^3; below this the cell is degenerate.
    """

    max_atoms: int | None = None
    min_distance: float | None = 0.5
    max_length: float = 500.0
    min_volume_per_atom: float = 1.0


def check_crystal(crystal: Crystal, limits: CheckLimits | None = None) -> Crystal:
    """Raise `CrystalError` naming ``crystal.id`` if the structure is unusable; else return it.

    Checks, in order: no atoms, non-finite values, degenerate cell, huge cell, too many atoms,
    overlapping atoms (skipped when ``limits.min_distance`` is None). The cheap checks come
    first: the overlap test grows faster than linearly with the atom count (12,000 atoms: 7 s).
    """
    limits = limits or CheckLimits()
    try:
        _check(crystal, limits)
    except CrystalError as err:
        raise err.with_source(err.source or crystal.id) from None
    return crystal


def _check(crystal: Crystal, limits: CheckLimits) -> None:
    n = crystal.num_atoms
    if n == 0:
        raise CrystalError("no_atoms")
    if not (np.isfinite(crystal.frac).all() and np.isfinite(crystal.lattice).all()):
        raise CrystalError("non_finite", "NaN or infinite coordinates or cell")
    lengths = np.linalg.norm(crystal.lattice, axis=1)
    vol = abs(np.linalg.det(crystal.lattice))
    if lengths.min() < 0.5 or vol < limits.min_volume_per_atom * n:
        detail = f"volume {vol:.3g} Å^3 for {n} atoms, shortest edge {lengths.min():.3g} Å"
        raise CrystalError("degenerate_cell", detail)
    if lengths.max() > limits.max_length:
        raise CrystalError(
            "huge_cell", f"cell edge {lengths.max():.1f} Å exceeds {limits.max_length:.0f} Å"
        )
    if limits.max_atoms is not None and n > limits.max_atoms:
        detail = f"{n} atoms > max_atoms={limits.max_atoms}"
        raise CrystalError("too_many_atoms", detail, num_atoms=n)
    if limits.min_distance is None:
        return
    dmin = min_interatomic_distance(crystal, limits.min_distance)
    if dmin < limits.min_distance:
        raise CrystalError(
            "overlapping_atoms", f"two atoms {dmin:.3f} Å apart (< {limits.min_distance} Å)"
        )


def read_checked_cif(text: str, id: str | None, limits: CheckLimits | None = None) -> Crystal:
    """Read CIF text and check it: the one reader of `mofasa data prepare` and `evaluate`.

    The atom limit is applied to the atom-site rows before any structure is built, and again
    to the expanded structure (see `read_cif`).

    Raises:
        CrystalError: any reason of `read_cif` or `check_crystal`, naming ``id``.
    """
    from mofasa.data.cif import read_cif

    limits = limits or CheckLimits()
    crystal = read_cif(text, id=id, is_text=True, max_atoms=limits.max_atoms)
    return check_crystal(crystal, limits)


def min_interatomic_distance(crystal: Crystal, cutoff: float = 0.5) -> float:
    """Shortest periodic distance between two atoms (or an atom and its own image), or ``inf``
    if every pair is at least ``cutoff`` Å apart."""
    import torch

    from mofasa.geometry.graphs import radius_graph_pbc

    graph = radius_graph_pbc(
        torch.from_numpy(np.array(crystal.frac, dtype=np.float64)),  # a writable copy
        torch.from_numpy(np.array(crystal.lattice, dtype=np.float64)),
        cutoff,
    )
    if graph.distances.numel() == 0:
        return float("inf")
    return float(graph.distances.min())
