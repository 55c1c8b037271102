"""Noise priors of the coordinate family: the harmonic prior for bond-conditioned structures.

Told which atoms bond, the uniform prior starts bonded partners half a cell apart, and the
sampled trajectories never contract them (eighth/ninth sessions, `benchmarks/RESULTS.md`: along
bond-conditioned sampling, reference-bonded pairs sit at 2.7x their length at t = 0.5, where
training states sit at 2.1x, and end at 1.9x). The harmonic prior (Jing et al. 2023, EigenFold;
Stärk et al. 2024, FlowSite) draws positions from N(0, sigma^2 L^+) per Cartesian axis, L the
bond graph's Laplacian: each bond's vector is ~N(0, sigma^2) per axis, so bonded atoms start
next to each other and the model only has to unfold the graph. Each connected component gets a
uniform random position on the torus, so an atom without bonds keeps the uniform prior.

The prior is a deterministic map of the uniform draw the sampler already makes (`harmonic_noise`
of ``u ~ U[0, 1)``): Gaussian mode amplitudes by the inverse normal CDF of the rows the
component shifts do not use, so seeded per-structure noise stays reproducible and rows without
bonds are returned unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from mofasa.geometry.lattice_torch import wrap_frac_torch

__all__ = ["align_translation", "harmonic_noise"]

_EPS = 1e-6  # uniform draws are clipped to [eps, 1 - eps] before the inverse normal CDF


def harmonic_noise(u: torch.Tensor, bonded: torch.Tensor, mask: torch.Tensor,
                   length: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Fractional coordinates from the harmonic prior of each crystal's bond graph.

    Args:
        u: (B, N, 3) uniform draws in [0, 1) (the uniform prior's sample).
        bonded: (B, N, N) bool adjacency (symmetric; periodic images already merged).
        mask: (B, N) bool real atoms.
        length: (B,) Å per unit of fractional coordinate the Cartesian draw is scaled by
            (the cell is not known at t = 0: the lattice coder's mean length for N atoms).
        sigma: per-axis standard deviation of a bond vector (Å).

    Returns:
        (B, N, 3) in [0, 1): rows without any bond are ``u`` itself.
    """
    out = u.clone()
    has = (bonded & mask.unsqueeze(1) & mask.unsqueeze(2)).flatten(1).any(1)
    for b in torch.nonzero(has).flatten().tolist():
        n = int(mask[b].sum())
        adj = bonded[b, :n, :n].double()
        out[b, :n] = _one(u[b, :n].double(), adj, float(length[b]), sigma).to(u.dtype)
    return out


def _one(u: torch.Tensor, adj: torch.Tensor, length: float, sigma: float) -> torch.Tensor:
    """(n, 3) fractional coordinates of one crystal: harmonic modes + component shifts."""
    from scipy.sparse.csgraph import connected_components

    n = u.shape[0]
    adj = ((adj + adj.T) > 0).double() * (1 - torch.eye(n, dtype=adj.dtype))
    lap = torch.diag(adj.sum(1)) - adj  # (n, n)
    lam, vec = torch.linalg.eigh(lap)  # ascending: the first k are the k components' zero modes
    k, labels = connected_components(adj.numpy() > 0, directed=False)
    gauss = torch.special.ndtri(u.clamp(_EPS, 1 - _EPS))  # (n, 3) iid N(0, 1)
    scale = torch.zeros(n, dtype=u.dtype)
    scale[k:] = lam[k:].clamp(min=1e-9).rsqrt()  # zero modes carry no harmonic amplitude
    cart = vec @ (scale.unsqueeze(-1) * gauss) * sigma  # (n, 3) Å, each component centred
    # component c sits at the uniform draw of row c (a row the harmonic modes do not use)
    shift = u[torch.as_tensor(labels, dtype=torch.long)]  # (n, 3)
    return wrap_frac_torch(cart / length + shift)


def align_translation(x0: torch.Tensor, x1: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x0`` (B, N, 3) shifted by one translation per crystal, the circular mean over its atoms
    of the minimum-image displacement to ``x1``: a compact noise cluster then sits where the
    clean structure is, and no component is torn across the half-cell ambiguity of the
    geodesic. With ``x1`` at a uniformly random translation (training), the shifted noise keeps
    its distribution: a uniform global position and the components' relative offsets."""
    d = x1 - x0
    d = d - torch.round(d)  # (B, N, 3) minimum image in fractional units
    m = mask.unsqueeze(-1).to(x0.dtype)
    ang = 2 * np.pi * d
    mean = torch.atan2((ang.sin() * m).sum(1), (ang.cos() * m).sum(1)) / (2 * np.pi)  # (B, 3)
    return wrap_frac_torch(x0 + mean.unsqueeze(1)) * m
