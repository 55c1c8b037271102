"""Geometry for a latent denoiser: positions and lattice read from its input, pair terms from them.

The per-atom latent is, to a linear probe, an absolute-position code ((cos, sin)(2 pi x) per axis
with R^2 0.98) and the global latent is the lattice (R^2 0.999). `GeometryReadout` reads both
from what the denoiser sees (the noisy latents concatenated with the self-conditioning estimate),
and `PairBias` turns the implied minimum-image displacements into one attention-logit bias per
head, computed once per forward and shared by every layer, so that attention can find the atoms
that sit next to each other. The readout is trained by an auxiliary loss against the clean
structure (`readout_loss`), weighted by alpha_t^2 so that noise-dominated inputs count little.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mofasa.geometry.lattice_torch import (
    frac_to_cart_torch,
    lattice_from_parameters_torch,
    min_image_frac_torch,
    scaled_lattice_parameters_torch,
)

__all__ = ["GeometryReadout", "PairBias", "readout_loss"]

ANGLE_RANGE = (60.0, 120.0)  # degrees: the canonical cells' angles


class GeometryReadout(nn.Module):
    """Linear heads: per atom (cos, sin)(2 pi x) per axis, per crystal the 6 lattice numbers.

    Args:
        local_in: width of the per-atom input (noisy latent [+ self-conditioning estimate]).
        global_in: width of the per-crystal input.
    """

    def __init__(self, local_in: int, global_in: int) -> None:
        super().__init__()
        self.pos = nn.Linear(local_in, 6)
        self.lattice = nn.Linear(global_in, 6)

    def forward(self, zl: torch.Tensor, zg: torch.Tensor, num_atoms: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Read geometry.

        Args:
            zl: (B, N, local_in); zg: (B, global_in); num_atoms: (B,).

        Returns:
            ``(cos_sin (B, N, 3, 2), frac (B, N, 3) in [0, 1), log_scaled_lengths (B, 3),
            angles (B, 3) degrees)``.
        """
        cs = self.pos(zl).view(*zl.shape[:2], 3, 2)  # (B, N, 3, 2)
        frac = torch.atan2(cs[..., 1], cs[..., 0]) / (2 * math.pi) % 1.0  # (B, N, 3)
        raw = self.lattice(zg)  # (B, 6)
        lo, hi = ANGLE_RANGE
        angles = lo + (hi - lo) * torch.sigmoid(raw[:, 3:])  # (B, 3)
        return cs, frac, raw[:, :3], angles

    @staticmethod
    def lattice_matrix(log_scaled: torch.Tensor, angles: torch.Tensor,
                       num_atoms: torch.Tensor) -> torch.Tensor:
        """(B, 3, 3) row-vector lattice from ``log(length / N^(1/3))`` and angles."""
        n = num_atoms.to(log_scaled.dtype).clamp(min=1.0).unsqueeze(-1)  # (B, 1)
        lengths = log_scaled.clamp(-3.0, 3.0).exp() * n.pow(1.0 / 3.0)  # (B, 3) Å
        return lattice_from_parameters_torch(lengths, angles)  # (B, 3, 3)


class PairBias(nn.Module):
    """(B, H, N, N) attention bias from relative Fourier features and a distance RBF.

    Features of the pair (i, j): sin / cos(2 pi k d) of the minimum-image fractional
    displacement d = x_j - x_i (per axis, k = 1..frequencies) and Gaussians of |d @ L| (Å);
    a small MLP maps them to one logit per head. Its last layer starts at zero, so a fresh
    model attends exactly as one without pair terms.

    Args:
        heads: attention heads H.
        frequencies: Fourier frequencies per axis.
        rbf: number of distance Gaussians, centres evenly in [0, cutoff].
        cutoff: largest RBF centre in Å.
        hidden: MLP width.
    """

    def __init__(self, heads: int, frequencies: int = 4, rbf: int = 16, cutoff: float = 8.0,
                 hidden: int = 32) -> None:
        super().__init__()
        self.register_buffer("k", torch.arange(1, frequencies + 1, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("centres", torch.linspace(0.0, cutoff, rbf), persistent=False)
        self.gamma = (rbf / cutoff) ** 2  # width ~ the centre spacing
        self.mlp = nn.Sequential(nn.Linear(6 * frequencies + rbf, hidden), nn.SiLU(),
                                 nn.Linear(hidden, heads))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, frac: torch.Tensor, lattice: torch.Tensor) -> torch.Tensor:
        """frac (B, N, 3), lattice (B, 3, 3) -> bias (B, H, N, N)."""
        d = min_image_frac_torch(frac.unsqueeze(1) - frac.unsqueeze(2))  # (B, N, N, 3): x_j - x_i
        ang = 2 * math.pi * d.unsqueeze(-1) * self.k  # (B, N, N, 3, K)
        four = torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(-2)  # (B, N, N, 6K)
        dist = frac_to_cart_torch(d, lattice.unsqueeze(1)).norm(dim=-1)  # (B, N, N)
        rbf = torch.exp(-self.gamma * (dist.unsqueeze(-1) - self.centres).square())  # (B,N,N,R)
        return self.mlp(torch.cat([four, rbf], dim=-1)).permute(0, 3, 1, 2)  # (B, H, N, N)


def readout_loss(readout: tuple[torch.Tensor, ...], frac: torch.Tensor, lattice: torch.Tensor,
                 mask: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """alpha_t^2-weighted error of the readout against the clean structure: squared distance of
    the (cos, sin) vectors per axis plus the lattice numbers (log-lengths, angles / 60 deg)."""
    cs, _, log_len, angles = readout
    target = torch.stack([torch.cos(2 * math.pi * frac), torch.sin(2 * math.pi * frac)], -1)
    m = mask.to(cs.dtype)  # (B, N)
    pos = ((cs - target).square().sum((-1, -2)) * m).sum(1) / m.sum(1).clamp(min=1)  # (B,)
    true_log, _, true_angles = scaled_lattice_parameters_torch(lattice, mask.sum(1))
    lat = (log_len - true_log).square().sum(-1) + ((angles - true_angles) / 60.0).square().sum(-1)
    return ((pos + lat) * alpha.square()).mean()
