"""Diffusion training throughput: frozen encoder on every batch vs the latent cache (JSON).

    python benchmarks/train_throughput.py --data prepared/qmof \
        --autoencoder runs/ae_default/checkpoint.pt --steps 80 --threads 2

Same model (the ``small`` diffusion config), data (QMOF <= 60 atoms), batch size and seed in
both modes; only where x0 comes from differs. Each step is timed by phase (data loading, the
encoder where it runs, the denoiser's forward, backward, optimiser + EMA) after ``--warmup``
steps, so the figures say where the step goes. Run it with nothing else on the cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def _timed_steps(model, loader, steps: int, warmup: int, lr: float) -> dict:
    """Train ``model`` for warmup + steps batches; per-phase seconds of the timed ones."""
    from mofasa.diffusion.batch import LatentBatch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    ema = [p.detach().clone() for p in model.denoiser.parameters()]
    phases = {k: [] for k in ("data", "encode", "forward", "backward", "optimizer", "step")}
    seen = 0
    it = iter(loader)
    model.train()
    for k in range(warmup + steps):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        t1 = time.perf_counter()
        if not isinstance(batch, LatentBatch):  # time the encoder apart (loss_terms reruns
            with torch.no_grad():  # it: subtract this from forward below)
                model.encode(batch)
        t2 = time.perf_counter()
        loss, _ = model(batch)
        t3 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t4 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema, model.denoiser.parameters(), strict=True):
                e.lerp_(p, 0.005)
        t5 = time.perf_counter()
        if k >= warmup:
            enc = t2 - t1
            phases["data"].append(t1 - t0)
            phases["encode"].append(enc)
            phases["forward"].append(max(t3 - t2 - enc, 0.0))
            phases["backward"].append(t4 - t3)
            phases["optimizer"].append(t5 - t4)
            phases["step"].append((t1 - t0) + (t3 - t2) + (t5 - t3))  # without the extra encode
            seen += batch.batch_size
    total = sum(phases["step"])
    return {"structures_per_s": round(seen / total, 1), "steps": steps,
            "s_per_step": round(total / steps, 4),
            "phase_share": {k: round(sum(v) / total, 3) for k, v in phases.items()
                            if k != "step"},
            "median_step_s": round(statistics.median(phases["step"]), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="prepared/qmof")
    ap.add_argument("--autoencoder", default="runs/ae_default/checkpoint.pt")
    ap.add_argument("--cache", default="runs/latents_qmof60")
    ap.add_argument("--config", default="small")
    ap.add_argument("--max-atoms", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mofasa.checkpoint import build_diffusion, load_autoencoder
    from mofasa.data.dataset import CrystalDataset, make_loader
    from mofasa.training.diffusion import load_diffusion_config
    from mofasa.training.latent_cache import (
        LatentCacheConfig,
        cache_statistics,
        open_latent_cache,
    )

    cfg = load_diffusion_config(args.config)
    ae, _ = load_autoencoder(args.autoencoder)
    t0 = time.perf_counter()
    built = not (Path(args.cache) / "meta.json").is_file()
    train_c, _ = open_latent_cache(ae, LatentCacheConfig(path=args.cache), args.data,
                                   max_atoms=args.max_atoms, seed=args.seed, translate=False)
    cache_s = time.perf_counter() - t0
    stats = cache_statistics(train_c)
    train_p = CrystalDataset(args.data, "train", max_atoms=args.max_atoms)
    out = {"config": args.config, "batch_size": args.batch_size, "threads": args.threads,
           "train_structures": len(train_p), "torch": torch.__version__,
           "cache": {"path": args.cache, "built_now": built, "seconds": round(cache_s, 1),
                     "bytes": sum(f.stat().st_size for f in Path(args.cache).iterdir())}}
    for name, ds in (("encoder_per_batch", train_p), ("latent_cache", train_c)):
        torch.manual_seed(args.seed)
        model = build_diffusion(cfg.model, cfg.diffusion, ae)
        model.set_latent_stats(stats)
        loader = make_loader(ds, args.batch_size, seed=args.seed)
        out[name] = _timed_steps(model, loader, args.steps, args.warmup, cfg.optim.lr)
    out["speedup"] = round(out["latent_cache"]["structures_per_s"]
                           / out["encoder_per_batch"]["structures_per_s"], 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
