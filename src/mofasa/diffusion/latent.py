"""`LatentDiffusion`: frozen autoencoder + denoiser + schedule + latent statistics.

One ``nn.Module`` serves training and sampling:

* ``forward(batch) -> (loss, metrics)`` (the shared :class:`~mofasa.training.loop.Trainer`
  runs it): the frozen encoder turns the (already translation-augmented) batch into continuous
  latents on the fly, which are normalised per channel with statistics measured on the training
  set (buffers, so they travel in every checkpoint), noised at stratified uniform times and
  regressed with the v-prediction loss; with probability ``self_cond_prob`` a first no-gradient
  pass supplies the self-conditioning estimate;
* ``generate(mask, ...) -> CrystalBatch``: the reverse chain with self-conditioning and
  classifier-free guidance, de-normalisation, and the autoencoder's decoder.

The module reads no files: :mod:`mofasa.training.diffusion` builds and loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext

import torch
from torch import nn

from mofasa.data.batch import CrystalBatch
from mofasa.diffusion.batch import LatentBatch
from mofasa.diffusion.objectives import masked_mse, q_sample, v_target, x0_from_v
from mofasa.diffusion.samplers import denoise_loop, make_sampler
from mofasa.diffusion.schedule import CosineSchedule, DiffusionConfig
from mofasa.models.autoencoder import CrystalAutoencoder
from mofasa.models.denoiser import Denoiser
from mofasa.models.pair_terms import readout_loss

__all__ = ["LatentDiffusion", "latent_statistics"]

Latents = tuple[torch.Tensor, torch.Tensor]  # (Z_L (B, N, D_L), Z_G (B, G))
_MIN_STD = 1e-4  # floor of a channel's std (a collapsed KL channel must not blow up to inf)


@torch.no_grad()
def latent_statistics(autoencoder: CrystalAutoencoder, batches: Iterable[CrystalBatch],
                      max_structures: int | None = None) -> dict[str, torch.Tensor]:
    """Per-channel mean / std of the continuous latents: Z_L over real atoms, Z_G over crystals.

    Args:
        autoencoder: the (frozen) autoencoder.
        batches: training batches on the autoencoder's device (with the training augmentation).
        max_structures: stop after this many structures.

    Returns:
        ``local_mean``, ``local_std`` (D_L,), ``global_mean``, ``global_std`` (G,) float32 on
        the CPU, plus ``num_structures`` and ``num_atoms`` (int64 scalars).
    """
    sums: dict[str, torch.Tensor] = {}
    n_struct, n_atoms = 0, 0
    for batch in batches:
        zl, zg = autoencoder.latents(batch)  # (B, N, D_L), (B, G)
        real = zl[batch.mask].double()  # (A, D_L)
        parts = {"l1": real.sum(0), "l2": real.square().sum(0),
                 "g1": zg.double().sum(0), "g2": zg.double().square().sum(0)}
        for k, v in parts.items():
            sums[k] = sums.get(k, 0) + v.cpu()
        n_struct += batch.batch_size
        n_atoms += int(batch.mask.sum())
        if max_structures is not None and n_struct >= max_structures:
            break
    if n_struct == 0:
        raise ValueError("no training structures to measure latent statistics on")

    def mean_std(s1: torch.Tensor, s2: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        mean = s1 / n  # (C,)
        var = (s2 / n - mean.square()).clamp(min=0.0)  # (C,)
        return mean.float(), var.sqrt().clamp(min=_MIN_STD).float()

    lm, ls = mean_std(sums["l1"], sums["l2"], max(n_atoms, 1))
    gm, gs = mean_std(sums["g1"], sums["g2"], n_struct)
    return {"local_mean": lm, "local_std": ls, "global_mean": gm, "global_std": gs,
            "num_structures": torch.tensor(n_struct), "num_atoms": torch.tensor(n_atoms)}


class LatentDiffusion(nn.Module):
    """Latent diffusion over a frozen autoencoder (see module docstring).

    Args:
        autoencoder: trained autoencoder; frozen here (no gradients, always in eval mode).
        denoiser: the v-prediction network (latent sizes must match the autoencoder's).
        config: schedule / objective / sampling defaults.
        num_atoms_hist: (M + 1,) int64 training counts of structures per atom count (drawn
            from when sampling sizes); not part of the state dict.
    """

    def __init__(self, autoencoder: CrystalAutoencoder, denoiser: Denoiser,
                 config: DiffusionConfig, num_atoms_hist: torch.Tensor | None = None) -> None:
        super().__init__()
        dl, dg = autoencoder.config.latent_dim, autoencoder.config.global_latent_dim
        if (denoiser.config.latent_dim, denoiser.config.global_latent_dim) != (dl, dg):
            raise ValueError("denoiser latent sizes do not match the autoencoder's")
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.denoiser = denoiser
        self.config = config
        self.schedule = CosineSchedule.from_config(config)
        self.register_buffer("local_mean", torch.zeros(dl))
        self.register_buffer("local_std", torch.ones(dl))
        self.register_buffer("global_mean", torch.zeros(dg))
        self.register_buffer("global_std", torch.ones(dg))
        hist = num_atoms_hist if num_atoms_hist is not None else torch.zeros(0, dtype=torch.long)
        self.register_buffer("num_atoms_hist", hist.long(), persistent=False)
        #: optional ``batch -> (B, cond_dim)`` condition for training (formula, bonds, ...)
        self.condition_fn: Callable[[CrystalBatch], torch.Tensor] | None = None

    # ------------------------------------------------------------------------------ helpers
    def train(self, mode: bool = True) -> LatentDiffusion:
        """Set training mode; the frozen autoencoder always stays in eval mode."""
        super().train(mode)
        self.autoencoder.eval()
        return self

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.local_mean.device

    def set_latent_stats(self, stats: dict[str, torch.Tensor]) -> None:
        """Copy ``local_mean`` / ``local_std`` / ``global_mean`` / ``global_std`` in."""
        for key in ("local_mean", "local_std", "global_mean", "global_std"):
            getattr(self, key).copy_(stats[key].to(self.device))

    def latent_stats(self) -> dict[str, torch.Tensor]:
        """The normalisation statistics (CPU copies)."""
        return {k: getattr(self, k).detach().cpu().clone()
                for k in ("local_mean", "local_std", "global_mean", "global_std")}

    def normalize(self, zl: torch.Tensor, zg: torch.Tensor, mask: torch.Tensor) -> Latents:
        """Raw latents -> unit-variance latents (padding rows stay zero)."""
        m = mask.unsqueeze(-1).to(zl.dtype)  # (B, N, 1)
        zl = (zl - self.local_mean) / self.local_std * m  # (B, N, D_L)
        return zl, (zg - self.global_mean) / self.global_std  # (B, N, D_L), (B, G)

    def denormalize(self, zl: torch.Tensor, zg: torch.Tensor, mask: torch.Tensor) -> Latents:
        """Inverse of :meth:`normalize`."""
        m = mask.unsqueeze(-1).to(zl.dtype)  # (B, N, 1)
        zl = (zl * self.local_std + self.local_mean) * m  # (B, N, D_L)
        return zl, zg * self.global_std + self.global_mean  # (B, N, D_L), (B, G)

    @torch.no_grad()
    def encode(self, batch: CrystalBatch) -> Latents:
        """Normalised continuous latents of a batch (frozen encoder, deterministic)."""
        zl, zg = self.autoencoder.latents(batch)  # (B, N, D_L), (B, G)
        return self.normalize(zl.float(), zg.float(), batch.mask)

    # ------------------------------------------------------------------------------ training
    def loss_terms(self, batch: CrystalBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """v-prediction loss on one batch (metrics as detached tensors).

        Returns:
            ``(loss, metrics)`` with ``loss = mse(Z_L) + global_weight * mse(Z_G)``; metrics
            ``loss``, ``loss_local``, ``loss_global``, ``self_cond``.
        """
        mask = batch.mask  # (B, N)
        if isinstance(batch, LatentBatch) and batch.zl is not None:  # from a latent cache
            x0 = self.normalize(batch.zl.float(), batch.zg.float(), mask)  # (B, N, D_L), (B, G)
        else:
            x0 = self.encode(batch)  # (B, N, D_L), (B, G)
        B, dev = mask.shape[0], mask.device
        # stratified times: one uniform offset + B evenly spaced points (lower-variance loss)
        t = (torch.rand((), device=dev) + torch.arange(B, device=dev) / B) % 1.0  # (B,)
        alpha, sigma = (c.float() for c in self.schedule.alpha_sigma(t))  # (B,) x 2
        m = mask.unsqueeze(-1).float()  # (B, N, 1)
        eps = (torch.randn_like(x0[0]) * m, torch.randn_like(x0[1]))  # like x0
        z_t = q_sample(x0, eps, alpha, sigma)  # z_t = alpha x0 + sigma eps
        cond = self.condition_fn(batch) if self.condition_fn is not None else None  # (B, C)
        drop = None
        if cond is not None:  # one dropout draw shared by both passes
            p = self.denoiser.config.cond_drop_prob if self.training else 0.0
            drop = torch.rand(B, device=dev) < p  # (B,)
        sc = None
        use_sc = (self.denoiser.config.self_condition
                  and float(torch.rand(())) < self.config.self_cond_prob)
        if use_sc:  # Chen et al. 2023: the estimate of a first pass, without gradient
            with torch.no_grad():
                v0 = self.denoiser(*z_t, t, mask, cond=cond, drop_cond=drop)
                sc = tuple(x.float().detach() for x in x0_from_v(z_t, v0, alpha, sigma))
        geometry = self.denoiser.config.pair_terms and self.config.geometry_weight > 0
        *v_pred, readout = self.denoiser(*z_t, t, mask, self_cond=sc, cond=cond, drop_cond=drop,
                                         return_readout=True)
        v_true = v_target(x0, eps, alpha, sigma)  # v = alpha eps - sigma x0
        loss_l = masked_mse(v_pred[0], v_true[0], mask)  # ()
        loss_g = masked_mse(v_pred[1], v_true[1])  # ()
        loss = loss_l + self.config.global_weight * loss_g  # ()
        metrics = {"loss": loss.detach(), "loss_local": loss_l.detach(),
                   "loss_global": loss_g.detach(), "self_cond": torch.tensor(float(use_sc))}
        if geometry and readout is not None:  # the readout learns the clean structure
            loss_geo = readout_loss(readout, batch.frac, batch.lattice, mask, alpha)  # ()
            loss = loss + self.config.geometry_weight * loss_geo
            metrics.update(loss=loss.detach(), loss_geometry=loss_geo.detach())
        return loss, metrics

    def forward(self, batch: CrystalBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Training step loss: ``(scalar loss, float metrics)`` (one host sync)."""
        loss, metrics = self.loss_terms(batch)
        values = torch.stack([v.float().reshape(()).to(loss.device)
                              for v in metrics.values()]).tolist()
        return loss, dict(zip(metrics.keys(), values, strict=True))

    # ------------------------------------------------------------------------------ sampling
    def predict_v(self, z: Latents, t: float, mask: torch.Tensor, self_cond: Latents | None,
                  cond: torch.Tensor | None = None, guidance: float = 1.0) -> Latents:
        """Model output at time t, with classifier-free guidance when a condition is given.

        ``v = v_null + w (v_cond - v_null)`` (Ho & Salimans 2022, eq. 6, on v: x0 and eps are
        linear in v at fixed z_t, so this equals guiding either). Without a condition, or with
        w = 1, it is a single conditional (or null) pass: guidance is the identity.
        """
        zl, zg = z  # (B, N, D_L), (B, G)
        B = zl.shape[0]
        tt = torch.full((B,), float(t), device=zl.device)  # (B,)
        if cond is None or guidance == 1.0:
            out = self.denoiser(zl, zg, tt, mask, self_cond=self_cond, cond=cond)
            return out[0].float(), out[1].float()
        two = lambda x: torch.cat([x, x])  # noqa: E731  (both branches in one 2B batch)
        sc = None if self_cond is None else (two(self_cond[0]), two(self_cond[1]))
        drop = torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)])
        vl, vg = self.denoiser(two(zl), two(zg), two(tt), two(mask), self_cond=sc,
                               cond=two(cond), drop_cond=drop.to(zl.device))  # 2B rows
        guide = lambda v: v[B:].float() + guidance * (v[:B].float() - v[B:].float())  # noqa: E731
        return guide(vl), guide(vg)  # (B, N, D_L), (B, G)

    @torch.no_grad()
    def sample_latents(
        self,
        mask: torch.Tensor,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        noise_fn: Callable[[], Latents] | None = None,
        generator: torch.Generator | None = None,
        guidance: float = 1.0,
        cond: torch.Tensor | None = None,
        bf16: bool = False,
    ) -> Latents:
        """Run the reverse chain and return de-normalised latents.

        Args:
            mask: (B, N) bool; row b has its atom count of True entries first.
            steps: model evaluations (default: ``config.steps``).
            sampler: ``"ddim"`` or ``"ddpm"`` (default: ``config.sampler``).
            noise_fn: returns standard normal ``(Z_L, Z_G)`` noise for the batch, called once
                for the start and once per stochastic step (per-structure randomness); None
                draws from ``generator``.
            generator: torch generator used when ``noise_fn`` is None.
            guidance: classifier-free guidance scale w (identity without ``cond``).
            cond: (B, cond_dim) condition or None.
            bf16: run the denoiser under bf16 autocast (CUDA).

        Returns:
            ``(z_local (B, N, D_L), z_global (B, G))`` in the autoencoder's latent space.
        """
        B, N = mask.shape
        dev = mask.device
        dl, dg = self.local_mean.numel(), self.global_mean.numel()
        m = mask.unsqueeze(-1).float()  # (B, N, 1)
        if noise_fn is None:
            def noise_fn() -> Latents:
                return (torch.randn(B, N, dl, generator=generator, device=dev),
                        torch.randn(B, dg, generator=generator, device=dev))
        sampler_obj = make_sampler(sampler or self.config.sampler, self.schedule)
        amp = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else nullcontext()

        def model_fn(z: Latents, t: float, sc: Latents | None) -> Latents:
            with amp:
                return self.predict_v(z, t, mask, sc, cond, guidance)

        def noise() -> Latents:
            zl, zg = noise_fn()
            return zl.to(dev).float() * m, zg.to(dev).float()  # (B, N, D_L), (B, G)

        x0 = denoise_loop(
            model_fn, sampler_obj, noise(), steps or self.config.steps, noise_fn=noise,
            self_condition=self.denoiser.config.self_condition,
            post_step=lambda z: (z[0] * m, z[1]),
        )  # (B, N, D_L), (B, G)
        return self.denormalize(x0[0], x0[1], mask)

    @torch.no_grad()
    def decode(self, zl: torch.Tensor, zg: torch.Tensor, mask: torch.Tensor,
               ids: list[str | None] | None = None) -> CrystalBatch:
        """Latents -> crystals through the autoencoder's decoder (argmax types)."""
        out = self.autoencoder.decode_latents(zl, zg, mask)
        return CrystalAutoencoder.to_batch(out, mask, ids)

    @torch.no_grad()
    def generate(self, mask: torch.Tensor, ids: list[str | None] | None = None,
                 **kwargs: object) -> CrystalBatch:
        """:meth:`sample_latents` then :meth:`decode` (keyword arguments as there)."""
        zl, zg = self.sample_latents(mask, **kwargs)  # (B, N, D_L), (B, G)
        return self.decode(zl, zg, mask, ids)
