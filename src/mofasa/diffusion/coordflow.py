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

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mofasa.data.batch import CrystalBatch
from mofasa.data.canonical import BOND_TOL
from mofasa.data.elements import COVALENT_RADII
from mofasa.diffusion.conditions import ConditionBatch, ConditionMix, training_conditions
from mofasa.diffusion.priors import align_translation, harmonic_noise
from mofasa.geometry.lattice_torch import (
    min_image_frac_torch,
    pair_distances_torch,
    wrap_frac_torch,
)
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
        mix: training task shares of a conditional denoiser (`ConditionMix`).
        coupling: how training noise pairs with atoms: ``independent`` (as drawn), or ``ot``
            (within each element of each crystal, the uniform noise points are assigned to
            the atoms by a minimum-cost matching of squared periodic Cartesian distances:
            the marginals are unchanged, but a noise point heads for the nearest unclaimed
            site, so the conditional target is less ambiguous and nearby atoms learn to split
            instead of collapsing onto one site).
        churn: stochastic sampling (as EDM's churn): after each Euler step but the last, the
            free atoms move by Gaussian noise of ``churn * (1 - t)`` Å per axis (0: the
            deterministic ODE).
        refine: corrector steps after the last Euler step: each moves the free atoms onto
            the model's clean prediction at ``refine_t`` from where they are (types and lattice
            stay), one forward each (0: none). Bond lengths are decided there.
        refine_t: the time the corrector steps denoise at.
        restarts: restart sampling (Xu et al. 2023, "Restart sampling"): after the Euler
            steps, the state is noised back to ``restart_t`` the way training noises a clean
            crystal (coordinates, type codes and lattice code, fresh noise) and integrated to
            1 again in ``restart_steps`` Euler steps, this many times (0: none). Unlike the
            corrector steps, the model then sees states of the noise level it was trained at.
        restart_t, restart_steps: the time restarts go back to and their Euler steps.
        coord_weighting: ``uniform`` (every training time's coordinate error counts as is) or
            ``velocity``: weighted by 1 / max(1 - t, velocity_floor)^coord_weight_power (2:
            the velocity error the sampler integrates; 1: halfway to uniform in log weight),
            normalised to mean 1 over the training times. Uniform
            weights leave the nearly clean times, where bond lengths are decided, with ~1/600
            of the gradient of t = 0.1 (their errors are ~0.1 Å against ~4 Å).
        velocity_floor: smallest 1 - t of that weight (its cap is 1 / floor^power).
        coord_weight_power: the power of that weight.
        overlap_weight: weight of a hinge penalty on pairs of the predicted clean structure
            closer than ``max(0.8 Å, 0.7 (r_i + r_j))`` (Cordero radii; no QMOF pair is),
            weighted by t (0: off). Samples otherwise keep collapsing atoms onto one site.
        overlap_bonds_factor: that penalty's multiplier on formula + bonds tasks: told which
            atoms bond but not in which direction, the mean-squared optimum puts an atom on
            its partner (the mean of a sphere is its centre), and sampled bonded pairs
            collapse (93-97% of samples with a pair < 0.8 Å at factor 1).
        contact_weight: weight of a hinge penalty on spurious contacts of the predicted clean
            structure: pairs that the data does not bond (true distance > r_i + r_j +
            BOND_TOL + ``contact_margin``) brought within bonding distance (r_i + r_j +
            BOND_TOL), weighted by t^4 (near-clean times only; 0: off). Samples put 15% of H
            atoms and 9% of C atoms in contact with too many neighbours (QMOF: 0.2% and 0%).
        contact_margin: how far beyond bonding distance a pair must be in the data (Å).
        bond_weight: weight of a bond-length loss on the predicted clean structure: over the
            pairs the data bonds (true distance < r_i + r_j + BOND_TOL), (d_pred - d_true)^2
            per atom, weighted by t^``bond_time_power`` (0: off). Real structures given to the
            near-clean model (the corrector steps) lose ~24 of ~74 valid points, and 15% of
            sampled C-H hydrogens sit 1.2-1.52 Å from their carbon, beyond MOFChecker's 1.2 Å
            cut-off: the coordinate loss scores absolute positions, this scores bonds.
        bond_time_power: the power of t in that weight (near-clean times).
        bond_prior: the coordinate noise of crystals whose bonds are given: ``uniform`` (as
            every other crystal) or ``harmonic`` (`diffusion.priors`: bonded atoms start next
            to each other, Gaussian with the bond graph's Laplacian as precision, each
            component at a uniform position; in training translated onto the clean structure).
            Training and sampling must agree: it is part of the model.
        harmonic_sigma: per-axis standard deviation of a bond vector under that prior (Å).
        input_perturb: training inputs moved off the noising path by a second, independent
            noise draw scaled by this times (1 - t), the target still the clean state (input
            perturbation against exposure bias, Ning et al. 2023, "Input Perturbation Reduces
            Exposure Bias in Diffusion Models"; 0: off). Sampled states leave the training
            path: a contact penalty that held spurious contacts at 0.01 per atom on training
            inputs left 321 of 1,000 samples failing on overcoordinated carbon.
        rollout_share: share of training batches whose inputs the model makes itself
            (against exposure bias, as in multi-step "own-state" training): the crystal is
            noised as usual to the earlier time t' with 1 - t' = (1 + ``rollout_span``)(1 - t)
            (at least 0: noise levels relative, as the sampler's grid is, so near-clean times
            stay near-clean) and carried to its training time t by ``rollout_steps`` of the
            sampler's Euler steps with the current weights, without gradient; the target is
            still the clean state, and the last step's estimate is the self-condition (0: off).
            De novo samples are 1% valid where real structures noised to t = 0.9 restore 48%:
            the sampled states, not the training ones, are where the model fails.
        rollout_span, rollout_steps: how far back a rollout starts (1: at twice the
            remaining noise level 1 - t; one sampler step near t = 1 is x4, mid-way x1.5),
            and its Euler steps.
    """

    time_power: float = 0.5
    t_max: float = 0.999
    type_weight: float = 1.0
    lattice_weight: float = 1.0
    steps: int = 50
    grid_power: float = 2.0
    log_len_mean: float = 0.87
    log_len_std: float = 0.25
    mix: ConditionMix = field(default_factory=ConditionMix)
    overlap_weight: float = 0.0
    overlap_bonds_factor: float = 1.0
    contact_weight: float = 0.0
    contact_margin: float = 0.3
    bond_weight: float = 0.0
    bond_time_power: float = 8.0
    coupling: str = "independent"
    churn: float = 0.0
    refine: int = 0
    refine_t: float = 0.99
    coord_weighting: str = "uniform"
    velocity_floor: float = 0.02
    coord_weight_power: float = 2.0
    restarts: int = 0
    restart_t: float = 0.9
    restart_steps: int = 4
    bond_prior: str = "uniform"
    harmonic_sigma: float = 1.0
    input_perturb: float = 0.0
    rollout_share: float = 0.0
    rollout_span: float = 1.0
    rollout_steps: int = 2

    def __post_init__(self) -> None:
        if self.refine < 0 or not 0 < self.refine_t <= 1:
            raise ValueError(f"refine must be >= 0 and refine_t in (0, 1], got {self}")
        if self.restarts < 0 or not 0 < self.restart_t < 1 or self.restart_steps < 1:
            raise ValueError(f"restarts must be >= 0, restart_t in (0, 1) and restart_steps "
                             f">= 1, got {self}")
        if self.churn < 0 or self.input_perturb < 0:
            raise ValueError(f"churn and input_perturb must be >= 0, got {self.churn}, "
                             f"{self.input_perturb}")
        if min(self.overlap_weight, self.overlap_bonds_factor, self.contact_weight,
               self.contact_margin, self.bond_weight, self.bond_time_power) < 0:
            raise ValueError(f"overlap_weight, overlap_bonds_factor, contact_weight, "
                             f"contact_margin, bond_weight and bond_time_power must be >= 0, "
                             f"got {self}")
        if self.coord_weighting not in ("uniform", "velocity") or not 0 < self.velocity_floor < 1:
            raise ValueError(f"coord_weighting must be 'uniform' or 'velocity' with "
                             f"velocity_floor in (0, 1), got {self}")
        if self.bond_prior not in ("uniform", "harmonic") or self.harmonic_sigma <= 0:
            raise ValueError(f"bond_prior must be 'uniform' or 'harmonic' with harmonic_sigma "
                             f"> 0, got {self.bond_prior!r}, {self.harmonic_sigma}")
        if not (0 <= self.rollout_share <= 1 and self.rollout_span > 0
                and self.rollout_steps >= 1):
            raise ValueError(f"rollout_share must be in [0, 1], rollout_span > 0 and "
                             f"rollout_steps >= 1, got {self.rollout_share}, "
                             f"{self.rollout_span}, {self.rollout_steps}")
        if self.coupling not in ("independent", "ot"):
            raise ValueError(f"coupling must be 'independent' or 'ot', got {self.coupling!r}")
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
        self.register_buffer("radii", torch.as_tensor(COVALENT_RADII, dtype=torch.float32),
                             persistent=False)
        hist = num_atoms_hist if num_atoms_hist is not None else torch.zeros(0, dtype=torch.long)
        self.register_buffer("num_atoms_hist", hist.long(), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def _noised(self, batch: CrystalBatch, t: torch.Tensor
                ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Training's noisy state at times t (B,) and the clean state (no condition)."""
        clean = batch_state(batch, self.codes, self.coder)  # (B,N,3), (B,N,bits), (B,6)
        m = batch.mask.unsqueeze(-1).to(clean[0].dtype)  # (B, N, 1)
        noise = self._training_noise(batch, clean)
        return _interpolate(noise, clean, t.view(-1, 1, 1), m), clean

    def _training_noise(self, batch: CrystalBatch, clean: tuple[torch.Tensor, ...]
                        ) -> tuple[torch.Tensor, ...]:
        """(x0 (B, N, 3) ~ U[0, 1), c0 (B, N, bits), l0 (B, 6)) for the clean state."""
        x1, c1, l1 = clean
        x0 = torch.rand_like(x1)
        if self.config.coupling == "ot":
            x0 = ot_coupled_noise(x0, x1, batch.lattice, batch.atom_types, batch.mask)
        return x0, torch.randn_like(c1), torch.randn_like(l1)

    def _with_bond_prior(self, noise: tuple[torch.Tensor, ...], x1: torch.Tensor,
                         cond: ConditionBatch, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``noise`` with the coordinates of crystals whose bonds ``cond`` gives drawn from the
        harmonic prior (from the same uniform draw) and translated onto their clean ``x1``."""
        x0 = noise[0]
        prior = align_translation(self.bond_prior(x0, cond, mask), x1, mask)
        return (torch.where(prior_rows(cond).view(-1, 1, 1), prior, x0), *noise[1:])

    def bond_prior(self, u: torch.Tensor, cond: ConditionBatch | None, mask: torch.Tensor
                   ) -> torch.Tensor:
        """(B, N, 3) coordinate noise from the uniform draw ``u``: the harmonic prior of the
        given bonds where ``bond_prior`` is harmonic and bonds are given, else ``u``."""
        if cond is None or self.config.bond_prior != "harmonic":
            return u
        n = mask.sum(1).to(u.dtype)  # (B,)
        length = float(np.exp(self.config.log_len_mean)) * n.clamp(min=1).pow(1.0 / 3.0)
        return harmonic_noise(u, cond.bonded, mask, length, self.config.harmonic_sigma)

    @property
    def conditional(self) -> bool:
        return bool(getattr(getattr(self.denoiser, "config", None), "conditional", False))

    def clamp(self, state: tuple[torch.Tensor, ...], cond: ConditionBatch | None,
              n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The state with what the condition gives written in: kept coordinates, fixed
        elements' type codes and a given lattice."""
        x, c, lcode = state
        if cond is None:
            return x, c, lcode
        x = torch.where(cond.keep.unsqueeze(-1), cond.frac.to(x.dtype), x)
        fixed = cond.fixed_types().unsqueeze(-1)  # (B, N, 1)
        c = torch.where(fixed, self.codes[cond.allowed.argmax(-1)].to(c.dtype), c)
        if cond.has_lattice.any():
            given = self.coder.encode(cond.lattice.to(lcode.dtype), n)  # (B, 6)
            lcode = torch.where(cond.has_lattice.unsqueeze(-1), given, lcode)
        return x, c, lcode

    def denoise(self, state: tuple[torch.Tensor, ...], t: torch.Tensor, mask: torch.Tensor,
                cond: ConditionBatch | None = None, guidance: float = 1.0,
                self_cond: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clean-state predictions at time t, with classifier-free guidance when a condition
        is given and ``guidance`` != 1: p_null + w (p_cond - p_null) (the velocity is affine in
        the prediction at a fixed state, so this guides the velocity the same way).
        ``self_cond`` (B, N, 3): the previous clean-coordinate estimate (used by a
        self-conditioning model only; both guidance branches see it)."""
        x, c, lcode = state
        lat = self.coder.decode(lcode, mask.sum(1))
        sc = {"self_cond": self_cond} if self.self_conditioning else {}
        if not self.conditional:
            if cond is not None and not cond.is_null():
                raise ValueError("this model was not trained with conditions")
            return self.denoiser(x, c, lcode, lat, t, mask, **sc)
        inputs = None if cond is None else {
            "allowed": cond.allowed, "features": cond.features(), "hops": cond.hops,
            "keep": cond.keep}
        out = self.denoiser(x, c, lcode, lat, t, mask, cond=inputs, **sc)
        if cond is None or guidance == 1.0:
            return out
        null = self.denoiser(x, c, lcode, lat, t, mask, cond=None, **sc)
        return tuple(u + guidance * (v - u) for u, v in zip(null, out, strict=True))

    @property
    def self_conditioning(self) -> bool:
        return bool(getattr(getattr(self.denoiser, "config", None), "self_condition", False))

    @property
    def optional_parameters(self) -> bool:
        """Whether a training step may leave parameters unused (DDP must look for them)."""
        return self.self_conditioning

    def forward(self, batch: CrystalBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss ``(scalar, metrics)``; a conditional model draws one task per
        structure (`ConditionMix`) and is scored only on what the condition does not give."""
        mask = batch.mask
        B = mask.shape[0]
        u = torch.rand(B, device=mask.device)  # (B,)
        t = u.pow(self.config.time_power) * self.config.t_max  # (B,)
        clean = batch_state(batch, self.codes, self.coder)
        x1, c1, l1 = clean  # (B, N, 3), (B, N, bits), (B, 6)
        noise = self._training_noise(batch, clean)
        cond, tasks = None, []
        if self.conditional:
            cond, tasks = training_conditions(batch.atom_types, x1, batch.lattice, mask,
                                              self.config.mix, None)
            if self.config.bond_prior == "harmonic":  # from the same uniform draw
                noise = self._with_bond_prior(noise, x1, cond, mask)
        m = mask.unsqueeze(-1).to(x1.dtype)  # (B, N, 1)
        share = self.config.rollout_share  # training only (val losses stay comparable); no
        # random draw when off, so old runs replay exactly
        rolled = self.training and share > 0 and torch.rand(()).item() < share
        t_in = self.rollout_start(t) if rolled else t  # (B,)
        state = _interpolate(noise, clean, t_in.view(-1, 1, 1), m)
        if self.config.input_perturb > 0 and not rolled:
            state = _perturbed(state, clean, self.config.input_perturb * (1 - t), m)
        if cond is not None:
            state = self.clamp(state, cond, batch.num_atoms)
        est = None  # self-conditioning: half the batches see a first, gradient-free estimate
        if rolled:
            state, roll_est = self._rollout(state, t_in, t, mask, cond)
        if self.self_conditioning and torch.rand(()).item() < 0.5:
            if rolled:  # the estimate the sampler would pass on
                est = roll_est
            else:
                with torch.no_grad():
                    est = wrap_frac_torch(state[0] + self.denoise(state, t, mask, cond)[0])
        d_hat, c_hat, l_hat = self.denoise(state, t, mask, cond, self_cond=est)
        d_true = min_image_frac_torch(x1 - state[0])  # (B, N, 3)
        err = ((d_hat - d_true).unsqueeze(-2) @ batch.lattice.unsqueeze(1)).squeeze(-2)  # Å
        m_x, m_c = mask, mask
        m_l = torch.ones(B, dtype=torch.bool, device=mask.device)
        if cond is not None:  # given parts are not scored
            m_x, m_c, m_l = mask & ~cond.keep, mask & ~cond.fixed_types(), ~cond.has_lattice
        sq = err.square().sum(-1)  # (B, N) Å^2
        loss_x = _masked_mean(sq, m_x)  # () Å^2 per atom, as logged
        fit_x = loss_x if self.config.coord_weighting == "uniform" else \
            _masked_mean(sq * self.coord_weight(t).unsqueeze(-1), m_x)
        loss_c = _masked_mean((c_hat - c1).square().mean(-1), m_c)  # ()
        loss_l = _masked_mean((l_hat - l1).square().mean(-1), m_l)  # ()
        loss = fit_x + self.config.type_weight * loss_c + self.config.lattice_weight * loss_l
        metrics = {"loss_coord": loss_x, "loss_type": loss_c, "loss_lattice": loss_l}
        if fit_x is not loss_x:
            metrics["loss_coord_weighted"] = fit_x
        d = None  # (B, N, N) Å of the predicted clean structure, shared by the penalties
        cfg = self.config
        if cfg.overlap_weight > 0 or cfg.contact_weight > 0 or cfg.bond_weight > 0:
            d = pair_distances_torch(state[0] + d_hat, batch.lattice)
        data = self._data_pairs(batch, d) if cfg.contact_weight > 0 and cfg.bond_weight > 0 \
            else None  # the true distances and bond cut-offs, once for both terms
        if cfg.overlap_weight > 0:
            factor = [cfg.overlap_bonds_factor if k == "bonds" else 1.0 for k in tasks]
            weight = t * t.new_tensor(factor) if tasks else t  # (B,)
            pen = self._overlap_penalty(d, batch, weight)
            loss = loss + cfg.overlap_weight * pen
            metrics["loss_overlap"] = pen
        if cfg.contact_weight > 0:
            pen = self._contact_penalty(d, batch, t.pow(4), data)
            loss = loss + cfg.contact_weight * pen
            metrics["loss_contact"] = pen
        if cfg.bond_weight > 0:  # scored where the coordinates are
            pen = self._bond_length_loss(d, batch, t.pow(cfg.bond_time_power), m_x, data)
            loss = loss + cfg.bond_weight * pen
            metrics["loss_bond"] = pen
        values = torch.stack([v.detach().float() for v in metrics.values()]).tolist()
        return loss, dict(zip(metrics, values, strict=True))

    def coord_weight(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) velocity weights 1 / max(1 - t, floor)^power over their mean under the
        training time distribution t = u^time_power * t_max (midpoint rule on 4,096 points)."""
        cfg = self.config
        floor, p = cfg.velocity_floor, cfg.coord_weight_power
        mean = _mean_coord_weight(cfg.time_power, cfg.t_max, floor, p)
        return ((1.0 - t).clamp(min=floor).pow(-p) / mean).to(t.dtype)

    def _overlap_penalty(self, d: torch.Tensor, batch: CrystalBatch,
                         weight: torch.Tensor) -> torch.Tensor:
        """sum over pairs of weight_b * relu(d_min - d_ij)^2, ``d`` (B, N, N) the pair
        distances of the predicted clean coordinates (through the true lattice), per atom
        (Å^2); ``weight`` (B,) is t times the task's factor."""
        r = self.radii[batch.atom_types]  # (B, N)
        d_min = (0.7 * (r.unsqueeze(1) + r.unsqueeze(2))).clamp(min=0.8)  # (B, N, N)
        pair = batch.mask.unsqueeze(1) & batch.mask.unsqueeze(2)
        pen = torch.relu(d_min - d).square() * pair * weight.view(-1, 1, 1)
        return pen.sum() / batch.mask.sum().clamp(min=1)

    def _data_pairs(self, batch: CrystalBatch, d: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, N) true pair distances (Å, no gradient, ``d``'s dtype) and bond cut-offs
        r_i + r_j + BOND_TOL: what the contact penalty and the bond-length loss share."""
        with torch.no_grad():
            d_true = pair_distances_torch(batch.frac.to(d.dtype), batch.lattice)
        r = self.radii[batch.atom_types]  # (B, N)
        return d_true, r.unsqueeze(1) + r.unsqueeze(2) + BOND_TOL

    def _contact_penalty(self, d: torch.Tensor, batch: CrystalBatch, weight: torch.Tensor,
                         data: tuple[torch.Tensor, torch.Tensor] | None = None
                         ) -> torch.Tensor:
        """sum over pairs the data does not bond of weight_b * relu(cut_ij - d_ij)^2, ``d``
        (B, N, N) as for the overlap penalty (cut = r_i + r_j + BOND_TOL), per atom (Å^2);
        ``data``: `_data_pairs` where already computed."""
        d_true, cut = data if data is not None else self._data_pairs(batch, d)
        pair = batch.mask.unsqueeze(1) & batch.mask.unsqueeze(2) & \
            (d_true > cut + self.config.contact_margin)
        pen = torch.relu(cut - d).square() * pair * weight.view(-1, 1, 1)
        return pen.sum() / batch.mask.sum().clamp(min=1)

    def _bond_length_loss(self, d: torch.Tensor, batch: CrystalBatch, weight: torch.Tensor,
                          scored: torch.Tensor,
                          data: tuple[torch.Tensor, torch.Tensor] | None = None
                          ) -> torch.Tensor:
        """sum over the data's bonds (i != j, true distance < r_i + r_j + BOND_TOL, atom i
        scored) of weight_b * (d_ij - d_true_ij)^2, ``d`` (B, N, N) as for the overlap penalty,
        per scored atom (Å^2); ``weight`` (B,), ``scored`` (B, N) bool; ``data`` as for the
        contact penalty."""
        d_true, cut = data if data is not None else self._data_pairs(batch, d)
        eye = torch.eye(d.shape[1], dtype=torch.bool, device=d.device)
        bond = scored.unsqueeze(2) & batch.mask.unsqueeze(1) & (d_true < cut) & ~eye
        pen = (d - d_true).square() * bond * weight.view(-1, 1, 1)
        return pen.sum() / scored.sum().clamp(min=1)

    def time_grid(self, steps: int) -> list[float]:
        """t_0 = 0 < ... < t_steps = 1, denser near 1."""
        k = torch.arange(steps + 1, dtype=torch.float64) / steps
        return (1.0 - (1.0 - k).pow(self.config.grid_power)).tolist()

    @torch.no_grad()
    def generate(self, mask: torch.Tensor, ids: list[str | None] | None = None, *,
                 steps: int | None = None, generator: torch.Generator | None = None,
                 noise_fn: Callable[[], tuple[torch.Tensor, ...]] | None = None,
                 cond: ConditionBatch | None = None, guidance: float = 1.0,
                 refine: int | None = None, restarts: int | None = None,
                 diagnostics: dict[str, torch.Tensor] | None = None) -> CrystalBatch:
        """Sample crystals with the atom counts of ``mask`` ((B, N) bool, real atoms first).

        Args:
            mask: (B, N) bool.
            ids: B identifiers.
            steps: Euler steps (default: the config's).
            generator: draws the initial state (unused with ``noise_fn``).
            noise_fn: returns the initial ``(frac (B, N, 3) in [0, 1), type codes
                (B, N, bits), lattice code (B, 6))`` (per-structure reproducible noise); with
                churn, its ``normal((B, N, 3))`` method (if any) draws the step noise.
            cond: conditions (None: unconditional); kept atoms, fixed elements and a given
                lattice are written into the state at every step and into the output.
            guidance: classifier-free guidance scale (1: none).
            refine: corrector steps after the last Euler step (default: the config's).
            restarts: restart passes before the corrector steps (default: the config's).
            diagnostics: if a dict, filled with ``free_types`` (B, N): the elements the
                model's last type prediction decodes to without the condition's restriction,
                and ``kept_drift`` (B,) Å: RMS over kept atoms of the displacement the model
                predicts for them at the last step (how far it would move them if they were
                not held; 0 where none are kept).
        """
        B = mask.shape[0]
        dev = mask.device
        m = mask.unsqueeze(-1).float()  # (B, N, 1)
        cond = cond.to(dev) if cond is not None else None
        x, c, lcode = self._draw_noise(mask, generator, noise_fn, cond)
        x, c = x * m, c * m
        n = mask.sum(1)  # (B,)
        state = self.clamp((x, c, lcode), cond, n)
        grid = self.time_grid(steps or self.config.steps)
        state, c_hat, drift = self._integrate(state, grid, mask, cond, guidance, generator,
                                              noise_fn, diagnostics is not None)
        restarts = self.config.restarts if restarts is None else restarts
        t_r = self.config.restart_t
        sub = [t_r + (1.0 - t_r) * g for g in self.time_grid(self.config.restart_steps)]
        for _ in range(restarts):
            state = self._renoise(state, t_r, mask, cond, generator, noise_fn)
            state, c_hat, drift = self._integrate(state, sub, mask, cond, guidance, generator,
                                                  noise_fn, diagnostics is not None)
        state = self._refine(state, mask, cond, guidance,
                             self.config.refine if refine is None else refine)
        if diagnostics is not None:
            diagnostics["free_types"] = self.decode_types(c_hat, mask)
            diagnostics["kept_drift"] = drift if drift is not None else torch.zeros(B)
        return self._to_batch(*state, mask, ids, cond)

    def _integrate(self, state: tuple[torch.Tensor, ...], grid: list[float],
                   mask: torch.Tensor, cond: ConditionBatch | None, guidance: float,
                   generator: torch.Generator | None, noise_fn: object, want_drift: bool
                   ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor | None]:
        """Euler steps along ``grid``; returns the state, the last type-code prediction and
        (with ``want_drift`` and a condition) the kept atoms' predicted drift at the last step."""
        B = mask.shape[0]
        m = mask.unsqueeze(-1).float()  # (B, N, 1)
        n = mask.sum(1)  # (B,)
        drift = c_hat = est = None
        for t, tn in itertools.pairwise(grid):
            tt = torch.full((B,), t, device=mask.device)
            d_hat, c_hat, l_hat = self.denoise(state, tt, mask, cond, guidance, est)
            est = wrap_frac_torch(state[0] + d_hat) * m  # the next step's self-condition
            if want_drift and cond is not None:
                drift = self._kept_drift(d_hat, state[2], cond, n)
            r = (tn - t) / (1.0 - t)  # the fraction of the remaining way this step covers
            churn = None
            if self.config.churn > 0 and tn < 1.0:
                churn = self._churn(state[0] + r * d_hat, state[2], n, 1.0 - tn, generator,
                                    noise_fn)
            state = self.clamp(_euler_step(state, (d_hat, c_hat, l_hat), r, m, churn), cond, n)
        return state, c_hat, drift

    def rollout_start(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) the times t' < t rollouts start from: 1 - t' = (1 + rollout_span)(1 - t)."""
        return (1 - (1 - t) * (1 + self.config.rollout_span)).clamp(min=0)

    @torch.no_grad()
    def _rollout(self, state: tuple[torch.Tensor, ...], t0: torch.Tensor, t1: torch.Tensor,
                 mask: torch.Tensor, cond: ConditionBatch | None
                 ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """``rollout_steps`` Euler steps from per-crystal times t0 to t1 (B,) with the
        current weights, self-conditioning chained as in sampling; returns the state and the
        last step's clean-coordinate estimate (B, N, 3)."""
        m = mask.unsqueeze(-1).to(state[0].dtype)  # (B, N, 1)
        n, k = mask.sum(1), self.config.rollout_steps
        est = None
        for i in range(k):
            ta, tb = t0 + (t1 - t0) * (i / k), t0 + (t1 - t0) * ((i + 1) / k)  # (B,)
            pred = self.denoise(state, ta, mask, cond, self_cond=est)
            est = wrap_frac_torch(state[0] + pred[0]) * m
            r = (tb - ta) / (1.0 - ta).clamp(min=1e-3)  # (B,)
            state = self.clamp(_euler_step(state, pred, r, m), cond, n)
        return state, est

    def _renoise(self, state: tuple[torch.Tensor, ...], t: float, mask: torch.Tensor,
                 cond: ConditionBatch | None, generator: torch.Generator | None,
                 noise_fn: Callable[[], tuple[torch.Tensor, ...]] | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The (clean) state noised to time ``t`` as in training, from fresh noise (drawn
        like the initial state: ``noise_fn()`` when given); conditions written back in."""
        noise = tuple(v.to(state[0]) for v in self._draw_noise(mask, generator, noise_fn, cond))
        m = mask.unsqueeze(-1).to(state[0].dtype)  # (B, N, 1)
        return self.clamp(_interpolate(noise, state, t, m), cond, mask.sum(1))

    def _draw_noise(self, mask: torch.Tensor, generator: torch.Generator | None,
                    noise_fn: Callable[[], tuple[torch.Tensor, ...]] | None,
                    cond: ConditionBatch | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(frac (B, N, 3), type codes (B, N, bits), lattice code (B, 6))`` on the mask's
        device: ``noise_fn()`` when given, else from ``generator`` (in that order); the
        coordinates ~ U[0, 1), or the harmonic prior of given bonds (`bond_prior`)."""
        if noise_fn is not None:
            x, c, lcode = (v.to(mask.device) for v in noise_fn())
        else:
            B, N = mask.shape
            x = torch.rand(B, N, 3, generator=generator).to(mask.device)
            c = torch.randn(B, N, self.codes.shape[1], generator=generator).to(mask.device)
            lcode = torch.randn(B, 6, generator=generator).to(mask.device)
        return self.bond_prior(x, cond, mask), c, lcode

    def _refine(self, state: tuple[torch.Tensor, ...], mask: torch.Tensor,
                cond: ConditionBatch | None, guidance: float, count: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``count`` corrector steps: x <- wrap(x + d_hat(x, refine_t)), kept atoms held."""
        x, c, lcode = state
        m = mask.unsqueeze(-1).to(x.dtype)  # (B, N, 1)
        tt = torch.full((mask.shape[0],), self.config.refine_t, device=mask.device)
        est = None
        for _ in range(count):
            d_hat = self.denoise((x, c, lcode), tt, mask, cond, guidance, est)[0]
            est = wrap_frac_torch(x + d_hat) * m
            x, c, lcode = self.clamp((est, c, lcode), cond, mask.sum(1))
        return x, c, lcode

    def _churn(self, x: torch.Tensor, lcode: torch.Tensor, n: torch.Tensor, scale: float,
               generator: torch.Generator | None, noise_fn: object) -> torch.Tensor:
        """(B, N, 3) fractional displacement of Gaussian noise of ``churn * scale`` Å."""
        draw = getattr(noise_fn, "normal", None)
        eps = draw(x.shape) if draw is not None else torch.randn(x.shape, generator=generator)
        cart = eps.to(x) * (self.config.churn * scale)  # (B, N, 3) Å
        lat = self.coder.decode(lcode, n)  # (B, 3, 3)
        return (cart.unsqueeze(-2) @ torch.linalg.inv(lat).unsqueeze(1)).squeeze(-2)

    def _kept_drift(self, d_hat: torch.Tensor, lcode: torch.Tensor, cond: ConditionBatch,
                    n: torch.Tensor) -> torch.Tensor:
        """(B,) RMS Å of the predicted displacement over kept atoms (0 without any)."""
        lat = self.coder.decode(lcode, n)  # (B, 3, 3)
        cart = (d_hat.unsqueeze(-2) @ lat.unsqueeze(1)).squeeze(-2)  # (B, N, 3)
        k = cond.keep.to(cart.dtype)
        return ((cart.square().sum(-1) * k).sum(1) / k.sum(1).clamp(min=1)).sqrt()

    def decode_types(self, c: torch.Tensor, mask: torch.Tensor,
                     cond: ConditionBatch | None = None) -> torch.Tensor:
        """(B, N) nearest real element to each type code; within the allowed elements where
        the condition restricts them."""
        codes = self.codes[1:]  # real elements only (token 0 is padding)
        dist = (c.unsqueeze(-2) - codes).square().sum(-1)  # (B, N, 100)
        if cond is not None:
            allowed = cond.allowed[..., 1:] > 0  # (B, N, 100)
            given = allowed.any(-1, keepdim=True)
            dist = torch.where(given & ~allowed, torch.inf, dist)
        return (dist.argmin(-1) + 1) * mask  # (B, N)

    def _to_batch(self, x: torch.Tensor, c: torch.Tensor, lcode: torch.Tensor,
                  mask: torch.Tensor, ids: list[str | None] | None,
                  cond: ConditionBatch | None = None) -> CrystalBatch:
        types = self.decode_types(c, mask, cond)
        n = mask.sum(1)
        return CrystalBatch(atom_types=types.long(), frac=x, lattice=self.coder.decode(lcode, n),
                            mask=mask, num_atoms=n.long(), ids=list(ids or [None] * len(n)))


def prior_rows(cond: ConditionBatch) -> torch.Tensor:
    """(B,) bool: crystals whose bonds are given (the harmonic prior's rows)."""
    return cond.bonded.flatten(1).any(1)


@torch.no_grad()
def ot_coupled_noise(x0: torch.Tensor, x1: torch.Tensor, lattice: torch.Tensor,
                     types: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The noise ``x0`` (B, N, 3) re-assigned to atoms within each element of each crystal by
    a minimum-cost matching (scipy's Hungarian solver) of squared minimum-image Cartesian
    distances to ``x1``; padding and single atoms keep theirs."""
    from scipy.optimize import linear_sum_assignment

    a0, a1 = x0.cpu().double().numpy(), x1.cpu().double().numpy()
    lat, z, m = lattice.cpu().double().numpy(), types.cpu().numpy(), mask.cpu().numpy()
    out = a0.copy()
    for b in range(a0.shape[0]):
        zb = z[b][m[b]]
        for element in np.unique(zb):
            idx = np.flatnonzero(zb == element)
            if len(idx) < 2:
                continue
            d = a1[b, idx][:, None, :] - a0[b, idx][None, :, :]  # (k, k, 3) atom - noise
            d -= np.round(d)
            rows, cols = linear_sum_assignment(np.square(d @ lat[b]).sum(-1))
            out[b, idx[rows]] = a0[b, idx[cols]]
    return torch.from_numpy(out).to(x0)


def _interpolate(noise: tuple[torch.Tensor, ...], clean: tuple[torch.Tensor, ...],
                 t: torch.Tensor | float, m: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The state at time t between ``noise`` and ``clean`` (each (frac, type codes, lattice
    code)): coordinates along the torus geodesic, codes linearly; t is a float or (B, 1, 1);
    ``m`` (B, N, 1) zeroes padding."""
    (x0, c0, l0), (x1, c1, l1) = noise, clean
    tl = t.view(-1, 1) if isinstance(t, torch.Tensor) else t  # (B, 1) for the lattice code
    x = wrap_frac_torch(x0 + t * min_image_frac_torch(x1 - x0)) * m  # (B, N, 3)
    c = ((1 - t) * c0 + t * c1) * m  # (B, N, bits)
    return x, c, (1 - tl) * l0 + tl * l1  # ..., (B, 6)


def _euler_step(state: tuple[torch.Tensor, ...], pred: tuple[torch.Tensor, ...],
                r: torch.Tensor | float, m: torch.Tensor, churn: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, ...]:
    """One step of the sampler: each part moves the fraction ``r`` (a float or (B,)) of the
    way to its clean prediction (coordinates by the predicted displacement on the torus, plus
    ``churn`` (B, N, 3) if given); ``m`` (B, N, 1) zeroes padding."""
    (x, c, lcode), (d_hat, c_hat, l_hat) = state, pred
    rr = r.view(-1, 1, 1) if isinstance(r, torch.Tensor) else r
    x = x + rr * d_hat
    if churn is not None:
        x = x + churn
    rl = rr.view(-1, 1) if isinstance(rr, torch.Tensor) else rr
    return (wrap_frac_torch(x) * m, (c + rr * (c_hat - c)) * m, lcode + rl * (l_hat - lcode))


def _perturbed(state: tuple[torch.Tensor, ...], clean: tuple[torch.Tensor, ...],
               scale: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``state`` moved by ``scale`` (B,) times the displacement of a fresh noise draw from
    ``clean`` (coordinates on the torus, codes linearly), padding zeroed by ``m`` (B, N, 1)."""
    (x, c, lcode), (x1, c1, l1) = state, clean
    g = scale.view(-1, 1, 1)  # (B, 1, 1)
    x = wrap_frac_torch(x + g * min_image_frac_torch(torch.rand_like(x1) - x1)) * m
    c = (c + g * torch.randn_like(c1)) * m
    return x, c, lcode + g.view(-1, 1) * torch.randn_like(l1)


@functools.lru_cache(maxsize=8)
def _mean_coord_weight(time_power: float, t_max: float, floor: float, power: float) -> float:
    """E[max(1 - t, floor)^-power] for t = u^time_power * t_max (computed once per setting,
    not every training step)."""
    u = (torch.arange(4096, dtype=torch.float64) + 0.5) / 4096
    return float((1.0 - u.pow(time_power) * t_max).clamp(min=floor).pow(-power).mean())


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the True entries of ``mask`` (same leading shape)."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1)
