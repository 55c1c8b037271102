"""Fast sanity figures of sampled structures (no MOFChecker): geometry and composition.

    python benchmarks/sample_quality.py --model default --num 1000 --steps 20 [--out DIR]

Sane geometry: finite positive volume and no two atoms (or an atom and its image) closer than
0.5 Å. Composition: has a metal, C and H. Sizes are drawn from the training histogram.
Prints JSON; with --out also writes the CIFs and samples.db through `mofasa sample`'s writer.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from mofasa.data.checks import min_interatomic_distance
from mofasa.data.elements import IS_METAL


def sanity(crystal) -> dict:
    vol = float(np.linalg.det(crystal.lattice))
    finite = bool(np.isfinite(crystal.frac).all() and np.isfinite(crystal.lattice).all())
    dmin = min_interatomic_distance(crystal, 0.5) if finite and vol > 0 else 0.0
    z = set(crystal.numbers.tolist())
    return {
        "sane_geometry": finite and vol > 0 and dmin >= 0.5,
        "has_metal_c_h": bool(IS_METAL[list(z)].any()) and 6 in z and 1 in z,
        "n_atoms": crystal.num_atoms,
    }


def main() -> None:
    from mofasa.sampling import sample

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="default")
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    start = time.perf_counter()
    crystals = sample(model=args.model, num=args.num, steps=args.steps, seed=args.seed,
                      batch_size=args.batch_size, device="cpu")
    elapsed = time.perf_counter() - start
    rows = [sanity(c) for c in crystals]
    both = [r["sane_geometry"] and r["has_metal_c_h"] for r in rows]
    print(json.dumps({
        "benchmark": "sample_quality", "model": args.model, "num": args.num,
        "steps": args.steps, "sampling_s": round(elapsed, 1),
        "structures_per_s": round(args.num / elapsed, 2),
        "sane_geometry_rate": float(np.mean([r["sane_geometry"] for r in rows])),
        "metal_c_h_rate": float(np.mean([r["has_metal_c_h"] for r in rows])),
        "both_rate": float(np.mean(both)),
        "mean_atoms": float(np.mean([r["n_atoms"] for r in rows])),
    }, indent=1))


if __name__ == "__main__":
    main()
