"""Probe curves of the bake-off arms side by side (PNG) and their last values (JSON).

    python benchmarks/bakeoff_curves.py --runs runs/bakeoff --out benchmarks/bakeoff_probes.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PANELS = (("sdedit_bonded", "SDEdit bonded share (t = 0.2 latent / 0.8 coords)"),
          ("denovo_bonded", "de novo bonded share (64 samples)"),
          ("context_gap", "context gap at t = 0.3 (latent arms)"),
          ("near_attention", "attention mass within 2 Å (latent arms)"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/bakeoff")
    ap.add_argument("--out", default="benchmarks/bakeoff_probes.png")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mofasa.training.curves import read_metrics

    arms = sorted(p for p in Path(args.runs).iterdir() if (p / "metrics.csv").is_file())
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    last = {}
    for arm in arms:
        series = read_metrics(arm / "metrics.csv")
        last[arm.name] = {}
        for ax, (name, title) in zip(axes, PANELS, strict=True):
            points = series.get(("probe", name))
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=f"arm {arm.name}", lw=1.4)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step")
            last[arm.name][name] = round(values[-1], 4)
        floor = series.get(("probe", "sdedit_floor"))
        if floor:
            axes[0].axhline(floor[-1][1], ls=":", lw=1, color="grey")
    axes[1].axhline(0.46, ls=":", lw=1, color="grey")  # decoded N(0, 1) latents
    axes[3].axhline(0.05, ls=":", lw=1, color="grey")  # ~ uniform attention
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(json.dumps({"png": args.out, "last": last}, indent=1))


if __name__ == "__main__":
    main()
