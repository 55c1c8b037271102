"""One arm of the denoiser bake-off at equal CPU time (issue 11 item 3), as JSON.

    python benchmarks/bakeoff.py --arm a --minutes 45 --out runs/bakeoff

Every arm: the same data (QMOF train <= 60 atoms, the latent cache of the bundled model's
frozen encoder), seed, batch 32, two threads, the same LR rule (warm-up 200, cosine over
100,000 steps, so stopping by time leaves every arm at the same point of its schedule), probes
every 500 steps into metrics.csv / curves.png, and a wall-clock budget (``run.max_time_s``).
Afterwards 300 de novo samples (DDIM 20, sizes from the training histogram, seed 0): pooled
bonded share, share of samples with a pair closer than 0.8 Å, share with a metal, C and H, and
the last probe values. Resumable: re-running the same command continues the arm's budget only if
``--minutes`` grows (the trainer counts its own wall time per call, so pass the remainder).

Arms:
  a: the latent denoiser (`small`: width 128, depth 6) with the small fixes: order embeddings
     initialised at std 0.02 instead of 1, ``diffusion.global_weight`` as measured (``--gw``).
  b: (a) plus pair terms: positions and lattice read from the denoiser's input (linear heads
     trained by an auxiliary loss against the clean structure), relative Fourier features of
     the minimum-image displacement and a distance RBF as one attention bias per head, computed
     once per forward and shared by the layers (`mofasa.models.pair_terms`).
  c: the explicit-coordinate hybrid (`coordflow_small`): flow matching of fractional
     coordinates on the torus, analog-bit type codes and the 6 lattice numbers; GNS k-NN
     message passing over the noisy coordinates + all-pairs attention with the pair terms of b
     (`mofasa.diffusion.coordflow`); no cache (no encoder), translation augmentation on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ARMS = {
    "a": ["model.order_init_std=0.02"],
    "b": ["model.order_init_std=0.02", "model.pair_terms=true"],
    "c": [],
}


def _summarise(crystals: list, seconds: float) -> dict:
    from mofasa.data.elements import IS_METAL
    from mofasa.data.quality import nearest_neighbours, pooled_bonded_share

    close = [bool((nearest_neighbours(c)[0] < 0.8).any()) for c in crystals]
    mch = [bool(IS_METAL[c.numbers].any()) and 6 in c.numbers and 1 in c.numbers
           for c in crystals]
    return {"num": len(crystals), "bonded_share": round(pooled_bonded_share(crystals), 4),
            "pair_below_0.8A": round(float(np.mean(close)), 4),
            "metal_c_h": round(float(np.mean(mch)), 4), "seconds": round(seconds, 1)}


def _sample_latent(model_path: Path, num: int) -> dict:
    from mofasa.sampling import sample

    t0 = time.perf_counter()
    crystals = sample(str(model_path), num=num, seed=0, steps=20, device="cpu", batch_size=100)
    return _summarise(crystals, time.perf_counter() - t0)


def _sample_coordflow(ckpt: Path, num: int, steps: int) -> dict:
    """Same atom counts as the latent arms (drawn from (seed 0, index) and the histogram)."""
    from mofasa.checkpoint import load_coordflow
    from mofasa.sampling.api import plan_sizes

    model = load_coordflow(ckpt)
    sizes = np.array(plan_sizes(range(num), 0, model.num_atoms_hist))
    g = torch.Generator().manual_seed(0)
    t0, crystals = time.perf_counter(), []
    for n in np.unique(sizes):
        mask = torch.ones(int((sizes == n).sum()), int(n), dtype=torch.bool)
        crystals += model.generate(mask, steps=steps, generator=g).unbatch()
    return _summarise(crystals, time.perf_counter() - t0)


def _last_probes(metrics: Path) -> dict:
    import csv

    last: dict[str, tuple[int, float]] = {}
    with open(metrics, newline="") as fh:
        for r in csv.DictReader(fh):
            if r["split"] in ("probe", "val"):
                key = r["name"] if r["split"] == "probe" else f"val_{r['name']}"
                last[key] = (int(r["step"]), float(r["value"]))
    return {k: {"step": step, "value": round(v, 4)} for k, (step, v) in sorted(last.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm", choices=sorted(ARMS), required=True)
    ap.add_argument("--minutes", type=float, default=45.0)
    ap.add_argument("--gw", type=float, default=1.0, help="diffusion.global_weight")
    ap.add_argument("--out", default="runs/bakeoff")
    ap.add_argument("--data", default="prepared/qmof")
    ap.add_argument("--autoencoder", default="runs/ae_default/checkpoint.pt")
    ap.add_argument("--cache", default="runs/latents_qmof60")
    ap.add_argument("--samples", type=int, default=300)
    args = ap.parse_args()

    run = Path(args.out) / args.arm
    common = [f"data.path={args.data}", "data.max_atoms=60", "data.batch_size=32",
              f"run.out_dir={run}", "run.threads=2", "run.log_every=50", "run.ckpt_every=1000",
              "run.val_every=1000", f"run.max_time_s={args.minutes * 60}",
              "optim.total_steps=100000", "optim.warmup_steps=200", "probes.every=500"]
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    if args.arm == "c":
        from mofasa.training.coordflow import load_coordflow_config, train_coordflow

        over = [*common, *ARMS["c"]]
        metrics = train_coordflow(load_coordflow_config("small", over))
    else:
        from mofasa.training.diffusion import load_diffusion_config, train_diffusion

        over = [*common, "data.translate=false", f"cache.path={args.cache}",
                f"diffusion.global_weight={args.gw}", *ARMS[args.arm]]
        metrics = train_diffusion(load_diffusion_config("small", over), args.autoencoder)
    train_s = time.perf_counter() - t0
    from mofasa.checkpoint import export_diffusion, load_checkpoint

    out = {"arm": args.arm, "overrides": over, "train_seconds_this_call": round(train_s, 1),
           "step": int(load_checkpoint(run / "checkpoint.pt")["step"]),
           "last_train": {k: round(v, 4) for k, v in metrics.items()},
           "last_probes": _last_probes(run / "metrics.csv")}
    if args.samples and args.arm == "c":
        out["samples"] = _sample_coordflow(run / "checkpoint.pt", args.samples, 50)
    elif args.samples:
        export = export_diffusion(run / "checkpoint.pt", run / "export.pt", bf16=False)
        out["samples"] = _sample_latent(export, args.samples)
    (run / "bakeoff.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
