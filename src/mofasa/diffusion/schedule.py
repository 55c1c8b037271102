"""Continuous-time cosine noise schedule and the diffusion-stage settings.

Time is continuous, ``t in [0, 1]`` (t = 0 clean, t = 1 pure noise): training draws any t, and a
sampler may use any number of steps on any grid. The forward process is variance preserving,

    z_t = alpha_t x_0 + sigma_t eps,    alpha_t^2 + sigma_t^2 = 1,

and the schedule is given by its log signal-to-noise ratio ``lambda(t) = log(alpha^2 / sigma^2)``.
The cosine schedule (Nichol & Dhariwal 2021, ``alpha_t = cos(pi t / 2)``) has
``lambda(t) = -2 log tan(pi t / 2)``; as in "simple diffusion" (Hoogeboom et al. 2023, eq. 4-5)
it is truncated to ``[logsnr_min, logsnr_max]`` by an affine map of t so both ends are finite:

    lambda(t) = -2 log tan(a t + b),  b = arctan(exp(-logsnr_max / 2)),
                                      a = arctan(exp(-logsnr_min / 2)) - b,

and optionally shifted, ``lambda(t) -= 2 log(shift)`` (shift > 1 puts more noise at every t,
for latents that are easy to denoise). Then ``alpha^2 = sigmoid(lambda)``,
``sigma^2 = sigmoid(-lambda)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["CosineSchedule", "DiffusionConfig"]


@dataclass(frozen=True)
class DiffusionConfig:
    """Noise schedule, training objective and sampling defaults of the latent diffusion.

    Attributes:
        logsnr_min: log SNR at t = 1 (cosine schedule truncation).
        logsnr_max: log SNR at t = 0.
        shift: schedule shift (``lambda -= 2 log shift``; 1: plain cosine).
        self_cond_prob: probability per training batch of the self-conditioning pass.
        global_weight: weight of the Z_G loss relative to the (per-atom mean) Z_L loss.
        geometry_weight: weight of the auxiliary loss of a ``pair_terms`` denoiser's geometry
            readout (positions and lattice read from its input) against the clean structure.
        sampler: default sampler, ``"ddim"`` (deterministic) or ``"ddpm"`` (ancestral).
        steps: default number of sampling steps.
        stats_max_structures: training structures used to measure latent statistics.
    """

    logsnr_min: float = -15.0
    logsnr_max: float = 15.0
    shift: float = 1.0
    self_cond_prob: float = 0.5
    global_weight: float = 1.0
    geometry_weight: float = 0.1
    sampler: str = "ddim"
    steps: int = 50
    stats_max_structures: int = 20000

    def __post_init__(self) -> None:
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError("need logsnr_min < logsnr_max")
        if self.shift <= 0.0:
            raise ValueError("shift must be positive")
        if not 0.0 <= self.self_cond_prob <= 1.0:
            raise ValueError("self_cond_prob must lie in [0, 1]")
        if self.sampler not in ("ddim", "ddpm"):
            raise ValueError(f"sampler must be ddim or ddpm, got {self.sampler!r}")
        if self.steps < 1 or self.stats_max_structures < 1:
            raise ValueError("steps and stats_max_structures must be >= 1")


class CosineSchedule:
    """Truncated, optionally shifted cosine schedule in continuous time (module docstring).

    Args:
        logsnr_min: log SNR at t = 1.
        logsnr_max: log SNR at t = 0.
        shift: ``lambda -= 2 log(shift)``.
    """

    def __init__(self, logsnr_min: float = -15.0, logsnr_max: float = 15.0, shift: float = 1.0
                 ) -> None:
        self.logsnr_min, self.logsnr_max, self.shift = logsnr_min, logsnr_max, shift
        self._b = math.atan(math.exp(-0.5 * logsnr_max))
        self._a = math.atan(math.exp(-0.5 * logsnr_min)) - self._b

    @classmethod
    def from_config(cls, config: DiffusionConfig) -> CosineSchedule:
        """The schedule of a :class:`DiffusionConfig`."""
        return cls(config.logsnr_min, config.logsnr_max, config.shift)

    def logsnr(self, t: torch.Tensor | float) -> torch.Tensor:
        """``lambda(t)``, computed in float64 (any shape; returns float64)."""
        t = torch.as_tensor(t, dtype=torch.float64)  # like t
        lam = -2.0 * torch.log(torch.tan(self._a * t + self._b))  # like t
        return lam - 2.0 * math.log(self.shift)  # like t

    def alpha_sigma(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha_t, sigma_t)`` with alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda).

        Args:
            t: times in [0, 1], any shape.

        Returns:
            Two float64 tensors shaped like ``t`` (cast them to the data's dtype).
        """
        lam = self.logsnr(t)  # like t
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()  # like t x 2

    def coefficients(self, t: float) -> tuple[float, float]:
        """``(alpha_t, sigma_t)`` of one time as Python floats (sampler steps)."""
        a, s = self.alpha_sigma(float(t))
        return float(a), float(s)
