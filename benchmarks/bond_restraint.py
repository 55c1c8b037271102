"""Is bond precision all that bond-conditioned samples lack? A restraint probe (diagnostic).

    python benchmarks/bond_restraint.py MODEL --conditions 50 --per 2 --steps 15 --refine 100

Bond-conditioned samples (as `conditioning_eval.py --modes bonds`, w = 1) are scored with
MOFChecker (headline mode, screened), then every sample's atoms are moved, lattice and elements
fixed, to minimise a restraint energy built only from what the condition gives: each given
bond (by canonical index) pulled to the sum of the two Cordero radii, every other pair pushed
beyond the canonical bond rule's cut-off (the sampler's `--restrain-bonds 300`), and scored
again. If validity
then jumps, the sampled bond graph and placement are right and only the lengths miss; if not,
the failures lie in the arrangement itself. The model's own figures are the first row.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def restrain(crystal, bonded: set[tuple[int, int]], steps: int = 300):
    """The crystal after the sampler's bond restraint (`diffusion.restraint`, the given bonds
    ``bonded``); returns (crystal, energy before, after)."""
    from mofasa.data import collate
    from mofasa.data.crystal import Crystal
    from mofasa.diffusion.restraint import restrain_bonds, restraint_energy

    batch = collate([crystal], dtype=torch.float64)
    adj = torch.zeros(1, crystal.num_atoms, crystal.num_atoms, dtype=torch.bool)
    for i, j in bonded:
        adj[0, i, j] = adj[0, j, i] = True
    args = (batch.lattice, batch.atom_types, adj, batch.mask)
    frac = restrain_bonds(batch.frac, *args, steps)
    e0, e1 = (float(restraint_energy(x, *args)[0]) for x in (batch.frac, frac))
    return Crystal(crystal.numbers, frac[0].numpy(), crystal.lattice), e0, e1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--conditions", type=int, default=50)
    ap.add_argument("--per", type=int, default=2)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--refine", type=int, default=100)
    ap.add_argument("--data", default="prepared/qmof")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conditioning_eval import _generate, _pairs, val_references
    from sampler_levers import _scores

    model, refs = val_references(args.model, args.data, args.conditions)  # its draw
    t0 = time.perf_counter()
    made, _ = _generate(model, refs, "bonds", args.per, 1.0, args.steps, 0, args.refine)
    crystals = [c for _, c in made]
    print(json.dumps({"model": args.model, "samples": len(crystals), "steps": args.steps,
                      "refine": args.refine, "sample_s": round(time.perf_counter() - t0, 1),
                      "as_sampled": _scores(crystals, True)}), flush=True)
    fixed, energies = [], []
    for r, c in made:
        out, e0, e1 = restrain(c, _pairs(refs[r]))
        fixed.append(out)
        energies.append((e0, e1))
    e = np.array(energies)
    present = [len(_pairs(refs[r]) & _pairs(c)) / max(len(_pairs(refs[r])), 1)
               for (r, _), c in zip(made, fixed, strict=True)]
    print(json.dumps({"restrained": _scores(fixed, True),
                      "energy_median_before_after": [round(float(v), 3)
                                                     for v in np.median(e, axis=0)],
                      "ref_bonds_present_after": round(float(np.mean(present)), 4)}))


if __name__ == "__main__":
    main()
