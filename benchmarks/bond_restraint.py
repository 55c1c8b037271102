"""Is bond precision all that bond-conditioned samples lack? A restraint probe (diagnostic).

    python benchmarks/bond_restraint.py MODEL --conditions 50 --per 2 --steps 15 --refine 100

Bond-conditioned samples (as `conditioning_eval.py --modes bonds`, w = 1) are scored with
MOFChecker (headline mode, screened), then every sample's atoms are moved, lattice and elements
fixed, to minimise a restraint energy built only from what the condition gives: each given
bond (by canonical index) pulled to the sum of the two Cordero radii, every other pair pushed
beyond the canonical bond rule's cut-off (r_i + r_j + 0.45 Å), and scored again. If validity
then jumps, the sampled bond graph and placement are right and only the lengths miss; if not,
the failures lie in the arrangement itself. This is a probe, not a sampler option: the
model's figures are the first row.
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


def restrain(crystal, bonded: set[tuple[int, int]], steps: int = 300, lr: float = 0.02):
    """The crystal with atoms moved (Adam on Cartesian positions, cell fixed) to minimise the
    restraint energy of the module docstring; returns (crystal, energy before, after)."""
    from mofasa.data.canonical import BOND_TOL
    from mofasa.data.crystal import Crystal
    from mofasa.data.elements import COVALENT_RADII
    from mofasa.geometry.lattice_torch import pair_distances_torch

    lat = torch.as_tensor(crystal.lattice, dtype=torch.float64).unsqueeze(0)  # (1, 3, 3)
    inv = torch.linalg.inv(lat)
    cart = (torch.as_tensor(crystal.frac, dtype=torch.float64).unsqueeze(0) @ lat)
    cart = cart.clone().requires_grad_(True)  # (1, N, 3) Å
    n = crystal.num_atoms
    r = torch.as_tensor(COVALENT_RADII, dtype=torch.float64)[torch.as_tensor(crystal.numbers)]
    target = r.unsqueeze(0) + r.unsqueeze(1)  # (N, N) Å
    bond = torch.zeros(n, n, dtype=torch.bool)
    for i, j in bonded:
        bond[i, j] = bond[j, i] = True
    other = ~bond & ~torch.eye(n, dtype=torch.bool)
    cut = target + BOND_TOL + 0.05

    def energy() -> torch.Tensor:
        d = pair_distances_torch(cart @ inv, lat)[0]  # (N, N)
        e_b = ((d - target).square() * bond).sum() / 2
        e_o = (torch.relu(cut - d).square() * other).sum() / 2
        return e_b + e_o

    opt = torch.optim.Adam([cart], lr=lr)
    e0 = float(energy())
    for _ in range(steps):
        opt.zero_grad()
        e = energy()
        e.backward()
        opt.step()
    frac = (cart.detach() @ inv)[0].numpy() % 1.0
    return Crystal(crystal.numbers, frac, crystal.lattice), e0, float(energy())


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
    from conditioning_eval import _generate, _pairs
    from sampler_levers import _scores

    from mofasa.checkpoint import load_coordflow
    from mofasa.data.dataset import CrystalDataset
    from mofasa.sampling.settings import trained_atom_range

    model = load_coordflow(args.model).eval()
    lo, hi = trained_atom_range(model.num_atoms_hist)
    val = CrystalDataset(args.data, "val", max_atoms=hi)
    pick = np.sort(np.random.default_rng(0).choice(  # the draw of conditioning_eval.py
        len(val), min(args.conditions, len(val)), replace=False))
    refs = [val[int(i)] for i in pick if val.num_atoms[int(i)] >= lo]
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
