"""Autoencoder losses: atom types, periodic coordinates, lattice (+ the bottleneck's own term).

All reductions average over real atoms (``mask``) or over crystals; padding never contributes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from mofasa.data.batch import CrystalBatch
from mofasa.geometry.lattice_torch import (
    frac_to_cart_torch,
    min_image_frac_torch,
    scaled_lattice_parameters_torch,
)

if TYPE_CHECKING:  # pragma: no cover
    from mofasa.models.autoencoder import DecoderOutput
    from mofasa.models.config import AutoencoderConfig

__all__ = [
    "autoencoder_loss",
    "masked_mean",
    "periodic_displacement",
]




def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (B, N) over the True entries of ``mask`` (B, N) (0 if none)."""
    m = mask.to(x.dtype)  # (B, N)
    return (x * m).sum() / m.sum().clamp(min=1.0)  # ()


def periodic_displacement(
    pred: torch.Tensor, target: torch.Tensor, lattice: torch.Tensor | None = None
) -> torch.Tensor:
    """Minimum-image displacement from ``target`` to ``pred`` on the torus.

    Args:
        pred: (B, N, 3) fractional coordinates.
        target: (B, N, 3) fractional coordinates.
        lattice: optional (B, 3, 3) row-vector lattice; if given the result is Cartesian (Å).
            (The minimum image is taken per fractional axis, exact for the near-orthogonal
            cells of the canonical form and an upper bound otherwise.)

    Returns:
        (B, N, 3) displacement, fractional or in Å.
    """
    d = min_image_frac_torch(pred - target)  # (B, N, 3)
    return d if lattice is None else frac_to_cart_torch(d, lattice.to(d.dtype))  # (B, N, 3)


def autoencoder_loss(
    out: DecoderOutput,
    batch: CrystalBatch,
    config: AutoencoderConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted reconstruction loss of one decoded batch (without the bottleneck term).

    * types: cross-entropy over real atoms;
    * coordinates (summed over the three axes, averaged over real atoms), either
      ``coord_loss="chord"``: ``(l_a / 2 pi)^2 |v_a - (cos, sin)(2 pi x_a)|^2`` with the
      predicted (cos, sin) vector ``v_a`` of axis a and the true length ``l_a`` (Å^2;
      ``coord_loss_space="frac"`` drops ``l_a``). It is wrap-aware, equals the squared
      minimum-image error ``(l_a dx_a)^2`` to second order when ``|v_a| = 1``, and is a
      convex quadratic in ``v`` (no atan2 in the loss), which trains much faster and more
      stably than the alternative
      ``coord_loss="min_image"``: the squared minimum-image error of the atan2 coordinates,
      Cartesian through the true lattice (``"angstrom"``) or fractional;
      plus ``coord_norm_weight * (|v| - 1)^2`` on the (cos, sin) vectors;
    * lattice: Huber (smooth L1, ``lattice_huber_beta``) error of ``log(length / N^(1/3))``
      plus that of the angles in radians (targets clamped into the open prediction range), each
      averaged over the crystals and 3 parameters. Near zero it behaves like L1, so the
      gradient does not vanish: a 1 % length error still moves atoms by ~0.1 Å.

    Args:
        out: decoder output for ``batch``.
        batch: the (possibly translated) input batch, i.e. the targets.
        config: loss weights and settings.

    Returns:
        ``(loss, metrics)``: scalar and detached scalar tensors ``type_loss``, ``type_acc``,
        ``type_all_correct`` (fraction of crystals with every type right), ``coord_loss``,
        ``coord_rmsd`` (Å, periodic), ``coord_mae_frac``, ``coord_norm``, ``lattice_loss``,
        ``length_mae`` (Å), ``angle_mae`` (deg).
    """
    mask = batch.mask  # (B, N)
    types = batch.atom_types  # (B, N)
    logits = out.type_logits  # (B, N, T)
    ce = F.cross_entropy(logits.transpose(1, 2).float(), types, reduction="none")  # (B, N)
    type_loss = masked_mean(ce, mask)  # ()
    correct = (logits.argmax(-1) == types) | ~mask  # (B, N)
    type_acc = masked_mean(correct.float(), mask)  # ()
    all_correct = correct.all(dim=1).float().mean()  # ()

    frac_t = batch.frac.to(out.frac.dtype)  # (B, N, 3)
    lat_t = batch.lattice.to(out.frac.dtype)  # (B, 3, 3)
    d_frac = periodic_displacement(out.frac, frac_t)  # (B, N, 3)
    d_cart = frac_to_cart_torch(d_frac, lat_t)  # (B, N, 3) Å
    sq_cart = d_cart.square().sum(-1)  # (B, N)
    if config.coord_loss == "chord":
        ang = 2.0 * math.pi * frac_t  # (B, N, 3)
        unit = torch.stack([ang.cos(), ang.sin()], dim=-1)  # (B, N, 3, 2) target (cos, sin)
        chord = (out.coord_vectors - unit).square().sum(-1) / (2.0 * math.pi) ** 2  # (B, N, 3)
        if config.coord_loss_space == "angstrom":
            chord = chord * lat_t.norm(dim=-1).square().unsqueeze(1)  # (B, N, 3) Å^2
        sq = chord.sum(-1)  # (B, N)
    elif config.coord_loss_space == "angstrom":
        sq = sq_cart  # (B, N)
    else:
        sq = d_frac.square().sum(-1)  # (B, N)
    norm = out.coord_vectors.norm(dim=-1)  # (B, N, 3)
    norm_pen = masked_mean((norm - 1.0).square().mean(-1), mask)  # ()
    coord_loss = masked_mean(sq, mask) + config.coord_norm_weight * norm_pen  # ()

    num_atoms = mask.sum(1)  # (B,)
    log_len_t, len_t, ang_t = scaled_lattice_parameters_torch(lat_t, num_atoms)  # (B, 3) x 3
    eps = 1e-3  # degrees
    ang_t_c = ang_t.clamp(config.angle_min + eps, config.angle_max - eps)  # (B, 3)
    beta = config.lattice_huber_beta  # float
    len_err = F.smooth_l1_loss(out.log_scaled_lengths, log_len_t, beta=beta)  # ()
    ang_err = F.smooth_l1_loss(torch.deg2rad(out.angles), torch.deg2rad(ang_t_c), beta=beta)  # ()
    lattice_loss = len_err + ang_err  # ()

    loss = (
        config.type_weight * type_loss
        + config.coord_weight * coord_loss
        + config.lattice_weight * lattice_loss
    )  # ()
    metrics = {
        "type_loss": type_loss,
        "type_acc": type_acc,
        "type_all_correct": all_correct,
        "coord_loss": coord_loss,
        "coord_rmsd": masked_mean(sq_cart, mask).sqrt(),
        "coord_mae_frac": masked_mean(d_frac.abs().mean(-1), mask),
        "coord_norm": masked_mean(norm.mean(-1), mask),
        "lattice_loss": lattice_loss,
        "length_mae": (out.lengths - len_t).abs().mean(),
        "angle_mae": (out.angles - ang_t).abs().mean(),
    }
    return loss, {k: v.detach() for k, v in metrics.items()}

