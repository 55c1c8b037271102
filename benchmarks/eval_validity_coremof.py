"""MOFChecker validity on CoRE MOF 2019 (experimental, computation-ready structures).

Draws a seeded random order of the 2019-ASR (all-solvent-removed) entries of the PyPI package
``core-mof==2019.1`` (module ``CoRE_MOF``), reads each CIF (symmetry expanded to P1) and keeps
the first ``--n`` with at most ``--max-atoms`` atoms, writes them as P1 CIFs, evaluates them and
prints JSON. Resumable (same --out continues).

    nice -n 10 .venv/bin/python benchmarks/eval_validity_coremof.py --n 200 --out /tmp/core200
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tarfile
import warnings
from importlib import resources
from pathlib import Path


def select(subset: str, n: int, max_atoms: int, seed: int, folder: Path) -> int:
    """Write ``folder/{rank:04d}_{name}.cif`` for the first ``n`` structures that qualify."""
    from mofasa.data import read_cif, write_cif

    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.glob("*.cif")))
    if have >= n:
        return have
    import CoRE_MOF.data  # type: ignore[import-not-found]

    archive = resources.files(CoRE_MOF.data) / f"{subset}.tar.xz"
    with tarfile.open(archive, "r:xz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()
                   and m.name.endswith(".cif")}  # fmt: skip
    order = sorted(members, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    kept = 0
    for name in order:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                crystal = read_cif(members[name].decode("utf-8", "replace"), id=Path(name).stem)
        except Exception:  # unreadable / disordered entries are not drawn
            continue
        if crystal.num_atoms <= max_atoms:
            write_cif(crystal, folder / f"{kept:04d}_{Path(name).stem}.cif")
            kept += 1
            if kept == n:
                break
    return kept


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--max-atoms", type=int, default=200)
    p.add_argument("--subset", default="2019-ASR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default="default")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    from mofasa.evaluation import evaluate

    out = Path(args.out)
    kept = select(args.subset, args.n, args.max_atoms, args.seed, out / "cifs")
    result = evaluate(out / "cifs", out / "eval", modes=tuple(args.modes.split(",")),
                      workers=args.workers, thumbnails=50)  # fmt: skip
    s = result.summary
    print(json.dumps({
        "data": f"CoRE MOF {args.subset}, <= {args.max_atoms} atoms (P1 cell), seed {args.seed}",
        "n": kept,
        "valid_rate": s["valid_rate"],
        "valid_rate_strict": s["valid_rate_strict"],
        "flag_rates": {k: v for k, v in (s["flag_rates"] or {}).items() if v},
        "failures": s["failures"],
        "valid_rate_by_size": s["valid_rate_by_size"],
        "crystal_systems": s["crystal_systems"],
        "timing": s["timing"],
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
