"""`LatentBatch`: a `CrystalBatch` that also carries its precomputed latents and conditions.

A latent cache (`mofasa.training.latent_cache`) stores the frozen encoder's latents once, with
what the conditions need; its batches let the denoiser train without re-running the encoder.
The crystal fields are the structure the latents encode (translation included).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from mofasa.data.batch import CrystalBatch

__all__ = ["NODE_LABELS", "LatentBatch"]

#: per-atom labels of ``LatentBatch.node_labels``: linker atom, non-metal bonded to a metal
#: (part of the metal node), metal
NODE_LABELS = ("linker", "node", "metal")


@dataclass
class LatentBatch(CrystalBatch):
    """B crystals with latents, padded to N atoms.

    Attributes (beyond `CrystalBatch`):
        zl: (B, N, D_L) raw (not normalised) per-atom latents; zeros at padding.
        zg: (B, G) raw global latents.
        bond_index: (2, E) int64 bonds into the flattened B * N atom axis (both directions).
        bond_images: (E, 3) int64 image offsets of the bonded neighbour (``bond_index[1]``).
        node_labels: (B, N) int64 indices into `NODE_LABELS` (0 at padding).
    """

    zl: torch.Tensor | None = None
    zg: torch.Tensor | None = None
    bond_index: torch.Tensor | None = None
    bond_images: torch.Tensor | None = None
    node_labels: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> LatentBatch:
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return LatentBatch(**moved, ids=list(self.ids))
