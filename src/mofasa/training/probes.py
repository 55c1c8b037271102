"""Cheap training-time probes of whether a latent denoiser has learnt how atoms sit together.

Validity appears only after ~10^5 steps; these say earlier whether a run is on its way (each is
a handful of forward passes on a fixed set of validation structures; all four together take
well under a minute on CPU for the small model):

* ``sdedit_bonded``: noise the clean latents to t = 0.2, run DDIM back, decode: bonded share
  (`mofasa.data.quality`), beside ``sdedit_floor`` = decoding the noised input itself (~0.71
  for the shipped autoencoder): a model that helps beats its floor;
* ``context_gap``: at t = 0.3, x0 error on the even atoms with the odd atoms' noisy latents
  intact vs replaced by noise of the same law: (destroyed - intact) / intact; zero means the
  denoiser ignores the other atoms (every bond is relational);
* ``near_attention`` / ``near_uniform``: the atom-atom attention mass on atoms within 2 Å
  (minimum image) vs the mass a uniform attention would put there;
* ``denovo_bonded``: pooled bonded share of de novo samples (floor: decoded N(0, 1) ~0.46).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from mofasa.data.batch import CrystalBatch, collate
from mofasa.data.quality import pooled_bonded_share
from mofasa.diffusion.latent import LatentDiffusion
from mofasa.diffusion.objectives import q_sample, x0_from_v

__all__ = [
    "NEAR_RADIUS",
    "ProbeSet",
    "context_gap",
    "de_novo_bonded",
    "near_attention",
    "probe_structures",
    "run_probes",
    "sdedit_bonded",
]

NEAR_RADIUS = 2.0  # Å: "atoms within 2 Å" (bonded or nearly so)


def probe_structures(path: str, split: str, max_atoms: int | None, count: int) -> list:
    """Up to ``count`` structures spread evenly over a prepared split (empty if it is)."""
    from mofasa.data.dataset import CrystalDataset

    ds = CrystalDataset(path, split, max_atoms=max_atoms)
    if len(ds) == 0:
        return []
    pick = np.unique(np.linspace(0, len(ds) - 1, min(count, len(ds))).astype(int))
    return [ds[int(i)] for i in pick]


class ProbeSet:
    """A fixed batch of validation structures and the seed every probe draws its noise from.

    Args:
        crystals: validation structures (e.g. every k-th of the split).
        sizes: atom counts to draw de novo sizes from (the training histogram's support).
        seed: noise seed (the same draws at every probe step: curves compare like with like).
    """

    def __init__(self, crystals: Sequence, sizes: Sequence[int], seed: int = 0) -> None:
        self.batch: CrystalBatch = collate(list(crystals))
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.seed = seed

    def generator(self, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1000 + stream)


def _decoded_share(model: LatentDiffusion, zl: torch.Tensor, zg: torch.Tensor,
                   mask: torch.Tensor) -> float:
    rl, rg = model.denormalize(zl, zg, mask)
    return pooled_bonded_share(model.decode(rl, rg, mask).unbatch())


@torch.no_grad()
def sdedit_bonded(model: LatentDiffusion, batch: CrystalBatch, g: torch.Generator,
                  t0: float = 0.2, steps: int = 10) -> dict[str, float]:
    """Bonded share after noising to ``t0`` and DDIM back to 0, and of the noised input."""
    mask = batch.mask
    x0 = model.encode(batch)  # (B, N, D_L), (B, G)
    m = mask.unsqueeze(-1).float()  # (B, N, 1)
    a0, s0 = (float(x) for x in model.schedule.alpha_sigma(torch.tensor(t0)))
    z = (a0 * x0[0] + s0 * torch.randn(x0[0].shape, generator=g) * m,
         a0 * x0[1] + s0 * torch.randn(x0[1].shape, generator=g))
    floor = _decoded_share(model, z[0] / a0, z[1] / a0, mask)  # the noised input, unscaled
    sc = None
    for t, tn in itertools.pairwise(torch.linspace(t0, 0.0, steps + 1).tolist()):
        v = model.predict_v(z, t, mask, sc)
        a, s = (float(x) for x in model.schedule.alpha_sigma(torch.tensor(t)))
        an, sn = (float(x) for x in model.schedule.alpha_sigma(torch.tensor(tn)))
        sc = (a * z[0] - s * v[0], a * z[1] - s * v[1])  # x0 estimate
        eps = (s * z[0] + a * v[0], s * z[1] + a * v[1])
        z = ((an * sc[0] + sn * eps[0]) * m, an * sc[1] + sn * eps[1])
    return {"sdedit_bonded": _decoded_share(model, z[0], z[1], mask), "sdedit_floor": floor}


def _noised(model: LatentDiffusion, x0: tuple, mask: torch.Tensor, t: float,
            g: torch.Generator) -> tuple:
    m = mask.unsqueeze(-1).float()  # (B, N, 1)
    tt = torch.full((mask.shape[0],), t)  # (B,)
    a, s = (c.float() for c in model.schedule.alpha_sigma(tt))  # (B,) x 2
    eps = (torch.randn(x0[0].shape, generator=g) * m, torch.randn(x0[1].shape, generator=g))
    return q_sample(x0, eps, a, s), eps, tt, a, s


@torch.no_grad()
def context_gap(model: LatentDiffusion, batch: CrystalBatch, g: torch.Generator,
                t: float = 0.3) -> dict[str, float]:
    """Relative rise of the x0 error on even atoms when the odd atoms' information is destroyed."""
    mask = batch.mask
    x0 = model.encode(batch)
    m = mask.unsqueeze(-1).float()  # (B, N, 1)
    zt, eps, tt, a, s = _noised(model, x0, mask, t, g)
    keep = torch.zeros_like(mask)
    keep[:, ::2] = True
    sel = keep & mask  # (B, N)
    fake = (a.view(-1, 1, 1) * torch.randn(x0[0].shape, generator=g)
            + s.view(-1, 1, 1) * eps[0]) * m  # (B, N, D_L): same marginal law, no information
    err = []
    for zl in (zt[0], torch.where(keep.unsqueeze(-1), zt[0], fake)):
        v = model.denoiser(zl, zt[1], tt, mask)
        xh = x0_from_v((zl, zt[1]), v, a, s)
        err.append(float((xh[0] - x0[0])[sel].square().mean().sqrt()))
    return {"context_x0_rmse": err[0], "context_gap": (err[1] - err[0]) / max(err[0], 1e-12)}


@contextmanager
def _recorded_attention() -> Iterator[list[torch.Tensor]]:
    """Record the atom-atom attention weights (B, H, N, N) of every `gns.attend` call."""
    import mofasa.models.gns as gns

    real, weights = gns.attend, []

    def recording(q, k, v, key_mask, *, bias=None, factors=None, dropout_p=0.0):  # noqa: ANN001
        if q.shape[2] == k.shape[2] and factors is None:  # atoms attending to atoms
            logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, H, N, N)
            if bias is not None:
                logits = logits + bias
            allowed = (key_mask | ~key_mask.any(-1, keepdim=True))[:, None, None, :]
            weights.append(logits.masked_fill(~allowed, float("-inf")).softmax(-1))
        return real(q, k, v, key_mask, bias=bias, factors=factors, dropout_p=dropout_p)

    gns.attend = recording
    try:
        yield weights
    finally:
        gns.attend = real


def _near_pairs(batch: CrystalBatch, radius: float) -> torch.Tensor:
    """(B, N, N) bool: distinct real atoms within ``radius`` (minimum image)."""
    d = batch.frac.unsqueeze(2) - batch.frac.unsqueeze(1)  # (B, N, N, 3)
    d = d - d.round()
    dist = (d @ batch.lattice.unsqueeze(1)).norm(dim=-1)  # (B, N, N)
    pair = batch.mask.unsqueeze(2) & batch.mask.unsqueeze(1)
    eye = torch.eye(batch.mask.shape[1], dtype=torch.bool).unsqueeze(0)
    return pair & ~eye & (dist < radius)


@torch.no_grad()
def near_attention(model: LatentDiffusion, batch: CrystalBatch, g: torch.Generator,
                   t: float = 0.3, radius: float = NEAR_RADIUS) -> dict[str, float]:
    """Attention mass on atoms within ``radius`` vs uniform, over all layers and heads."""
    mask = batch.mask
    zt, _, tt, _, _ = _noised(model, model.encode(batch), mask, t, g)
    near = _near_pairs(batch, radius)  # (B, N, N)
    with _recorded_attention() as weights:
        model.denoiser(*zt, tt, mask)
    if not weights:
        return {"near_attention": float("nan"), "near_uniform": float("nan")}
    rows = near.any(-1)  # (B, N) queries with a near atom
    keys = mask.sum(-1, keepdim=True).float()  # (B, 1)
    uniform = (near.sum(-1).float() / keys)[rows].mean()
    mass = torch.stack([(w * near.unsqueeze(1)).sum(-1).mean(1)[rows] for w in weights])
    return {"near_attention": float(mass.mean()), "near_uniform": float(uniform)}


@torch.no_grad()
def de_novo_bonded(model: LatentDiffusion, sizes: np.ndarray, num: int, g: torch.Generator,
                   steps: int | None = None) -> dict[str, float]:
    """Pooled bonded share of ``num`` samples with atom counts drawn from ``sizes``."""
    rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=g)))
    counts = rng.choice(sizes, num)
    crystals = []
    for n in np.unique(counts):
        mask = torch.ones(int((counts == n).sum()), int(n), dtype=torch.bool)  # (B, N)
        crystals += model.generate(mask, steps=steps, generator=g).unbatch()
    return {"denovo_bonded": pooled_bonded_share(crystals)}


def run_probes(model: LatentDiffusion, probes: ProbeSet, *, samples: int = 64,
               steps: int | None = None) -> dict[str, float]:
    """All four probes on ``probes`` (eval mode; the model's training mode is restored)."""
    was = model.training
    model.eval()
    batch = probes.batch.to(model.device)
    try:
        out = sdedit_bonded(model, batch, probes.generator(1))
        out.update(context_gap(model, batch, probes.generator(2)))
        out.update(near_attention(model, batch, probes.generator(3)))
        if samples:
            out.update(de_novo_bonded(model, probes.sizes, samples, probes.generator(4), steps))
    finally:
        model.train(was)
    return out
