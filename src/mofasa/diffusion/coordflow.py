"""`CoordFlow`: flow matching on explicit coordinates (torus), type codes and the lattice.

Time runs from t = 0 (noise) to t = 1 (data), as in FlowMM. Per crystal:

* fractional coordinates: x_0 ~ U([0, 1)^3) per atom, the geodesic x_t = wrap(x_0 + t u) with
  u = minimum-image(x_1 - x_0);
* type codes (analog bits of the atomic number) and the 6 normalised lattice numbers: Gaussian
  noise and the straight path c_t = (1 - t) c_0 + t c_1.

The network predicts the clean state from x_t (x1-prediction): the displacement
d = minimum-image(x_1 - x_t), the clean type code and lattice code. The loss is the squared
Cartesian error of d through the true lattice (Å^2, where bonds live) plus the code errors;
training times are drawn as t = u^time_power (time_power < 1 puts more of them near t = 1, where
overlaps and missing bonds are decided). Sampling integrates dx/dt = d_hat / (1 - t) with Euler
steps on a grid that is denser near t = 1; the last step lands on the prediction. Types are the
nearest code among the real elements, positions and lattice are read directly (no decoder).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from mofasa.data.batch import CrystalBatch
from mofasa.geometry.lattice_torch import min_image_frac_torch, wrap_frac_torch
from mofasa.models.coord_denoiser import CoordDenoiser, LatticeCoder, batch_state, type_codes

__all__ = ["CoordFlow", "CoordFlowConfig"]


@dataclass(frozen=True)
class CoordFlowConfig:
    """Process and sampling settings of `CoordFlow`.

    Attributes:
        time_power: training times t = u^time_power, u ~ U(0, 1) (1: uniform).
        t_max: largest training time (the x1-prediction target stays finite at t = 1, but
            1 - t scales the sampler's velocity).
        type_weight, lattice_weight: loss weights of the code errors (the coordinate error is
            in Å^2).
        steps: default sampling steps.
        grid_power: sampling grid t_k = 1 - (1 - k / steps)^grid_power (> 1: denser near 1).
        log_len_mean, log_len_std: statistics of log(length / N^(1/3)) for the lattice code.
    """

    time_power: float = 0.5
    t_max: float = 0.999
    type_weight: float = 1.0
    lattice_weight: float = 1.0
    steps: int = 50
    grid_power: float = 2.0
    log_len_mean: float = 0.87
    log_len_std: float = 0.25

    def __post_init__(self) -> None:
        if not (self.time_power > 0 and 0 < self.t_max <= 1 and self.steps >= 1
                and self.grid_power > 0):
            raise ValueError(f"bad CoordFlowConfig: {self}")


class CoordFlow(nn.Module):
    """Explicit-coordinate generative model (module docstring); trains on `CrystalBatch`.

    Args:
        denoiser: the network.
        config: process settings.
        num_atoms_hist: (M + 1,) training atom-count histogram (sizes at sampling).
    """

    def __init__(self, denoiser: CoordDenoiser, config: CoordFlowConfig,
                 num_atoms_hist: torch.Tensor | None = None) -> None:
        super().__init__()
        self.denoiser, self.config = denoiser, config
        self.coder = LatticeCoder(config.log_len_mean, config.log_len_std)
        self.register_buffer("codes", type_codes(denoiser.config.type_bits), persistent=False)
        hist = num_atoms_hist if num_atoms_hist is not None else torch.zeros(0, dtype=torch.long)
        self.register_buffer("num_atoms_hist", hist.long(), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def _noised(self, batch: CrystalBatch, t: torch.Tensor
                ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        x1, c1, l1 = batch_state(batch, self.codes, self.coder)  # (B,N,3), (B,N,bits), (B,6)
        m = batch.mask.unsqueeze(-1).to(x1.dtype)  # (B, N, 1)
        x0 = torch.rand_like(x1)
        tt = t.view(-1, 1, 1)  # (B, 1, 1)
        xt = wrap_frac_torch(x0 + tt * min_image_frac_torch(x1 - x0)) * m  # (B, N, 3)
        ct = ((1 - tt) * torch.randn_like(c1) + tt * c1) * m  # (B, N, bits)
        lt = (1 - t.view(-1, 1)) * torch.randn_like(l1) + t.view(-1, 1) * l1  # (B, 6)
        return (xt, ct, lt), (x1, c1, l1)

    def forward(self, batch: CrystalBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss ``(scalar, metrics)``."""
        mask = batch.mask
        B = mask.shape[0]
        u = torch.rand(B, device=mask.device)  # (B,)
        t = u.pow(self.config.time_power) * self.config.t_max  # (B,)
        (xt, ct, lt), (x1, c1, l1) = self._noised(batch, t)
        lat_t = self.coder.decode(lt, batch.num_atoms)  # (B, 3, 3)
        d_hat, c_hat, l_hat = self.denoiser(xt, ct, lt, lat_t, t, mask)
        d_true = min_image_frac_torch(x1 - xt)  # (B, N, 3)
        err = ((d_hat - d_true).unsqueeze(-2) @ batch.lattice.unsqueeze(1)).squeeze(-2)  # Å
        m = mask.to(err.dtype)  # (B, N)
        count = m.sum().clamp(min=1)
        loss_x = (err.square().sum(-1) * m).sum() / count  # () Å^2 per atom
        loss_c = ((c_hat - c1).square().mean(-1) * m).sum() / count  # ()
        loss_l = (l_hat - l1).square().mean()  # ()
        loss = loss_x + self.config.type_weight * loss_c + self.config.lattice_weight * loss_l
        metrics = {"loss_coord": loss_x, "loss_type": loss_c, "loss_lattice": loss_l}
        values = torch.stack([v.detach().float() for v in metrics.values()]).tolist()
        return loss, dict(zip(metrics, values, strict=True))

    def time_grid(self, steps: int) -> list[float]:
        """t_0 = 0 < ... < t_steps = 1, denser near 1."""
        k = torch.arange(steps + 1, dtype=torch.float64) / steps
        return (1.0 - (1.0 - k).pow(self.config.grid_power)).tolist()

    @torch.no_grad()
    def generate(self, mask: torch.Tensor, ids: list[str | None] | None = None, *,
                 steps: int | None = None, generator: torch.Generator | None = None
                 ) -> CrystalBatch:
        """Sample crystals with the atom counts of ``mask`` ((B, N) bool, real atoms first)."""
        B, N = mask.shape
        dev = mask.device
        m = mask.unsqueeze(-1).float()  # (B, N, 1)
        bits = self.codes.shape[1]
        x = torch.rand(B, N, 3, generator=generator).to(dev) * m
        c = torch.randn(B, N, bits, generator=generator).to(dev) * m
        lcode = torch.randn(B, 6, generator=generator).to(dev)
        n = mask.sum(1)  # (B,)
        grid = self.time_grid(steps or self.config.steps)
        for t, tn in itertools.pairwise(grid):
            tt = torch.full((B,), t, device=dev)
            d_hat, c_hat, l_hat = self.denoiser(x, c, lcode, self.coder.decode(lcode, n), tt,
                                                mask)
            r = (tn - t) / (1.0 - t)  # the fraction of the remaining way this step covers
            x = wrap_frac_torch(x + r * d_hat) * m
            c = (c + r * (c_hat - c)) * m
            lcode = lcode + r * (l_hat - lcode)
        return self._to_batch(x, c, lcode, mask, ids)

    def _to_batch(self, x: torch.Tensor, c: torch.Tensor, lcode: torch.Tensor,
                  mask: torch.Tensor, ids: list[str | None] | None) -> CrystalBatch:
        codes = self.codes[1:]  # real elements only (token 0 is padding)
        dist = (c.unsqueeze(-2) - codes).square().sum(-1)  # (B, N, 100)
        types = (dist.argmin(-1) + 1) * mask  # (B, N)
        n = mask.sum(1)
        return CrystalBatch(atom_types=types.long(), frac=x, lattice=self.coder.decode(lcode, n),
                            mask=mask, num_atoms=n.long(), ids=list(ids or [None] * len(n)))
