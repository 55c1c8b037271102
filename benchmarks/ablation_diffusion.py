"""Denoiser ablation at equal compute: self-conditioning and order-index embeddings on / off.

Each variant trains the same denoiser (default: width 64, depth 4) for the same number of steps
on the same data, seed and frozen autoencoder, then samples the same sizes with the same seed.
Figures per variant: last validation v-loss (as logged by the trainer), sampling time, and
sanity of ``--num`` samples: sane geometry (finite positive volume, no pair < 0.5 Å), metal + C +
H present, and the share of atoms whose nearest neighbour sits at a bonding distance (0.7-1.3x
the sum of covalent radii; a generated framework needs nearly all atoms bonded). Resumable: a
finished variant is not retrained.

    nice -n 10 .venv/bin/python benchmarks/ablation_diffusion.py --steps 600 --out runs/ablation
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    "full": [],
    "no_self_cond": ["model.self_condition=false", "diffusion.self_cond_prob=0"],
    "no_order": ["model.use_order_embeddings=false"],
    "neither": ["model.self_condition=false", "diffusion.self_cond_prob=0",
                "model.use_order_embeddings=false"],
}


def bonded_share(crystal) -> float:
    """Share of atoms whose nearest periodic neighbour lies within 0.7-1.3x r_cov(i) + r_cov(j)."""
    from mofasa.data.elements import COVALENT_RADII

    n = crystal.num_atoms
    if n < 2 or not np.isfinite(crystal.frac).all() or np.linalg.det(crystal.lattice) <= 0:
        return 0.0
    shifts = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])
    diff = crystal.frac[None, :, None, :] - crystal.frac[:, None, None, :] + shifts  # (N,N,27,3)
    dist = np.linalg.norm(diff @ crystal.lattice, axis=-1)  # (N, N, 27)
    dist[np.arange(n), np.arange(n), 13] = np.inf  # an atom is not its own neighbour
    nearest = dist.min(axis=2)  # (N, N)
    j = nearest.argmin(axis=1)  # (N,)
    r = COVALENT_RADII[crystal.numbers]
    ratio = nearest[np.arange(n), j] / (r + r[j])
    return float(((ratio > 0.7) & (ratio < 1.3)).mean())


def run_variant(name: str, args: argparse.Namespace) -> dict:
    from sample_quality import sanity  # this folder is on sys.path when run as a script

    from mofasa.sampling import sample
    from mofasa.training.diffusion import load_diffusion_config, train_diffusion

    out = Path(args.out) / name
    overrides = [
        f"model.backbone.width={args.width}", f"model.backbone.depth={args.depth}",
        "model.backbone.heads=4", f"model.time_embed_dim={args.width}",
        f"data.path={args.data}", f"data.max_atoms={args.max_atoms}",
        f"data.batch_size={args.batch_size}", f"optim.total_steps={args.steps}",
        "optim.warmup_steps=100", "optim.lr=1e-3", f"run.out_dir={out}",
        f"run.val_every={args.steps}", "run.val_batches=20", f"run.ckpt_every={args.steps // 4}",
        "run.log_every=50", "run.threads=1", "run.seed=0", "diffusion.stats_max_structures=1000",
        *VARIANTS[name],
    ]
    cfg = load_diffusion_config("small", overrides)
    start = time.perf_counter()
    train_diffusion(cfg, args.autoencoder)
    train_s = time.perf_counter() - start
    from mofasa.checkpoint import load_checkpoint

    if int(load_checkpoint(out / "checkpoint.pt")["step"]) < args.steps:  # SIGTERM / time limit
        raise SystemExit(f"{name}: training stopped early; rerun the same command to resume")
    val = _last_val_loss(out / "metrics.csv")
    start = time.perf_counter()
    crystals = sample(model=out / "checkpoint.pt", num=args.num, seed=args.seed, batch_size=100,
                      device="cpu")
    sample_s = time.perf_counter() - start
    rows = [sanity(c) for c in crystals]
    return {
        "variant": name, "overrides": VARIANTS[name], "train_steps": args.steps,
        "train_s_this_call": round(train_s, 1), "val_loss": val,
        "sampling_s": round(sample_s, 1),
        "sane_geometry_rate": float(np.mean([r["sane_geometry"] for r in rows])),
        "metal_c_h_rate": float(np.mean([r["has_metal_c_h"] for r in rows])),
        "bonded_atom_share": float(np.mean([bonded_share(c) for c in crystals])),
    }


def _last_val_loss(path: Path) -> float | None:
    import csv

    rows = [r for r in csv.DictReader(path.open()) if r["split"] == "val" and r["name"] == "loss"]
    return float(rows[-1]["value"]) if rows else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--autoencoder", default="runs/autoencoder_small/checkpoint.pt")
    p.add_argument("--data", default="prepared/qmof")
    p.add_argument("--max-atoms", type=int, default=60)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--num", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default="full,no_self_cond,no_order")
    p.add_argument("--out", default="runs/ablation")
    args = p.parse_args()
    results = [run_variant(v, args) for v in args.variants.split(",")]
    print(json.dumps({"benchmark": "ablation_diffusion", "width": args.width,
                      "depth": args.depth, "max_atoms": args.max_atoms,
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
