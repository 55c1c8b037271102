"""Torch twins of :mod:`mofasa.geometry.lattice`: batched, differentiable lattice maths.

Same conventions as the numpy module: a lattice is a (..., 3, 3) tensor whose **rows** are the
cell vectors a, b, c in Å, fractional coordinates F (..., N, 3) map to Cartesian as
``X = F @ L``, and angles are in degrees (alpha = angle(b, c), beta = angle(a, c),
gamma = angle(a, b)). Every function takes any number of leading batch dimensions, keeps the
input's dtype and device, and is differentiable where the maths is (the two exceptions,
:func:`wrap_frac_torch` and :func:`min_image_frac_torch`, pass gradients straight through).

Names end in ``_torch`` so that a module importing both versions can tell them apart. Unlike
the numpy versions, nothing here raises on a degenerate cell: inside a training step a bad
prediction must give a finite value, not an exception.
"""

from __future__ import annotations

import itertools

import torch

__all__ = [
    "cart_to_frac_torch",
    "frac_to_cart_torch",
    "lattice_from_parameters_torch",
    "lattice_to_parameters_torch",
    "min_image_frac_torch",
    "pair_distances_torch",
    "scaled_lattice_parameters_torch",
    "volume_torch",
    "wrap_frac_torch",
]

# Smallest squared z-extent of the c vector (in units of |c|^2) a degenerate angle triple is
# clamped to: the cell becomes flat but finite, and sqrt keeps a finite gradient.
_MIN_CZ2 = 1e-12


def lattice_from_parameters_torch(lengths: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Lattice in the standard orientation (a along x, b in the xy plane).

    Twin of :func:`mofasa.geometry.lattice.lattice_from_parameters`; a degenerate angle triple
    is clamped to a flat but finite cell instead of raising.

    Args:
        lengths: (..., 3) a, b, c in Å.
        angles: (..., 3) alpha, beta, gamma in degrees.

    Returns:
        (..., 3, 3) row-vector lattices (right-handed), dtype of the inputs.
    """
    ca, cb, cg = torch.cos(torch.deg2rad(angles)).unbind(-1)  # (...,) x 3
    sg = torch.sin(torch.deg2rad(angles[..., 2]))  # (...,)
    cy = (ca - cb * cg) / sg  # (...,)
    cz = (1.0 - cb.square() - cy.square()).clamp(min=_MIN_CZ2).sqrt()  # (...,)
    zero = torch.zeros_like(ca)  # (...,)
    a_row = torch.stack([torch.ones_like(ca), zero, zero], dim=-1)  # (..., 3)
    b_row = torch.stack([cg, sg, zero], dim=-1)  # (..., 3)
    c_row = torch.stack([cb, cy, cz], dim=-1)  # (..., 3)
    unit = torch.stack([a_row, b_row, c_row], dim=-2)  # (..., 3, 3) rows of unit length
    return unit * lengths.unsqueeze(-1)  # (..., 3, 3) Å


def lattice_to_parameters_torch(lattice: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell lengths and angles of row-vector lattices.

    Twin of :func:`mofasa.geometry.lattice.lattice_to_parameters` (which returns six floats).

    Args:
        lattice: (..., 3, 3) row-vector lattice in Å.

    Returns:
        ``(lengths, angles)``: (..., 3) a, b, c in Å and (..., 3) alpha, beta, gamma in degrees.
    """
    lengths = lattice.norm(dim=-1)  # (..., 3)
    unit = lattice / lengths.unsqueeze(-1)  # (..., 3, 3)
    a, b, c = unit.unbind(-2)  # (..., 3) x 3
    cos = torch.stack([(b * c).sum(-1), (a * c).sum(-1), (a * b).sum(-1)], dim=-1)  # (..., 3)
    # The clamp keeps arccos defined when rounding pushes |cos| a hair past 1.
    angles = torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))  # (..., 3)
    return lengths, angles


def scaled_lattice_parameters_torch(
    lattice: torch.Tensor, num_atoms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lattice parameters with the lengths also given per atom: ``log(length / N^(1/3))``.

    ``length / N^(1/3)`` stays of order one over cells of very different sizes (a cell's
    volume grows with its atom count), which is why models learn it instead of raw lengths.

    Args:
        lattice: (..., 3, 3) row-vector lattice in Å.
        num_atoms: (...,) atom counts N (clamped to >= 1).

    Returns:
        ``(log_scaled_lengths, lengths, angles)``: (..., 3) ``log(length / N^(1/3))`` with
        lengths in Å, (..., 3) lengths in Å and (..., 3) angles (alpha, beta, gamma) in degrees.
    """
    lengths, angles = lattice_to_parameters_torch(lattice)  # (..., 3) x 2
    n = num_atoms.to(lattice.dtype).clamp(min=1.0).unsqueeze(-1)  # (..., 1)
    return (lengths / n.pow(1.0 / 3.0)).log(), lengths, angles  # (..., 3) x 3


def volume_torch(lattice: torch.Tensor) -> torch.Tensor:
    """Signed cell volume in Å^3 (negative for a left-handed basis).

    Args:
        lattice: (..., 3, 3) row-vector lattice in Å.

    Returns:
        (...,) volumes in Å^3.
    """
    return torch.linalg.det(lattice)  # (...,)


def frac_to_cart_torch(frac: torch.Tensor, lattice: torch.Tensor) -> torch.Tensor:
    """Cartesian positions from fractional coordinates.

    Args:
        frac: (..., N, 3) fractional coordinates (or fractional displacements).
        lattice: (..., 3, 3) row-vector lattice in Å (broadcast against ``frac``).

    Returns:
        (..., N, 3) positions (or displacements) in Å.
    """
    return frac @ lattice  # (..., N, 3)


def cart_to_frac_torch(cart: torch.Tensor, lattice: torch.Tensor) -> torch.Tensor:
    """Fractional coordinates (not wrapped) from Cartesian positions.

    Args:
        cart: (..., N, 3) positions in Å.
        lattice: (..., 3, 3) row-vector lattice in Å (non-singular).

    Returns:
        (..., N, 3) fractional coordinates F with ``F @ lattice == cart``.
    """
    # Solve F L = X for F (a solve, not an explicit inverse, for accuracy).
    return torch.linalg.solve(lattice, cart, left=False)  # (..., N, 3)


def wrap_frac_torch(frac: torch.Tensor) -> torch.Tensor:
    """Wrap fractional coordinates into [0, 1) (gradient: identity).

    As in :func:`mofasa.geometry.lattice.wrap_frac`, values that round up to exactly 1.0
    (``-1e-17 % 1.0 == 1.0`` in floating point) become 0.0, the same point of the torus.

    Args:
        frac: any shape, fractional coordinates.

    Returns:
        Same shape and dtype, values in [0, 1).
    """
    y = torch.remainder(frac, 1.0)  # like frac, in [0, 1]
    return torch.where(y >= 1.0, y - 1.0, y)  # like frac, in [0, 1)


def min_image_frac_torch(dfrac: torch.Tensor) -> torch.Tensor:
    """Fractional displacements folded onto the nearest image, into [-1/2, 1/2].

    Twin of :func:`mofasa.geometry.lattice.min_image_frac` except at exact half-integer ties:
    ``torch.round`` rounds half to even, so +-0.5 may stay +0.5 here where numpy gives -0.5
    (both are minimum images). The shift is computed on the detached input, so the gradient is
    the identity (the integer shift is piecewise constant).

    Args:
        dfrac: any shape, fractional displacements.

    Returns:
        Same shape and dtype, values in [-1/2, 1/2].
    """
    return dfrac - torch.round(dfrac.detach())  # like dfrac


def pair_distances_torch(frac: torch.Tensor, lattice: torch.Tensor) -> torch.Tensor:
    """(B, N, N) shortest periodic distances (Å) between atoms i and j, differentiable.

    The shortest of the 27 images around the minimum-image displacement, taken one image at a
    time so memory stays (B, N, N); exact whenever the shortest image lies among them, which
    holds for distances below the cell's smallest interplanar spacing (the pairs that matter
    for bonds and overlaps). The diagonal is the shortest lattice vector, not 0.

    Args:
        frac: (B, N, 3) fractional coordinates (any real values).
        lattice: (B, 3, 3) row-vector cells in Å.
    """
    B, N, _ = frac.shape
    diff = frac.unsqueeze(1) - frac.unsqueeze(2)  # (B, N, N, 3): x_j - x_i
    diff = diff - diff.detach().round()
    best = None
    for shift in itertools.product((-1.0, 0.0, 1.0), repeat=3):
        if shift == (0.0, 0.0, 0.0):
            # the zero shift of i == j is the atom itself: use its nearest image instead
            cart = (diff.flatten(1, 2) @ lattice).view(B, N, N, 3)
            d = cart.square().sum(-1)
            d = d + torch.eye(N, dtype=d.dtype, device=d.device) * 1e12
        else:
            s = torch.tensor(shift, dtype=frac.dtype, device=frac.device)
            d = ((diff + s).flatten(1, 2) @ lattice).view(B, N, N, 3).square().sum(-1)
        best = d if best is None else torch.minimum(best, d)
    return best.clamp(min=1e-12).sqrt()
