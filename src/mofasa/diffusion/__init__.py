"""mofasa.diffusion: latent diffusion (see docs/ARCHITECTURE.md).

* :mod:`~mofasa.diffusion.schedule`: continuous-time truncated cosine schedule, `DiffusionConfig`;
* :mod:`~mofasa.diffusion.objectives`: v-prediction (targets, x0 / eps from v, masked MSE);
* :mod:`~mofasa.diffusion.samplers`: DDPM (ancestral) and DDIM (deterministic) samplers with a
  diffusers-like API, and the full reverse loop with self-conditioning;
* :mod:`~mofasa.diffusion.latent`: `LatentDiffusion` (frozen autoencoder + denoiser): training
  loss, latent statistics, guided sampling, decoding.
"""

from mofasa.diffusion.latent import LatentDiffusion, latent_statistics
from mofasa.diffusion.objectives import eps_from_v, masked_mse, q_sample, v_target, x0_from_v
from mofasa.diffusion.samplers import (
    SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    Sampler,
    StepOutput,
    denoise_loop,
    make_sampler,
)
from mofasa.diffusion.schedule import CosineSchedule, DiffusionConfig

__all__ = [
    "SAMPLERS",
    "CosineSchedule",
    "DDIMSampler",
    "DDPMSampler",
    "DiffusionConfig",
    "LatentDiffusion",
    "Sampler",
    "StepOutput",
    "denoise_loop",
    "eps_from_v",
    "latent_statistics",
    "make_sampler",
    "masked_mse",
    "q_sample",
    "v_target",
    "x0_from_v",
]
