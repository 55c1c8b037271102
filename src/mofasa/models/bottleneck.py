"""Latent bottlenecks: none, diagonal-Gaussian KL, and residual vector quantisation (RVQ).

All three share one interface: ``forward(x, mask)`` takes the encoder head's output ``x``
(..., in_dim) with an optional (...) bool mask of valid rows (padding atoms), and returns a
:class:`BottleneckOutput` whose ``z`` is what the decoder consumes and whose ``continuous`` is
the continuous latent that the diffusion stage models (``none``: z itself; ``kl``: the mean;
``rvq``: the pre-quantisation vector). :meth:`Bottleneck.from_continuous` maps such a continuous
latent (e.g. a diffusion sample) to the decoder input (``rvq`` quantises it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from mofasa.models.config import BottleneckConfig

__all__ = [
    "Bottleneck",
    "BottleneckOutput",
    "GaussianBottleneck",
    "IdentityBottleneck",
    "ResidualVQ",
    "kl_divergence",
    "make_bottleneck",
]


@dataclass
class BottleneckOutput:
    """Result of a bottleneck.

    Attributes:
        z: (..., dim) latent for the decoder (sampled / quantised; straight-through for rvq).
        continuous: (..., dim) continuous latent for the diffusion stage.
        loss: scalar, already weighted (KL or commitment), averaged over valid rows.
        metrics: detached scalar tensors (names without prefix).
        codes: (..., num_codebooks) int64 code indices (rvq only; -1 at masked rows).
    """

    z: torch.Tensor
    continuous: torch.Tensor
    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    codes: torch.Tensor | None = None


def _valid(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(M, C) rows of ``x`` (..., C) where ``mask`` (...) is True (all rows without a mask)."""
    return x.reshape(-1, x.shape[-1]) if mask is None else x[mask]


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over the last axis.

    Args:
        mean: (..., D).
        logvar: (..., D) log-variances.

    Returns:
        (...) non-negative; exactly zero for ``mean = 0, logvar = 0``.
    """
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum(-1)


class Bottleneck(nn.Module):
    """Base class. ``in_dim``: channels the encoder head must produce; ``dim``: latent width."""

    in_dim: int
    dim: int

    def from_continuous(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder input from a continuous latent (identity unless quantising).

        Args:
            z: (..., dim) continuous latent.
            mask: optional (...) bool valid rows.

        Returns:
            (..., dim) decoder input.
        """
        return z


class IdentityBottleneck(Bottleneck):
    """``none``: a plain deterministic autoencoder latent."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.in_dim = self.dim = dim

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, *, deterministic: bool = False
    ) -> BottleneckOutput:
        """Pass through.

        Args:
            x: (..., dim).
            mask: unused.
            deterministic: unused.

        Returns:
            ``z = continuous = x`` and a zero loss.
        """
        return BottleneckOutput(x, x, x.new_zeros(()))  # (..., dim) twice, ()


class GaussianBottleneck(Bottleneck):
    """``kl``: ``x = [mean, logvar]``; reparameterised sample in training, the mean otherwise.

    Args:
        dim: latent width (the encoder head produces ``2 * dim``).
        kl_weight: weight of the KL term in ``loss``.
    """

    def __init__(self, dim: int, kl_weight: float) -> None:
        super().__init__()
        self.in_dim, self.dim = 2 * dim, dim
        self.kl_weight = kl_weight

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, *, deterministic: bool = False
    ) -> BottleneckOutput:
        """Sample (or take the mean) and compute the KL.

        Args:
            x: (..., 2 * dim) mean and log-variance.
            mask: optional (...) bool valid rows (the KL averages over them).
            deterministic: return the mean instead of a sample.

        Returns:
            :class:`BottleneckOutput` with ``continuous`` = the mean.
        """
        mean, logvar = x.chunk(2, dim=-1)  # (..., dim) x 2
        logvar = logvar.clamp(-30.0, 20.0)  # (..., dim)
        noise = torch.zeros_like(mean) if deterministic else torch.randn_like(mean)  # (..., dim)
        z = mean + noise * (0.5 * logvar).exp()  # (..., dim)
        kl_rows = _valid(kl_divergence(mean, logvar).unsqueeze(-1), mask)  # (M, 1)
        kl = kl_rows.mean() if kl_rows.numel() else x.new_zeros(())  # ()
        metrics = {
            "kl": kl.detach(),
            "std": _valid((0.5 * logvar).exp(), mask).mean().detach(),
            "mean_abs": _valid(mean, mask).abs().mean().detach(),
        }
        return BottleneckOutput(z, mean, self.kl_weight * kl, metrics)  # (..., dim) x 2, ()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class ResidualVQ(Bottleneck):
    """``rvq``: residual vector quantisation with EMA codebooks and dead-code restarts.

    Stage q quantises the residual ``r_q = x - sum_{p<q} e_p`` to its nearest codeword ``e_q``
    of codebook q; the output ``sum_q e_q`` reaches the encoder with straight-through gradients
    ``x + (sum_q e_q - x).detach()``. Codebooks are buffers updated by exponential moving
    averages of the assigned residuals (k-means in expectation; Laplace-smoothed counts), not by
    gradients; the loss is the commitment term ``sum_q |r_q - sg(e_q)|^2``. A code whose EMA
    count drops below ``dead_code_threshold`` is restarted from a random residual of the current
    batch (this also initialises all codes from data on the first training step). Under
    ``torch.distributed`` the statistics are all-reduced and restarts broadcast from rank 0.

    Args:
        dim: latent width (= ``in_dim``).
        config: bottleneck settings (``num_codebooks``, ``codebook_size``, ...).
    """

    def __init__(self, dim: int, config: BottleneckConfig) -> None:
        super().__init__()
        self.in_dim = self.dim = dim
        self.num_codebooks = Q = config.num_codebooks
        self.codebook_size = K = config.codebook_size
        self.commitment_weight = config.commitment_weight
        self.decay = config.ema_decay
        self.threshold = config.dead_code_threshold
        self.eps = config.eps
        self.register_buffer("embed", torch.randn(Q, K, dim) / math.sqrt(dim))
        # count 1 and sum = codeword: unused codes keep their value under the EMA (not 0 / eps)
        self.register_buffer("cluster_size", torch.ones(Q, K))
        self.register_buffer("embed_sum", self.embed.clone())

    # -------------------------------------------------------------------------------- helpers
    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Nearest-codeword residual quantisation of flat vectors (no gradients, no updates).

        Args:
            x: (M, dim) vectors.

        Returns:
            ``(quantised, codes, residuals)``: (M, dim) sum of selected codewords,
            (M, Q) int64 indices and (Q, M, dim) residual entering each stage.
        """
        x = x.detach().to(self.embed.dtype)  # (M, dim)
        residual = x  # (M, dim)
        quantised = torch.zeros_like(x)  # (M, dim)
        codes, residuals = [], []
        for q in range(self.num_codebooks):
            emb = self.embed[q]  # (K, dim)
            d2 = (
                residual.square().sum(-1, keepdim=True)
                - 2.0 * residual @ emb.T
                + emb.square().sum(-1)
            )  # (M, K)
            idx = d2.argmin(dim=-1)  # (M,)
            chosen = emb[idx]  # (M, dim)
            residuals.append(residual)
            codes.append(idx)
            quantised = quantised + chosen  # (M, dim)
            residual = residual - chosen  # (M, dim)
        empty = x.new_zeros(0, x.shape[0], self.dim)  # (0, M, dim)
        stacked = torch.stack(residuals) if residuals else empty  # (Q, M, dim)
        return quantised, torch.stack(codes, dim=-1), stacked  # (M, dim), (M, Q), (Q, M, dim)

    @torch.no_grad()
    def _ema_update(self, codes: torch.Tensor, residuals: torch.Tensor) -> list[int]:
        """EMA k-means step and dead-code restarts.

        Args:
            codes: (M, Q) selected indices.
            residuals: (Q, M, dim) residual entering each stage.

        Returns:
            Number of restarted codes per codebook.
        """
        K = self.codebook_size
        restarts = [0] * self.num_codebooks
        for q in range(self.num_codebooks):
            idx, r = codes[:, q], residuals[q]  # (M,), (M, dim)
            counts = torch.bincount(idx, minlength=K).to(self.cluster_size.dtype)  # (K,)
            sums = torch.zeros_like(self.embed_sum[q]).index_add_(0, idx, r)  # (K, dim)
            if _distributed():
                dist.all_reduce(counts)
                dist.all_reduce(sums)
            self.cluster_size[q].mul_(self.decay).add_(counts, alpha=1.0 - self.decay)  # (K,)
            self.embed_sum[q].mul_(self.decay).add_(sums, alpha=1.0 - self.decay)  # (K, dim)
            n = self.cluster_size[q].sum()  # ()
            smoothed = (self.cluster_size[q] + self.eps) / (n + K * self.eps) * n  # (K,)
            self.embed[q].copy_(self.embed_sum[q] / smoothed.clamp(min=self.eps).unsqueeze(-1))
            if self.threshold > 0:
                dead = self.cluster_size[q] < self.threshold  # (K,)
                num_dead = int(dead.sum())
                if num_dead and r.shape[0] > 0:
                    restarts[q] = num_dead
                    pick = torch.randint(r.shape[0], (num_dead,), device=r.device)  # (num_dead,)
                    self.embed[q][dead] = r[pick]
                    self.embed_sum[q][dead] = r[pick] * self.threshold
                    self.cluster_size[q][dead] = self.threshold
                if _distributed():
                    for buf in (self.embed, self.embed_sum, self.cluster_size):
                        dist.broadcast(buf, src=0)
        return restarts

    # -------------------------------------------------------------------------------- forward
    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, *, deterministic: bool = False
    ) -> BottleneckOutput:
        """Quantise (and, in training mode, update the codebooks).

        Args:
            x: (..., dim) continuous pre-quantisation latent.
            mask: optional (...) bool valid rows (padding is neither quantised nor counted).
            deterministic: unused (quantisation is deterministic).

        Returns:
            :class:`BottleneckOutput`; ``z`` equals the sum of the selected codewords at valid
            rows (x itself at masked rows) with straight-through gradients to ``x``;
            ``codes`` (..., Q). Metrics ``usage_q`` (fraction of codes used in the batch),
            ``perplexity_q`` (exp entropy of the batch code histogram), ``restarted_q``
            (training only: fraction of codes restarted this step) and ``commit``.
        """
        shape = x.shape[:-1]  # (...)
        valid = torch.ones(shape, dtype=torch.bool, device=x.device) if mask is None else mask
        with torch.autocast(device_type=x.device.type, enabled=False):
            flat = x[valid].to(self.embed.dtype)  # (M, dim) differentiable
            quantised, codes, residuals = self.quantize(flat)  # (M, dim), (M, Q), (Q, M, dim)
            # commitment: each stage's residual (with gradient to x) towards its codeword
            commit = flat.new_zeros(())  # ()
            partial = torch.zeros_like(flat)  # (M, dim) sum of earlier codewords (constant)
            for q in range(self.num_codebooks):
                chosen = self.embed[q][codes[:, q]]  # (M, dim)
                if flat.shape[0]:
                    commit = commit + (flat - partial - chosen).square().sum(-1).mean()  # ()
                partial = partial + chosen  # (M, dim)
            metrics: dict[str, torch.Tensor] = {"commit": commit.detach()}
            for q in range(self.num_codebooks):
                hist = torch.bincount(codes[:, q], minlength=self.codebook_size).float()  # (K,)
                p = hist / hist.sum().clamp(min=1.0)  # (K,)
                entropy = -(p * p.clamp(min=1e-12).log()).sum()  # ()
                metrics[f"usage_{q}"] = (hist > 0).float().mean()
                metrics[f"perplexity_{q}"] = entropy.exp()
            restarts = self._ema_update(codes, residuals) if self.training else []  # list[int]
            for q, count in enumerate(restarts):
                metrics[f"restarted_{q}"] = flat.new_tensor(count / self.codebook_size)
        z_flat = flat + (quantised - flat).detach()  # (M, dim) straight-through
        z = x.clone()  # (..., dim)
        z[valid] = z_flat.to(x.dtype)
        all_codes = torch.full((*shape, self.num_codebooks), -1, dtype=torch.int64, device=x.device)
        all_codes[valid] = codes  # (..., Q)
        loss = self.commitment_weight * commit  # ()
        return BottleneckOutput(z, x, loss.to(x.dtype), metrics, all_codes)  # (..., dim) x 2, ()

    def from_continuous(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Quantise a continuous latent (e.g. a diffusion sample) for the decoder.

        Args:
            z: (..., dim) continuous latent.
            mask: optional (...) bool valid rows (others pass through unchanged).

        Returns:
            (..., dim) sum of the selected codewords at valid rows.
        """
        valid = mask if mask is not None else z.new_ones(z.shape[:-1], dtype=torch.bool)  # (...)
        out = z.clone()  # (..., dim)
        out[valid] = self.quantize(z[valid])[0].to(z.dtype)  # (M, dim)
        return out  # (..., dim)


def make_bottleneck(config: BottleneckConfig, dim: int) -> Bottleneck:
    """The bottleneck selected by ``config.kind`` for a latent of width ``dim``."""
    if config.kind == "none":
        return IdentityBottleneck(dim)
    if config.kind == "kl":
        return GaussianBottleneck(dim, config.kl_weight)
    return ResidualVQ(dim, config)
