"""Conditions as tensors: `ConditionBatch`, the bond rule in torch, and the training mix.

One multi-task model learns every condition (issue 12): each training structure draws one task
from `ConditionMix` (nothing, formula, element set, metal, formula + bonds, formula + kept atoms
with or without the lattice), built from the structure itself (`training_conditions`), so the
unconditional path keeps training in a fixed share of the data. An all-zero row is "no
condition": it is exactly what sampling without conditions feeds, so dropping every condition
reproduces the unconditional path, and it is the null branch of classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from mofasa.data.canonical import BOND_TOL
from mofasa.data.conditions import HOP_BONDED, MAX_HOPS, Condition, condition_arrays
from mofasa.data.elements import COVALENT_RADII, IS_METAL, NUM_TOKENS
from mofasa.geometry.lattice_torch import pair_distances_torch

__all__ = ["CONDITION_FEATURES", "ConditionBatch", "ConditionMix", "bond_hops",
           "training_conditions"]

#: width of `ConditionBatch.features`: composition (101), present elements (101), four flags
CONDITION_FEATURES = 2 * NUM_TOKENS + 4


@dataclass
class ConditionBatch:
    """B crystals' conditions, padded to N atoms (zeros everywhere: unconditional).

    Attributes:
        allowed: (B, N, 101) float 0/1, the elements each atom may be (all zero: not given).
        crystal: (B, 202) composition fractions and present elements.
        hops: (B, N, N) long bond-graph distance classes (`data.conditions.hop_classes`; 0:
            no bonds given).
        keep: (B, N) bool, atoms whose coordinates are given in ``frac`` (B, N, 3).
        lattice: (B, 3, 3) given cells, where ``has_lattice`` (B,) bool.
    """

    allowed: torch.Tensor
    crystal: torch.Tensor
    hops: torch.Tensor
    keep: torch.Tensor
    frac: torch.Tensor
    lattice: torch.Tensor
    has_lattice: torch.Tensor

    @property
    def bonded(self) -> torch.Tensor:
        """(B, N, N) bool: the given bonds (hop class `HOP_BONDED`)."""
        return self.hops == HOP_BONDED

    @classmethod
    def null(cls, batch_size: int, n: int, device: torch.device | str = "cpu"
             ) -> ConditionBatch:
        """No condition for any crystal."""
        z = lambda *s, dt=torch.float32: torch.zeros(*s, dtype=dt, device=device)  # noqa: E731
        return cls(allowed=z(batch_size, n, NUM_TOKENS), crystal=z(batch_size, 2 * NUM_TOKENS),
                   hops=z(batch_size, n, n, dt=torch.long), keep=z(batch_size, n, dt=torch.bool),
                   frac=z(batch_size, n, 3), lattice=z(batch_size, 3, 3),
                   has_lattice=z(batch_size, dt=torch.bool))

    @classmethod
    def from_conditions(cls, conditions: list[Condition | None], n: int,
                        device: torch.device | str = "cpu") -> ConditionBatch:
        """From numpy `Condition` objects (None: unconditional row)."""
        a = condition_arrays(conditions, n)
        t = lambda k, dt: torch.as_tensor(np.asarray(a[k]), dtype=dt, device=device)  # noqa: E731
        return cls(allowed=t("allowed", torch.float32), crystal=t("crystal", torch.float32),
                   hops=t("hops", torch.long), keep=t("keep", torch.bool),
                   frac=t("frac", torch.float32), lattice=t("lattice", torch.float32),
                   has_lattice=t("has_lattice", torch.bool))

    def to(self, device: torch.device | str) -> ConditionBatch:
        return ConditionBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def features(self) -> torch.Tensor:
        """(B, CONDITION_FEATURES) per-crystal input: composition, present, and flags (atom
        elements given, bonds given, atoms kept, lattice given)."""
        flags = torch.stack([self.allowed.flatten(1).any(1), self.hops.flatten(1).any(1),
                             self.keep.any(1), self.has_lattice], dim=1)  # (B, 4)
        return torch.cat([self.crystal, flags.to(self.crystal.dtype)], dim=1)

    def fixed_types(self) -> torch.Tensor:
        """(B, N) bool: atoms whose element is fixed (exactly one allowed element)."""
        return self.allowed.sum(-1) == 1

    def is_null(self) -> bool:
        return not (self.allowed.any() or self.crystal.any() or self.hops.any()
                    or self.keep.any() or self.has_lattice.any())

    def dropped(self) -> ConditionBatch:
        """The null condition of the same shape (guidance's unconditional branch)."""
        B, N = self.keep.shape
        return ConditionBatch.null(B, N, self.keep.device)


@torch.no_grad()
def bond_hops(frac: torch.Tensor, lattice: torch.Tensor, types: torch.Tensor,
              mask: torch.Tensor) -> torch.Tensor:
    """(B, N, N) long hop classes of the canonical bond rule (d < r_i + r_j + BOND_TOL over
    periodic images), as `data.conditions.hop_classes`; 0 at padding.

    Distances from `pair_distances_torch` (27 images, memory (B, N, N)); exact for bonds in
    Niggli-reduced cells, which every prepared cell is.
    """
    B, N, _ = frac.shape
    radii = torch.as_tensor(COVALENT_RADII, dtype=frac.dtype, device=frac.device)[types]
    best = pair_distances_torch(frac, lattice)  # (B, N, N) Å
    pair = mask.unsqueeze(1) & mask.unsqueeze(2)  # (B, N, N)
    eye = torch.eye(N, dtype=torch.bool, device=frac.device)
    adj = (best < radii.unsqueeze(1) + radii.unsqueeze(2) + BOND_TOL) & pair & ~eye
    hops = torch.full((B, N, N), MAX_HOPS + 2, dtype=torch.long, device=frac.device)
    reach = eye.expand(B, N, N).clone()
    hops[reach] = 1
    a = adj.to(frac.dtype)
    for k in range(1, MAX_HOPS + 1):
        nxt = (reach.to(frac.dtype) @ a) > 0
        hops[nxt & ~reach] = k + 1
        reach |= nxt
    return hops * pair


@dataclass(frozen=True)
class ConditionMix:
    """Share of training structures per task (normalised; ``none`` keeps the unconditional
    path trained) and the inpainting details.

    Attributes:
        none, formula, elements, metal, bonds, inpaint: task shares (bonds and inpaint come
            with the formula, as at sampling).
        inpaint_lattice: probability that an inpainting task also gives the lattice.
    """

    none: float = 0.3
    formula: float = 0.2
    elements: float = 0.1
    metal: float = 0.05
    bonds: float = 0.2
    inpaint: float = 0.15
    inpaint_lattice: float = 0.75

    def __post_init__(self) -> None:
        shares = self.shares()
        if min(shares) < 0 or sum(shares) <= 0 or not 0 <= self.inpaint_lattice <= 1:
            raise ValueError(f"bad ConditionMix: {self}")

    def shares(self) -> list[float]:
        return [self.none, self.formula, self.elements, self.metal, self.bonds, self.inpaint]


TASKS = ("none", "formula", "elements", "metal", "bonds", "inpaint")


def _keep_mask(kind: int, labels: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """(n,) bool kept atoms: 0 metals, 1 metal node, 2 linkers, 3 a random share."""
    keep = [labels == 2, labels >= 1, labels < 2][kind] if kind < 3 else None
    if keep is None or not keep.any() or keep.all():
        share = float(torch.empty(1).uniform_(0.2, 0.8, generator=g))
        keep = torch.rand(n, generator=g) < share
        if keep.all():
            keep[int(torch.randint(n, (1,), generator=g))] = False
    return keep


def training_conditions(types: torch.Tensor, frac: torch.Tensor, lattice: torch.Tensor,
                        mask: torch.Tensor, mix: ConditionMix, generator: torch.Generator
                        ) -> tuple[ConditionBatch, list[str]]:
    """Conditions built from the batch's own structures, one task per structure.

    Args:
        types: (B, N) atomic numbers (0 padding), ``frac`` (B, N, 3), ``lattice`` (B, 3, 3),
            ``mask`` (B, N): the clean batch.
        mix: task shares.
        generator: CPU generator (tasks and masks are reproducible).

    Returns:
        The `ConditionBatch` (on the batch's device) and each structure's task name.
    """
    B, N = types.shape
    dev = types.device
    cond = ConditionBatch.null(B, N, dev)
    shares = torch.tensor(mix.shares(), dtype=torch.float64)
    tasks = torch.multinomial(shares, B, replacement=True, generator=generator).tolist()
    hops = bond_hops(frac, lattice, types, mask) if any(t in (4, 5) for t in tasks) else None
    is_metal = torch.as_tensor(IS_METAL, device=dev)
    names = []
    for b, task in enumerate(tasks):
        n = int(mask[b].sum())
        z = types[b, :n]
        metals = torch.unique(z[is_metal[z]])
        if task == 3 and not len(metals):
            task = 1  # no metal to ask for: the formula instead
        names.append(TASKS[task])
        if task == 0:
            continue
        present = torch.zeros(NUM_TOKENS, device=dev)
        if task == 2:  # the element set at every atom
            present[z] = 1.0
            cond.allowed[b, :n] = present
        elif task == 3:  # one of its metals, any non-metal
            m = metals[int(torch.randint(len(metals), (1,), generator=generator))]
            present[m] = 1.0
            cond.allowed[b, :n] = (~is_metal).float()
            cond.allowed[b, :n, 0] = 0.0
            cond.allowed[b, :n, m] = 1.0
        else:  # formula (+ bonds / kept atoms)
            present[z] = 1.0
            cond.allowed[b, torch.arange(n, device=dev), z] = 1.0
            cond.crystal[b, :NUM_TOKENS] = torch.bincount(z, minlength=NUM_TOKENS).float() / n
        cond.crystal[b, NUM_TOKENS:] = present
        if task == 4 and hops is not None:
            cond.hops[b] = hops[b]
        if task == 5 and hops is not None:
            h = hops[b, :n, :n]
            near_metal = ((h == 2) & is_metal[z].unsqueeze(0)).any(1)  # bonded to a metal
            labels = torch.where(is_metal[z], 2, near_metal.long())
            kind = int(torch.randint(4, (1,), generator=generator))
            cond.keep[b, :n] = _keep_mask(kind, labels.cpu(), n, generator).to(dev)
            cond.frac[b] = frac[b] * cond.keep[b].unsqueeze(-1)
            if float(torch.rand(1, generator=generator)) < mix.inpaint_lattice:
                cond.lattice[b], cond.has_lattice[b] = lattice[b], True
    return cond, names

