"""`CrystalBatch`: padded tensors + mask, the form crystals take inside models and training."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from mofasa.data.crystal import Crystal

__all__ = ["CrystalBatch", "collate"]


@dataclass
class CrystalBatch:
    """B crystals padded to the largest atom count N in the batch.

    Attributes:
        atom_types: (B, N) int64 atomic numbers; 0 marks padding.
        frac: (B, N, 3) fractional coordinates in [0, 1); zeros at padding.
        lattice: (B, 3, 3) row-vector cells in Å.
        mask: (B, N) bool, True for real atoms.
        num_atoms: (B,) int64.
        ids: B identifiers (may be None).
    """

    atom_types: torch.Tensor
    frac: torch.Tensor
    lattice: torch.Tensor
    mask: torch.Tensor
    num_atoms: torch.Tensor
    ids: list[str | None] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return int(self.atom_types.shape[0])

    @property
    def max_atoms(self) -> int:
        return int(self.atom_types.shape[1])

    def lattice_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Lengths (B, 3) in Å and angles (B, 3) in degrees (alpha, beta, gamma)."""
        lengths = self.lattice.norm(dim=-1)  # (B, 3)
        unit = self.lattice / lengths.unsqueeze(-1)  # (B, 3, 3)
        pairs = ((1, 2), (0, 2), (0, 1))
        cos = torch.stack([(unit[:, i] * unit[:, j]).sum(-1) for i, j in pairs], dim=-1)
        return lengths, torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))

    def to(self, device: torch.device | str) -> CrystalBatch:
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return CrystalBatch(**moved, ids=list(self.ids))

    def unbatch(self) -> list[Crystal]:
        """Back to a list of `Crystal` (drops padding)."""
        out = []
        for b in range(self.batch_size):
            n = int(self.num_atoms[b])
            out.append(
                Crystal(
                    self.atom_types[b, :n].cpu().numpy(),
                    self.frac[b, :n].detach().double().cpu().numpy(),
                    self.lattice[b].detach().double().cpu().numpy(),
                    id=self.ids[b] if self.ids else None,
                )
            )
        return out


def collate(crystals: Sequence[Crystal], dtype: torch.dtype = torch.float32) -> CrystalBatch:
    """Pad a list of crystals into one `CrystalBatch`."""
    bsz = len(crystals)
    nmax = max(c.num_atoms for c in crystals)
    types = np.zeros((bsz, nmax), dtype=np.int64)
    frac = np.zeros((bsz, nmax, 3), dtype=np.float64)
    mask = np.zeros((bsz, nmax), dtype=bool)
    for b, c in enumerate(crystals):
        types[b, : c.num_atoms] = c.numbers
        frac[b, : c.num_atoms] = c.frac
        mask[b, : c.num_atoms] = True
    return CrystalBatch(
        atom_types=torch.from_numpy(types),
        frac=torch.from_numpy(frac).to(dtype),
        lattice=torch.from_numpy(np.stack([c.lattice for c in crystals])).to(dtype),
        mask=torch.from_numpy(mask),
        num_atoms=torch.tensor([c.num_atoms for c in crystals], dtype=torch.int64),
        ids=[c.id for c in crystals],
    )
