"""MOFChecker validity of real QMOF structures: does the evaluator reproduce the published 80.3%?

Draws ``--n`` structures (seeded) with at most ``--max-atoms`` atoms from a split of the QMOF
archive in ../shared/data, extracts their CIFs (as released: cells not reduced), runs
`mofasa.evaluation.evaluate` and prints JSON: the valid rate, per-flag rates beside the
protocol's reference figures, timing and throughput. Resumable (same --out continues).

    nice -n 10 .venv/bin/python benchmarks/eval_validity_qmof.py --n 1000 --out /tmp/val1000

The structures are evaluated in a random order (sorted by a seeded hash), so a run that is
stopped early has evaluated a random subset; ``--limit K`` evaluates only the first K of the
drawn sample on purpose.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PROTOCOL = {  # ../shared/docs/protocol.md: QMOF150 training structures
    "valid_rate": 0.803,
    "has_lone_molecule": 0.097,
    "has_undercoordinated_n": 0.069,
    "has_undercoordinated_c": 0.059,
}


def draw(index: Path, n: int, max_atoms: int, split: str, seed: int) -> list[str]:
    with open(index, newline="") as fh:
        ids = [
            r["qmof_id"]
            for r in csv.DictReader(fh)
            if r["split"] == split and int(r["n_atoms"]) <= max_atoms
        ]
    ids.sort()
    picked = random.Random(seed).sample(ids, min(n, len(ids)))
    # evaluation order: by a seeded hash, so that any prefix is itself a random sample
    return sorted(picked, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())


def extract(archive: Path, ids: list[str], folder: Path) -> None:
    """Write the chosen CIFs as ``folder/{rank:05d}_{id}.cif`` (skips when already there)."""
    rank = {qid: k for k, qid in enumerate(ids)}
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.cif"))) == len(ids):
        return
    with tarfile.open(archive, "r:xz") as tar:
        for member in tar:
            stem = Path(member.name).stem
            if member.isfile() and stem in rank:
                data = tar.extractfile(member).read()
                (folder / f"{rank[stem]:05d}_{stem}.cif").write_bytes(data)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first K drawn")
    p.add_argument("--max-atoms", type=int, default=150)
    p.add_argument("--split", default="train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default="default,strict")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--reference", default=None, help="prepared data for novelty (optional)")
    p.add_argument("--out", required=True)
    p.add_argument("--archive", default=str(SHARED / "qmof_cifs.tar.xz"))
    p.add_argument("--index", default=str(SHARED / "qmof_index.csv"))
    args = p.parse_args()

    from mofasa.evaluation import evaluate

    out = Path(args.out)
    ids = draw(Path(args.index), args.n, args.max_atoms, args.split, args.seed)
    if args.limit:
        ids = ids[: args.limit]
    t0 = time.perf_counter()
    extract(Path(args.archive), ids, out / "cifs")
    t_extract = time.perf_counter() - t0
    result = evaluate(
        out / "cifs",
        out / "eval",
        modes=tuple(args.modes.split(",")),
        workers=args.workers,
        timeout=args.timeout,
        reference=args.reference,
        thumbnails=50,
        progress=True,
    )
    s = result.summary
    flags = {k: v for k, v in (s["flag_rates"] or {}).items() if v}
    report = {
        "data": f"QMOF {args.split}, <= {args.max_atoms} atoms, seed {args.seed}",
        "n_drawn": args.n,
        "n_evaluated": s["n_evaluated"],
        "valid_rate": s["valid_rate"],
        "valid_rate_strict": s["valid_rate_strict"],
        "protocol_valid_rate": PROTOCOL["valid_rate"],
        "flag_rates": flags,
        "flag_rates_strict": {k: v for k, v in (s["flag_rates_strict"] or {}).items() if v},
        "protocol_flag_rates": {k: v for k, v in PROTOCOL.items() if k != "valid_rate"},
        "modes_disagree": sum(
            r.get("valid") != r.get("valid_strict")
            for r in result.records
            if "valid" in r and "valid_strict" in r
        ),
        "failures": s["failures"],
        "valid_rate_by_size": s["valid_rate_by_size"],
        "crystal_systems": s["crystal_systems"],
        "extract_s": round(t_extract, 1),
        "timing": s["timing"],
        "mean_check_s": {
            mode: round(
                sum(r.get(f"{p}check_seconds", 0) for r in result.records)
                / max(1, sum(f"{p}check_seconds" in r for r in result.records)),
                3,
            )
            for mode, p in (("default", ""), ("strict", "strict_"))
        },
        "versions": {k: s["versions"].get(k) for k in ("mofchecker", "pymatgen", "pyeqeq")},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
