"""`Denoiser`: the latent-diffusion network over noisy autoencoder latents (Z_L, Z_G).

Inputs
    noisy per-atom latents z_L (B, N, D_L) and global latent z_G (B, G) (normalised to unit
    variance per channel by the caller), the diffusion time t in [0, 1], the atom mask, and
    optionally (a) the model's own previous clean-latent estimate (self-conditioning, Chen et
    al. 2023 "Analog Bits": concatenated to the noisy input channel-wise, zeros when absent),
    (b) a per-crystal condition vector for classifier-free guidance (Ho & Salimans 2022).

Network
    z_L -> linear (+ linear of z_G broadcast to every atom, + optional order-index embedding:
    the atom's position in the canonical order) -> :class:`~mofasa.models.gns.GNS` with
    all-pairs attention and a global node seeded from z_G. The conditioning vector
    ``c = MLP(sinusoid(t)) + MLP(sinusoid(N)) + [MLP(condition) or learned null embedding]``
    modulates every normalisation through adaLN(-Zero). Zero-initialised heads give the
    v-prediction (same shapes as the inputs; zeros at padding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mofasa.config import load_section, named_configs
from mofasa.models.config import BackboneConfig
from mofasa.models.gns import GNS
from mofasa.models.pair_terms import GeometryReadout, PairBias

__all__ = [
    "Denoiser",
    "DenoiserConfig",
    "denoiser_presets",
    "get_denoiser_preset",
    "timestep_embedding",
]


@dataclass(frozen=True)
class DenoiserConfig:
    """`Denoiser` hyper-parameters.

    Attributes:
        backbone: the GNS stack (``local`` must be ``"dense"``: latents carry no positions).
        latent_dim: channels D_L of Z_L; 0 means "take it from the autoencoder" (resolved
            when the diffusion model is built, and stored resolved in checkpoints).
        global_latent_dim: channels G of Z_G; 0 as above.
        time_embed_dim: sinusoidal features of t (and of the atom count N).
        use_order_embeddings: add an embedding of each atom's index in the canonical order
            (de novo generation: tells otherwise exchangeable atoms apart).
        max_order_index: size of the order-embedding table (larger indices share the last row).
        order_init_std: std of the order embeddings at initialisation. nn.Embedding's N(0, 1)
            made the fixed index code 60-75% of the first layer's input power, and it never
            shrank in training; 0.02 (as for DiT's position tables) lets the latents dominate.
        pair_terms: read positions and lattice from the input (`models.pair_terms`) and add
            relative Fourier + distance-RBF pair terms to every attention layer's logits.
        pair_frequencies, pair_rbf, pair_cutoff: the pair features (per-axis frequencies,
            distance Gaussians, largest centre in Å).
        self_condition: the input also holds the previous clean-latent estimate.
        cond_dim: width of the optional per-crystal condition vector (0: unconditional).
        cond_drop_prob: training probability of replacing the condition by the learned null
            embedding (classifier-free guidance needs both branches).
    """

    backbone: BackboneConfig = field(
        default_factory=lambda: BackboneConfig(width=128, depth=6, heads=4, mlp_ratio=2.0)
    )
    latent_dim: int = 0
    global_latent_dim: int = 0
    time_embed_dim: int = 128
    use_order_embeddings: bool = True
    max_order_index: int = 512
    order_init_std: float = 1.0
    pair_terms: bool = False
    pair_frequencies: int = 4
    pair_rbf: int = 16
    pair_cutoff: float = 8.0
    self_condition: bool = True
    cond_dim: int = 0
    cond_drop_prob: float = 0.1

    def __post_init__(self) -> None:
        if self.backbone.local != "dense":
            raise ValueError("the denoiser backbone must use local='dense' (no positions)")
        if self.latent_dim < 0 or self.global_latent_dim < 0 or self.cond_dim < 0:
            raise ValueError(f"bad latent / condition sizes: {self}")
        if self.time_embed_dim < 2 or self.time_embed_dim % 2:
            raise ValueError("time_embed_dim must be even and >= 2")
        if not 0.0 <= self.cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must lie in [0, 1], got {self.cond_drop_prob}")


def denoiser_presets() -> list[str]:
    """Names of the shipped diffusion presets (``tiny``, ``small``, ``base``)."""
    return named_configs("diffusion")


def get_denoiser_preset(name: str) -> DenoiserConfig:
    """The ``model`` section of the shipped ``diffusion_<name>.yaml`` (latent sizes 0: taken
    from the autoencoder).

    Raises:
        ConfigError: for an unknown name.
    """
    return load_section(DenoiserConfig, "diffusion", name, "model")


def timestep_embedding(x: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features ``[cos(x w_k), sin(x w_k)]`` with w_k = max_period^(-k / (dim/2)).

    Args:
        x: (B,) real values (diffusion time scaled by 1000, or an atom count).
        dim: even output width.
        max_period: slowest period.

    Returns:
        (B, dim) float32 features.
    """
    half = dim // 2
    k = torch.arange(half, device=x.device, dtype=torch.float32)  # (half,)
    freqs = torch.exp(-math.log(max_period) * k / half)  # (half,)
    ang = x.float().unsqueeze(-1) * freqs  # (B, half)
    return torch.cat([ang.cos(), ang.sin()], dim=-1)  # (B, dim)


def _mlp(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.SiLU(), nn.Linear(d_out, d_out))


class Denoiser(nn.Module):
    """v-prediction network over latents (see module docstring).

    Args:
        config: hyper-parameters with ``latent_dim`` and ``global_latent_dim`` resolved (> 0).
    """

    _T_SCALE = 1000.0  # t in [0, 1] -> [0, 1000]: the sinusoid frequencies suit DDPM-style steps

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        c = self.config = config
        if c.latent_dim < 1 or c.global_latent_dim < 1:
            raise ValueError("resolve latent_dim / global_latent_dim (> 0) before building")
        D, k = c.backbone.width, 2 if c.self_condition else 1
        self.in_local = nn.Linear(k * c.latent_dim, D)
        self.in_global_atoms = nn.Linear(k * c.global_latent_dim, D)
        self.in_global = nn.Linear(k * c.global_latent_dim, D)
        self.order_embed = nn.Embedding(c.max_order_index, D) if c.use_order_embeddings else None
        if self.order_embed is not None and c.order_init_std != 1.0:  # 1.0: nn.Embedding's own
            nn.init.normal_(self.order_embed.weight, std=c.order_init_std)
        self.time_embed = _mlp(c.time_embed_dim, D)
        self.size_embed = _mlp(c.time_embed_dim, D)
        if c.cond_dim:
            self.cond_embed = _mlp(c.cond_dim, D)
            # learned "no condition" vector; starts at zero = the unconditional model's input
            self.null_cond = nn.Parameter(torch.zeros(D))
        self.backbone = GNS(c.backbone, cond_dim=D)
        self.readout = self.pair_bias = None
        if c.pair_terms:
            self.readout = GeometryReadout(k * c.latent_dim, k * c.global_latent_dim)
            self.pair_bias = PairBias(c.backbone.heads, c.pair_frequencies, c.pair_rbf,
                                      c.pair_cutoff)
        # final adaLN (shift, scale) of atoms and global node; zero: starts as plain LayerNorm
        self.final_mod = nn.Linear(D, 4 * D)
        self.out_local = nn.Linear(D, c.latent_dim)
        self.out_global = nn.Linear(D, c.global_latent_dim)
        # zero heads: the initial prediction v = 0 means x0_hat = alpha_t z_t, the optimal
        # guess for unit-variance data at high noise, and the first updates are not swamped by
        # random outputs (DiT's adaLN-Zero recipe)
        for layer in (self.final_mod, self.out_local, self.out_global):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def conditioning(
        self,
        t: torch.Tensor,
        mask: torch.Tensor,
        cond: torch.Tensor | None = None,
        drop_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The adaLN conditioning vector from time, atom count and the optional condition.

        Args:
            t: (B,) diffusion times in [0, 1].
            mask: (B, N) bool.
            cond: (B, cond_dim) condition or None (then every crystal gets the null embedding).
            drop_cond: (B,) bool, True replaces the condition by the null embedding; None draws
                it with probability ``cond_drop_prob`` in training mode (never in eval).

        Returns:
            (B, D) conditioning vector.
        """
        dim = self.config.time_embed_dim
        n = mask.sum(1)  # (B,)
        c = self.time_embed(timestep_embedding(t * self._T_SCALE, dim))  # (B, D)
        c = c + self.size_embed(timestep_embedding(n, dim))  # (B, D)
        if not self.config.cond_dim:
            if cond is not None:
                raise ValueError("this denoiser has cond_dim=0 but a condition was given")
            return c  # (B, D)
        null = self.null_cond.to(c.dtype).expand_as(c)  # (B, D)
        if cond is None:
            return c + null  # (B, D)
        if drop_cond is None:
            p = self.config.cond_drop_prob if self.training else 0.0
            drop_cond = torch.rand(c.shape[0], device=c.device) < p  # (B,)
        e = self.cond_embed(cond.to(c.dtype))  # (B, D)
        return c + torch.where(drop_cond.unsqueeze(-1), null, e)  # (B, D)

    def forward(
        self,
        z_local: torch.Tensor,
        z_global: torch.Tensor,
        t: torch.Tensor,
        mask: torch.Tensor,
        *,
        self_cond: tuple[torch.Tensor, torch.Tensor] | None = None,
        cond: torch.Tensor | None = None,
        drop_cond: torch.Tensor | None = None,
        return_readout: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """Predict v for both latents.

        Args:
            z_local: (B, N, D_L) noisy normalised per-atom latents.
            z_global: (B, G) noisy normalised global latents.
            t: (B,) times in [0, 1] (or a scalar, broadcast).
            mask: (B, N) bool, True for real atoms.
            self_cond: previous clean estimate ``(x0_local (B, N, D_L), x0_global (B, G))`` or
                None (zeros; ignored without ``self_condition``).
            cond: (B, cond_dim) condition or None.
            drop_cond: (B,) bool forcing the null condition (see :meth:`conditioning`).
            return_readout: also return the geometry readout (``pair_terms`` models; None
                otherwise), for the auxiliary loss.

        Returns:
            ``(v_local, v_global)``: (B, N, D_L) (zeros at padding) and (B, G) [, readout].
        """
        B, N, _ = z_local.shape
        m = mask.unsqueeze(-1).to(z_local.dtype)  # (B, N, 1)
        t = torch.as_tensor(t, device=z_local.device).float().expand(B)  # (B,)
        if self.config.self_condition:
            sl, sg = self_cond if self_cond is not None else (
                torch.zeros_like(z_local), torch.zeros_like(z_global))  # (B, N, D_L), (B, G)
            z_local = torch.cat([z_local, sl.to(z_local.dtype)], dim=-1)  # (B, N, 2 D_L)
            z_global = torch.cat([z_global, sg.to(z_global.dtype)], dim=-1)  # (B, 2 G)
        h = self.in_local(z_local) + self.in_global_atoms(z_global).unsqueeze(1)  # (B, N, D)
        if self.order_embed is not None:
            idx = torch.arange(N, device=mask.device).clamp(max=self.config.max_order_index - 1)
            h = h + self.order_embed(idx).unsqueeze(0)  # (B, N, D)
        g = self.in_global(z_global)  # (B, D)
        c = self.conditioning(t, mask, cond, drop_cond)  # (B, D)
        readout, bias = self._pair_terms(z_local, z_global, mask)  # once, shared by the layers
        h, g = self.backbone(h * m, g, mask, cond=c, attn_bias=bias)  # (B, N, D), (B, D)
        sh, sc, gsh, gsc = self.final_mod(F.silu(c)).chunk(4, dim=-1)  # 4 x (B, D)
        h = h * (1.0 + sc.unsqueeze(1)) + sh.unsqueeze(1)  # (B, N, D)
        g = g * (1.0 + gsc) + gsh  # (B, D)
        v = (self.out_local(h) * m, self.out_global(g))  # (B, N, D_L), (B, G)
        return (*v, readout) if return_readout else v

    def _pair_terms(self, zl: torch.Tensor, zg: torch.Tensor, mask: torch.Tensor
                    ) -> tuple[tuple[torch.Tensor, ...] | None, torch.Tensor | None]:
        """Geometry read from the input and the (B, H, N, N) pair bias (None without)."""
        if self.readout is None or self.pair_bias is None:
            return None, None
        n = mask.sum(1)  # (B,)
        readout = self.readout(zl.float(), zg.float(), n)  # cos_sin, frac, log_len, angles
        lattice = GeometryReadout.lattice_matrix(readout[2], readout[3], n)  # (B, 3, 3)
        return readout, self.pair_bias(readout[1], lattice).to(zl.dtype)  # (B, H, N, N)
