"""Sampling speed in structures/s; prints one JSON object (a list with several ``--steps``).

    python benchmarks/sample_speed.py --model runs/diffusion_small/checkpoint.pt --num 100 \
        --steps 20 --batch-size 100 --device cpu
    python benchmarks/sample_speed.py --model random:base:base --num 1000 --steps default 100 \
        --batch-size 1000 --device cuda --bf16 --atoms-from prepared/qmof --max-atoms 150

``--model`` is ``default``, a diffusion checkpoint, or ``random:AE_PRESET:DENOISER_PRESET``
(untrained weights of those sizes: same speed as a trained model). Sizes are drawn from the
model's histogram, from ``--atoms-from`` (a prepared dataset, e.g. the QMOF150 mix), or fixed
with ``--atoms``. Time includes noise generation, the reverse chain, decoding and conversion to
``Crystal`` objects (not CIF writing); a small warm-up batch runs first. Several ``--steps``
values (``default``: the model's own) are timed one after another in the same process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch


def build_random(spec: str, hist: torch.Tensor | None):
    from mofasa.diffusion import DiffusionConfig, LatentDiffusion
    from mofasa.models import CrystalAutoencoder, get_preset
    from mofasa.models.denoiser import Denoiser, get_denoiser_preset

    _, ae_name, den_name = spec.split(":")
    torch.manual_seed(0)
    ae = CrystalAutoencoder(get_preset(ae_name))
    c = ae.config
    den = Denoiser(
        dataclasses.replace(
            get_denoiser_preset(den_name),
            latent_dim=c.latent_dim,
            global_latent_dim=c.global_latent_dim,
        )
    )
    if hist is None:  # QMOF-like spread if nothing better is given
        hist = torch.zeros(151, dtype=torch.long)
        hist[20:151] = 1
    return LatentDiffusion(ae, den, DiffusionConfig(), hist)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="random:tiny:tiny")
    p.add_argument("--num", type=int, default=100)
    p.add_argument("--steps", nargs="+", default=["default"],
                   help="step counts to time, each an integer or 'default' (the model's)")
    p.add_argument("--sampler", default=None, choices=("ddim", "ddpm"))
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--atoms", type=int, default=None)
    p.add_argument("--atoms-from", default=None, help="prepared dataset folder for sizes")
    p.add_argument("--max-atoms", type=int, default=None, help="cap sizes from --atoms-from")
    p.add_argument("--device", default="auto")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    try:
        step_list = [None if str(x) == "default" else int(x) for x in args.steps]
    except ValueError:
        p.error(f"--steps takes integers or 'default', got {args.steps}")
    if args.threads:
        torch.set_num_threads(args.threads)

    from mofasa.checkpoint import resolve_device
    from mofasa.sampling.api import iter_samples, load_model
    from mofasa.sampling.store import histogram_from_dataset

    hist = histogram_from_dataset(args.atoms_from) if args.atoms_from else None
    if hist is not None and args.max_atoms:
        hist = hist[: args.max_atoms + 1]
    device = resolve_device(args.device)
    if args.model.startswith("random:"):
        model = build_random(args.model, hist).to(device).eval()
    else:
        model = load_model(args.model, str(device))
    if hist is not None:
        model.num_atoms_hist = hist.to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    results = []
    for k, steps in enumerate(step_list):
        kw = {
            "steps": steps,
            "sampler": args.sampler,
            "atoms": args.atoms,
            "bf16": args.bf16,
            "batch_size": args.batch_size,
            "seed": args.seed,
        }
        if k == 0:  # warm-up (kernel selection, allocator) outside the timed runs
            for _ in iter_samples(model, range(10**6, 10**6 + min(8, args.num)), **kw):
                pass
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        atoms = 0
        for crystals in iter_samples(model, range(args.num), **kw):
            atoms += sum(c.num_atoms for c in crystals)
        sync()
        seconds = time.perf_counter() - start
        results.append(
            {
                "model": args.model,
                "num": args.num,
                "steps": steps or model.config.steps,
                "sampler": args.sampler or model.config.sampler,
                "batch_size": args.batch_size,
                "device": str(device),
                "bf16": args.bf16,
                "threads": torch.get_num_threads(),
                "atoms_from": args.atoms_from,
                "max_atoms": args.max_atoms,
                "mean_atoms": atoms / max(args.num, 1),
                "seconds": round(seconds, 3),
                "structures_per_s": round(args.num / seconds, 2),
                "seconds_per_1000": round(1000 * seconds / max(args.num, 1), 3),
                "denoiser_parameters": model.denoiser.num_parameters(),
                "peak_gpu_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                if device.type == "cuda" else None,
                "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                "cpu": platform.processor() or platform.machine(),
                "torch": torch.__version__,
            }
        )
        text = json.dumps(results[0] if len(step_list) == 1 else results, indent=1)
        if args.out:  # after every step count: a run cut short keeps what it measured
            Path(args.out).write_text(text + "\n")
    print(text)

if __name__ == "__main__":
    main()
