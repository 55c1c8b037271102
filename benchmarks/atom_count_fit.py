"""How well p(N | condition) from the train split predicts held-out val atom counts (JSON).

    python benchmarks/atom_count_fit.py --data prepared/qmof --max-atoms 60

For every val structure: its element set (``--elements``) and each of its metals
(``--metal``) as the condition; scores of the true N under the proposal: mean log-likelihood,
share with N in the proposal's support, share of val structures whose condition had to back
off, the median |N_drawn - N| of one draw per structure, all beside the same scores of the
global histogram (the unconditioned baseline).
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np


def _scores(probs: list[np.ndarray], truth: np.ndarray, rng: np.random.Generator) -> dict:
    ll, inside, err = [], [], []
    for p, n in zip(probs, truth, strict=True):
        q = p[n] if n < len(p) else 0.0
        ll.append(np.log(max(q, 1e-12)))
        inside.append(q > 0)
        err.append(abs(int(rng.choice(len(p), p=p)) - int(n)))
    return {"mean_log_likelihood": round(float(np.mean(ll)), 4),
            "true_n_in_support": round(float(np.mean(inside)), 4),
            "median_abs_error_of_a_draw": float(np.median(err)),
            "mean_abs_error_of_a_draw": round(float(np.mean(err)), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="prepared/qmof")
    ap.add_argument("--max-atoms", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from mofasa.data.atom_counts import AtomCountModel, AtomCountWarning
    from mofasa.data.dataset import CrystalDataset
    from mofasa.data.elements import IS_METAL
    from mofasa.training.coordflow import structure_numbers

    train = structure_numbers(CrystalDataset(args.data, "train", max_atoms=args.max_atoms))
    val = structure_numbers(CrystalDataset(args.data, "val", max_atoms=args.max_atoms))
    model = AtomCountModel.fit(train)
    truth = np.array([len(v) for v in val])
    glob, _ = model.histogram()
    out = {"train": len(train), "val": len(val), "element_sets_in_train": len(model.by_elements)}
    for name in ("elements", "metal"):
        probs, backed, rows = [], 0, []
        for v in val:
            z = np.unique(v)
            conds = [{"elements": z.tolist()}] if name == "elements" else [
                {"metal": int(m)} for m in z[IS_METAL[z]]]
            for kw in conds:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", AtomCountWarning)
                    p, _ = model.histogram(**kw)
                backed += bool(caught)
                probs.append(p)
                rows.append(len(v))
        rng = np.random.default_rng(args.seed)
        truth_rows = np.array(rows)
        out[name] = {"conditions": len(probs), "backed_off": backed,
                     "proposal": _scores(probs, truth_rows, rng),
                     "global_histogram": _scores([glob] * len(probs), truth_rows,
                                                 np.random.default_rng(args.seed))}
    out["val_mean_n"] = round(float(truth.mean()), 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
