"""Reference-bonded pair lengths along bond-conditioned sampling, against training's states.

    python benchmarks/bond_trace.py MODEL --num 30 --steps 10

For ``--num`` QMOF val structures (seeded draw, at least 8 atoms, within the model's range)
under their own formula + bonds condition, at every time t of the sampler's grid: the median
ratio of each reference-bonded pair's current length to its reference length, and of the
length in the model's clean prediction, (a) on training's noisy states at t (the model's prior
included) and (b) along the sampler's own Euler trajectory (no corrector steps). Where (b)'s
states stay looser than (a)'s, the trajectory has left the distribution the model was trained
on. Prints one JSON line per t and a last line for the end state.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch


def _lengths(x: torch.Tensor, lat: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """(P,) Å minimum-image lengths of ``pairs`` (P, 2) at coordinates x (1, N, 3)."""
    from mofasa.geometry.lattice_torch import min_image_frac_torch

    return (min_image_frac_torch(x[0, pairs[:, 1]] - x[0, pairs[:, 0]]) @ lat[0]).norm(dim=-1)


def _record(into: tuple[list, list], ctx: tuple, state: tuple, d_hat: torch.Tensor) -> None:
    """Append the current and predicted-clean length ratios of the bonded pairs."""
    from mofasa.geometry.lattice_torch import wrap_frac_torch

    model, pairs, d_ref, n = ctx
    lat = model.coder.decode(state[2], n)
    into[0].append((_lengths(state[0], lat, pairs) / d_ref).numpy())
    into[1].append((_lengths(wrap_frac_torch(state[0] + d_hat), lat, pairs) / d_ref).numpy())


def _stats(ratios: list[np.ndarray]) -> dict:
    r = np.concatenate(ratios)
    return {"median": round(float(np.median(r)), 3), "below_0.6": round(float((r < 0.6).mean()), 3),
            "within_0.8_1.2": round(float(((r > 0.8) & (r < 1.2)).mean()), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--num", type=int, default=30)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--data", default="prepared/qmof")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conditioning_eval import _conditions, _pairs

    from mofasa.checkpoint import load_coordflow
    from mofasa.data import collate
    from mofasa.data.dataset import CrystalDataset
    from mofasa.diffusion.conditions import ConditionBatch
    from mofasa.diffusion.coordflow import _interpolate
    from mofasa.geometry.lattice_torch import wrap_frac_torch
    from mofasa.models.coord_denoiser import batch_state
    from mofasa.sampling.settings import trained_atom_range

    model = load_coordflow(args.model).eval()
    lo, hi = trained_atom_range(model.num_atoms_hist)
    data = CrystalDataset(args.data, "val", max_atoms=hi)
    keep = [i for i in range(len(data)) if data.num_atoms[i] >= max(lo, 8)]
    pick = np.random.default_rng(0).choice(len(keep), min(args.num, len(keep)), replace=False)
    grid = model.time_grid(args.steps)
    rows = {k: {t: ([], []) for t in grid[:-1]} for k in ("train", "sample")}
    end: list[np.ndarray] = []
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i in pick:
            ref = data[keep[int(i)]]
            pairs = torch.tensor(sorted(_pairs(ref)), dtype=torch.long).reshape(-1, 2)
            if not len(pairs):
                continue
            cond = ConditionBatch.from_conditions([_conditions("bonds", ref)], ref.num_atoms)
            batch = collate([ref])
            clean = batch_state(batch, model.codes, model.coder)
            mask, n = batch.mask, batch.mask.sum(1)
            m = mask.unsqueeze(-1).float()
            d_ref = _lengths(clean[0], batch.lattice, pairs)

            ctx = (model, pairs, d_ref, n)
            for t in grid[:-1]:  # training's states, the model's own prior for given bonds
                noise = (torch.rand(clean[0].shape, generator=g),
                         torch.randn(clean[1].shape, generator=g),
                         torch.randn(clean[2].shape, generator=g))
                if model.config.bond_prior == "harmonic":
                    noise = model._with_bond_prior(noise, clean[0], cond, mask)
                state = model.clamp(_interpolate(noise, clean, t, m), cond, n)
                d_hat = model.denoise(state, torch.full((1,), t), mask, cond)[0]
                _record(rows["train"][t], ctx, state, d_hat)
            x = model.bond_prior(torch.rand(clean[0].shape, generator=g), cond, mask) * m
            state = model.clamp((x, torch.randn(clean[1].shape, generator=g) * m,
                                 torch.randn(clean[2].shape, generator=g)), cond, n)
            est = None
            for t, tn in itertools.pairwise(grid):  # the sampler's Euler steps
                d_hat, c_hat, l_hat = model.denoise(state, torch.full((1,), t), mask, cond, 1.0,
                                                    est)
                _record(rows["sample"][t], ctx, state, d_hat)
                est = wrap_frac_torch(state[0] + d_hat) * m if model.self_conditioning else None
                r = (tn - t) / (1.0 - t)
                x, c, lcode = state
                state = model.clamp((wrap_frac_torch(x + r * d_hat) * m, (c + r * (c_hat - c)) * m,
                                     lcode + r * (l_hat - lcode)), cond, n)
            end.append((_lengths(state[0], model.coder.decode(state[2], n), pairs) / d_ref).numpy())
    for t in grid[:-1]:
        print(json.dumps({"t": round(t, 3), **{f"{k}_{w}": _stats(rows[k][t][j]) for k in rows
                                              for j, w in enumerate(("state", "prediction"))}}))
    print(json.dumps({"model": args.model, "structures": len(end), "end": _stats(end)}))


if __name__ == "__main__":
    main()
