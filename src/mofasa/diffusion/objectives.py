"""The v-prediction objective (Salimans & Ho 2022, "Progressive distillation", sec. 4 / app. D).

With ``z_t = alpha_t x0 + sigma_t eps`` and alpha^2 + sigma^2 = 1, the network predicts

    v = alpha_t eps - sigma_t x0,

from which both clean data and noise follow linearly:

    x0  = alpha_t z_t - sigma_t v,
    eps = sigma_t z_t + alpha_t v.

(Proof: alpha z - sigma v = alpha^2 x0 + alpha sigma eps - sigma alpha eps + sigma^2 x0 = x0.)
The MSE on v equals the x0-MSE weighted by ``1 + SNR`` (never zero at high noise, never huge at
low noise), which is why v-prediction stays well behaved across the whole cosine schedule and
with few sampling steps.

Every function broadcasts per-sample coefficients of shape (B,) (or scalars) over the trailing
dimensions of the data, and works on a tensor or a tuple of tensors (Z_L, Z_G).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "broadcast_to",
    "eps_from_v",
    "masked_mse",
    "q_sample",
    "tree_map",
    "v_target",
    "x0_from_v",
]

Latents = Any  # a tensor or a tuple of tensors


def tree_map(fn: Callable[..., torch.Tensor], *trees: Latents) -> Latents:
    """Apply ``fn`` leaf-wise to tensors or to tuples of tensors of the same structure."""
    if isinstance(trees[0], tuple):
        return tuple(fn(*leaves) for leaves in zip(*trees, strict=True))
    return fn(*trees)


def broadcast_to(coef: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    """(B,) coefficients -> (B, 1, ..., 1) in ``like``'s dtype; Python floats pass through."""
    if not isinstance(coef, torch.Tensor):
        return coef
    if coef.dim() == 0:
        return coef.to(like.dtype)
    return coef.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))  # (B, 1, ..., 1)


def q_sample(x0: Latents, eps: Latents, alpha: torch.Tensor | float,
             sigma: torch.Tensor | float) -> Latents:
    """Forward process ``z_t = alpha x0 + sigma eps``."""
    return tree_map(lambda x, e: broadcast_to(alpha, x) * x + broadcast_to(sigma, x) * e, x0, eps)


def v_target(x0: Latents, eps: Latents, alpha: torch.Tensor | float,
             sigma: torch.Tensor | float) -> Latents:
    """``v = alpha eps - sigma x0``."""
    return tree_map(lambda x, e: broadcast_to(alpha, x) * e - broadcast_to(sigma, x) * x, x0, eps)


def x0_from_v(z_t: Latents, v: Latents, alpha: torch.Tensor | float,
              sigma: torch.Tensor | float) -> Latents:
    """``x0 = alpha z_t - sigma v``."""
    return tree_map(lambda z, w: broadcast_to(alpha, z) * z - broadcast_to(sigma, z) * w, z_t, v)


def eps_from_v(z_t: Latents, v: Latents, alpha: torch.Tensor | float,
               sigma: torch.Tensor | float) -> Latents:
    """``eps = sigma z_t + alpha v``."""
    return tree_map(lambda z, w: broadcast_to(sigma, z) * z + broadcast_to(alpha, z) * w, z_t, v)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
               ) -> torch.Tensor:
    """Mean squared error over real entries (computed in float32 at least).

    Args:
        pred: (B, N, D) or (B, D).
        target: like ``pred``.
        mask: (B, N) bool for per-atom tensors, None for per-crystal ones.

    Returns:
        Scalar: sum of squared errors over real atoms and channels / their count.
    """
    err = (pred.float() - target.float()).square()  # like pred
    if mask is None:
        return err.mean()  # ()
    m = mask.unsqueeze(-1).to(err.dtype)  # (B, N, 1)
    return (err * m).sum() / (m.sum() * err.shape[-1]).clamp(min=1.0)  # ()
