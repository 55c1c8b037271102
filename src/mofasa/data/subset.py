"""Subsets of a prepared dataset folder: some splits, structures of at most N atoms.

The output is a prepared folder in the same format (see :mod:`mofasa.data.prepare`), so
`CrystalDataset` reads it unchanged; e.g. QMOF150 train + val is a smaller carry to a GPU
machine than all of QMOF. Only numpy: this runs where pymatgen / ASE / spglib are missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["subset_dataset"]

# Whole-dataset tables of the source manifest that no longer describe a subset: dropped, not
# faked (recomputing them would need the rejected inputs too).
_SOURCE_ONLY_KEYS = ("atom_count_histogram", "elements", "rejected")


def _subset_split(src: Path, dst: Path, split: str, max_atoms: int) -> int:
    """Copy the structures of one split with at most ``max_atoms`` atoms; returns how many."""
    def load(key: str) -> np.ndarray:
        return np.load(src / f"{split}_{key}.npy", mmap_mode="r")

    offsets = np.asarray(load("offsets"))  # (S + 1,) start of each structure
    counts = np.diff(offsets)  # (S,) atoms per structure
    keep = np.flatnonzero(counts <= max_atoms)  # (K,) structure indices, ascending
    atoms = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in keep]) \
        if len(keep) else np.zeros(0, dtype=np.int64)  # (A_kept,) atom rows, ascending
    new_offsets = np.concatenate([[0], np.cumsum(counts[keep])]).astype(offsets.dtype)
    np.save(dst / f"{split}_numbers.npy", np.asarray(load("numbers"))[atoms])  # (A_kept,)
    np.save(dst / f"{split}_frac.npy", np.asarray(load("frac"))[atoms])  # (A_kept, 3)
    np.save(dst / f"{split}_lattice.npy", np.asarray(load("lattice"))[keep])  # (K, 6)
    np.save(dst / f"{split}_offsets.npy", new_offsets)  # (K + 1,)
    ids = (src / f"{split}_ids.txt").read_text().split()
    (dst / f"{split}_ids.txt").write_text("".join(ids[i] + "\n" for i in keep))
    return len(keep)


def subset_dataset(src: str | Path, dst: str | Path, max_atoms: int,
                   splits: tuple[str, ...] = ("train", "val")) -> dict[str, Any]:
    """Copy the structures of ``splits`` with at most ``max_atoms`` atoms to a new folder.

    Args:
        src: a prepared dataset folder (``manifest.json`` + ``{split}_*.npy`` / ``_ids.txt``).
        dst: output folder (created; files of the same name are overwritten).
        max_atoms: largest atom count kept.
        splits: the splits to copy; the others are left out (and out of the manifest).

    Returns:
        ``{"path": str, "splits": {split: structures kept}, "bytes": size of dst}``.
    """
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((src / "manifest.json").read_text())
    counts = {split: _subset_split(src, dst, split, max_atoms) for split in splits}
    for key in _SOURCE_ONLY_KEYS:
        manifest.pop(key, None)
    manifest["splits"] = counts
    manifest["subset"] = {"source": str(src), "max_atoms": max_atoms, "splits": list(splits)}
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    size = sum(f.stat().st_size for f in dst.iterdir())
    return {"path": str(dst), "splits": counts, "bytes": size}
