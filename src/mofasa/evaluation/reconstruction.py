"""`mofasa evaluate reconstruction`: how well the autoencoder reproduces real crystals.

Lives in evaluation/ (not training/) because it only loads a finished model: it needs
`mofasa.checkpoint`, never the training stack.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from mofasa.checkpoint import load_any_autoencoder, resolve_device
from mofasa.data.batch import collate
from mofasa.data.crystal import Crystal
from mofasa.data.sizes import size_bin

__all__ = ["evaluate_reconstruction", "reconstruction_metrics"]

MATCHER = {"ltol": 0.2, "stol": 0.3, "angle_tol": 5.0}


def reconstruction_metrics(true: Crystal, pred: Crystal, matcher: object | None = None) -> dict:
    """Per-structure figures: type accuracy, periodic coordinate RMSD (Å, through the true
    lattice), lattice length / angle errors and the StructureMatcher verdict."""
    same_types = pred.numbers == true.numbers
    d = pred.frac - true.frac
    d -= np.round(d)
    rmsd = float(np.sqrt(((d @ true.lattice) ** 2).sum(-1).mean()))
    p_true, p_pred = np.array(true.parameters), np.array(pred.parameters)
    out = {
        "id": true.id, "n_atoms": true.num_atoms,
        "type_accuracy": float(same_types.mean()), "all_types_correct": bool(same_types.all()),
        "coord_rmsd": rmsd,
        "length_rel_error": float(np.mean(np.abs(p_pred[:3] - p_true[:3]) / p_true[:3])),
        "angle_abs_error": float(np.mean(np.abs(p_pred[3:] - p_true[3:]))),
    }
    if matcher is not None:
        try:
            out["match"] = bool(matcher.fit(true.to_pymatgen(), pred.to_pymatgen()))
        except Exception:  # degenerate predictions can make the matcher raise
            out["match"] = False
    return out


def _iter_inputs(source: str, split: str, max_atoms: int | None, limit: int | None
                 ) -> Iterator[Crystal]:
    path = Path(source)
    if (path / "manifest.json").is_file():
        from mofasa.data.dataset import CrystalDataset

        ds = CrystalDataset(path, split, max_atoms=max_atoms)
        items: Iterator[Crystal] = (ds[i] for i in range(len(ds)))
    else:
        items = _read_cifs(source, max_atoms)
    for count, crystal in enumerate(items):
        if limit is not None and count >= limit:
            return
        yield crystal


def _read_cifs(source: str, max_atoms: int | None) -> Iterator[Crystal]:
    from mofasa.data import CrystalError, canonicalize, read_cif
    from mofasa.data.prepare import iter_sources

    for name, data in iter_sources(source):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                c = canonicalize(read_cif(data.decode(errors="replace"), id=Path(name).stem,
                                          is_text=True))
        except CrystalError as err:
            print(f"skipped {name}: {err.reason}: {err.detail}")
            continue
        if max_atoms is None or c.num_atoms <= max_atoms:
            yield c


def evaluate_reconstruction(
    checkpoint: str, source: str, out: str | Path, *, split: str = "val",
    max_atoms: int | None = None, limit: int | None = None, batch_size: int = 32,
    device: str = "auto", write_cifs: bool = True,
) -> dict:
    """Reconstruct every input and write ``out/summary.json``, ``out/structures.csv`` and
    (optionally) ``out/cifs/*.cif``; returns the summary."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from mofasa.data import write_cif

    out = Path(out)
    (out / "cifs").mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    model = load_any_autoencoder(checkpoint, dev)
    matcher = StructureMatcher(**MATCHER, primitive_cell=True, scale=True, attempt_supercell=True)
    crystals = sorted(_iter_inputs(source, split, max_atoms, limit), key=lambda c: c.num_atoms)
    rows = []
    for start in range(0, len(crystals), batch_size):
        chunk = crystals[start : start + batch_size]
        with torch.no_grad():
            pred = model.reconstruct(collate(chunk).to(dev)).unbatch()
        for true, rec in zip(chunk, pred, strict=True):
            rec.id = true.id
            rows.append(reconstruction_metrics(true, rec, matcher))
            if write_cifs:
                write_cif(rec, out / "cifs" / f"{true.id}.cif")
    summary = _summarise(rows, checkpoint, source)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _write_rows(out / "structures.csv", rows)
    return summary


def _summarise(rows: list[dict], checkpoint: str, source: str) -> dict:
    def agg(sel: list[dict]) -> dict:
        if not sel:
            return {"n_structures": 0}
        atoms = sum(r["n_atoms"] for r in sel)
        return {
            "n_structures": len(sel),
            "match_rate": float(np.mean([r.get("match", False) for r in sel])),
            "type_accuracy": sum(r["type_accuracy"] * r["n_atoms"] for r in sel) / atoms,
            "all_types_correct_rate": float(np.mean([r["all_types_correct"] for r in sel])),
            "coord_rmsd": float(np.mean([r["coord_rmsd"] for r in sel])),
            "length_rel_error": float(np.mean([r["length_rel_error"] for r in sel])),
            "angle_abs_error": float(np.mean([r["angle_abs_error"] for r in sel])),
        }

    bins: dict[str, list[dict]] = {}
    for r in rows:
        bins.setdefault(size_bin(r["n_atoms"]), []).append(r)
    return {**agg(rows), "by_size": {k: agg(v) for k, v in sorted(bins.items())},
            "checkpoint": checkpoint, "input": source, "matcher": MATCHER}


def _write_rows(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
