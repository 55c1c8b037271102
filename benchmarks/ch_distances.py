"""How far do H atoms sit from their nearest carbon? Samples against real structures; JSON.

    python benchmarks/ch_distances.py runs/cand/samples/cifs --limit 300
    python benchmarks/ch_distances.py prepared/qmof --split val --max-atoms 60

MOFChecker builds its bond graph with the tuned VESTA cut-offs of structuregraph_helpers, where
C-H is bonded only below 1.2 Å (C-C 1.89, C-N 1.79, C-O 1.97): a carbon whose H sits at 1.25 Å
counts one neighbour fewer and fails "undercoordinated carbon" (CN 1, or CN 2 not linear)
although the canonical rule (r_i + r_j + 0.45 Å = 1.52 Å for C-H) calls it bonded. This prints,
over all H atoms whose nearest neighbour (within 2.5 Å) is a carbon, the percentiles of that
C-H distance and the shares below 1.0 Å, in 1.0-1.2 Å (MOFChecker bonded) and in 1.2-1.52 Å
(bonded by the canonical rule only).

It also prints, under the same cut-offs (C-H 1.2, C-C 1.89, C-N 1.79, C-O 1.97 Å; 2.3 Å for
other elements, roughly the tuned C-metal ones), the share of carbons with each neighbour
count (MOFChecker: more than 4 is "overcoordinated") and the C-C bond length percentiles.

``--snap-out DIR`` also writes each structure with every such H at 1.2-1.6 Å from its carbon
moved along the bond to 1.09 Å (the QMOF median): evaluating DIR says how much validity the
long C-H tail alone costs (a diagnostic, not a sampler step).

    python benchmarks/ch_distances.py runs/cand/samples/cifs --limit 1000 --snap-out /tmp/snap
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

CUTOFF = 2.5  # Å: H atoms without a carbon this close are not counted
C_CUTOFFS = {1: 1.2, 6: 1.89, 7: 1.79, 8: 1.97}  # Å, MOFChecker's tuned VESTA cut-offs to C
C_OTHER = 2.3  # Å: for the remaining (mostly metal) neighbours of a carbon
SNAP_RANGE = (1.2, 1.6)  # Å: C-H distances --snap-out moves to SNAP_TO
SNAP_TO = 1.09  # Å: the QMOF val median C-H distance


def nearest_carbon(crystal) -> np.ndarray:
    """Distance (Å) from each H atom whose nearest neighbour within CUTOFF is a carbon to
    that carbon (H on O or N, and lone H, are left out)."""
    return _nearest_carbon_edges(crystal)[0]


def _nearest_carbon_edges(crystal) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distances (M,), H indices (M,), H -> C Cartesian vectors (M, 3)) over the H atoms whose
    nearest neighbour within CUTOFF is a carbon."""
    from mofasa.geometry.graphs import radius_graph_pbc

    z = np.asarray(crystal.numbers)
    if not ((z == 1).any() and (z == 6).any()):
        return np.empty(0), np.empty(0, dtype=np.int64), np.empty((0, 3))
    graph = radius_graph_pbc(torch.from_numpy(np.array(crystal.frac, dtype=np.float64)),
                             torch.from_numpy(np.array(crystal.lattice, dtype=np.float64)),
                             CUTOFF)
    i, j = graph.edge_index.numpy()
    d = graph.distances.numpy()
    vec = graph.vectors.numpy()  # (E, 3) from atom i to its neighbour j
    h = z[i] == 1
    i, j, d, vec = i[h], j[h], d[h], vec[h]
    order = np.lexsort((d, i))  # by H atom, nearest first
    first = order[np.r_[True, i[order][1:] != i[order][:-1]]] if len(order) else order
    on_c = first[z[j[first]] == 6]
    return d[on_c], i[on_c], vec[on_c]


def carbon_neighbours(crystals: list) -> dict:
    """Pooled over ``crystals``: the share of carbons with each neighbour count under
    C_CUTOFFS, and the C-C bond length percentiles (5, 25, 50, 75, 95; Å)."""
    from mofasa.geometry.graphs import radius_graph_pbc

    counts: dict[int, int] = {}
    cc = []
    for c in crystals:
        z = np.asarray(c.numbers)
        graph = radius_graph_pbc(torch.from_numpy(np.array(c.frac, dtype=np.float64)),
                                 torch.from_numpy(np.array(c.lattice, dtype=np.float64)),
                                 max(C_OTHER, *C_CUTOFFS.values()))
        i, j = graph.edge_index.numpy()
        d = graph.distances.numpy()
        cut = np.array([C_CUTOFFS.get(int(x), C_OTHER) for x in z[j]])
        bonded = (z[i] == 6) & (d < cut)
        cc.append(d[bonded & (z[j] == 6)])
        degree = np.bincount(i[bonded], minlength=len(z))[z == 6]
        for k, v in zip(*np.unique(degree, return_counts=True), strict=True):
            counts[int(k)] = counts.get(int(k), 0) + int(v)
    total = max(sum(counts.values()), 1)
    cc = np.concatenate(cc or [np.empty(0)])
    return {"c_neighbour_shares": {k: round(v / total, 3) for k, v in sorted(counts.items())},
            "cc_percentiles_5_25_50_75_95":
                np.percentile(cc, [5, 25, 50, 75, 95]).round(3).tolist() if len(cc) else []}


def snapped(crystal):
    """A copy of ``crystal`` with each H at SNAP_RANGE from its nearest carbon moved along the
    bond to SNAP_TO Å from it; also returns how many H atoms moved."""
    from mofasa.data.crystal import Crystal

    d, hs, vec = _nearest_carbon_edges(crystal)
    move = (d >= SNAP_RANGE[0]) & (d <= SNAP_RANGE[1])
    cart = crystal.cart.copy()
    cart[hs[move]] += vec[move] * (1.0 - SNAP_TO / d[move])[:, None]
    frac = np.linalg.solve(crystal.lattice.T, cart.T).T
    return Crystal(crystal.numbers, frac, crystal.lattice, id=crystal.id), int(move.sum())


def load(path: Path, split: str, max_atoms: int, limit: int) -> list:
    """Crystals from a folder of CIFs or from one split of a prepared dataset."""
    if (path / "manifest.json").exists():
        from mofasa.data.dataset import CrystalDataset

        ds = CrystalDataset(path, split)
        out = [c for c in (ds[k] for k in range(len(ds))) if c.num_atoms <= max_atoms]
        return out[:limit]
    from mofasa.data.cif import read_cif

    files = sorted(path.glob("*.cif"))[:limit]
    if not files:
        sys.exit(f"error: {path}: no CIF files and no manifest.json")
    return [read_cif(f) for f in files]


def write_snapped(crystals: list, out: Path) -> None:
    """``snapped`` copies of ``crystals`` as OUT/NNNNNN.cif (sorted input order); prints the
    count of H atoms moved to stderr."""
    from mofasa.data.cif import write_cif

    out.mkdir(parents=True, exist_ok=True)
    moved = 0
    for k, crystal in enumerate(crystals):
        fixed, count = snapped(crystal)
        moved += count
        write_cif(fixed, out / f"{k:06d}.cif")
    print(f"snapped {moved} H atoms in {len(crystals)} structures -> {out}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path, help="folder of CIFs, or a prepared dataset")
    ap.add_argument("--split", default="val", help="split of a prepared dataset")
    ap.add_argument("--max-atoms", type=int, default=60, help="prepared dataset: size limit")
    ap.add_argument("--limit", type=int, default=300, help="at most this many structures")
    ap.add_argument("--snap-out", type=Path, help="write the C-H-snapped structures here")
    args = ap.parse_args()
    crystals = load(args.path, args.split, args.max_atoms, args.limit)
    if args.snap_out:
        write_snapped(crystals, args.snap_out)
    d = np.concatenate([nearest_carbon(c) for c in crystals] or [np.empty(0)])
    pct = np.percentile(d, [5, 25, 50, 75, 95]).round(3).tolist() if len(d) else []
    print(json.dumps({
        "source": str(args.path), "structures": len(crystals), "h_atoms_nearest_c": len(d),
        "ch_percentiles_5_25_50_75_95": pct,
        "share_below_1.0": round(float((d < 1.0).mean()), 4) if len(d) else None,
        "share_1.0_1.2": round(float(((d >= 1.0) & (d < 1.2)).mean()), 4) if len(d) else None,
        "share_1.2_1.52": round(float(((d >= 1.2) & (d < 1.52)).mean()), 4) if len(d) else None,
        **carbon_neighbours(crystals),
    }))


if __name__ == "__main__":
    main()
