"""Loss curves from the long-format metrics CSV (step, split, name, value) to a PNG."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

__all__ = ["plot_metrics", "read_metrics"]


def read_metrics(path: str | Path) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """{(split, name): [(step, value), ...]} from a metrics CSV."""
    series: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            series[(row["split"], row["name"])].append((int(row["step"]), float(row["value"])))
    return dict(series)


DEFAULT_PANELS = ("loss", "type_acc", "coord_rmsd", "lattice_loss")


def plot_metrics(path: str | Path, out: str | Path,
                 names: tuple[str, ...] = DEFAULT_PANELS) -> None:
    """One panel per metric name (train and val overlaid, log scale for losses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics(path)
    present = [n for n in names if any(key[1] == n for key in series)]
    present = present or sorted({key[1] for key in series})[:4]
    # every training-time probe gets a panel (they are few and are what a long run is read by)
    present += sorted({n for split, n in series if split == "probe" and n != "probe_seconds"})
    cols = min(len(present), 4)
    rows = -(-len(present) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(present):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, present, strict=False):
        for split in ("train", "val", "probe"):
            points = series.get((split, name))
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, label=split, lw=1.2)
        ax.set_title(name)
        ax.set_xlabel("step")
        panel = [v for split in ("train", "val", "probe")
                 for _, v in series.get((split, name), [])]
        if "loss" in name and panel and min(panel) > 0:
            ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
