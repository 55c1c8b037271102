"""Write samples to a folder: ``cifs/*.cif`` + ``samples.db`` (ASE), resumable.

One database row per structure (atoms + key-value pairs ``name``, ``model``, ``seed``,
``steps``, ``sampler``, ``n_atoms``, ``index``). A batch's CIFs are written first (atomically),
then its rows in one transaction; a re-run skips every index that has a row. Because structure i
depends only on (seed, i), a killed run continues where it stopped and never duplicates or loses
a row. ``settings.json`` pins what must not change between a run and its continuation.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from mofasa.data.crystal import Crystal
from mofasa.sampling.api import iter_samples, load_model

__all__ = ["SamplingSettingsError", "done_indices", "histogram_from_dataset", "write_samples"]


class SamplingSettingsError(ValueError):
    """The output folder holds a run with different settings."""


def done_indices(db_path: str | Path) -> set[int]:
    """Indices that already have a row in ``db_path`` (empty if it does not exist)."""
    if not Path(db_path).is_file():
        return set()
    from ase.db import connect

    db = connect(str(db_path))
    return {int(row.key_value_pairs["index"]) for row in db.select()
            if "index" in row.key_value_pairs}


def histogram_from_dataset(path: str | Path, split: str = "train") -> torch.Tensor:
    """(M + 1,) atom-count histogram of a prepared dataset's split."""
    from mofasa.data.dataset import CrystalDataset

    counts = np.asarray(CrystalDataset(path, split).num_atoms)
    return torch.from_numpy(np.bincount(counts).astype(np.int64))


def _check_settings(path: Path, settings: dict) -> None:
    if path.is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise SamplingSettingsError(
                f"{path.parent} holds a run with other settings {diff} (old, new): use another "
                "--out or the same settings to continue it")
    else:
        path.write_text(json.dumps(settings, indent=1))


def _write_cif(crystal: Crystal, path: Path) -> None:
    from mofasa.data.cif import write_cif

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(write_cif(crystal))
    os.replace(tmp, path)


def write_samples(
    out: str | Path,
    model: str | Path = "default",
    num: int = 100,
    *,
    atoms: int | None = None,
    atoms_from: str = "data",
    steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: str = "auto",
    guidance: float = 1.0,
    bf16: bool = False,
    progress: bool = True,
) -> dict:
    """Sample structures 0..num-1 into ``out`` (skipping those already there).

    Args:
        out: output folder (``cifs/``, ``samples.db``, ``settings.json``).
        model: ``"default"`` or a diffusion checkpoint path.
        num: total number of structures the folder should hold.
        atoms: fixed atom count, or None.
        atoms_from: ``"data"`` (the model's training histogram) or a prepared dataset folder
            whose train split's histogram to draw from (ignored with ``atoms``).
        steps, sampler, seed, batch_size, device, guidance, bf16: see
            :func:`mofasa.sampling.sample`.
        progress: show a progress bar.

    Returns:
        Summary: out, num, written (this call), skipped (already present), seconds,
        structures_per_s.

    Raises:
        SamplingSettingsError: ``out`` holds a run with other settings.
    """
    from ase.db import connect
    from tqdm import tqdm

    out = Path(out)
    net = load_model(model, device)
    (out / "cifs").mkdir(parents=True, exist_ok=True)
    steps = int(steps or net.config.steps)
    sampler = sampler or net.config.sampler
    if atoms is None and atoms_from != "data":
        net.num_atoms_hist = histogram_from_dataset(atoms_from)
    settings = {"model": str(model), "seed": int(seed), "steps": steps, "sampler": sampler,
                "atoms": atoms if atoms is not None else atoms_from,
                "guidance": float(guidance)}
    _check_settings(out / "settings.json", settings)
    db_path = out / "samples.db"
    done = done_indices(db_path)
    todo = [i for i in range(num) if i not in done]
    start, written = time.perf_counter(), 0
    kv = {"model": str(model), "seed": int(seed), "steps": steps, "sampler": sampler}
    db = connect(str(db_path))
    with tqdm(total=num, initial=num - len(todo), unit="structure", disable=not progress,
              desc="sample") as bar:
        for crystals in iter_samples(net, todo, seed=seed, atoms=atoms, steps=steps,
                                     sampler=sampler, batch_size=batch_size, guidance=guidance,
                                     bf16=bf16):
            for c in crystals:
                _write_cif(c, out / "cifs" / f"{c.id}.cif")
            with db:  # one transaction per batch: all of its rows or none
                for c in crystals:
                    db.write(c.to_ase(), name=c.id, index=int(c.metadata["index"]),
                             n_atoms=c.num_atoms, **kv)
            written += len(crystals)
            bar.update(len(crystals))
    seconds = time.perf_counter() - start
    return {"out": str(out), "num": num, "written": written, "skipped": num - len(todo),
            "seconds": round(seconds, 3),
            "structures_per_s": round(written / seconds, 3) if written and seconds else None}
