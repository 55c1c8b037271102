"""Canonical form of a crystal: primitive, Niggli-reduced, right-handed, canonical atom order.

The canonical form is a function of the crystal alone: any permutation of the input atoms, any
origin shift and any equivalent input cell (supercell, other setting, left-handed basis) give the
same output up to float noise (symmetry-equivalent atoms may swap places).

Algorithm (see `canonicalize`):

1. Force a right-handed basis (L, F) -> (-L, -F) when det L < 0.
2. Primitive cell with spglib (translations found within `PRIMITIVE_SYMPREC`). Positions are
   taken from one representative atom per class, never symmetrised.
3. Niggli reduction (spglib, `NIGGLI_EPS`), made right-handed again.
4. Ambiguity: every right-handed basis M @ B with M in {-1, 0, 1}^(3x3), det M = 1, whose cell
   lengths equal the reduced ones within `LENGTH_RTOL` (relative) and whose angles satisfy the
   Niggli sign rule (all acute or all non-acute) and lie in [60, 120] deg within `ANGLE_TOL_DEG`
   is a candidate. Near-equal lengths and near-90-degree angles yield several candidates.
5. Atom order (basis-independent keys first):
     (a) element rank: metals first by increasing Z, then non-metals by decreasing Z
         (so ... O, N, C and H last);
     (b) bond-graph distance (hops) from the root atom: "along the bonded framework";
     (c) Weisfeiler-Lehman colour of the periodic bond graph (chemical environment);
     (d) fractional coordinates relative to the root, on a grid of `COORD_GRID`.
   The root is an atom of the first element group with the smallest WL colour. Every
   (candidate basis, candidate root) pair is tried and the lexicographically smallest coordinate
   sequence wins; the root ends at the origin. A tie-break on the lattice alone would fail for
   triclinic cells whose equivalent bases are not related by a symmetry of the atoms.
Bonds: d_ij < r_i + r_j + `BOND_TOL` with Cordero covalent radii.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from itertools import product
from typing import Any

import numpy as np

from mofasa.data.crystal import Crystal
from mofasa.data.elements import COVALENT_RADII, IS_METAL, MAX_Z
from mofasa.data.errors import CrystalError
from mofasa.geometry.lattice import (
    lattice_from_parameters,
    lattice_to_parameters,
    make_right_handed,
    wrap_frac,
)

__all__ = [
    "ANGLE_TOL_DEG",
    "BOND_TOL",
    "COORD_GRID",
    "LENGTH_RTOL",
    "NIGGLI_EPS",
    "PRIMITIVE_SYMPREC",
    "CanonicalFrame",
    "bond_edges",
    "bond_graph",
    "canonicalize",
    "canonicalize_mapped",
    "element_rank",
]

PRIMITIVE_SYMPREC = 0.01  # Å: spglib tolerance for lattice translations (primitive cell)
NIGGLI_EPS = 1e-5  # spglib Niggli tolerance (relative to the cell's length scale)
LENGTH_RTOL = 1e-3  # relative: cell lengths this close count as equal
ANGLE_TOL_DEG = 0.5  # degrees: angles this close to 90 (or the 60/120 bounds) are ambiguous
COORD_GRID = 1e-4  # fractional grid on which coordinates are compared for ordering
BOND_TOL = 0.45  # Å added to the sum of covalent radii to call a pair bonded
MAX_WL_ROUNDS = 6


def element_rank(numbers: np.ndarray) -> np.ndarray:
    """Sort key of each element: metals first by increasing Z, then non-metals by decreasing Z."""
    numbers = np.asarray(numbers, dtype=np.int64)
    return np.where(IS_METAL[numbers], numbers, 2 * (MAX_Z + 1) - numbers)


def canonicalize(crystal: Crystal, *, symprec: float = PRIMITIVE_SYMPREC) -> Crystal:
    """Canonical form of ``crystal`` (see module docstring).

    Returns:
        A new `Crystal` with the primitive, Niggli-reduced cell in the standard orientation
        (a along x, b in the xy plane), the root atom at the origin, coordinates in [0, 1) and
        atoms in canonical order. ``id`` and ``metadata`` are kept.

    Raises:
        CrystalError: ``canonicalization_failed`` if spglib cannot reduce the cell.
    """
    return canonicalize_mapped(crystal, symprec=symprec)[0]


@dataclass(frozen=True)
class CanonicalFrame:
    """How the canonical form relates to the input crystal.

    Attributes:
        sites: (N_in,) canonical index of every input site (translation-equivalent sites of a
            non-primitive input share one index).
        rotation: (3, 3) orthogonal matrix and ``origin`` (3,) Å: an input site's Cartesian
            position is ``canonical_cart @ rotation + origin`` modulo the primitive lattice
            (``canonical.lattice @ rotation``; the input lattice too when the input is primitive).
    """

    sites: np.ndarray
    rotation: np.ndarray
    origin: np.ndarray

    def to_dict(self) -> dict[str, list]:
        """JSON-ready lists."""
        return {"sites": self.sites.tolist(), "rotation": self.rotation.tolist(),
                "origin": self.origin.tolist()}


def canonicalize_mapped(crystal: Crystal, *, symprec: float = PRIMITIVE_SYMPREC
                        ) -> tuple[Crystal, CanonicalFrame]:
    """`canonicalize` plus the map from the input's sites and frame (`CanonicalFrame`)."""
    lattice, frac = make_right_handed(crystal.lattice, crystal.frac)
    numbers = crystal.numbers
    try:
        lattice, frac, numbers, site_class = _primitive(lattice, frac, numbers, symprec)
        lattice, frac = _niggli(lattice, frac)
    except (ValueError, np.linalg.LinAlgError) as exc:
        raise CrystalError("canonicalization_failed", str(exc), crystal.id) from exc
    bases = _candidate_bases(lattice)  # (K, 3, 3) integer matrices, identity first
    ranks = element_rank(numbers)
    neighbours = bond_graph(lattice, frac, numbers)
    colours = _wl_colours(numbers, neighbours)
    roots = _root_candidates(ranks, colours)
    best_key, best = None, None
    for root in roots:
        hops = _hops_from(root, neighbours, len(numbers))
        for m in bases:
            cand_lat = m.astype(np.float64) @ lattice
            cand_frac = wrap_frac(frac @ np.linalg.inv(m.astype(np.float64)))
            rel = wrap_frac(cand_frac - cand_frac[root])
            order, grid = _order(ranks, hops, colours, rel)
            key = grid[order].astype(">i8").tobytes()  # big-endian: bytes order = numeric
            if best_key is None or key < best_key:
                best_key, best = key, (cand_lat, rel[order], numbers[order], order,
                                       cand_frac[root] @ cand_lat)
    cand_lat, out_frac, out_numbers, order, origin = best
    standard = lattice_from_parameters(*lattice_to_parameters(cand_lat))
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))  # canonical index of each primitive atom
    # standard = cand_lat @ q with q orthogonal: canonical Cartesian = input Cartesian @ q
    q = np.linalg.solve(cand_lat, standard)
    frame = CanonicalFrame(sites=position[site_class], rotation=q.T, origin=origin)
    out = Crystal(out_numbers, out_frac, standard, id=crystal.id, metadata=dict(crystal.metadata))
    return out, frame


# ---------------------------------------------------------------------------- cell reduction
def _primitive(
    lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray, symprec: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Primitive cell, positions and numbers, and the primitive atom of each input site."""
    import spglib

    identity = np.arange(len(numbers))
    dataset = _quiet(spglib.get_symmetry_dataset, (lattice, frac, numbers), symprec=symprec)
    if dataset is None:  # spglib could not analyse: keep the cell as given
        return lattice, frac, numbers, identity
    mapping = np.asarray(dataset.mapping_to_primitive)
    classes, first, site_class = np.unique(mapping, return_index=True, return_inverse=True)
    if len(classes) == len(numbers):
        return lattice, frac, numbers, identity
    prim = np.asarray(dataset.primitive_lattice, dtype=np.float64)  # input Cartesian frame
    expected = abs(np.linalg.det(lattice)) * len(classes) / len(numbers)
    if not np.isclose(abs(np.linalg.det(prim)), expected, rtol=1e-6):
        raise ValueError("spglib primitive cell volume is inconsistent with its atom count")
    # One representative per class: positions are not averaged, so nothing is symmetrised.
    cart = frac[first] @ lattice
    prim_frac = cart @ np.linalg.inv(prim)
    prim, prim_frac = make_right_handed(prim, prim_frac)
    return prim, prim_frac, numbers[first], site_class.reshape(-1)


def _quiet(fn: Callable, *args: object, **kwargs: object) -> Any:
    """Call spglib without its per-call DeprecationWarning about error handling; its failures
    (None, or SpglibError in newer releases) come back as None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return fn(*args, **kwargs)
        except Exception:  # spglib.error.SpglibError where the new error handling is on
            return None


def _niggli(lattice: np.ndarray, frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import spglib

    reduced = _quiet(spglib.niggli_reduce, lattice, eps=NIGGLI_EPS)
    if reduced is None:
        raise ValueError("spglib Niggli reduction failed")
    reduced = np.asarray(reduced, dtype=np.float64)
    new_frac = (frac @ lattice) @ np.linalg.inv(reduced)
    return make_right_handed(reduced, new_frac)


@lru_cache(maxsize=1)
def _unimodular_matrices() -> np.ndarray:
    """All 3x3 matrices with entries in {-1, 0, 1} and determinant +1, identity first."""
    mats = np.array(list(product((-1, 0, 1), repeat=9)), dtype=np.int64).reshape(-1, 3, 3)
    mats = mats[np.round(np.linalg.det(mats)).astype(np.int64) == 1]
    eye = np.all(mats == np.eye(3, dtype=np.int64), axis=(1, 2))
    return np.concatenate([mats[eye], mats[~eye]])


def _candidate_bases(lattice: np.ndarray) -> np.ndarray:
    """Integer matrices M giving right-handed bases M @ L equivalent to the Niggli cell L."""
    mats = _unimodular_matrices()
    new = mats.astype(np.float64) @ lattice  # (K, 3, 3)
    lengths = np.linalg.norm(new, axis=2)  # (K, 3)
    ref = np.linalg.norm(lattice, axis=1)  # (3,)
    ok = np.all(np.abs(lengths - ref) <= LENGTH_RTOL * ref, axis=1)
    new, lengths, mats = new[ok], lengths[ok], mats[ok]
    pairs = ((1, 2), (0, 2), (0, 1))
    cos = np.stack(
        [(new[:, i] * new[:, j]).sum(-1) / (lengths[:, i] * lengths[:, j]) for i, j in pairs], 1
    )
    tol = np.sin(np.radians(ANGLE_TOL_DEG))
    in_range = np.all(np.abs(cos) <= 0.5 + tol, axis=1)  # angles in [60, 120] deg
    same_sign = np.all(cos >= -tol, axis=1) | np.all(cos <= tol, axis=1)  # Niggli type I / II
    return mats[in_range & same_sign]


# ---------------------------------------------------------------------------- bond graph
def bond_edges(lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Directed periodic bonds (d < r_i + r_j + BOND_TOL, Cordero radii) with image offsets.

    Args:
        lattice: (3, 3) rows a, b, c in Å.
        frac: (N, 3) fractional coordinates.
        numbers: (N,) atomic numbers.

    Returns:
        ``(pairs (E, 2) int64 [i, j], images (E, 3) int64 n)``: atom i bonds to the image of
        atom j shifted by n (both directions listed; sorted by i, j, n).
    """
    import torch

    from mofasa.geometry.graphs import radius_graph_pbc

    radii = COVALENT_RADII[numbers]
    cutoff = 2.0 * float(radii.max()) + BOND_TOL
    graph = radius_graph_pbc(
        torch.from_numpy(np.array(frac, dtype=np.float64)),  # writable copies for torch
        torch.from_numpy(np.array(lattice, dtype=np.float64)),
        cutoff,
    )
    i, j = graph.edge_index.numpy()
    bonded = graph.distances.numpy() < radii[i] + radii[j] + BOND_TOL
    return np.stack([i[bonded], j[bonded]], 1), graph.offsets.numpy()[bonded]


def bond_graph(lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray) -> list[np.ndarray]:
    """Neighbour lists of the periodic bond graph (d < r_i + r_j + BOND_TOL), one per atom.

    An atom bonded to several images of the same atom lists it once; the lists are sorted.
    """
    pairs, _ = bond_edges(lattice, frac, numbers)
    pairs = np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)
    split = np.searchsorted(pairs[:, 0], np.arange(len(numbers) + 1))
    return [pairs[split[a] : split[a + 1], 1] for a in range(len(numbers))]


def _wl_colours(numbers: np.ndarray, neighbours: list[np.ndarray]) -> np.ndarray:
    """Weisfeiler-Lehman colours: integers invariant to atom order, origin and cell choice."""
    colours = np.unique(numbers, return_inverse=True)[1].astype(np.int64)
    n_classes = len(np.unique(colours))
    for _ in range(MAX_WL_ROUNDS):
        signatures = [
            (int(colours[a]), *sorted(int(c) for c in colours[nb]))
            for a, nb in enumerate(neighbours)
        ]
        table = {sig: k for k, sig in enumerate(sorted(set(signatures)))}
        colours = np.array([table[s] for s in signatures], dtype=np.int64)
        if len(table) == n_classes:
            break
        n_classes = len(table)
    return colours


def _root_candidates(ranks: np.ndarray, colours: np.ndarray) -> np.ndarray:
    first = ranks == ranks.min()
    best = colours[first].min()
    return np.flatnonzero(first & (colours == best))


def _hops_from(root: int, neighbours: list[np.ndarray], n: int) -> np.ndarray:
    """Bond-graph distance (in bonds) from ``root``; unreachable atoms get n."""
    hops = np.full(n, n, dtype=np.int64)
    hops[root] = 0
    frontier = [root]
    depth = 0
    while frontier:
        depth += 1
        nxt = []
        for a in frontier:
            for b in neighbours[a]:
                if hops[b] == n:
                    hops[b] = depth
                    nxt.append(b)
        frontier = nxt
    return hops


def _order(
    ranks: np.ndarray, hops: np.ndarray, colours: np.ndarray, rel: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Canonical permutation and the gridded coordinates used to compare candidates."""
    cells = round(1.0 / COORD_GRID)
    grid = np.mod(np.rint(rel / COORD_GRID).astype(np.int64), cells)  # (N, 3)
    # np.lexsort sorts by the last key first.
    order = np.lexsort((grid[:, 2], grid[:, 1], grid[:, 0], colours, hops, ranks))
    return order, grid
