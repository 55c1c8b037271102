"""Why do samples fail on undercoordinated carbon? Carbon degrees of samples vs references.

    python benchmarks/carbon_coordination.py MODEL --conditions 100 --modes unconditional formula
    python benchmarks/carbon_coordination.py MODEL --self-restrain 300

Samples (`conditioning_eval.py`'s draw of val conditions, one sample each, w = 1, Euler 10 + 18)
and their references are read with the canonical bond rule (d < r_i + r_j + 0.45 Å): the share
of carbons with each number of bonded neighbours, and with each (degree, bonded H) pair. With
``--self-restrain STEPS`` the unconditional samples also get the sampler's bond restraint with
their *own* bonds (the pairs the rule already calls bonded pulled to the covalent-radius sums,
the rest pushed out) and are scored with MOFChecker before and after: if validity stays put,
the failures are in the bond graph itself, not in the last tenths of an Ångström.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def carbon_degrees(crystals: list) -> dict[str, dict[str, float]]:
    """Shares of carbons by bonded degree and by (degree, bonded H), pooled over crystals
    (entries below 1% dropped from the second)."""
    from mofasa.data.canonical import bond_edges

    deg_n: collections.Counter = collections.Counter()
    deg_h: collections.Counter = collections.Counter()
    for c in crystals:
        pairs, _ = bond_edges(c.lattice, c.frac, c.numbers)
        deg = np.bincount(pairs[:, 0], minlength=c.num_atoms)
        for i in np.flatnonzero(c.numbers == 6):
            nbr = pairs[pairs[:, 0] == i, 1]
            deg_n[int(deg[i])] += 1
            deg_h[(int(deg[i]), int((c.numbers[nbr] == 1).sum()))] += 1
    total = max(sum(deg_n.values()), 1)
    return {"degree": {str(k): round(v / total, 3) for k, v in sorted(deg_n.items())},
            "degree_h": {f"{k[0]}/{k[1]}H": round(v / total, 3)
                         for k, v in sorted(deg_h.items()) if v / total >= 0.01}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--conditions", type=int, default=100)
    ap.add_argument("--modes", nargs="+", default=["unconditional", "formula"])
    ap.add_argument("--self-restrain", type=int, default=0)
    ap.add_argument("--data", default="prepared/qmof")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bond_restraint import restrain
    from conditioning_eval import _generate, _pairs, val_references
    from sampler_levers import _scores

    model, refs = val_references(args.model, args.data, args.conditions)  # its draw
    print(json.dumps({"references": len(refs), **carbon_degrees(refs)}), flush=True)
    for mode in args.modes:
        made, _ = _generate(model, refs, mode, 1, 1.0, 10, 0, 18)
        print(json.dumps({mode: carbon_degrees([c for _, c in made])}), flush=True)
    if args.self_restrain:
        made, _ = _generate(model, refs, "unconditional", 1, 1.0, 10, 0, 18)
        crystals = [c for _, c in made]
        t0 = time.perf_counter()
        fixed = [restrain(c, _pairs(c), args.self_restrain)[0] for c in crystals]
        print(json.dumps({"as_sampled": _scores(crystals, True),
                          "self_restrained": _scores(fixed, True),
                          "restrain_s": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
