"""Where records go: ``results.db`` (ASE database, resumable) or memory (Python API).

One row per input structure: the input atoms, every flag and figure as key-value pairs, and the
relaxed structure (when relaxed) in the row's ``data`` (``relaxed_numbers``, ``relaxed_cell``,
``relaxed_frac``). Each row is written in its own SQLite transaction, so a killed run leaves
only complete rows; on restart, inputs whose ``input_index`` has a row are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mofasa.data.crystal import Crystal
from mofasa.data.database import from_db_values, to_db_values

__all__ = ["MemoryStore", "ResultStore", "open_store", "relaxed_crystal"]

RUN_FILE = "run.json"
DB_FILE = "results.db"


def _clean(rec: dict[str, Any]) -> dict[str, Any]:
    """Key-value pairs ASE's database accepts (no None; numpy scalars as Python ones)."""
    out = {}
    for key, value in rec.items():
        if value is None:
            continue
        if isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


class MemoryStore:
    """Records and structures kept in memory."""

    def __init__(self) -> None:
        self._records: dict[int, dict[str, Any]] = {}
        self._crystals: dict[int, Crystal | None] = {}
        self._relaxed: dict[int, Crystal] = {}

    def done(self) -> set[int]:
        return set(self._records)

    def add(self, rec: dict[str, Any], crystal: Crystal | None, relaxed: Crystal | None) -> None:
        i = rec["input_index"]
        if i in self._records:
            raise RuntimeError(f"input {i} evaluated twice")
        self._records[i] = _clean(rec)
        self._crystals[i] = crystal
        if relaxed is not None:
            self._records[i]["relaxed_in_data"] = True
            self._relaxed[i] = relaxed

    def records(self) -> list[dict[str, Any]]:
        return [self._records[i] for i in sorted(self._records)]

    def crystal(self, rec: dict[str, Any]) -> Crystal | None:
        return self._crystals.get(rec["input_index"])

    def relaxed(self, rec: dict[str, Any]) -> Crystal | None:
        return self._relaxed.get(rec["input_index"])

    def update_many(self, records: Iterable[dict[str, Any]], keys: Iterable[str]) -> None:
        keys = tuple(keys)
        for rec in records:
            self._records[rec["input_index"]].update(_clean({k: rec.get(k) for k in keys}))


class ResultStore:
    """``results.db`` in an output folder (an ASE SQLite database)."""

    def __init__(self, path: str | Path) -> None:
        from ase.db import connect

        self.path = Path(path)
        self.db = connect(str(self.path), type="db")
        self._row_of: dict[int, int] = {}
        for row in self.db.select(include_data=False):
            i = row.get("input_index")
            if i is not None:
                self._row_of[int(i)] = row.id

    def done(self) -> set[int]:
        return set(self._row_of)

    def add(self, rec: dict[str, Any], crystal: Crystal | None, relaxed: Crystal | None) -> None:
        from ase import Atoms

        i = int(rec["input_index"])
        if i in self._row_of:
            raise RuntimeError(f"input {i} already has a row in {self.path}")
        atoms = crystal.to_ase() if crystal is not None else Atoms()
        data = {}
        kv = to_db_values(_clean(rec))
        if relaxed is not None:
            kv["relaxed_in_data"] = True
            data = {
                "relaxed_numbers": relaxed.numbers,
                "relaxed_cell": relaxed.lattice,
                "relaxed_frac": relaxed.frac,
            }
        self._row_of[i] = self.db.write(atoms, key_value_pairs=kv, data=data)

    def records(self) -> list[dict[str, Any]]:
        rows = [from_db_values(row.key_value_pairs) for row in self.db.select(include_data=False)]
        rows = [r for r in rows if "input_index" in r]
        return sorted(rows, key=lambda r: r["input_index"])

    def crystal(self, rec: dict[str, Any]) -> Crystal | None:
        if rec.get("read_error"):
            return None
        atoms = self.db.get(id=self._row_of[int(rec["input_index"])]).toatoms()
        return Crystal.from_ase(atoms, id=rec.get("name"))

    def relaxed(self, rec: dict[str, Any]) -> Crystal | None:
        if not rec.get("relaxed_in_data"):
            return None
        return relaxed_crystal(self.db.get(id=self._row_of[int(rec["input_index"])]))

    def update_many(self, records: Iterable[dict[str, Any]], keys: Iterable[str]) -> None:
        keys = tuple(keys)
        with self.db:  # one transaction
            for rec in records:
                kv = to_db_values(_clean({k: rec.get(k) for k in keys}))
                self.db.update(self._row_of[int(rec["input_index"])], **kv)


def relaxed_crystal(row: Any) -> Crystal | None:
    """The relaxed structure stored in a ``results.db`` row, or None."""
    data = row.data
    if "relaxed_numbers" not in data:
        return None
    return Crystal(
        data["relaxed_numbers"], data["relaxed_frac"], data["relaxed_cell"],
        id=from_db_values({"name": row.get("name")})["name"],
    )


def open_store(out: str | Path, source: str, fingerprint: dict[str, Any]) -> ResultStore:
    """Open (or create) ``out/results.db``; refuse to resume a run with other settings."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_file = out / RUN_FILE
    meta = {"source": source, "settings": fingerprint}
    if run_file.is_file() and (out / DB_FILE).is_file():
        old = json.loads(run_file.read_text())
        if old != meta:
            raise ValueError(
                f"{out} holds a run with other inputs or settings ({old}); use another --out "
                f"or delete {out / DB_FILE} to start over"
            )
    else:
        run_file.write_text(json.dumps(meta, indent=1) + "\n")
    return ResultStore(out / DB_FILE)
