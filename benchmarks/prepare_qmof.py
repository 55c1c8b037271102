"""Benchmark `mofasa data prepare` on all of QMOF from the shared archive; prints JSON.

python benchmarks/prepare_qmof.py [--out DIR] [--max-atoms 500] [--workers 0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from mofasa.data.prepare import PrepareConfig, prepare_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="prepared/qmof")
    ap.add_argument("--max-atoms", type=int, default=500)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--fresh", action="store_true", help="delete --out first")
    args = ap.parse_args()
    if args.fresh:
        shutil.rmtree(args.out, ignore_errors=True)
    start = time.perf_counter()
    manifest = prepare_dataset(
        SHARED / "qmof_cifs.tar.xz",
        args.out,
        index=SHARED / "qmof_index.csv",
        config=PrepareConfig(max_atoms=args.max_atoms, workers=args.workers),
    )
    wall = time.perf_counter() - start
    size = sum(p.stat().st_size for p in Path(args.out).glob("*.npy"))
    print(
        json.dumps(
            {
                "benchmark": "prepare_qmof",
                "cores": os.cpu_count(),
                "wall_time_s": round(wall, 1),
                "n_inputs": manifest["n_inputs"],
                "n_accepted": manifest["n_accepted"],
                "n_rejected": manifest["n_rejected"],
                "splits": manifest["splits"],
                "rejected_by_reason": manifest["rejected_by_reason"],
                "protocol_bins": manifest["atom_count_histogram"]["protocol_bins"],
                "dataset_bytes": size,
                "structures_per_s": round(manifest["n_inputs"] / wall, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
