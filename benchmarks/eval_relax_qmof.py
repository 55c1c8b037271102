"""Relaxation of real QMOF structures with the default potential (CHGNet, FIRE +
FrechetCellFilter, fmax 0.02 eV/Å, at most 200 steps): steps, time, RMSD, validity before/after.

    nice -n 10 .venv/bin/python benchmarks/eval_relax_qmof.py --n 20 --out /tmp/relax20

Uses the same seeded draw as eval_validity_qmof.py (QMOF train, <= --max-atoms atoms) and
prints JSON with one line per structure and the totals. Resumable (same --out continues).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from eval_validity_qmof import SHARED, draw, extract


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--max-atoms", type=int, default=150)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--fmax", type=float, default=0.02)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=1, help="torch threads in the worker")
    p.add_argument("--modes", default="default")
    p.add_argument("--relax-timeout", type=float, default=600.0,
                   help="seconds per relaxation job; the relaxation itself stops (kept, not "
                        "converged) 60 s before")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    from mofasa.evaluation import evaluate

    out = Path(args.out)
    ids = draw(SHARED / "qmof_index.csv", args.n, args.max_atoms, "train", args.seed)
    extract(SHARED / "qmof_cifs.tar.xz", ids, out / "cifs")
    result = evaluate(
        out / "cifs",
        out / "eval",
        modes=tuple(args.modes.split(",")),
        relax=True,
        fmax=args.fmax,
        steps=args.steps,
        relax_timeout=args.relax_timeout,
        threads=args.threads,
        thumbnails=0,
        progress=True,
    )
    rows = [
        {
            k: r.get(k)
            for k in (
                "name",
                "num_atoms",
                "relax_status",
                "relax_converged",
                "relax_steps",
                "relax_seconds",
                "relax_rmsd",
                "valid",
                "valid_relaxed",
            )
        }
        for r in result.records
    ]
    ok = [r for r in result.records if r.get("relax_status") == "ok"]
    per_step = [r["relax_seconds"] / max(r["relax_steps"], 1) for r in ok]
    s = result.summary
    print(
        json.dumps(
            {
                "structures": rows,
                "n": s["n_requested"],
                "valid_rate_before": s["valid_rate"],
                "valid_rate_after": s["valid_rate_relaxed"],
                "relaxation": s["relaxation"],
                "s_per_step_median": round(statistics.median(per_step), 3) if per_step else None,
                "atoms_median": statistics.median(r["num_atoms"] for r in ok) if ok else None,
                "timing": s["timing"],
                "potential": s["relaxation"]["calculator"],
                "versions": {k: s["versions"].get(k) for k in ("chgnet", "torch", "ase")},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
