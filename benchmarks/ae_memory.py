"""Peak memory and time of one autoencoder training step vs a materialised all-pairs baseline.

Each (model, N) point runs in a fresh subprocess (or, on CUDA with ``--in-process``, all in one
process with the peak statistics reset per point); peak memory is the growth of the process's
maximum RSS over model construction + one forward + backward (CPU), or
``torch.cuda.max_memory_allocated`` over construction and two steps (CUDA; the second step is
the one timed).
The baseline replaces the decoder's attention step by pair features of shape (B, N, N, width)
(an MLP over every pair, summed over neighbours), the pattern that all-pairs models without an
attention kernel use. Prints JSON.

    python benchmarks/ae_memory.py [--sizes 100 250 500] [--config small] [--device cpu]
    python benchmarks/ae_memory.py --sizes 100 250 500 1000 --config base --device cuda \
        --bf16 --in-process --out ae_memory.json
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


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


def make_step(kind: str, n: int, batch: int, config: str, device: str, bf16: bool
              ) -> tuple[Callable[[], None], list]:
    """Build one (model, N) point; returns ``(step, parameters)``: ``step()`` runs one forward +
    backward under bf16 autocast when ``bf16``."""
    import torch
    from torch import nn

    from mofasa.training.autoencoder import build_autoencoder, load_ae_config

    cfg = load_ae_config(config).model
    dev_type = torch.device(device).type
    amp = lambda: torch.autocast(dev_type, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    if kind == "mofasa":
        model = build_autoencoder(cfg).to(device)
        data = random_batch(n, batch, device)

        def step() -> None:
            with amp():
                loss, _ = model(data)
            loss.backward()

        return step, list(model.parameters())
    width, depth = cfg.decoder.width, cfg.decoder.depth
    x = torch.randn(batch, n, width, device=device, requires_grad=True)
    mlps = nn.ModuleList(
        nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        for _ in range(depth)
    ).to(device)

    def pair_step() -> None:
        with amp():
            h = x
            for mlp in mlps:
                pair = mlp(h[:, :, None, :] + h[:, None, :, :])  # (B, N, N, width): materialised
                h = h + pair.mean(dim=2)  # (B, N, width)
            loss = h.float().square().mean()
        loss.backward()

    return pair_step, [x, *mlps.parameters()]


def child(kind: str, n: int, batch: int, config: str, device: str, bf16: bool = False) -> dict:
    """One point. CPU: peak RSS growth and time over model construction + one step (as in
    the CPU table of RESULTS.md). CUDA: peak allocated memory over construction and two steps
    (the first warms up kernels), time of the second step alone (synchronised)."""
    import torch

    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    out = {"kind": kind, "n_atoms": n, "batch": batch, "bf16": bf16}
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()
    start = time.perf_counter()
    try:
        step, params = make_step(kind, n, batch, config, device, bf16)
        step()
        if cuda:
            torch.cuda.synchronize()
            out["first_step_s"] = round(time.perf_counter() - start, 3)
            for p in params:
                p.grad = None  # the timed step allocates its gradients again, like the first
            t1 = time.perf_counter()
            step()
            torch.cuda.synchronize()
            elapsed = time.perf_counter() - t1
            peak = (torch.cuda.max_memory_allocated() - base_alloc) / 2**20
        else:
            elapsed = time.perf_counter() - start
            peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    except torch.cuda.OutOfMemoryError as exc:
        return {**out, "error": f"out of memory: {str(exc)[:200]}"}
    finally:
        step = params = None  # free this point's tensors before the next in-process point
        if cuda:
            gc.collect()
            torch.cuda.empty_cache()
    return {**out, "peak_mib": round(peak, 1), "step_s": round(elapsed, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 250, 500])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--config", default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (as training on CUDA)")
    ap.add_argument("--in-process", action="store_true",
                    help="all points in this process (CUDA: peak stats are reset per point; "
                         "saves a process start and CUDA initialisation per point)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "N"))
    args = ap.parse_args()
    if args.child:
        out = child(args.child[0], int(args.child[1]), args.batch, args.config, args.device,
                    args.bf16)
        print(json.dumps(out))
        return
    if args.in_process and not args.device.startswith("cuda"):
        ap.error("--in-process needs a CUDA device (CPU peak RSS is per process)")
    results = []

    def report() -> str:
        text = json.dumps({"benchmark": "ae_memory", "config": args.config,
                           "device": args.device, "bf16": args.bf16,
                           "gpu": _gpu_name(args.device), "results": results}, indent=1)
        if args.out:  # rewritten after every point: a run cut short keeps what it measured
            Path(args.out).write_text(text + "\n")
        return text

    if args.in_process:  # CUDA context and library workspaces: not part of the first point
        for kind in ("mofasa", "pairs_baseline"):
            child(kind, 16, args.batch, args.config, args.device, args.bf16)
    for n in args.sizes:
        for kind in ("mofasa", "pairs_baseline"):
            if args.in_process:
                results.append(child(kind, n, args.batch, args.config, args.device, args.bf16))
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
                report()
                continue
            cmd = [sys.executable, __file__, "--child", kind, str(n), "--batch",
                   str(args.batch), "--config", args.config, "--device", args.device,
                   *(["--bf16"] if args.bf16 else [])]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode == 0:
                results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            else:
                results.append({"kind": kind, "n_atoms": n, "error": proc.stderr[-300:]})
            report()
    print(report())


def _gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device))


if __name__ == "__main__":
    main()
