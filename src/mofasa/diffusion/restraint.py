"""Bond restraints for bond-conditioned samples: the given graph's lengths, nothing else.

Sampled under a bond condition, the coordinate model places ~86% of the reference's bonds
within the bond rule but few structures get every one right, and MOFChecker fails them on
undercoordinated carbon (ninth session, `benchmarks/RESULTS.md`). `restrain_bonds` moves the
free atoms, cell and elements fixed, to minimise an energy built only from the condition: each
given bond pulled to the sum of the two Cordero covalent radii, every other pair pushed beyond
the canonical bond rule's cut-off (r_i + r_j + BOND_TOL + a margin). It is an explicit option of
the sampler (`--restrain-bonds STEPS`), off by default and recorded with the run: figures with
it are not the model's alone.
"""

from __future__ import annotations

import torch

from mofasa.data.canonical import BOND_TOL
from mofasa.data.elements import COVALENT_RADII
from mofasa.geometry.lattice_torch import pair_distances_torch, wrap_frac_torch

__all__ = ["restrain_bonds", "restraint_energy"]

MARGIN = 0.05  # Å beyond the bond rule's cut-off that unbonded pairs are pushed to


def restraint_energy(frac: torch.Tensor, lattice: torch.Tensor, types: torch.Tensor,
                     bonded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) restraint energy (Å^2): sum over given bonds of (d - r_i - r_j)^2 plus sum over
    other pairs of relu(r_i + r_j + BOND_TOL + MARGIN - d)^2, d the shortest periodic distance.

    Args:
        frac: (B, N, 3) fractional coordinates; ``lattice`` (B, 3, 3) rows in Å.
        types: (B, N) atomic numbers (0 padding); ``mask`` (B, N) bool real atoms.
        bonded: (B, N, N) bool given bonds (symmetric).
    """
    radii = torch.as_tensor(COVALENT_RADII, dtype=frac.dtype, device=frac.device)[types]
    target = radii.unsqueeze(1) + radii.unsqueeze(2)  # (B, N, N) Å
    n = mask.shape[1]
    pair = mask.unsqueeze(1) & mask.unsqueeze(2) & ~torch.eye(n, dtype=torch.bool,
                                                              device=mask.device)
    bond = bonded & pair
    d = pair_distances_torch(frac, lattice)  # (B, N, N)
    e_bond = ((d - target).square() * bond).sum((1, 2))
    e_other = (torch.relu(target + BOND_TOL + MARGIN - d).square() * (pair & ~bond)).sum((1, 2))
    return (e_bond + e_other) / 2  # each pair counted once


def restrain_bonds(frac: torch.Tensor, lattice: torch.Tensor, types: torch.Tensor,
                   bonded: torch.Tensor, mask: torch.Tensor, steps: int,
                   hold: torch.Tensor | None = None, lr: float = 0.02) -> torch.Tensor:
    """(B, N, 3) fractional coordinates after ``steps`` Adam steps (``lr`` Å) on the Cartesian
    positions minimising `restraint_energy`; ``hold`` (B, N) bool atoms stay put (kept atoms),
    crystals without a given bond are returned unchanged."""
    if steps <= 0:
        return frac
    lat = lattice.detach().double()
    inv = torch.linalg.inv(lat)
    has = (bonded & mask.unsqueeze(1) & mask.unsqueeze(2)).flatten(1).any(1)  # (B,)
    free = mask & has.unsqueeze(1)
    if hold is not None:
        free = free & ~hold
    f = free.unsqueeze(-1).double()  # (B, N, 1)
    start = frac.detach().double() @ lat  # (B, N, 3) Å
    move = torch.zeros_like(start, requires_grad=True)
    opt = torch.optim.Adam([move], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            x = (start + move * f) @ inv
            restraint_energy(x, lat, types, bonded, mask).sum().backward()
            opt.step()
    out = wrap_frac_torch((start + move.detach() * f) @ inv).to(frac.dtype)
    return torch.where(free.unsqueeze(-1), out, frac)
