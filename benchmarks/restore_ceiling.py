"""Restoration ceiling of a CoordFlow checkpoint: real structures noised to t0 as in training.

Structures of a prepared split (within the model's atom range, seeded draw) are noised to
``t0`` the way training noises them, integrated back to t = 1 (``--steps`` Euler steps on the
sampler's grid mapped onto [t0, 1]) and given ``--refine`` corrector steps; scored as
`sampler_levers.py` scores de novo samples (bonded share, pair < 0.8 Å, metal + C + H,
MOFChecker headline validity, screened, with the first failing check). The real structures'
own scores come first. De novo validity sits near 0 where this still has signal: it says at
which noise level a checkpoint stops restoring chemistry, and compared between the train and
val splits whether it restores what it memorised.

    python benchmarks/restore_ceiling.py MODEL --num 200 --t0 1 0.9 0.8 --refine 0 18
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--num", type=int, default=200)
    ap.add_argument("--t0", type=float, nargs="+", default=[1.0, 0.99, 0.95, 0.9])
    ap.add_argument("--refine", type=int, nargs="+", default=[0, 18])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--refine-t", type=float, default=None,
                    help="the corrector steps' time (default: the model's)")
    ap.add_argument("--skip-real", action="store_true",
                    help="do not score the real structures themselves")
    ap.add_argument("--split", default="val", choices=("train", "val", "test"))
    ap.add_argument("--data", default="prepared/qmof")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    from mofasa.checkpoint import load_coordflow
    from mofasa.data import collate
    from mofasa.data.dataset import CrystalDataset
    from mofasa.diffusion.coordflow import _interpolate
    from mofasa.models.coord_denoiser import batch_state
    from mofasa.sampling.settings import trained_atom_range

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from sampler_levers import _scores  # the de novo screen's scores, for comparison

    model = load_coordflow(args.model)
    if args.refine_t is not None:
        model.config = dataclasses.replace(model.config, refine_t=args.refine_t)
    lo, hi = trained_atom_range(model.num_atoms_hist)
    data = CrystalDataset(args.data, args.split, max_atoms=hi)
    keep = [i for i in range(len(data)) if data.num_atoms[i] >= lo]
    pick = np.random.default_rng(0).choice(len(keep), min(args.num, len(keep)), replace=False)
    refs = sorted((data[keep[int(i)]] for i in pick), key=lambda c: c.num_atoms)
    head = {"model": args.model, "split": args.split, "refs": len(refs),
            "refine_t": model.config.refine_t}
    print(json.dumps({**head, "real": None if args.skip_real else _scores(refs, True)}),
          flush=True)
    for t0 in args.t0:
        for refine in args.refine:
            t_start = time.perf_counter()
            out = []
            g = torch.Generator().manual_seed(0)
            for k in range(0, len(refs), 50):
                batch = collate(refs[k:k + 50])
                clean = batch_state(batch, model.codes, model.coder)
                mask = batch.mask
                m = mask.unsqueeze(-1).float()
                noise = (torch.rand(clean[0].shape, generator=g),
                         torch.randn(clean[1].shape, generator=g),
                         torch.randn(clean[2].shape, generator=g))
                with torch.no_grad():
                    state = _interpolate(noise, clean, t0, m)
                    if t0 < 1.0:
                        grid = [t0 + (1 - t0) * s for s in model.time_grid(args.steps)]
                        state = model._integrate(state, grid, mask, None, 1.0, None, None,
                                                 False)[0]
                    state = model._refine(state, mask, None, 1.0, refine)
                out += model._to_batch(*state, mask, None).unbatch()
            row = {"t0": t0, "refine": refine, "seconds": round(time.perf_counter() - t_start, 1),
                   **_scores(out, True)}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
