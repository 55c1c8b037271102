"""Where a latent diffusion model loses its samples: decoder tolerance, denoiser error, SDEdit.

    python benchmarks/latent_diagnostics.py --model runs/diffusion_small/checkpoint.pt \
        [--data prepared/qmof --max-atoms 60 --structures 64 --samples 300]

Probes, on real structures of --split (every second one, up to --structures):
- ``decoder_noise``: bonded-atom share of decode(encode(x) + s * channel-std * noise) for several
  s (how precise the latents handed to the decoder must be);
- ``denoiser``: per diffusion time t, RMSE of the clean-latent estimate on Z_L (channel-std
  units) beside sigma / alpha, the error of not denoising at all (how much noise it removes);
- ``sdedit``: noise real latents to t, run DDIM back to 0 (20 steps), bonded share (can the
  denoiser restore a structure it is close to?);
- ``context``: per t, the x0 RMSE on the even-indexed atoms with the odd-indexed atoms' noisy
  latents intact vs replaced by noise of the same law (does the denoiser use the other atoms?);
- ``random_latent_floor``: bonded share of decoded N(0, 1) latents (no joint structure at all);
- ``samples``: --samples de novo samples (sizes drawn from the validation structures, fixed
  seed): bonded-atom share and sane-geometry rate.
The figures in benchmarks/RESULTS.md ("Why the samples fail") come from this script.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import torch
from ablation_diffusion import bonded_share  # this folder is on sys.path when run as a script
from sample_quality import sanity

from mofasa.checkpoint import load_diffusion
from mofasa.data.batch import collate
from mofasa.data.dataset import CrystalDataset
from mofasa.diffusion.objectives import q_sample, x0_from_v

NOISE_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.5)
TIMES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7)
SDEDIT_TIMES = (0.1, 0.2, 0.4)


def _bonded(model, zl: torch.Tensor, zg: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean bonded-atom share of decoded normalised latents."""
    rl, rg = model.denormalize(zl, zg, mask)
    return float(np.mean([bonded_share(c) for c in model.decode(rl, rg, mask).unbatch()]))


def decoder_tolerance(model, x0, mask, g: torch.Generator) -> dict[str, float]:
    """Bonded share after Gaussian noise of s channel-std on the normalised Z_L."""
    out = {}
    for s in NOISE_LEVELS:
        n = torch.randn(x0[0].shape, generator=g) * mask.unsqueeze(-1)  # (B, N, D_L)
        out[str(s)] = round(_bonded(model, x0[0] + s * n, x0[1], mask), 4)
    return out


def denoiser_error(model, x0, mask, g: torch.Generator) -> list[dict[str, float]]:
    """x0 RMSE of one self-conditioned denoiser estimate per t (Z_L, std units)."""
    rows = []
    m = mask.unsqueeze(-1).float()  # (B, N, 1)
    count = m.sum() * x0[0].shape[-1]
    for t in TIMES:
        tt = torch.full((mask.shape[0],), t)  # (B,)
        a, s = (c.float() for c in model.schedule.alpha_sigma(tt))  # (B,) x 2
        eps = (torch.randn(x0[0].shape, generator=g) * m, torch.randn(x0[1].shape, generator=g))
        zt = q_sample(x0, eps, a, s)
        sc = None
        for _ in range(2):  # second pass sees the first estimate, as in sampling
            v = model.denoiser(*zt, tt, mask, self_cond=sc)
            sc = tuple(x.float() for x in x0_from_v(zt, v, a, s))
        err = float((((sc[0] - x0[0]) * m).square().sum() / count).sqrt())
        rows.append({"t": t, "sigma": round(float(s[0]), 4),
                     "x0_rmse": round(err, 4), "no_denoising": round(float(s[0] / a[0]), 4)})
    return rows


def context_use(model, x0, mask, g: torch.Generator) -> list[dict[str, float]]:
    """x0 RMSE on even atoms with the odd atoms' information intact vs destroyed."""
    m = mask.unsqueeze(-1).float()  # (B, N, 1)
    keep = torch.zeros_like(mask)
    keep[:, ::2] = True
    sel = keep & mask  # (B, N)
    rows = []
    for t in (0.1, 0.3, 0.5):
        tt = torch.full((mask.shape[0],), t)  # (B,)
        a, s = (c.float() for c in model.schedule.alpha_sigma(tt))  # (B,) x 2
        eps = (torch.randn(x0[0].shape, generator=g) * m, torch.randn(x0[1].shape, generator=g))
        zt = q_sample(x0, eps, a, s)
        fake = (a.view(-1, 1, 1) * torch.randn(x0[0].shape, generator=g) + s.view(-1, 1, 1)
                * eps[0]) * m  # (B, N, D_L): same marginal law, no information
        err = []
        for zl in (zt[0], torch.where(keep.unsqueeze(-1), zt[0], fake)):
            v = model.denoiser(zl, zt[1], tt, mask)
            xh = x0_from_v((zl, zt[1]), v, a, s)
            err.append(round(float((xh[0] - x0[0])[sel].square().mean().sqrt()), 4))
        rows.append({"t": t, "x0_rmse_context": err[0], "x0_rmse_context_destroyed": err[1]})
    return rows


def sdedit(model, x0, mask, g: torch.Generator, steps: int = 20) -> dict[str, float]:
    """Noise to t0, deterministic DDIM back to 0 with self-conditioning, bonded share."""
    m = mask.unsqueeze(-1).float()  # (B, N, 1)
    out = {}
    for t0 in SDEDIT_TIMES:
        a0, s0 = (float(x) for x in model.schedule.alpha_sigma(torch.tensor(t0)))
        z = (a0 * x0[0] + s0 * torch.randn(x0[0].shape, generator=g) * m,
             a0 * x0[1] + s0 * torch.randn(x0[1].shape, generator=g))
        grid = torch.linspace(t0, 0.0, steps + 1).tolist()
        sc = None
        for t, tn in itertools.pairwise(grid):
            v = model.predict_v(z, t, mask, sc)
            a, s = (float(x) for x in model.schedule.alpha_sigma(torch.tensor(t)))
            an, sn = (float(x) for x in model.schedule.alpha_sigma(torch.tensor(tn)))
            x0h = (a * z[0] - s * v[0], a * z[1] - s * v[1])
            eps = (s * z[0] + a * v[0], s * z[1] + a * v[1])
            sc = x0h
            z = ((an * x0h[0] + sn * eps[0]) * m, an * x0h[1] + sn * eps[1])
        out[str(t0)] = round(_bonded(model, z[0], z[1], mask), 4)
    return out


def de_novo(model, sizes: np.ndarray, num: int, seed: int) -> dict[str, float]:
    """``num`` samples (DDIM, the model's default steps), grouped by atom count."""
    rng = np.random.default_rng(seed)
    counts = rng.choice(sizes, num)
    g = torch.Generator().manual_seed(seed)
    crystals = []
    for n in np.unique(counts):
        mask = torch.ones(int((counts == n).sum()), int(n), dtype=torch.bool)  # (B, N)
        crystals += model.generate(mask, generator=g).unbatch()
    return {"num": num,
            "bonded_atom_share": round(float(np.mean([bonded_share(c) for c in crystals])), 4),
            "sane_geometry_rate": float(np.mean([sanity(c)["sane_geometry"] for c in crystals]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="diffusion checkpoint or export")
    ap.add_argument("--data", default="prepared/qmof")
    ap.add_argument("--split", default="val")
    ap.add_argument("--max-atoms", type=int, default=60)
    ap.add_argument("--structures", type=int, default=64)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = load_diffusion(args.model)
    ds = CrystalDataset(args.data, args.split, max_atoms=args.max_atoms)
    batch = collate([ds[i] for i in range(0, len(ds), 2)][: args.structures])
    g = torch.Generator().manual_seed(args.seed)
    result: dict[str, object] = {"benchmark": "latent_diagnostics", "model": args.model,
                                 "structures": batch.mask.shape[0]}
    with torch.no_grad():
        x0 = model.encode(batch)  # normalised (B, N, D_L), (B, G)
        result["decoder_noise_bonded"] = decoder_tolerance(model, x0, batch.mask, g)
        result["denoiser"] = denoiser_error(model, x0, batch.mask, g)
        result["sdedit_bonded"] = sdedit(model, x0, batch.mask, g)
        result["context"] = context_use(model, x0, batch.mask, g)
        noise = (torch.randn(x0[0].shape, generator=g) * batch.mask.unsqueeze(-1),
                 torch.randn(x0[1].shape, generator=g))
        result["random_latent_floor"] = round(_bonded(model, *noise, batch.mask), 4)
        if args.samples:
            sizes = np.array([ds[i].num_atoms for i in range(len(ds))])
            result["samples"] = de_novo(model, sizes, args.samples, args.seed)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
