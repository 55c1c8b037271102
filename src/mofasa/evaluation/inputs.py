"""Structures to evaluate: a folder or archive of CIFs, a CIF, an ASE database, or objects.

Every input gets one `InputItem`, including those that cannot be read (``crystal is None`` and
``error`` says why), so that failures count against the number requested.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mofasa.data.crystal import Crystal

__all__ = ["InputItem", "is_ase_db", "iter_inputs"]

_DB_SUFFIXES = (".db", ".aselmdb")


@dataclass
class InputItem:
    """One input structure: position in the input, name, the structure or why it is missing."""

    index: int
    name: str
    crystal: Crystal | None
    error: str | None = None


def is_ase_db(path: str | Path) -> bool:
    """True for an ASE database file (SQLite, by suffix or magic bytes)."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() in _DB_SUFFIXES:
        return True
    with open(path, "rb") as handle:
        return handle.read(16).startswith(b"SQLite format 3")


def _stem(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return base[:-4] if base.lower().endswith(".cif") else base


def _from_object(obj: Any, index: int) -> InputItem:
    name = f"structure{index}"
    try:
        if isinstance(obj, Crystal):
            return InputItem(index, obj.id or name, obj)
        if hasattr(obj, "get_scaled_positions"):  # ase.Atoms
            crystal = Crystal.from_ase(obj, id=obj.info.get("name", name))
            return InputItem(index, crystal.id, crystal)
        if hasattr(obj, "lattice") and hasattr(obj, "frac_coords"):  # pymatgen Structure
            crystal = Crystal.from_pymatgen(obj, id=name)
            return InputItem(index, name, crystal)
        raise TypeError(f"cannot evaluate a {type(obj).__name__}")
    except (TypeError, ValueError) as exc:
        return InputItem(index, name, None, f"unreadable: {exc}")


def _iter_db(path: Path) -> Iterator[InputItem]:
    from ase.db import connect

    with connect(str(path)) as db:
        for index, row in enumerate(db.select()):
            kv = row.key_value_pairs
            name = str(
                next((kv[k] for k in ("name", "mof_id", "qmof_id") if k in kv), None)
                or f"row{row.id}"
            )
            try:
                crystal = Crystal.from_ase(row.toatoms(), id=name)
                yield InputItem(index, name, crystal)
            except (ValueError, KeyError) as exc:
                yield InputItem(index, name, None, f"unreadable: {exc}")


def _iter_cifs(path: str | Path) -> Iterator[InputItem]:
    from mofasa.data.cif import read_cif
    from mofasa.data.errors import CrystalError
    from mofasa.data.prepare import iter_sources

    for index, (name, data) in enumerate(iter_sources(path)):
        stem = _stem(name)
        try:
            crystal = read_cif(data.decode("utf-8", errors="replace"), id=stem)
            yield InputItem(index, stem, crystal)
        except CrystalError as exc:
            yield InputItem(index, stem, None, f"{exc.reason}: {exc.detail}"[:300])
        except Exception as exc:  # a reader bug costs this input only
            yield InputItem(index, stem, None, f"unreadable: {type(exc).__name__}: {exc}"[:300])


def iter_inputs(source: str | Path | Iterable[Any]) -> Iterator[InputItem]:
    """Yield one `InputItem` per input structure, in a stable order.

    Args:
        source: a folder of CIFs (recursive), a .tar/.tar.gz/.tar.xz archive of CIFs, one CIF,
            ``core-mof[:SUBSET]``, an ASE database (.db), or an iterable of `Crystal`,
            ``ase.Atoms`` or pymatgen ``Structure``.
    """
    if isinstance(source, (str, Path)):
        if is_ase_db(source):
            yield from _iter_db(Path(source))
        else:
            yield from _iter_cifs(source)
        return
    for index, obj in enumerate(source):
        yield _from_object(obj, index)
