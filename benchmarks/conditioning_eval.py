"""Conditional generation on held-out QMOF conditions (issue 12's must-show), as JSON + PNG.

    python benchmarks/conditioning_eval.py --model runs/coordflow_cond/checkpoint.pt \
        --conditions 100 --per 5 --guidance 1 2 --out runs/cond_eval

Conditions come from the first ``--conditions`` structures of the prepared val split within
the model's atom range (seeded draw). Modes: unconditional with the same N, formula, formula +
bonds, metal-node inpainting (lattice given); each conditional mode at every ``--guidance``.
Per mode: pooled bonded share, share with a pair < 0.8 Å, exact composition (by construction)
and the model's own type agreement, bond adherence by canonical index (reference bonds present,
extra bonds, same rule), inpainting drift of the kept atoms before they are held (Å) and the
share of reference node-linker bonds the generated remainder forms; MOFChecker validity
(headline, strict; ``mofasa.evaluate`` screen mode) by size bin; for bonds and inpainting the
share of valid samples StructureMatcher matches to their own reference. Validity against N per
mode goes to ``validity_vs_n.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

MODES = ("unconditional", "formula", "bonds", "inpaint")
N_EDGES = (0, 20, 30, 40, 50, 10_000)  # atom-count bins of the validity-against-N figure


def _pairs(c) -> set[tuple[int, int]]:
    from mofasa.data.canonical import bond_edges

    p, _ = bond_edges(c.lattice, c.frac, c.numbers)
    return {(int(i), int(j)) for i, j in p if i < j}


def _conditions(mode: str, ref) -> object | None:
    from mofasa.data.conditions import formula_condition, keep_selection, node_labels

    if mode == "unconditional":
        return None
    cond = formula_condition(ref.numbers)
    pairs = np.array(sorted(_pairs(ref)) or np.zeros((0, 2)), dtype=np.int64).reshape(-1, 2)
    both = np.concatenate([pairs, pairs[:, ::-1]])
    if mode == "bonds":
        return dataclasses.replace(cond, bonds=both)
    if mode == "inpaint":
        keep = keep_selection("metal-node", node_labels(ref.numbers, both))
        return dataclasses.replace(cond, keep=keep, frac=ref.frac.copy(),
                                   lattice=ref.lattice.copy())
    return cond


def _generate(model, refs, mode: str, per: int, guidance: float, steps: int, seed: int,
              refine: int | None = None, restrain: int = 0):
    from mofasa.diffusion.conditions import ConditionBatch
    from mofasa.diffusion.restraint import restrain_bonds
    from mofasa.sampling.api import CoordNoise

    out, diag_rows = [], []
    jobs = [(r, k) for r in range(len(refs)) for k in range(per)]
    by_n: dict[int, list] = {}
    for r, k in jobs:
        by_n.setdefault(refs[r].num_atoms, []).append((r, k))
    for n, items in sorted(by_n.items()):
        for s in range(0, len(items), 64):
            chunk = items[s : s + 64]
            idx = [r * per + k for r, k in chunk]
            mask = torch.ones(len(chunk), n, dtype=torch.bool)
            conds = [_conditions(mode, refs[r]) for r, _ in chunk]
            cb = None if mode == "unconditional" else ConditionBatch.from_conditions(conds, n)
            diag: dict = {}
            batch = model.generate(mask, steps=steps, noise_fn=CoordNoise(
                idx, [n] * len(chunk), seed, (model.codes.shape[1], 6)), cond=cb,
                guidance=guidance, refine=refine, diagnostics=diag)
            if restrain and cb is not None:  # the sampler option --restrain-bonds
                batch.frac = restrain_bonds(batch.frac, batch.lattice, batch.atom_types,
                                            cb.bonded, batch.mask, restrain, hold=cb.keep)
            for b, c in enumerate(batch.unbatch()):
                out.append((chunk[b][0], c))
                diag_rows.append({"free_types": diag["free_types"][b, :n].numpy(),
                                  "drift": float(diag["kept_drift"][b])})
    return out, diag_rows


def _adherence(mode: str, refs, made, diags) -> dict:
    from mofasa.data.conditions import keep_selection, node_labels
    from mofasa.data.elements import IS_METAL
    from mofasa.data.quality import close_pair_share, pooled_bonded_share

    crystals = [c for _, c in made]
    res = {"num": len(crystals), "bonded_share": round(pooled_bonded_share(crystals), 4),
           "pair_below_0.8A": round(close_pair_share(crystals), 4),
           "metal_c_h": round(float(np.mean([bool(IS_METAL[c.numbers].any()) and 6 in c.numbers
                                              and 1 in c.numbers for c in crystals])), 4)}
    if mode == "unconditional":
        return res
    exact = [np.array_equal(np.sort(c.numbers), np.sort(refs[r].numbers)) for r, c in made]
    agree = [float((d["free_types"] == refs[r].numbers).mean()) for (r, _), d in
             zip(made, diags, strict=True)]
    res.update(composition_exact=round(float(np.mean(exact)), 4),
               model_type_agreement=round(float(np.mean(agree)), 4))
    present, extra, node_link, drift = [], [], [], []
    for (r, c), d in zip(made, diags, strict=True):
        want, got = _pairs(refs[r]), _pairs(c)
        if want:
            present.append(len(want & got) / len(want))
            extra.append(len(got - want) / len(want))
        if mode == "inpaint":
            both = np.array(sorted(want) or np.zeros((0, 2)), dtype=np.int64).reshape(-1, 2)
            keep = keep_selection("metal-node", node_labels(
                refs[r].numbers, np.concatenate([both, both[:, ::-1]])))
            cross = {(i, j) for i, j in want if keep[i] != keep[j]}
            if cross:
                node_link.append(len(cross & got) / len(cross))
            drift.append(d["drift"])
    res.update(ref_bonds_present=round(float(np.mean(present)), 4),
               extra_bonds_per_ref_bond=round(float(np.mean(extra)), 4))
    if mode == "inpaint":
        res.update(kept_drift_A=round(float(np.mean(drift)), 4),
                   node_linker_bonds_present=round(float(np.mean(node_link)), 4))
    return res


def _validity(crystals: list, out: Path, workers: int, reference: str | None
              ) -> tuple[dict, list]:
    from mofasa.evaluation.runner import EvaluationConfig, evaluate

    result = evaluate(crystals, out, EvaluationConfig(screen=True, workers=workers,
                                                      progress=False, report=False,
                                                      reference=reference))
    recs = result.records
    valid = [bool(r.get("valid")) for r in recs]
    strict = [bool(r.get("valid_strict")) for r in recs]
    res = {"valid": round(float(np.mean(valid)), 4),
           "valid_strict": round(float(np.mean(strict)), 4)}
    if reference is not None and any(valid):
        novel = [bool(r.get("novel")) for r, v in zip(recs, valid, strict=True) if v]
        res["valid_novel_vs_train"] = round(float(np.mean(novel)), 4)
    return res, valid


def _self_match(refs, made, valid) -> float | None:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    sm = StructureMatcher()
    hits = [sm.fit(c.to_pymatgen(), refs[r].to_pymatgen())
            for (r, c), v in zip(made, valid, strict=True) if v]
    return round(float(np.mean(hits)), 4) if hits else None


def _plot(rows: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (ns, valid) in rows.items():
        ns, valid = np.asarray(ns), np.asarray(valid, dtype=float)
        mids, rates = [], []
        for lo, hi in itertools.pairwise(N_EDGES):
            sel = (ns >= lo) & (ns < hi)
            if sel.any():
                mids.append(float(ns[sel].mean()))
                rates.append(valid[sel].mean())
        ax.plot(mids, rates, marker="o", label=name)
    ax.set(xlabel="atoms N", ylabel="MOFChecker validity (headline)",
           title="validity against N per condition")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def val_references(model_path: str, data: str, conditions: int, seed: int = 0
                   ) -> tuple[object, list]:
    """The CoordFlow model (eval mode, as `load_coordflow` returns it) and its conditions: a
    seeded draw of ``conditions`` prepared val structures, those below the model's trained
    atom range dropped (shared by the scripts that measure conditioning on the same
    references)."""
    from mofasa.checkpoint import load_coordflow
    from mofasa.data.dataset import CrystalDataset
    from mofasa.sampling.settings import trained_atom_range

    model = load_coordflow(model_path)
    lo, hi = trained_atom_range(model.num_atoms_hist)
    val = CrystalDataset(data, "val", max_atoms=hi)
    pick = np.sort(np.random.default_rng(seed).choice(
        len(val), min(conditions, len(val)), replace=False))
    return model, [val[int(i)] for i in pick if val.num_atoms[int(i)] >= lo]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="prepared/qmof")
    ap.add_argument("--conditions", type=int, default=100)
    ap.add_argument("--per", type=int, default=5)
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--refine", type=int, default=None,
                    help="corrector steps (default: the model's)")
    ap.add_argument("--restarts", type=int, default=None,
                    help="restart passes (default: the model's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--restrain-bonds", type=int, default=0,
                    help="bond restraint steps after sampling, bonds mode (the sampler option)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--out", default="runs/cond_eval")
    args = ap.parse_args()
    torch.set_num_threads(2)

    model, refs = val_references(args.model, args.data, args.conditions, args.seed)
    if args.restarts is not None:
        model.config = dataclasses.replace(model.config, restarts=args.restarts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = args.steps or model.config.steps
    report: dict = {"model": args.model, "step": model.checkpoint_info["step"],
                    "conditions": len(refs), "per": args.per, "steps": steps,
                    "refine": model.config.refine if args.refine is None else args.refine,
                    "restarts": model.config.restarts, "restrain_bonds": args.restrain_bonds,
                    "modes": {}}
    curves: dict = {}
    for mode in args.modes:
        for w in ([1.0] if mode == "unconditional" else args.guidance):
            name = f"{mode}@w{w:g}"
            t0 = time.perf_counter()
            made, diags = _generate(model, refs, mode, args.per, w, steps, args.seed,
                                    args.refine, args.restrain_bonds if mode == "bonds" else 0)
            res = _adherence(mode, refs, made, diags)
            res["sample_seconds"] = round(time.perf_counter() - t0, 1)
            validity, valid = _validity([c for _, c in made], out / name, args.workers,
                                        args.data if mode in ("bonds", "inpaint") else None)
            res.update(validity)
            if mode in ("bonds", "inpaint"):
                res["valid_matching_own_reference"] = _self_match(refs, made, valid)
            curves[name] = ([c.num_atoms for _, c in made], valid)
            report["modes"][name] = res
            print(json.dumps({name: res}), flush=True)
            (out / "conditioning.json").write_text(json.dumps(report, indent=1))
    _plot(curves, out / "validity_vs_n.png")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
