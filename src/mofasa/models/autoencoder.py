"""`CrystalAutoencoder`: crystal (types, fractional coordinates, lattice) <-> latents (Z_L, Z_G).

Encoder
    atom-type embedding + periodic Fourier features of the *absolute* fractional coordinates
    (sin / cos of 2 pi k x for integer k, so features are periodic and a translated input gives
    different latents that decode to the translated crystal) -> :class:`~mofasa.models.gns.GNS`
    over the periodic k-NN graph (edge features: Gaussian RBF of distances) whose global node is
    seeded with, and at every layer reads, the lattice features ``log(length / N^(1/3))``,
    ``cos(angles)`` and ``log N``. Everything the encoder sees is invariant to rotating the
    Cartesian frame and equivariant to permuting atoms. Heads give Z_L (B, N, D_L) and
    Z_G (B, G), which pass through the bottleneck (:mod:`mofasa.models.bottleneck`).

Decoder
    Z_L (+ Z_G broadcast, + optional order-index embeddings) -> all-pairs GNS (no positions in)
    -> atom-type logits (the padding class is never predicted), fractional coordinates as
    ``atan2`` of a predicted (cos, sin) pair per axis (always in [0, 1) and smooth on the torus),
    and from the global node the lattice: lengths ``exp(raw + offset) * N^(1/3)`` (positive) and
    angles ``angle_min + (angle_max - angle_min) * sigmoid(raw)`` (a valid cell for the default
    open range (60, 120) degrees), rebuilt in the standard orientation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from mofasa.data.batch import CrystalBatch
from mofasa.data.elements import NUM_TOKENS, PAD_TOKEN
from mofasa.geometry.graphs import PeriodicGraph, knn_graph_pbc_batch
from mofasa.geometry.lattice_torch import (
    lattice_from_parameters_torch,
    scaled_lattice_parameters_torch,
    wrap_frac_torch,
)
from mofasa.models.bottleneck import make_bottleneck
from mofasa.models.config import AutoencoderConfig
from mofasa.models.gns import GNS
from mofasa.models.losses import autoencoder_loss

__all__ = [
    "CrystalAutoencoder",
    "DecoderOutput",
    "EncoderOutput",
    "GaussianRBF",
    "lattice_features",
    "periodic_fourier_features",
    "translate_batch",
]

_PAD_LOGIT = -1e4  # finite (bf16 / fp16 safe) logit of the padding class for real atoms


def _full_precision(like: torch.Tensor) -> torch.autocast:
    """Context that switches autocast off (inputs / outputs keep the parameters' dtype)."""
    return torch.autocast(device_type=like.device.type, enabled=False)




# ---------------------------------------------------------------------------------- features
def periodic_fourier_features(frac: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """sin / cos(2 pi k x) of every fractional coordinate for each integer frequency k.

    Args:
        frac: (B, N, 3) fractional coordinates.
        frequencies: (F,) integer-valued frequencies.

    Returns:
        (B, N, 6 F) features, periodic with period 1 in every coordinate.
    """
    ang = 2.0 * math.pi * frac.unsqueeze(-1) * frequencies.to(frac.dtype)  # (B, N, 3, F)
    feats = torch.cat([ang.sin(), ang.cos()], dim=-1)  # (B, N, 3, 2F)
    return feats.flatten(-2)  # (B, N, 6F)


def lattice_features(
    lattice: torch.Tensor, num_atoms: torch.Tensor, log_length_offset: float = 0.0
) -> torch.Tensor:
    """Rotation-invariant lattice descriptors.

    Args:
        lattice: (B, 3, 3) row-vector lattice in Å.
        num_atoms: (B,) atom counts.
        log_length_offset: subtracted from ``log(length / N^(1/3))`` (centring).

    Returns:
        (B, 7): ``log(length / N^(1/3)) - offset`` (3), ``cos(alpha, beta, gamma)`` (3),
        ``log(N) / 5`` (1).
    """
    log_len, _, angles = scaled_lattice_parameters_torch(lattice, num_atoms)  # (B, 3) x 2
    n = num_atoms.to(lattice.dtype).clamp(min=1.0).unsqueeze(-1)  # (B, 1)
    cos = torch.cos(torch.deg2rad(angles))  # (B, 3)
    return torch.cat([log_len - log_length_offset, cos, n.log() / 5.0], dim=-1)  # (B, 7)


def translate_batch(batch: CrystalBatch, shift: torch.Tensor) -> CrystalBatch:
    """Shift every crystal by a fractional translation (wrapped into [0, 1); padding stays 0).

    Args:
        batch: input batch.
        shift: (B, 3) fractional translations.

    Returns:
        A new :class:`CrystalBatch` (same types, lattice and mask).
    """
    m = batch.mask.unsqueeze(-1).to(batch.frac.dtype)  # (B, N, 1)
    frac = wrap_frac_torch(batch.frac + shift.to(batch.frac.dtype).unsqueeze(1)) * m  # (B, N, 3)
    return CrystalBatch(
        batch.atom_types, frac, batch.lattice, batch.mask, batch.num_atoms, list(batch.ids)
    )


class GaussianRBF(nn.Module):
    """Gaussian radial basis of distances: ``exp(-((d - mu_k) / w)^2)``, mu_k in [0, cutoff].

    Args:
        size: number of basis functions.
        cutoff: largest centre in Å.
    """

    def __init__(self, size: int, cutoff: float) -> None:
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, cutoff, size), persistent=False)
        self.width = cutoff / max(size - 1, 1)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        """(E,) distances in Å -> (E, size) features."""
        diff = d.unsqueeze(-1) - self.centers.to(d.dtype)  # (E, size)
        return torch.exp(-((diff / self.width) ** 2))  # (E, size)


# ---------------------------------------------------------------------------------- outputs
@dataclass
class EncoderOutput:
    """Encoder + bottleneck result.

    Attributes:
        z_local: (B, N, D_L) decoder input per atom (sampled / quantised; zeros at padding).
        z_global: (B, G) decoder input per crystal.
        z_local_continuous: (B, N, D_L) continuous latent for diffusion (KL mean, RVQ
            pre-quantisation vector, or z itself; zeros at padding).
        z_global_continuous: (B, G).
        mask: (B, N) bool.
        loss: weighted bottleneck loss (scalar; local + global).
        metrics: detached scalars, prefixed ``local_`` / ``global_``.
        codes_local: (B, N, Q) RVQ codes (-1 at padding) or None.
        codes_global: (B, Q) RVQ codes or None.
    """

    z_local: torch.Tensor
    z_global: torch.Tensor
    z_local_continuous: torch.Tensor
    z_global_continuous: torch.Tensor
    mask: torch.Tensor
    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    codes_local: torch.Tensor | None = None
    codes_global: torch.Tensor | None = None


@dataclass
class DecoderOutput:
    """Decoder predictions.

    Attributes:
        type_logits: (B, N, NUM_TOKENS); the padding class has a constant -1e4 logit.
        frac: (B, N, 3) fractional coordinates in [0, 1) (zeros at padding).
        coord_vectors: (B, N, 3, 2) unnormalised (cos, sin) per axis.
        log_scaled_lengths: (B, 3) ``log(length / N^(1/3))``.
        lengths: (B, 3) Å.
        angles: (B, 3) degrees, inside (angle_min, angle_max).
    """

    type_logits: torch.Tensor
    frac: torch.Tensor
    coord_vectors: torch.Tensor
    log_scaled_lengths: torch.Tensor
    lengths: torch.Tensor
    angles: torch.Tensor


# ---------------------------------------------------------------------------------- model
class CrystalAutoencoder(nn.Module):
    """All-atom crystal autoencoder (see module docstring).

    Args:
        config: hyper-parameters (:class:`~mofasa.models.config.AutoencoderConfig`).
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = c = config
        de, dd = c.encoder.width, c.decoder.width
        freqs = torch.tensor([float(k) for k in c.fourier_frequencies])
        self.register_buffer("frequencies", freqs, persistent=False)
        # encoder
        self.type_embed = nn.Embedding(NUM_TOKENS, de, padding_idx=PAD_TOKEN)
        self.pos_embed = nn.Linear(6 * len(c.fourier_frequencies), de)
        self.lattice_embed = nn.Sequential(nn.Linear(7, de), nn.SiLU(), nn.Linear(de, de))
        self.rbf = GaussianRBF(c.rbf_size, c.rbf_cutoff)
        self.encoder = GNS(c.encoder, edge_dim=c.rbf_size, context_dim=7)
        self.bottleneck_local = make_bottleneck(c.bottleneck, c.latent_dim)
        self.bottleneck_global = make_bottleneck(c.bottleneck, c.global_latent_dim)
        self.local_head = nn.Linear(de, self.bottleneck_local.in_dim)
        self.global_head = nn.Linear(de, self.bottleneck_global.in_dim)
        # decoder
        self.dec_local = nn.Linear(c.latent_dim, dd)
        self.dec_global_atoms = nn.Linear(c.global_latent_dim, dd)
        self.dec_global = nn.Linear(c.global_latent_dim, dd)
        self.order_embed = (
            nn.Embedding(c.max_order_index, dd) if c.use_order_embeddings else None
        )
        self.decoder = GNS(c.decoder)
        self.type_head = nn.Linear(dd, NUM_TOKENS - 1)
        self.coord_head = nn.Linear(dd, 6)
        self.lattice_head = nn.Linear(dd, 6)
        nn.init.zeros_(self.lattice_head.weight)
        nn.init.zeros_(self.lattice_head.bias)  # starts at exp(offset) N^(1/3) and 90 degrees

    # ------------------------------------------------------------------------------ helpers
    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the parameters."""
        return self.type_embed.weight.dtype

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def build_graph(self, batch: CrystalBatch) -> PeriodicGraph:
        """The encoder's periodic k-NN graph (no gradients). Only ``edge_index`` and
        ``distances`` are used, so a graph built once per crystal stays valid under the
        translation augmentation (and can be cached by a data loader)."""
        frac = batch.frac.detach().to(self.dtype)  # (B, N, 3)
        lattice = batch.lattice.detach().to(self.dtype)  # (B, 3, 3)
        return knn_graph_pbc_batch(frac, lattice, batch.mask, self.config.knn_k)

    # ------------------------------------------------------------------------------ encoder
    def encode(
        self,
        batch: CrystalBatch,
        graph: PeriodicGraph | None = None,
        *,
        deterministic: bool | None = None,
    ) -> EncoderOutput:
        """Crystal -> latents.

        Args:
            batch: input crystals.
            graph: optional precomputed :meth:`build_graph` of ``batch``.
            deterministic: KL: use the mean instead of a sample (default: ``not training``).

        Returns:
            :class:`EncoderOutput`.
        """
        det = (not self.training) if deterministic is None else deterministic  # bool
        mask = batch.mask  # (B, N)
        m = mask.unsqueeze(-1).to(self.dtype)  # (B, N, 1)
        frac = batch.frac.to(self.dtype)  # (B, N, 3)
        lattice = batch.lattice.to(self.dtype)  # (B, 3, 3)
        if graph is None:
            graph = self.build_graph(batch)  # E edges
        n = mask.sum(1)  # (B,)
        lat = lattice_features(lattice, n, self.config.log_length_offset)  # (B, 7)
        with _full_precision(frac):  # position / lattice inputs stay fp32 under autocast
            fourier = periodic_fourier_features(frac, self.frequencies)  # (B, N, 6F)
            h = self.type_embed(batch.atom_types) + self.pos_embed(fourier)  # (B, N, De)
            g = self.lattice_embed(lat)  # (B, De)
        edge_attr = self.rbf(graph.distances.detach().to(self.dtype))  # (E, R)
        h, g = self.encoder(
            h, g, mask, edge_index=graph.edge_index, edge_attr=edge_attr, context=lat
        )  # (B, N, De), (B, De)
        with _full_precision(h):  # latents in fp32 under autocast (they feed the diffusion)
            zl = self.local_head(h.to(self.dtype))  # (B, N, in_L)
            zg = self.global_head(g.to(self.dtype))  # (B, in_G)
            bl = self.bottleneck_local(zl, mask, deterministic=det)  # (B, N, D_L)
            bg = self.bottleneck_global(zg, None, deterministic=det)  # (B, G)
        metrics = {f"local_{k}": v for k, v in bl.metrics.items()}
        metrics.update({f"global_{k}": v for k, v in bg.metrics.items()})
        return EncoderOutput(
            z_local=bl.z * m,  # (B, N, D_L)
            z_global=bg.z,  # (B, G)
            z_local_continuous=bl.continuous * m,  # (B, N, D_L)
            z_global_continuous=bg.continuous,  # (B, G)
            mask=mask,
            loss=bl.loss + bg.loss,  # ()
            metrics=metrics,
            codes_local=bl.codes,  # (B, N, Q) | None
            codes_global=bg.codes,  # (B, Q) | None
        )

    def latents(
        self, batch: CrystalBatch, graph: PeriodicGraph | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Continuous latents for the diffusion stage (deterministic; no codebook updates).

        Args:
            batch: input crystals (no augmentation is applied).
            graph: optional precomputed graph.

        Returns:
            ``(z_local, z_global)``: (B, N, D_L) (zeros at padding) and (B, G); the KL mean,
            the RVQ pre-quantisation vectors, or the plain latents.
        """
        was_training = self.training
        self.eval()  # no sampling, no EMA updates
        try:
            enc = self.encode(batch, graph, deterministic=True)
        finally:
            self.train(was_training)
        return enc.z_local_continuous, enc.z_global_continuous  # (B, N, D_L), (B, G)

    # ------------------------------------------------------------------------------ decoder
    def decode(
        self, z_local: torch.Tensor, z_global: torch.Tensor, mask: torch.Tensor
    ) -> DecoderOutput:
        """Latents -> crystal predictions (no positions enter).

        Args:
            z_local: (B, N, D_L) per-atom latents (padding rows ignored).
            z_global: (B, G) global latents.
            mask: (B, N) bool, True for real atoms (N^(1/3) for the lengths comes from it).

        Returns:
            :class:`DecoderOutput`.
        """
        N = z_local.shape[1]
        dt = self.dtype
        z_local, z_global = z_local.to(dt), z_global.to(dt)  # (B, N, D_L), (B, G)
        h = self.dec_local(z_local) + self.dec_global_atoms(z_global).unsqueeze(1)  # (B, N, Dd)
        if self.order_embed is not None:
            idx = torch.arange(N, device=mask.device).clamp(max=self.config.max_order_index - 1)
            h = h + self.order_embed(idx).unsqueeze(0)  # (B, N, Dd)
        g = self.dec_global(z_global)  # (B, Dd)
        h, g = self.decoder(h, g, mask)  # (B, N, Dd), (B, Dd)
        with _full_precision(h):  # output heads in fp32 under autocast (coordinate precision)
            return self._heads(h.to(dt), g.to(dt), mask)

    def _heads(self, h: torch.Tensor, g: torch.Tensor, mask: torch.Tensor) -> DecoderOutput:
        """Output heads on the decoder's final states (h: (B, N, Dd), g: (B, Dd))."""
        B, N, _ = h.shape
        dt = self.dtype
        m = mask.unsqueeze(-1).to(dt)  # (B, N, 1)
        logits = self.type_head(h)  # (B, N, T - 1)
        pad = logits.new_full((B, N, 1), _PAD_LOGIT)  # (B, N, 1)
        logits = torch.cat([pad, logits], dim=-1)  # (B, N, T)
        vec = self.coord_head(h).view(B, N, 3, 2)  # (B, N, 3, 2) (cos, sin)
        theta = torch.atan2(vec[..., 1], vec[..., 0])  # (B, N, 3) in [-pi, pi]
        frac = wrap_frac_torch(theta / (2.0 * math.pi)) * m  # (B, N, 3) in [0, 1)
        raw = self.lattice_head(g)  # (B, 6)
        log_len = raw[:, :3] + self.config.log_length_offset  # (B, 3)
        n = mask.sum(1).to(dt).clamp(min=1.0).unsqueeze(-1)  # (B, 1)
        lengths = log_len.exp() * n.pow(1.0 / 3.0)  # (B, 3) Å
        lo, hi = self.config.angle_min, self.config.angle_max  # floats
        angles = lo + (hi - lo) * torch.sigmoid(raw[:, 3:])  # (B, 3) degrees
        return DecoderOutput(logits, frac, vec, log_len, lengths, angles)

    def decode_latents(
        self, z_local: torch.Tensor, z_global: torch.Tensor, mask: torch.Tensor
    ) -> DecoderOutput:
        """Decode *continuous* latents (e.g. diffusion samples): RVQ quantises them first.

        Args:
            z_local: (B, N, D_L) continuous per-atom latents.
            z_global: (B, G) continuous global latents.
            mask: (B, N) bool.

        Returns:
            :class:`DecoderOutput`.
        """
        zl = self.bottleneck_local.from_continuous(z_local, mask)  # (B, N, D_L)
        zg = self.bottleneck_global.from_continuous(z_global)  # (B, G)
        return self.decode(zl, zg, mask)

    @staticmethod
    def to_batch(
        out: DecoderOutput, mask: torch.Tensor, ids: list[str | None] | None = None
    ) -> CrystalBatch:
        """Decoder output -> :class:`CrystalBatch` (argmax types, standard-orientation lattice).

        Args:
            out: decoder output.
            mask: (B, N) bool.
            ids: optional identifiers.

        Returns:
            The reconstructed batch (types 0 and coordinates 0 at padding).
        """
        types = out.type_logits.argmax(-1) * mask  # (B, N)
        frac = out.frac * mask.unsqueeze(-1).to(out.frac.dtype)  # (B, N, 3)
        lattice = lattice_from_parameters_torch(out.lengths, out.angles)  # (B, 3, 3)
        num = mask.sum(1)  # (B,)
        return CrystalBatch(types, frac, lattice, mask, num, list(ids) if ids else [])

    @torch.no_grad()
    def reconstruct(
        self, batch: CrystalBatch, graph: PeriodicGraph | None = None
    ) -> CrystalBatch:
        """decode(encode(batch)) as crystals, deterministically (no augmentation, no sampling).

        Args:
            batch: input crystals.
            graph: optional precomputed graph.

        Returns:
            Reconstructed :class:`CrystalBatch` with the input's ids.
        """
        zl, zg = self.latents(batch, graph)  # (B, N, D_L), (B, G)
        out = self.decode_latents(zl, zg, batch.mask)
        return self.to_batch(out, batch.mask, batch.ids)

    # ------------------------------------------------------------------------------ training
    def loss_terms(
        self, batch: CrystalBatch, graph: PeriodicGraph | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss with metrics as (detached) tensors, no host synchronisation.

        In training mode with ``translation_augment`` every crystal is first shifted by a
        uniform random fractional translation (torch's global RNG); a ``graph`` built from the
        untranslated batch stays valid.

        Args:
            batch: input crystals.
            graph: optional precomputed graph.

        Returns:
            ``(loss, metrics)``: scalar loss (reconstruction + bottleneck) and metric tensors
            (see :func:`~mofasa.models.losses.autoencoder_loss`, plus ``bottleneck_loss``,
            ``loss`` and the bottleneck's ``local_*`` / ``global_*`` entries).
        """
        if self.training and self.config.translation_augment:
            shift = torch.rand(batch.batch_size, 3, device=batch.frac.device)  # (B, 3)
            batch = translate_batch(batch, shift)
        enc = self._encode_for_training(batch, graph)
        zl, zg = enc.z_local, enc.z_global  # (B, N, D_L), (B, G)
        if self.training and self.config.decoder_noise > 0:
            zl, zg = self._perturb_latents(zl, zg, batch.mask)
        out = self.decode(zl, zg, batch.mask)
        rec, metrics = autoencoder_loss(out, batch, self.config)  # (), dict
        loss = rec + enc.loss  # ()
        metrics.update(enc.metrics)
        metrics["bottleneck_loss"] = enc.loss.detach()
        metrics["loss"] = loss.detach()
        return loss, metrics

    def _encode_for_training(self, batch: CrystalBatch, graph: PeriodicGraph | None
                             ) -> EncoderOutput:
        if not self.config.freeze_encoder:
            return self.encode(batch, graph)
        was_training = self.training
        self.eval()  # KL mean, no codebook updates: exactly the latents diffusion was fit on
        try:
            with torch.no_grad():
                return self.encode(batch, graph, deterministic=True)
        finally:
            self.train(was_training)

    def _perturb_latents(self, zl: torch.Tensor, zg: torch.Tensor, mask: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents + Gaussian noise of per-crystal scale U(0, decoder_noise) x channel std."""
        m = mask.unsqueeze(-1).to(zl.dtype)  # (B, N, 1)
        real = zl.detach()[mask]  # (A, D_L)
        std_l = real.std(0) if real.shape[0] > 1 else torch.ones_like(zl[0, 0])  # (D_L,)
        std_g = zg.detach().std(0) if zg.shape[0] > 1 else torch.ones_like(zg[0])  # (G,)
        scale = torch.rand(zl.shape[0], device=zl.device, dtype=zl.dtype)  # (B,)
        scale = scale * self.config.decoder_noise
        zl = zl + scale.view(-1, 1, 1) * std_l * torch.randn_like(zl) * m  # (B, N, D_L)
        zg = zg + scale.view(-1, 1) * std_g * torch.randn_like(zg)  # (B, G)
        return zl, zg

    def forward(
        self, batch: CrystalBatch, graph: PeriodicGraph | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Training step loss.

        Args:
            batch: input crystals.
            graph: optional precomputed :meth:`build_graph` of ``batch``.

        Returns:
            ``(loss, metrics)``: scalar loss and float metrics (one host sync).
        """
        loss, metrics = self.loss_terms(batch, graph)
        values = torch.stack([v.float().reshape(()) for v in metrics.values()]).tolist()
        return loss, dict(zip(metrics.keys(), values, strict=True))
