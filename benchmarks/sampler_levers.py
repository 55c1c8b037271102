"""Sampler levers of a CoordFlow checkpoint on the same de novo noise, with MOFChecker.

For each variant: N samples (sizes from the model's histogram, seed 0, the main job's noise),
then bonded share, share with a pair < 0.8 Å, metal + C + H share and MOFChecker validity
(headline mode, screened) with the first failing check counted. Prints one JSON line per
variant.

    python benchmarks/sampler_levers.py MODEL [--num 100] [--variants steps=25 steps=25,refine=4]

A variant is comma-separated ``key=value``: ``steps`` (Euler steps), ``refine`` (extra
corrector steps after the last one), ``refine_t`` (the time they denoise at), ``grid_power``,
``restarts``, ``restart_t``, ``restart_steps`` (restart sampling).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import time
import warnings

import numpy as np
import torch

INT_FIELDS = ("steps", "refine", "restarts", "restart_steps")


def _variant(text: str) -> dict[str, float]:
    out = {}
    for part in text.split(","):
        key, value = part.split("=")
        out[key] = float(value)
    return out


def _draw(model, sizes: np.ndarray, steps: int, batch: int = 50) -> list:
    from mofasa.sampling.api import CoordNoise

    order = np.argsort(sizes, kind="stable")
    out: dict[int, object] = {}
    for k in range(0, len(sizes), batch):
        idx = order[k:k + batch].tolist()
        ns = sizes[idx].tolist()
        mask = torch.arange(max(ns)).unsqueeze(0) < torch.tensor(ns).unsqueeze(1)
        got = model.generate(mask, steps=steps, noise_fn=CoordNoise(idx, ns, 0, (7, 6)))
        out.update(zip(idx, got.unbatch(), strict=True))
    return [out[i] for i in range(len(sizes))]


def _scores(crystals: list, validity: bool) -> dict[str, object]:
    from mofasa.data.elements import IS_METAL
    from mofasa.data.quality import close_pair_share, pooled_bonded_share
    from mofasa.evaluation.validity import check_validity

    mch = [bool(IS_METAL[c.numbers].any() and (c.numbers == 6).any()
                and (c.numbers == 1).any()) for c in crystals]
    row: dict[str, object] = {
        "bonded": round(pooled_bonded_share(crystals), 4),
        "pair_below_0.8A": round(close_pair_share(crystals), 3),
        "metal_c_h": round(float(np.mean(mch)), 3)}
    if validity:
        verdicts = [check_validity(c, "default", screen=True) for c in crystals]
        row["valid"] = round(float(np.mean([v["valid"] for v in verdicts])), 3)
        row["first_failing"] = dict(collections.Counter(
            v.get("stopped_at") for v in verdicts if not v["valid"]).most_common(5))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--num", type=int, default=100)
    parser.add_argument("--variants", nargs="+", default=["steps=25"])
    parser.add_argument("--no-validity", action="store_true")
    parser.add_argument("--raw", action="store_true", help="the raw weights, not the EMA")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    from mofasa.checkpoint import load_coordflow
    from mofasa.sampling.api import plan_sizes

    model = load_coordflow(args.model, ema=not args.raw)
    base = model.config
    sizes = np.array(plan_sizes(range(args.num), 0, model.num_atoms_hist))
    for text in args.variants:
        v = _variant(text)
        fields = {k: (int(x) if k in INT_FIELDS else x) for k, x in v.items() if k != "steps"}
        model.config = dataclasses.replace(base, **fields)
        t0 = time.perf_counter()
        crystals = _draw(model, sizes, int(v.get("steps", base.steps)))
        seconds = time.perf_counter() - t0
        row = {"variant": text, "seconds": round(seconds, 1), **_scores(crystals,
                                                                        not args.no_validity)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
