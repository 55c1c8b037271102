"""Structures to evaluate: a folder or archive of CIFs, a CIF, an ASE database, or objects.

Every input gets one `InputItem`, including those that cannot be used (``crystal is None``;
``error`` says why and ``reason`` is its `mofasa.data.errors.REASONS` code), so that failures
count against the number requested. Every structure, whatever its source, passes the checks
`mofasa data prepare` applies (`mofasa.data.checks.check_crystal`: atoms present, finite
values, a real cell, not too many atoms) before any later step sees it, so a NaN coordinate or a
flat cell is a row with its reason, never a crash in symmetry, novelty or uniqueness.
Overlapping atoms are not refused here: they are MOFChecker's ``has_atomic_overlaps`` verdict.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mofasa.data.checks import CheckLimits, check_crystal
from mofasa.data.crystal import Crystal
from mofasa.data.database import row_name
from mofasa.data.errors import CrystalError

__all__ = ["InputItem", "is_ase_db", "iter_inputs", "reader_limits"]

_DB_SUFFIXES = (".db", ".aselmdb")


@dataclass
class InputItem:
    """One input structure: position in the input, name, the structure or why it is missing.

    Attributes:
        num_atoms: atoms of a refused structure when known (``too_many_atoms``), else None.
    """

    index: int
    name: str
    crystal: Crystal | None
    error: str | None = None
    reason: str | None = None
    num_atoms: int | None = None


def reader_limits(max_atoms: int | None = None) -> CheckLimits:
    """The checks of `mofasa data prepare` without its overlap test (MOFChecker's to judge)."""
    return CheckLimits(max_atoms=max_atoms, min_distance=None)


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


def _refused(index: int, name: str, exc: Exception) -> InputItem:
    """The item of an input that cannot be evaluated, with its reason code."""
    if isinstance(exc, CrystalError):
        return InputItem(index, name, None, f"{exc.reason}: {exc.detail}"[:300], exc.reason,
                         exc.num_atoms)  # fmt: skip
    # a reader bug or a library failure costs this input only
    return InputItem(index, name, None, f"unreadable: {type(exc).__name__}: {exc}"[:300],
                     "unreadable")  # fmt: skip


def _checked(index: int, name: str, crystal: Crystal, limits: CheckLimits) -> InputItem:
    try:
        return InputItem(index, name, check_crystal(crystal, limits))
    except CrystalError as exc:
        return _refused(index, name, exc)


def _to_crystal(obj: Any, name: str) -> Crystal:
    if isinstance(obj, Crystal):
        return obj
    if hasattr(obj, "get_scaled_positions"):  # ase.Atoms
        return Crystal.from_ase(obj, id=obj.info.get("name", name))
    if hasattr(obj, "lattice") and hasattr(obj, "frac_coords"):  # pymatgen Structure
        return Crystal.from_pymatgen(obj, id=name)
    raise TypeError(f"cannot evaluate a {type(obj).__name__}")


def _from_object(obj: Any, index: int, limits: CheckLimits) -> InputItem:
    name = f"structure{index}"
    try:
        crystal = _to_crystal(obj, name)
    except (TypeError, ValueError) as exc:
        return InputItem(index, name, None, f"unreadable: {exc}"[:300], "unreadable")
    return _checked(index, crystal.id or name, crystal, limits)


def _iter_db(path: Path, limits: CheckLimits) -> Iterator[InputItem]:
    from ase.db import connect

    with connect(str(path)) as db:
        for index, row in enumerate(db.select()):
            name = row_name(row)
            try:
                crystal = Crystal.from_ase(row.toatoms(), id=name)
            except (ValueError, KeyError) as exc:
                yield InputItem(index, name, None, f"unreadable: {exc}"[:300], "unreadable")
                continue
            yield _checked(index, name, crystal, limits)


def _iter_cifs(path: str | Path, limits: CheckLimits) -> Iterator[InputItem]:
    from mofasa.data.checks import read_checked_cif
    from mofasa.data.prepare import iter_sources

    for index, (name, data) in enumerate(iter_sources(path)):
        stem = _stem(name)
        try:
            crystal = read_checked_cif(data.decode("utf-8", errors="replace"), stem, limits)
            yield InputItem(index, stem, crystal)
        except Exception as exc:
            yield _refused(index, stem, exc)


def iter_inputs(
    source: str | Path | Iterable[Any], max_atoms: int | None = None
) -> Iterator[InputItem]:
    """Yield one `InputItem` per input structure, in a stable order.

    Args:
        source: a folder of CIFs (recursive), a .tar/.tar.gz/.tar.xz archive of CIFs, one CIF,
            ``core-mof[:SUBSET]``, an ASE database (.db), or an iterable of `Crystal`,
            ``ase.Atoms`` or pymatgen ``Structure``.
        max_atoms: larger structures are refused (reason ``too_many_atoms``); for CIFs before
            the structure is built (None: no limit).
    """
    limits = reader_limits(max_atoms)
    if isinstance(source, (str, Path)):
        if is_ase_db(source):
            yield from _iter_db(Path(source), limits)
        else:
            yield from _iter_cifs(source, limits)
        return
    for index, obj in enumerate(source):
        yield _from_object(obj, index, limits)
