"""The campaign's probes against steps (PNG) and their values (JSON), across its stages.

    python benchmarks/campaign_curves.py --stages runs/bakeoff/c runs/campaign \
        --out docs/img/campaign_probes.png

Each stage is a run folder with a ``metrics.csv`` (a warm-started run continues the step
count of the one before it, ``run.init_keep_step=true``); the stages are drawn as one curve
per probe, with a marker where a stage starts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PANELS = (("denovo_bonded", "de novo bonded share (64 samples)"),
          ("denovo_pair_below_0.8A", "de novo: samples with a pair < 0.8 Å"),
          ("sdedit_bonded", "SDEdit bonded share from t = 0.8"),
          ("loss_coord", "validation coordinate loss (Å² per atom)"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", nargs="+", required=True)
    ap.add_argument("--out", default="docs/img/campaign_probes.png")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mofasa.training.curves import read_metrics

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    table: dict[str, list] = {}
    for stage in args.stages:
        series = read_metrics(Path(stage) / "metrics.csv")
        for ax, (name, title) in zip(axes, PANELS, strict=True):
            split = "val" if name == "loss_coord" else "probe"
            points = series.get((split, name))
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker=".", label=Path(stage).name)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step")
            table.setdefault(name, []).extend(
                [int(s), round(float(v), 4)] for s, v in points)
    for ax in axes:
        ax.legend(fontsize=7)
        ax.xaxis.set_major_locator(plt.MaxNLocator(5))  # 5-digit steps: few ticks, no overlap
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(json.dumps(table))


if __name__ == "__main__":
    main()
