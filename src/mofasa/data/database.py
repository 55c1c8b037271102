"""Query and export ASE databases of structures: ``samples.db`` and ``results.db``.

``mofasa sample`` writes ``OUT/samples.db`` (key-value pairs ``name``, ``index``, ``model``,
``seed``, ...); ``mofasa evaluate`` writes ``DIR/results.db`` (``input_index``, ``name``,
``valid``, ``valid_strict``, ``novel``, every MOFChecker flag, with the prefix ``strict_`` for the
strict mode). `select_rows` filters either by validity, flags, elements, atom count and novelty;
`export_cifs`, `export_extxyz` and `export_csv` write the selection.

    sel = select_rows("eval/results.db", Query(valid=True, elements=("Zn",)))
    export_cifs(sel, "valid_zn/")

A filter on a key that the database does not hold (``valid`` in a samples database) is an error,
never an empty selection, so that a typo cannot pass for "no structure matched".
"""

from __future__ import annotations

import csv
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mofasa.data.elements import SYMBOL_TO_Z, SYMBOLS

__all__ = [
    "DatabaseQueryError",
    "Query",
    "Selection",
    "export_cifs",
    "export_csv",
    "export_extxyz",
    "from_db_values",
    "open_database",
    "parse_elements",
    "parse_flag",
    "row_name",
    "select_rows",
    "summary_line",
    "to_db_values",
]

#: key-value prefix of the strict validity mode in ``results.db`` (see evaluation.summary)
STRICT_PREFIX = "strict_"
#: prefixes a flag name may carry explicitly (evaluation.summary.PREFIXES)
FLAG_PREFIXES = ("relaxed_strict_", "relaxed_", "strict_")
#: keys giving the row order, first present wins (samples.db, results.db)
ORDER_KEYS = ("index", "input_index")
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


class DatabaseQueryError(ValueError):
    """A database that cannot be queried, or a filter it cannot answer (one-line message)."""


@dataclass(frozen=True)
class Query:
    """Filters; None / empty means "any".

    Attributes:
        valid: True: valid rows, False: rows not valid (unreadable or failed), as the summary
            counts them.
        strict: validity and unprefixed flags of the strict mode (``valid_strict``,
            ``strict_<flag>``) instead of the headline one.
        novel: True: novel rows; False: rows not novel (matched, or not checked).
        flags: flag name -> required value; rows without the flag (check not run) never match.
        elements: element symbols the structure must contain (all of them).
        only_elements: the structure holds no element outside ``elements``, instead.
        min_atoms, max_atoms: inclusive bounds on the atom count.
        limit: keep the first ``limit`` matching rows (in index order).
    """

    valid: bool | None = None
    strict: bool = False
    novel: bool | None = None
    flags: Mapping[str, bool] = field(default_factory=dict)
    elements: tuple[str, ...] = ()
    only_elements: bool = False
    min_atoms: int | None = None
    max_atoms: int | None = None
    limit: int | None = None

    def describe(self) -> str:
        """Short text of the active filters, e.g. ``valid (headline), elements ⊇ {O, Zn}``."""
        parts = []
        mode = "strict" if self.strict else "headline"
        if self.valid is not None:
            parts.append(f"{'valid' if self.valid else 'invalid'} ({mode})")
        if self.novel is not None:
            parts.append("novel" if self.novel else "not novel")
        parts += [f"{name}={str(v).lower()}" for name, v in self.flags.items()]
        if self.elements:
            op = "⊆" if self.only_elements else "⊇"
            parts.append(f"elements {op} {{{', '.join(self.elements)}}}")
        if self.min_atoms is not None or self.max_atoms is not None:
            lo = self.min_atoms if self.min_atoms is not None else 0
            hi = self.max_atoms if self.max_atoms is not None else "∞"
            parts.append(f"atoms {lo}-{hi}")
        return ", ".join(parts) or "no filter"


@dataclass
class Selection:
    """Rows that matched a `Query`, in index order.

    Attributes:
        path: the database.
        query: the filters.
        total: rows in the database.
        matched: rows that matched (before ``query.limit``).
        rows: the kept ASE ``AtomsRow`` objects (without their ``data``).
    """

    path: Path
    query: Query
    total: int
    matched: int
    rows: list[Any]

    def __len__(self) -> int:
        return len(self.rows)


# ---------------------------------------------------------------------------- parsing
def parse_flag(text: str) -> tuple[str, bool]:
    """``"has_atomic_overlaps=false"`` -> ``("has_atomic_overlaps", False)``.

    Raises:
        DatabaseQueryError: not ``NAME=BOOL``, or a name that is no MOFChecker flag.
    """
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip().lower()
    if not sep or not name or value not in _TRUE | _FALSE:
        raise DatabaseQueryError(f"--flag {text!r}: expected NAME=true or NAME=false")
    known = _known_flags()
    base = next((name.removeprefix(p) for p in FLAG_PREFIXES if name.startswith(p)), name)
    if base not in known:
        raise DatabaseQueryError(f"unknown flag {name!r}; known: {', '.join(known)}")
    return name, value in _TRUE


def parse_elements(text: str) -> tuple[str, ...]:
    """``"Zn,C,H,O"`` -> ``("Zn", "C", "H", "O")``; raises `DatabaseQueryError` if unknown."""
    symbols = tuple(s.strip() for s in text.split(",") if s.strip())
    if not symbols:
        raise DatabaseQueryError("--elements: give symbols separated by commas, e.g. Zn,C,H,O")
    unknown = [s for s in symbols if s not in SYMBOL_TO_Z]
    if unknown:
        raise DatabaseQueryError(f"--elements: unknown element symbol(s) {', '.join(unknown)}")
    return symbols


def _known_flags() -> tuple[str, ...]:
    # imported here: the data room does not otherwise depend on evaluation (light module)
    from mofasa.evaluation.validity import COMPOSITION_FLAGS, REPORTED_FLAGS, RULE_FLAGS

    return (*RULE_FLAGS, *COMPOSITION_FLAGS, *REPORTED_FLAGS)


# ---------------------------------------------------------------------------- opening
def open_database(path: str | Path) -> Any:
    """Open an existing ASE SQLite database (never creates one, unlike ``ase.db.connect``).

    Raises:
        DatabaseQueryError: missing file, not SQLite, or SQLite without ASE's tables.
    """
    path = Path(path)
    if not path.is_file():
        raise DatabaseQueryError(f"{path}: no such file")
    with open(path, "rb") as handle:
        if not handle.read(16).startswith(b"SQLite format 3"):
            raise DatabaseQueryError(f"{path}: not an ASE database (not an SQLite file)")
    try:  # read-only probe: ASE would add its tables to any SQLite file it opens
        with sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as exc:
        raise DatabaseQueryError(f"{path}: unreadable SQLite file ({exc})") from None
    if "systems" not in tables:
        raise DatabaseQueryError(f"{path}: not an ASE database (SQLite without a systems table)")
    from ase.db import connect

    return connect(str(path), type="db")


# ---------------------------------------------------------------------------- values
# ASE's database refuses strings that read as numbers or booleans (a CIF named 000123.cif):
# such values are stored with this prefix and read back without it
NUMERIC_STR_PREFIX = "str:"


def _is_numeric(text: str) -> bool:
    """Whether ASE's database would read ``text`` as an int, float or bool (and refuse it)."""
    from ase.db.core import convert_str_to_int_float_bool_or_str

    return not isinstance(convert_str_to_int_float_bool_or_str(text), str)


def to_db_values(kv: dict[str, Any]) -> dict[str, Any]:
    """``kv`` with number-like strings prefixed by NUMERIC_STR_PREFIX (and so the prefix
    itself), as ASE's database accepts them."""
    return {k: NUMERIC_STR_PREFIX + v if isinstance(v, str) and (
        _is_numeric(v) or v.startswith(NUMERIC_STR_PREFIX)) else v for k, v in kv.items()}


def from_db_values(kv: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `to_db_values`."""
    n = len(NUMERIC_STR_PREFIX)
    return {k: v[n:] if isinstance(v, str) and v.startswith(NUMERIC_STR_PREFIX) else v
            for k, v in kv.items()}


# ---------------------------------------------------------------------------- selecting
def _order(row: Any) -> tuple[int, float, int]:
    """Sort key: the ``index`` (or ``input_index``) key when the row has one, else the id."""
    kv = row.key_value_pairs
    key = next((k for k in ORDER_KEYS if k in kv), None)
    return (0, float(kv[key]), row.id) if key else (1, 0.0, row.id)


def _require_key(key: str, keys: set[str], path: Path, what: str) -> None:
    """Refuse a filter on a key that no row has (an empty result would hide the mistake)."""
    if key in keys:
        return
    hint = ""
    if not any(k.endswith("check_status") for k in keys):
        hint = " (not an evaluation results.db?)"
    elif key.startswith(STRICT_PREFIX) or key == "valid_strict":
        hint = " (the strict mode was not run: drop --strict)"
    elif STRICT_PREFIX + key in keys or ("valid_strict" in keys and key == "valid"):
        hint = " (only the strict mode was run: add --strict)"
    elif key == "novel":
        hint = " (evaluated without --reference?)"
    raise DatabaseQueryError(f"{path}: no row has the key {key!r} that {what} needs{hint}")


def _checks(query: Query, keys: set[str], path: Path) -> list[tuple[str, bool, bool]]:
    """(key, wanted value, absent counts as False) for each key-value filter of ``query``."""
    out = []
    if query.valid is not None:
        prefix = STRICT_PREFIX if query.strict else ""
        # unreadable inputs get valid=False in every run: whether the mode ran is told by
        # its check_status (as in evaluation.summary)
        _require_key(prefix + "check_status", keys, path, "--valid/--invalid")
        out.append(("valid_strict" if query.strict else "valid", query.valid, True))
    if query.novel is not None:
        _require_key("novel", keys, path, "--novel/--not-novel")
        out.append(("novel", query.novel, True))
    for name, want in query.flags.items():
        unprefixed = not any(name.startswith(p) for p in FLAG_PREFIXES)
        key = STRICT_PREFIX + name if query.strict and unprefixed else name
        _require_key(key, keys, path, f"--flag {name}")
        out.append((key, want, False))  # a check that did not run is no pass
    return out


def _matches(row: Any, checks: list[tuple[str, bool, bool]], query: Query) -> bool:
    kv = row.key_value_pairs
    for key, want, absent_is_false in checks:
        value = kv.get(key)
        if value is None:
            if not (absent_is_false and want is False):
                return False
        elif bool(value) is not want:
            return False
    if query.min_atoms is not None and row.natoms < query.min_atoms:
        return False
    if query.max_atoms is not None and row.natoms > query.max_atoms:
        return False
    if query.elements:
        present = {SYMBOLS[int(z)] for z in row.numbers}
        wanted = set(query.elements)
        # a row without atoms (unreadable input) holds no element, "only these" included
        return bool(present) and (present <= wanted if query.only_elements else wanted <= present)
    return True


def _check_bounds(query: Query) -> None:
    for name, value in (("--min-atoms", query.min_atoms), ("--max-atoms", query.max_atoms),
                        ("--limit", query.limit)):  # fmt: skip
        if value is not None and value < 0:
            raise DatabaseQueryError(f"{name} must be >= 0, got {value}")
    lo, hi = query.min_atoms, query.max_atoms
    if lo is not None and hi is not None and lo > hi:
        raise DatabaseQueryError(f"--min-atoms {lo} is above --max-atoms {hi}")


def select_rows(path: str | Path, query: Query | None = None) -> Selection:
    """Rows of the database at ``path`` that match ``query``, in index order.

    Raises:
        DatabaseQueryError: see `open_database`; a filter on a key no row has; bad bounds.
    """
    query = query or Query()
    path = Path(path)
    _check_bounds(query)
    db = open_database(path)
    try:
        rows = sorted(db.select(include_data=False), key=_order)
    except Exception as exc:  # a damaged file must read as one line, not a traceback
        reason = f"{type(exc).__name__}: {exc}"
        raise DatabaseQueryError(f"{path}: cannot read rows ({reason})") from None
    keys = set().union(*(row.key_value_pairs for row in rows))
    checks = _checks(query, keys, path)
    matched = [row for row in rows if _matches(row, checks, query)]
    kept = matched if query.limit is None else matched[: query.limit]
    return Selection(path, query, len(rows), len(matched), kept)


# ---------------------------------------------------------------------------- exporting
def row_name(row: Any) -> str:
    """A database row's structure name: its ``name``, ``mof_id`` or ``qmof_id`` key (as
    written, see `from_db_values`), else ``row<id>``."""
    kv = from_db_values(row.key_value_pairs)
    return str(next((kv[k] for k in ("name", "mof_id", "qmof_id") if k in kv), None)
               or f"row{row.id}")


def _number(row: Any) -> int:
    """The row's ``index`` (or ``input_index``), else its database id."""
    kv = row.key_value_pairs
    return int(next((kv[k] for k in ORDER_KEYS if k in kv), row.id))


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:80]


def _structures(selection: Selection) -> list[tuple[Any, Any]]:
    """(row, periodic ASE Atoms) of the rows that hold a structure (unreadable inputs do not)."""
    out = []
    for row in selection.rows:
        atoms = row.toatoms()
        if len(atoms) and all(atoms.pbc):
            out.append((row, atoms))
    return out


def export_cifs(selection: Selection, folder: str | Path) -> int:
    """One CIF per selected structure, ``NNNNNN_name.cif`` (NNNNNN: its index, else row id).

    Each CIF records its row's key-value pairs, the database and the row id as ``_mofasa_*``
    data items (see `mofasa.data.cif.write_cif`). Returns the number of CIFs written.
    """
    from mofasa.data.cif import write_cif
    from mofasa.data.crystal import Crystal

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for row, atoms in _structures(selection):
        stem = f"{_number(row):06d}_{_safe(row_name(row))}"
        if stem in used:  # two rows with one index: keep both
            stem += f"_row{row.id}"
        used.add(stem)
        provenance = {**from_db_values(row.key_value_pairs),
                      "source_db": str(selection.path.resolve()), "db_row_id": row.id}
        write_cif(Crystal.from_ase(atoms, id=row_name(row)), folder / f"{stem}.cif",
                  provenance=provenance)  # fmt: skip
    return len(used)


def export_extxyz(selection: Selection, path: str | Path) -> int:
    """All selected structures in one extended-XYZ file (key-value pairs in each frame's
    comment line, plus ``db_row_id``); returns the number of frames."""
    from ase.io import write

    frames = []
    for row, atoms in _structures(selection):
        atoms.info.update(from_db_values(row.key_value_pairs))
        atoms.info["db_row_id"] = row.id
        frames.append(atoms)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write(str(path), frames, format="extxyz")
    return len(frames)


def export_csv(selection: Selection, path: str | Path) -> int:
    """One CSV line per selected row (also those without a structure): ``db_row_id``,
    ``natoms``, ``formula`` (Hill order), then every key-value column (order keys and ``name``
    first; empty where a row lacks the key).
    Returns the number of data lines."""
    from ase.formula import Formula

    keys = set().union(*(row.key_value_pairs for row in selection.rows))
    first = [k for k in (*ORDER_KEYS, "name") if k in keys]
    columns = ["db_row_id", "natoms", "formula", *first, *sorted(keys - set(first))]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in selection.rows:
            formula = Formula(row.formula).format("hill")  # ASE's own order is by abundance
            writer.writerow({"db_row_id": row.id, "natoms": row.natoms, "formula": formula,
                             **from_db_values(row.key_value_pairs)})  # fmt: skip
    return len(selection.rows)


def summary_line(selection: Selection, written: Mapping[str, tuple[int, str]] | None = None) -> str:
    """One line: ``results.db: 3 of 5 rows match (valid (headline)); wrote 3 CIFs to out``.

    Args:
        selection: the selection.
        written: export kind ("CIFs", "extxyz frames", "CSV rows") -> (count, destination).
    """
    query = selection.query.describe()
    line = f"{selection.path}: {selection.matched} of {selection.total} rows match ({query})"
    if len(selection.rows) < selection.matched:
        line += f", first {len(selection.rows)} kept (--limit)"
    if written:
        line += "; wrote " + ", ".join(
            f"{n} {kind} to {dest}" for kind, (n, dest) in written.items()
        )
        missing = max(len(selection.rows) - n for kind, (n, _) in written.items())
        if missing:
            line += f" ({missing} selected rows hold no periodic structure)"
    return line
