"""Write samples to a folder: ``cifs/*.cif`` + ``samples.db`` (ASE), resumable.

One database row per structure: the atoms plus key-value pairs ``name``, ``index``, ``n_atoms``,
``cell_ok`` and the run's settings (`SampleSettings.row_metadata`); the database's metadata holds
the model and the whole settings. A batch's CIFs are written first (atomically), then its rows in
one transaction; a re-run skips every index that has a row. Because structure i depends only on
(seed, i), a killed run continues where it stopped and never duplicates or loses a row.
``settings.json`` pins what must not change between a run and its continuation; it is written
only after the settings were checked and the model loaded, so a rejected run leaves nothing.
When the folder holds all ``num`` rows, the database is rewritten in index order (batches are
grouped by atom count, so they arrive out of order).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from mofasa.checkpoint import load_model
from mofasa.data.crystal import Crystal
from mofasa.sampling.api import iter_samples, size_histogram
from mofasa.sampling.conditions import plan_conditions
from mofasa.sampling.settings import OPTIONAL_IDENTITY, SampleSettings, SampleSettingsError

__all__ = ["SamplingSettingsError", "cell_problem", "done_indices", "write_samples"]

SamplingSettingsError = SampleSettingsError  # the name earlier versions raised

MIN_VOLUME_PER_ATOM = 0.5  # Å^3: far below any real crystal (QMOF: > 5), above round-off


def done_indices(db_path: str | Path) -> set[int]:
    """Indices that already have a row in ``db_path`` (empty if it does not exist)."""
    if not Path(db_path).is_file():
        return set()
    from ase.db import connect

    db = connect(str(db_path))
    return {int(row.key_value_pairs["index"]) for row in db.select()
            if "index" in row.key_value_pairs}


def _check_settings(path: Path, settings: SampleSettings) -> None:
    """Refuse to continue a run made with other settings (before anything is written)."""
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    old = old.get("identity", old)  # folders written before settings carried an identity
    new = settings.identity()
    diff = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
    # settings recorded only when on (restarts, restrain_bonds): on before, off now differs
    diff.update({k: (old[k], None) for k in OPTIONAL_IDENTITY if old.get(k) and k not in new})
    if diff:
        raise SampleSettingsError(
            f"{path.parent} holds a run with other settings {diff} (old, new): use another "
            "--out or the same settings to continue it")


def _write_settings(path: Path, settings: SampleSettings, model_info: dict) -> None:
    record = {"identity": settings.identity(), "settings": settings.to_dict(),
              "model_info": model_info}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def cell_problem(crystal: Crystal) -> str | None:
    """Why a decoded structure cannot be written as a CIF (None when it can): a non-finite
    or (nearly) flat cell, or non-finite coordinates."""
    lat = np.asarray(crystal.lattice, dtype=np.float64)
    if not np.isfinite(lat).all() or not np.isfinite(crystal.frac).all():
        return "non-finite cell or coordinates"
    volume = float(np.linalg.det(lat))
    if volume < MIN_VOLUME_PER_ATOM * max(crystal.num_atoms, 1):
        return f"degenerate cell (volume {volume:.3g} Å^3 for {crystal.num_atoms} atoms)"
    return None


def _write_cif(crystal: Crystal, path: Path, provenance: dict[str, Any]) -> None:
    from mofasa.data.cif import write_cif

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(write_cif(crystal, provenance=provenance))
    os.replace(tmp, path)


def _row_atoms(crystal: Crystal, ok: bool) -> Any:
    """ASE atoms of a row; a structure without a usable cell keeps its elements only."""
    if ok:
        return crystal.to_ase()
    from ase import Atoms

    return Atoms(numbers=crystal.numbers, pbc=False)


def _write_batch(db: Any, out: Path, crystals: list[Crystal]) -> None:
    rows = []
    for c in crystals:
        problem = cell_problem(c)
        meta = {k: v for k, v in c.metadata.items() if isinstance(v, (str, int, float, bool))}
        if problem is None:
            _write_cif(c, out / "cifs" / f"{c.id}.cif", meta)
        rows.append((c, problem, meta))
    with db:  # one transaction per batch: all of its rows or none
        for c, problem, meta in rows:
            extra = {} if problem is None else {"cell_error": problem}
            db.write(_row_atoms(c, problem is None), name=c.id, n_atoms=c.num_atoms,
                     cell_ok=problem is None, **meta, **extra)


def _sort_by_index(db_path: Path, metadata: dict) -> None:
    """Rewrite ``db_path`` with its rows in index order (atomically)."""
    from ase.db import connect

    rows = list(connect(str(db_path)).select())  # in row-id (write) order
    order = [int(r.key_value_pairs["index"]) for r in rows]
    if order == sorted(order):
        return
    rows.sort(key=lambda r: int(r.key_value_pairs["index"]))
    tmp = db_path.with_name(db_path.stem + ".sorting.db")
    tmp.unlink(missing_ok=True)
    new = connect(str(tmp), type="db")
    with new:
        for r in rows:
            new.write(r.toatoms(), **r.key_value_pairs)
    new.metadata = metadata
    os.replace(tmp, db_path)


def write_samples(out: str | Path, settings: SampleSettings, *, progress: bool = True) -> dict:
    """Sample structures 0..settings.num-1 into ``out`` (skipping those already there).

    Args:
        out: output folder (``cifs/``, ``samples.db``, ``settings.json``).
        settings: the run's settings (checked here before anything is written).
        progress: show a progress bar.

    Returns:
        Summary: out, num, written (this call), skipped (already present), degenerate (rows
        recorded without a CIF), seconds, structures_per_s.

    Raises:
        SampleSettingsError: a setting that cannot work, or ``out`` holds a run with others.
    """
    from ase.db import connect
    from tqdm import tqdm

    out = Path(out)
    settings.check()
    net = load_model(settings.model, settings.device)
    plan = plan_conditions(settings, net)
    size_hist = size_histogram(settings, net, plan)
    settings = settings.resolve(net, size_hist)
    _check_settings(out / "settings.json", settings)
    (out / "cifs").mkdir(parents=True, exist_ok=True)
    info = {k: v for k, v in net.checkpoint_info.items() if k in ("path", "step", "autoencoder")}
    _write_settings(out / "settings.json", settings, info)
    db_path = out / "samples.db"
    done = done_indices(db_path)
    todo = [i for i in range(settings.num) if i not in done]
    start, written = time.perf_counter(), 0
    db = connect(str(db_path))
    metadata = {"kind": "mofasa-samples", "model": settings.model, "model_info": info,
                "settings": settings.to_dict(),
                "condition": plan.metadata if plan is not None else None}
    db.metadata = metadata
    with tqdm(total=settings.num, initial=settings.num - len(todo), unit="structure",
              disable=not progress, desc="sample") as bar:
        for crystals in iter_samples(net, todo, settings, size_hist, plan):
            _write_batch(db, out, crystals)
            written += len(crystals)
            bar.update(len(crystals))
    if len(done_indices(db_path)) == settings.num and settings.num:
        _sort_by_index(db_path, metadata)
    seconds = time.perf_counter() - start
    bad = sum(1 for r in connect(str(db_path)).select(cell_ok=False))
    return {"out": str(out), "num": settings.num, "written": written,
            "skipped": settings.num - len(todo), "degenerate": bad, "seconds": round(seconds, 3),
            "structures_per_s": round(written / seconds, 3) if written and seconds else None}
