"""Novelty throughput: StructureMatcher against the QMOF train split, with the exact-safe
pre-filter (reduced-formula buckets + reduced site-count divisibility).

Queries: ``--n`` structures of the prepared val split (other QMOF entries: mostly novel, some
duplicates of training entries) and ``--n`` of the train split itself, rigidly shifted and with
their atoms permuted (each must find itself). Prints JSON: index build time, seconds per query,
full matcher fits run versus the brute-force pair count.

    nice -n 10 .venv/bin/python benchmarks/eval_novelty.py --reference prepared/qmof --n 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", default="prepared/qmof")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--max-atoms", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from mofasa.data.dataset import CrystalDataset
    from mofasa.evaluation.novelty import Matcher, ReferenceIndex, formula_key

    t0 = time.perf_counter()
    ref = ReferenceIndex.from_prepared(args.reference, "train")
    t_index = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed)
    report: dict = {
        "reference": f"{args.reference}:train",
        "reference_size": len(ref),
        "index_build_s": round(t_index, 2),
        "buckets": len(ref.buckets),
    }
    for split in ("val", "train"):
        ds = CrystalDataset(args.reference, split, max_atoms=args.max_atoms)
        picks = rng.choice(len(ds), size=min(args.n, len(ds)), replace=False)
        matcher = Matcher()
        times, matched, self_found, candidates = [], 0, 0, 0
        for k in picks:
            c = ds[int(k)]
            if split == "train":  # same crystal, other origin and atom order
                order = rng.permutation(c.num_atoms)
                c = c.copy(numbers=c.numbers[order], frac=c.frac[order] + rng.random(3))
            t = time.perf_counter()
            hit, _ = ref.find_match(c, matcher)
            times.append(time.perf_counter() - t)
            candidates += len(ref.candidates(formula_key(c.numbers)))
            matched += hit is not None
            self_found += hit == ds.ids[ds._index[int(k)]]
        report[f"queries_{split}"] = {
            "n": len(picks),
            "matched_rate": round(matched / len(picks), 4),
            "found_itself": self_found if split == "train" else None,
            "s_per_query": {
                "mean": round(statistics.fmean(times), 4),
                "median": round(statistics.median(times), 4),
                "max": round(max(times), 3),
            },
            "same_formula_candidates": candidates,
            "full_fits_run": matcher.n_fits,
            "brute_force_pairs": len(picks) * len(ref),
            "queries_per_s": round(len(picks) / sum(times), 3),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
