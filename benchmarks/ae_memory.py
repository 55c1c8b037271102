"""Peak memory and time of one autoencoder training step vs a materialised all-pairs baseline.

Each (model, N) point runs in a fresh subprocess; peak memory is the growth of the process's
maximum RSS over one forward + backward (CPU), or ``torch.cuda.max_memory_allocated`` (GPU).
The baseline replaces the decoder's attention step by pair features of shape (B, N, N, width)
(an MLP over every pair, summed over neighbours), the pattern that all-pairs models without an
attention kernel use. Prints JSON.

    python benchmarks/ae_memory.py [--sizes 100 250 500] [--config small] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def random_batch(n: int, batch: int, device: str):
    import numpy as np

    from mofasa.data import Crystal, collate

    rng = np.random.default_rng(0)
    side = (n * 14.0) ** (1 / 3)  # ~14 Å^3 per atom, MOF-like density
    crystals = []
    for _ in range(batch):
        numbers = rng.choice([1, 6, 7, 8, 30], size=n)
        crystals.append(Crystal(numbers, rng.random((n, 3)), np.eye(3) * side))
    return collate(crystals).to(device)


def pair_baseline_step(n: int, batch: int, width: int, depth: int, device: str) -> None:
    import torch
    from torch import nn

    x = torch.randn(batch, n, width, device=device, requires_grad=True)
    mlps = nn.ModuleList(
        nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        for _ in range(depth)
    ).to(device)
    h = x
    for mlp in mlps:
        pair = mlp(h[:, :, None, :] + h[:, None, :, :])  # (B, N, N, width): materialised
        h = h + pair.mean(dim=2)  # (B, N, width)
    h.square().mean().backward()


def model_step(n: int, batch: int, config: str, device: str) -> None:
    from mofasa.training.autoencoder import build_autoencoder, load_ae_config

    model = build_autoencoder(load_ae_config(config).model).to(device)
    data = random_batch(n, batch, device)
    loss, _ = model(data)
    loss.backward()


def child(kind: str, n: int, batch: int, config: str, device: str) -> dict:
    import torch

    torch.manual_seed(0)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if kind == "mofasa":
        model_step(n, batch, config, device)
    else:
        from mofasa.training.autoencoder import load_ae_config

        dec = load_ae_config(config).model.decoder
        pair_baseline_step(n, batch, dec.width, dec.depth, device)
    elapsed = time.perf_counter() - start
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return {
        "kind": kind,
        "n_atoms": n,
        "batch": batch,
        "peak_mib": round(peak, 1),
        "step_s": round(elapsed, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 250, 500])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--config", default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "N"))
    args = ap.parse_args()
    if args.child:
        out = child(args.child[0], int(args.child[1]), args.batch, args.config, args.device)
        print(json.dumps(out))
        return
    results = []
    for n in args.sizes:
        for kind in ("mofasa", "pairs_baseline"):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                kind,
                str(n),
                "--batch",
                str(args.batch),
                "--config",
                args.config,
                "--device",
                args.device,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode == 0:
                results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            else:
                results.append({"kind": kind, "n_atoms": n, "error": proc.stderr[-300:]})
    print(
        json.dumps(
            {
                "benchmark": "ae_memory",
                "config": args.config,
                "device": args.device,
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
