"""Frozen model configurations (plain dataclasses).

There is one config system, `mofasa.config`: `from_dict` builds these from (partial) nested
dicts with type checks and `to_dict` turns them back into plain dicts for checkpoints and YAML.
Named presets exist only as the YAML files shipped in ``mofasa/configs/`` (the ``model`` section
of ``autoencoder_<name>.yaml``); `get_preset` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mofasa.config import load_section, named_configs

__all__ = [
    "AutoencoderConfig",
    "BackboneConfig",
    "BottleneckConfig",
    "autoencoder_presets",
    "get_preset",
]


@dataclass(frozen=True)
class BackboneConfig:
    """One GNS stack (see :mod:`mofasa.models.gns`).

    Attributes:
        width: feature width D of atoms, edges and the global node.
        depth: number of layers (each = local step + global step).
        heads: attention heads (all-pairs attention and attention pooling); divides ``width``.
        mlp_ratio: hidden width of the per-atom MLPs (feed-forward, k-NN node update) as a
            multiple of ``width``.
        dropout: dropout on every residual branch.
        attn_dropout: dropout on attention weights (all-pairs step only).
        local: ``"knn"`` (sparse periodic graph with edge features, encoder) or ``"dense"``
            (all pairs through scaled-dot-product attention, decoder / denoiser).
        global_pool: ``"attention"`` (the global node queries the atoms) or ``"mean"``.
    """

    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    attn_dropout: float = 0.0
    local: str = "dense"
    global_pool: str = "attention"

    def __post_init__(self) -> None:
        if self.width < 1 or self.depth < 0 or self.heads < 1:
            raise ValueError(f"bad backbone sizes: {self}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.local not in ("knn", "dense"):
            raise ValueError(f"local must be 'knn' or 'dense', got {self.local!r}")
        if self.global_pool not in ("attention", "mean"):
            raise ValueError(f"global_pool must be 'attention' or 'mean', got {self.global_pool!r}")

    @property
    def hidden(self) -> int:
        """Hidden width of the MLPs."""
        return max(1, round(self.width * self.mlp_ratio))




@dataclass(frozen=True)
class BottleneckConfig:
    """Latent bottleneck, applied to both the per-atom latents Z_L and the global latent Z_G.

    Attributes:
        kind: ``"none"``, ``"kl"`` (diagonal Gaussian, reparameterised) or ``"rvq"`` (residual
            vector quantisation with EMA codebooks).
        kl_weight: weight of the KL term (``kl``).
        num_codebooks: residual stages (``rvq``).
        codebook_size: codes per stage (``rvq``).
        commitment_weight: weight of the commitment loss (``rvq``).
        ema_decay: EMA decay of the codebook statistics (``rvq``).
        dead_code_threshold: a code whose EMA assignment count per step falls below this is
            restarted from a vector of the current batch (``rvq``; 0 disables restarts).
        eps: Laplace smoothing of the EMA cluster sizes (``rvq``).
    """

    kind: str = "kl"
    kl_weight: float = 1e-5
    num_codebooks: int = 4
    codebook_size: int = 256
    commitment_weight: float = 0.25
    ema_decay: float = 0.99
    dead_code_threshold: float = 1.0
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.kind not in ("none", "kl", "rvq"):
            raise ValueError(f"bottleneck kind must be none, kl or rvq, got {self.kind!r}")
        if self.num_codebooks < 1 or self.codebook_size < 1:
            raise ValueError(f"bad codebook sizes: {self}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")




@dataclass(frozen=True)
class AutoencoderConfig:
    """`CrystalAutoencoder` hyper-parameters (the defaults are the ``small`` preset).

    Attributes:
        encoder: backbone of the encoder (``local`` must be ``"knn"``).
        decoder: backbone of the decoder (``local`` must be ``"dense"``).
        latent_dim: channels D_L of the per-atom latent Z_L.
        global_latent_dim: channels G of the global latent Z_G.
        bottleneck: see :class:`BottleneckConfig`.
        knn_k: neighbours per atom in the encoder's periodic k-NN graph.
        rbf_size: Gaussian radial basis functions per edge.
        rbf_cutoff: largest RBF centre in Å.
        fourier_frequencies: integer frequencies k of the sin / cos(2 pi k x) features of the
            absolute fractional coordinates (integers keep them periodic).
        use_order_embeddings: add an embedding of each atom's index (its place in the canonical
            order) to the decoder input; breaks permutation equivariance on purpose.
        max_order_index: size of the order-embedding table (larger indices share the last one).
        translation_augment: in training mode, shift every crystal by a uniform random
            fractional translation (input and targets) before encoding.
        type_weight: weight of the atom-type cross-entropy.
        coord_weight: weight of the periodic coordinate loss.
        coord_loss: ``"chord"`` (squared distance between predicted and true (cos, sin)
            vectors per axis, scaled by (length / 2 pi)^2: wrap-aware, ~ the squared
            minimum-image error for small errors, convex in the prediction) or
            ``"min_image"`` (squared minimum-image error of the atan2 coordinates).
        coord_loss_space: ``"angstrom"`` (errors in Å through the true lattice) or ``"frac"``.
        coord_norm_weight: weight of ``(|v| - 1)^2`` on the predicted (cos, sin) vectors,
            which keeps ``atan2`` well conditioned.
        lattice_weight: weight of the lattice loss.
        lattice_huber_beta: transition of the lattice loss's smooth L1 (log-length / radians).
        angle_min: lower bound of predicted cell angles in degrees (exclusive).
        angle_max: upper bound of predicted cell angles in degrees (exclusive). With the
            default (60, 120) every prediction is a non-degenerate cell (the Gram determinant
            is positive on the open cube of cosines in (-1/2, 1/2)) and covers the canonical
            (Niggli-compatible) cells.
        log_length_offset: initial bias of the predicted log(length / N^(1/3)) (QMOF mean).
        decoder_noise: training only: the decoder reads latents perturbed by Gaussian noise
            of per-crystal scale s ~ U(0, decoder_noise) times each channel's batch std, so
            that it maps slightly-off latents (a diffusion model's samples) onto clean
            structures. 0 turns it off.
        freeze_encoder: training only: the encoder (and bottleneck) run without gradients
            and in eval mode (KL mean, no codebook updates), so a decoder can be fine-tuned
            while the latents a diffusion model was trained on stay exactly the same.
    """

    encoder: BackboneConfig = field(
        default_factory=lambda: BackboneConfig(width=128, depth=3, heads=4, local="knn")
    )
    decoder: BackboneConfig = field(
        default_factory=lambda: BackboneConfig(width=128, depth=4, heads=4, local="dense")
    )
    latent_dim: int = 16
    global_latent_dim: int = 32
    bottleneck: BottleneckConfig = field(default_factory=BottleneckConfig)
    knn_k: int = 12
    rbf_size: int = 32
    rbf_cutoff: float = 8.0
    fourier_frequencies: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16)
    use_order_embeddings: bool = False
    max_order_index: int = 512
    translation_augment: bool = True
    type_weight: float = 1.0
    coord_weight: float = 1.0
    coord_loss: str = "chord"
    coord_loss_space: str = "angstrom"
    coord_norm_weight: float = 1.0
    lattice_weight: float = 1.0
    lattice_huber_beta: float = 0.01
    angle_min: float = 60.0
    angle_max: float = 120.0
    log_length_offset: float = 0.87
    decoder_noise: float = 0.0
    freeze_encoder: bool = False

    def __post_init__(self) -> None:
        if self.encoder.local != "knn":
            raise ValueError("the encoder backbone must use local='knn'")
        if self.decoder.local != "dense":
            raise ValueError("the decoder backbone must use local='dense' (no positions)")
        if self.latent_dim < 1 or self.global_latent_dim < 1 or self.knn_k < 1:
            raise ValueError(f"bad latent / graph sizes: {self}")
        if not self.fourier_frequencies or any(int(k) != k for k in self.fourier_frequencies):
            raise ValueError("fourier_frequencies must be a non-empty tuple of integers")
        if self.coord_loss not in ("chord", "min_image"):
            raise ValueError(f"coord_loss must be chord or min_image: {self.coord_loss}")
        if self.coord_loss_space not in ("angstrom", "frac"):
            raise ValueError(f"coord_loss_space must be angstrom or frac: {self.coord_loss_space}")
        if self.decoder_noise < 0:
            raise ValueError(f"decoder_noise must be >= 0, got {self.decoder_noise}")
        if not 0.0 <= self.angle_min < self.angle_max <= 180.0:
            raise ValueError("need 0 <= angle_min < angle_max <= 180")




def autoencoder_presets() -> list[str]:
    """Names of the shipped autoencoder presets (``tiny``, ``small``, ``base``, ``large``)."""
    return named_configs("autoencoder")


def get_preset(name: str) -> AutoencoderConfig:
    """The ``model`` section of the shipped ``autoencoder_<name>.yaml``.

    Raises:
        ConfigError: for an unknown name.
    """
    return load_section(AutoencoderConfig, "autoencoder", name, "model")
