"""Samplers for v-prediction models on the continuous cosine schedule (diffusers-like API).

    sampler = DDIMSampler(schedule)
    sampler.set_timesteps(20)                     # any count: t_k = 1 - k / 20, k = 0..19
    z = noise
    for t in sampler.timesteps:
        v = model(z, t)
        z, x0 = sampler.step(v, t, z)             # (prev_sample, pred_original_sample)

``sample`` and ``model_output`` may be tensors or tuples of tensors (Z_L, Z_G). Every step goes
from t to the next grid time s < t; the grid is uniform in t and ends at s = 0, where a step
returns the clean estimate itself (``prev_sample == pred_x0``). Coefficients are computed in
float64 as Python floats. :func:`denoise_loop` runs the whole chain, with self-conditioning.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from mofasa.diffusion.objectives import eps_from_v, q_sample, tree_map, x0_from_v
from mofasa.diffusion.schedule import CosineSchedule

__all__ = ["SAMPLERS", "DDIMSampler", "DDPMSampler", "Sampler", "StepOutput", "denoise_loop",
           "make_sampler"]

Latents = Any  # a tensor or a tuple of tensors


class StepOutput(NamedTuple):
    """Result of one sampler step (unpacks as ``prev_sample, pred_x0``)."""

    prev_sample: Latents
    pred_original_sample: Latents


class Sampler:
    """Base class: time grid, ``add_noise`` and the step bookkeeping.

    Args:
        schedule: the noise schedule the model was trained with.
    """

    stochastic = False  # whether ``step`` draws noise

    def __init__(self, schedule: CosineSchedule) -> None:
        self.schedule = schedule
        self.timesteps = torch.empty(0, dtype=torch.float64)
        self._times: list[float] = []

    @property
    def num_inference_steps(self) -> int:
        """Steps of the current grid."""
        return len(self._times) - 1 if self._times else 0

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Uniform grid ``t_k = 1 - k / n`` (k = 0..n-1) to step from; the last step ends at 0.

        Args:
            num_inference_steps: any n >= 1.
        """
        n = int(num_inference_steps)
        if n < 1:
            raise ValueError(f"need at least one step, got {n}")
        self._times = [1.0 - k / n for k in range(n)] + [0.0]
        self.timesteps = torch.tensor(self._times[:-1], dtype=torch.float64)  # (n,)

    def _index(self, t: torch.Tensor | float) -> int:
        t = float(t)
        for k, tk in enumerate(self._times[:-1]):
            if abs(tk - t) < 1e-9:
                return k
        raise ValueError(f"t={t} is not on the grid; call set_timesteps and use .timesteps")

    def previous_timestep(self, t: torch.Tensor | float) -> float:
        """The time s < t the step from t lands on."""
        return self._times[self._index(t) + 1]

    def add_noise(self, original_samples: Latents, noise: Latents,
                  timesteps: torch.Tensor | float) -> Latents:
        """``z_t = alpha_t x0 + sigma_t eps`` (t a scalar or (B,)).

        Args:
            original_samples: clean latents (tensor or tuple).
            noise: standard normal noise of the same structure.
            timesteps: scalar or (B,) times.

        Returns:
            Noisy latents of the same structure.
        """
        alpha, sigma = self.schedule.alpha_sigma(timesteps)  # float64, like timesteps
        return q_sample(original_samples, noise, alpha, sigma)

    def _predict(self, model_output: Latents, t: float, sample: Latents
                 ) -> tuple[Latents, Latents, float, float]:
        a_t, s_t = self.schedule.coefficients(t)
        x0 = x0_from_v(sample, model_output, a_t, s_t)  # x0 = alpha z - sigma v
        eps = eps_from_v(sample, model_output, a_t, s_t)  # eps = sigma z + alpha v
        return x0, eps, a_t, s_t

    def step(self, model_output: Latents, timestep: torch.Tensor | float, sample: Latents, *,
             noise: Latents | None = None, generator: torch.Generator | None = None
             ) -> StepOutput:
        """One step from ``timestep`` to the next grid time (see subclasses)."""
        raise NotImplementedError


class DDIMSampler(Sampler):
    """Deterministic DDIM (Song et al. 2021, eq. 12 with eta = 0):

    ``z_s = alpha_s x0_hat + sigma_s eps_hat``. A model that predicts x0 exactly maps
    ``alpha_t x0 + sigma_t eps`` to ``alpha_s x0 + sigma_s eps`` (same eps): the probability-flow
    ODE, solved by a first-order exponential integrator.
    """

    def step(self, model_output: Latents, timestep: torch.Tensor | float, sample: Latents, *,
             noise: Latents | None = None, generator: torch.Generator | None = None
             ) -> StepOutput:
        """One DDIM step (``noise`` / ``generator`` are accepted and ignored).

        Args:
            model_output: predicted v (like ``sample``).
            timestep: current time t on the grid.
            sample: z_t.

        Returns:
            ``StepOutput(z_s, x0_hat)``.
        """
        s = self.previous_timestep(timestep)
        x0, eps, _, _ = self._predict(model_output, float(timestep), sample)
        if s <= 0.0:
            return StepOutput(x0, x0)
        a_s, s_s = self.schedule.coefficients(s)
        return StepOutput(q_sample(x0, eps, a_s, s_s), x0)


class DDPMSampler(Sampler):
    """Ancestral sampling from the Gaussian posterior q(z_s | z_t, x0 = x0_hat).

    In continuous VP form (Ho et al. 2020, eq. 6-7; Kingma et al. 2021, VDM eq. 33-34), with
    ``alpha_{t|s} = alpha_t / alpha_s`` and ``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2``:

        mean = (alpha_{t|s} sigma_s^2 / sigma_t^2) z_t + (alpha_s sigma_{t|s}^2 / sigma_t^2) x0_hat
        var  = sigma_{t|s}^2 sigma_s^2 / sigma_t^2,        z_s = mean + sqrt(var) noise.
    """

    stochastic = True

    def step(self, model_output: Latents, timestep: torch.Tensor | float, sample: Latents, *,
             noise: Latents | None = None, generator: torch.Generator | None = None
             ) -> StepOutput:
        """One ancestral step.

        Args:
            model_output: predicted v (like ``sample``).
            timestep: current time t on the grid.
            sample: z_t.
            noise: standard normal noise like ``sample`` (drawn with ``generator`` if None).
            generator: torch generator for the noise.

        Returns:
            ``StepOutput(z_s, x0_hat)``.
        """
        s = self.previous_timestep(timestep)
        x0, _, a_t, s_t = self._predict(model_output, float(timestep), sample)
        if s <= 0.0:
            return StepOutput(x0, x0)
        a_s, s_s = self.schedule.coefficients(s)
        a_ts = a_t / a_s
        var_ts = s_t**2 - a_ts**2 * s_s**2  # sigma_{t|s}^2
        c_z = a_ts * s_s**2 / s_t**2
        c_x = a_s * var_ts / s_t**2
        std = math.sqrt(max(var_ts * s_s**2 / s_t**2, 0.0))
        if noise is None:
            noise = tree_map(
                lambda z: torch.randn(z.shape, generator=generator, device=z.device,
                                      dtype=z.dtype), sample)
        prev = tree_map(lambda z, x, e: c_z * z + c_x * x + std * e, sample, x0, noise)
        return StepOutput(prev, x0)


SAMPLERS: dict[str, type[Sampler]] = {"ddim": DDIMSampler, "ddpm": DDPMSampler}


def make_sampler(name: str, schedule: CosineSchedule) -> Sampler:
    """``"ddim"`` or ``"ddpm"`` on ``schedule``."""
    try:
        return SAMPLERS[name](schedule)
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose from {sorted(SAMPLERS)}") from None


def denoise_loop(
    model_fn: Callable[[Latents, float, Latents | None], Latents],
    sampler: Sampler,
    init: Latents,
    steps: int,
    *,
    noise_fn: Callable[[], Latents] | None = None,
    self_condition: bool = False,
    post_step: Callable[[Latents], Latents] | None = None,
) -> Latents:
    """Run the full reverse chain from ``init`` (noise at t = 1) to a clean sample.

    Args:
        model_fn: ``(z_t, t, self_cond) -> v``; ``self_cond`` is the previous step's x0 estimate
            (None on the first step or without self-conditioning).
        sampler: the sampler (its grid is reset to ``steps``).
        init: starting noise (tensor or tuple).
        steps: number of model evaluations.
        noise_fn: returns the noise of one stochastic step (None: the sampler draws it).
        self_condition: feed the last x0 estimate back into the model.
        post_step: applied to every new sample and estimate (e.g. zeroing padding).

    Returns:
        The final clean estimate (same structure as ``init``).
    """
    sampler.set_timesteps(steps)
    z, x0 = init, None
    for t in sampler.timesteps.tolist():
        v = model_fn(z, t, x0 if self_condition else None)
        last = sampler.previous_timestep(t) <= 0.0  # the last step draws no noise
        noise = noise_fn() if (sampler.stochastic and noise_fn and not last) else None
        z, x0 = sampler.step(v, t, z, noise=noise)
        if post_step is not None:
            z, x0 = post_step(z), post_step(x0)
    return x0
