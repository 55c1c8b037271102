"""Pure lattice maths: parameters <-> matrices, wrapping, handedness.

Conventions used everywhere in mofasa:
    * A lattice is a (3, 3) array whose **rows** are the cell vectors a, b, c in Å.
    * Fractional coordinates F (N, 3) map to Cartesian as ``X = F @ L``.
    * Angles are in degrees: alpha = angle(b, c), beta = angle(a, c), gamma = angle(a, b).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "cart_to_frac",
    "frac_to_cart",
    "lattice_from_parameters",
    "lattice_to_parameters",
    "make_right_handed",
    "min_image_frac",
    "volume",
    "wrap_frac",
]


def lattice_from_parameters(
    a: float, b: float, c: float, alpha: float, beta: float, gamma: float
) -> np.ndarray:
    """Lattice matrix in the standard orientation (a along x, b in the xy plane).

    Args:
        a, b, c: cell lengths in Å.
        alpha, beta, gamma: cell angles in degrees.

    Returns:
        (3, 3) float64 array of row vectors; right-handed (positive determinant).

    Raises:
        ValueError: if the angles do not describe a real cell.
    """
    al, be, ga = np.radians([alpha, beta, gamma])
    cos_al, cos_be, cos_ga = np.cos(al), np.cos(be), np.cos(ga)
    sin_ga = np.sin(ga)
    cx = cos_be
    cy = (cos_al - cos_be * cos_ga) / sin_ga
    cz2 = 1.0 - cx * cx - cy * cy
    if not np.isfinite(cz2) or cz2 <= 0.0:
        raise ValueError(f"angles ({alpha}, {beta}, {gamma}) do not form a valid cell")
    return np.array(
        [
            [a, 0.0, 0.0],
            [b * cos_ga, b * sin_ga, 0.0],
            [c * cx, c * cy, c * np.sqrt(cz2)],
        ],
        dtype=np.float64,
    )


def lattice_to_parameters(lattice: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """(a, b, c, alpha, beta, gamma) of a (3, 3) row-vector lattice; lengths Å, angles degrees."""
    lat = np.asarray(lattice, dtype=np.float64)
    lengths = np.linalg.norm(lat, axis=1)

    def angle(i: int, j: int) -> float:
        cos = np.dot(lat[i], lat[j]) / (lengths[i] * lengths[j])
        return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))

    return (
        float(lengths[0]),
        float(lengths[1]),
        float(lengths[2]),
        angle(1, 2),
        angle(0, 2),
        angle(0, 1),
    )


def volume(lattice: np.ndarray) -> float:
    """Signed cell volume in Å^3 (negative for a left-handed basis)."""
    return float(np.linalg.det(np.asarray(lattice, dtype=np.float64)))


def wrap_frac(frac: np.ndarray) -> np.ndarray:
    """Wrap fractional coordinates into [0, 1).

    ``x % 1.0`` alone is not enough: in floating point ``-1e-17 % 1.0 == 1.0``, which lies
    outside the half-open interval. Values that round up to 1.0 are clamped to 0.0 (the same
    point of the torus).
    """
    out = np.mod(np.asarray(frac, dtype=np.float64), 1.0)
    out[out >= 1.0] = 0.0
    return out


def make_right_handed(
    lattice: np.ndarray, frac: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return an equivalent right-handed description of the same crystal.

    A left-handed basis (det < 0) is inverted: L -> -L and F -> -F keep every Cartesian
    position ``F @ L`` unchanged and keep the metric (Gram matrix) unchanged.
    """
    lat = np.asarray(lattice, dtype=np.float64)
    if np.linalg.det(lat) < 0:
        return -lat, wrap_frac(-np.asarray(frac, dtype=np.float64))
    return lat.copy(), wrap_frac(frac)


def frac_to_cart(frac: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """Cartesian positions (N, 3) in Å from fractional coordinates (N, 3)."""
    return np.asarray(frac, dtype=np.float64) @ np.asarray(lattice, dtype=np.float64)


def cart_to_frac(cart: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """Fractional coordinates (N, 3) from Cartesian positions (N, 3) in Å (not wrapped)."""
    return np.linalg.solve(np.asarray(lattice, dtype=np.float64).T, np.asarray(cart).T).T


def min_image_frac(dfrac: np.ndarray) -> np.ndarray:
    """Fractional displacements folded into [-0.5, 0.5)."""
    return dfrac - np.floor(np.asarray(dfrac, dtype=np.float64) + 0.5)
