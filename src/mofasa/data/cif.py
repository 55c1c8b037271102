"""CIF in and out through pymatgen (symmetry expansion, occupancy handling), with clear errors."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np

from mofasa.data.crystal import Crystal
from mofasa.data.elements import MAX_Z, SYMBOL_TO_Z, SYMBOLS
from mofasa.data.errors import CrystalError
from mofasa.geometry.lattice import lattice_from_parameters

__all__ = ["read_cif", "write_cif"]

PathOrText = str | os.PathLike


def _load_text(source: PathOrText, is_text: bool | None) -> tuple[str, str | None]:
    """Return (CIF text, name of the file or None when ``source`` is CIF text itself)."""
    if is_text is None:
        is_text = not (isinstance(source, os.PathLike) or _looks_like_path(str(source)))
    if not is_text:
        path = Path(source)
        try:
            return path.read_text(errors="replace"), str(path)
        except OSError as exc:
            reason = f"cannot read file ({exc.strerror})"
            raise CrystalError("unreadable", reason, str(path)) from exc
    # universal newlines, as read_text gives a file: CIF allows CR, LF and CR LF line ends
    return str(source).replace("\r\n", "\n").replace("\r", "\n"), None


def _looks_like_path(text: str) -> bool:
    """A short one-line string is a path; empty or multi-line (CR, LF) text, or text holding a
    NUL byte, is CIF content (an empty or garbage file's decoded bytes must not be opened)."""
    return 0 < len(text) < 4096 and not any(ch in text for ch in "\n\r\x00")


_IDENTITY_OPS = {"x,y,z", "+x,+y,+z"}
_SYMOP_KEYS = ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz")


_SITE_KEYS = ("_atom_site_fract_x", "_atom_site_Cartn_x")


def _tokenise(text: str) -> list[dict] | None:
    """The data blocks of a CIF (pymatgen's tokeniser), or None where it fails for a reason
    that `CifParser` explains later.

    Raises:
        CrystalError: ``no_atoms`` / ``truncated`` for a loop with fewer values than columns,
            where pymatgen's tokeniser divides by zero.
    """
    from pymatgen.io.cif import CifFile

    try:
        return [block.data for block in CifFile.from_str(text).data.values()]
    except ZeroDivisionError:  # pymatgen: ``len(items) % (len(items) // len(columns))``
        raise _short_loop(text) from None
    except Exception:
        return None


def _short_loop(text: str) -> CrystalError:
    """Name a loop with fewer values than columns: an empty atom-site loop holds no atoms."""
    rows = _loop_value_lines(text)
    if any(rows.get(k) == 0 for k in _SITE_KEYS):
        return CrystalError("no_atoms", "the atom_site loop has columns but no rows")
    return CrystalError("truncated", "a loop has fewer values than columns")


def _loop_value_lines(text: str) -> dict[str, int]:
    """Column name -> number of value lines of its loop (a line scan, for diagnosis only)."""
    out: dict[str, int] = {}
    columns: list[str] | None = None  # the loop being read; None outside loops
    in_values = False
    for raw in text.splitlines():
        line = raw.strip()
        low = line.lower()
        if not line or line.startswith("#"):
            continue
        if low.startswith("loop_"):
            columns, in_values = [], False
        elif columns is None:
            continue
        elif low.startswith("data_") or (line.startswith("_") and in_values):
            columns = None  # a new block or a plain data item ends the loop
        elif line.startswith("_"):
            columns.append(line.split()[0])
            out[columns[-1]] = 0
        else:
            in_values = True
            for column in columns:
                out[column] += 1
    return out


def _site_count(blocks: list[dict]) -> int | None:
    """Atom-site rows of the first block that has any (symmetry images not counted)."""
    for data in blocks:
        for key in _SITE_KEYS:
            if key in data:
                value = data[key]
                return 1 if isinstance(value, str) else len(value)
    return None


def _check_site_count(blocks: list[dict], max_atoms: int | None) -> None:
    """Refuse a file with more atom-site rows than ``max_atoms`` before building anything:
    symmetry expansion only adds atoms, so the rows are a lower bound of the count."""
    n = _site_count(blocks) if max_atoms is not None else None
    if n is not None and n > max_atoms:
        raise CrystalError(
            "too_many_atoms", f"{n} atom sites > max_atoms={max_atoms}", num_atoms=n
        )


def _fast_p1(blocks: list[dict]) -> Crystal | None:
    """P1 CIFs with full occupancy, read straight from pymatgen's CIF tokeniser.

    pymatgen's `CifParser` spends most of its time de-duplicating symmetry images, which a
    P1 file does not have (QMOF: 60 ms of 70 ms per file). Anything unusual returns None, and the
    caller falls back to the full `CifParser` path, which then explains what is wrong.
    """
    from pymatgen.io.cif import str2float

    if len(blocks) != 1:
        return None
    data = blocks[0]
    ops = next((data[k] for k in _SYMOP_KEYS if k in data), ["x, y, z"])
    if isinstance(ops, str):
        ops = [ops]
    if {o.replace(" ", "").lower() for o in ops} - _IDENTITY_OPS:
        return None
    try:
        symbols = data["_atom_site_type_symbol"]
        frac = [[str2float(v) for v in data[f"_atom_site_fract_{ax}"]] for ax in "xyz"]
        occ = [str2float(v) for v in data.get("_atom_site_occupancy", ["1"] * len(symbols))]
        params = [str2float(data[f"_cell_{k}"]) for k in (
            "length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma")]
        numbers = [SYMBOL_TO_Z[s] for s in symbols]
    except (KeyError, ValueError, TypeError):
        return None
    if isinstance(symbols, str) or any(abs(o - 1.0) > 1e-6 for o in occ):
        return None
    if not _formula_matches(data.get("_chemical_formula_sum"), numbers):
        return None
    if not np.isfinite(params).all():
        raise CrystalError("non_finite", f"cell parameters {params}")
    if min(params[:3]) <= 0:
        raise CrystalError("degenerate_cell", f"non-positive cell length in {params[:3]}")
    try:
        lattice = lattice_from_parameters(*params)
    except ValueError as exc:
        raise CrystalError("degenerate_cell", str(exc)) from None
    return Crystal(numbers, np.array(frac).T, lattice)


def _formula_matches(formula: object, numbers: list[int]) -> bool:
    """True when the CIF states no formula or its element counts equal the atom sites'."""
    if not isinstance(formula, str):
        return True
    stated = {}
    for token in formula.replace("'", "").split():
        sym = token.rstrip("0123456789.")
        count = token[len(sym):] or "1"
        try:
            stated[sym] = stated.get(sym, 0.0) + float(count)
        except ValueError:
            return False
    found: dict[str, float] = {}
    for z in numbers:
        found[SYMBOLS[z]] = found.get(SYMBOLS[z], 0.0) + 1.0
    return stated == found


def _parse_structure(text: str):  # -> pymatgen Structure
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # occupancy_tolerance=1.0: occupancies summing above 1 are errors, not rescaled.
            parser = CifParser(io.StringIO(text), occupancy_tolerance=1.0)
            structures = parser.parse_structures(primitive=False, on_error="raise")
        except CrystalError:
            raise
        except Exception as exc:
            raise _classify_parse_failure(exc, caught, text) from exc
    messages = [str(w.message) for w in caught]
    missing = [m for m in messages if m.startswith("Missing elements")]
    if missing:
        raise CrystalError("truncated", f"atoms missing against the stated formula ({missing[0]})")
    if not structures:
        raise CrystalError("no_atoms", "the CIF holds no structure")
    return structures[0]


def _classify_parse_failure(exc: Exception, caught: list, text: str) -> CrystalError:
    msg = f"{type(exc).__name__}: {exc}"
    notes = " ".join(str(w.message) for w in caught)
    low = (msg + " " + notes).lower()
    if "not a multiple" in low or "unexpected end" in low:
        return CrystalError("truncated", f"incomplete CIF loop ({msg[:200]})")
    if "occupanc" in low:
        return CrystalError("disordered", f"invalid occupancies ({msg[:200]})")
    if "singular matrix" in low:
        return CrystalError("degenerate_cell", "the cell vectors are coplanar (zero volume)")
    content = _diagnose_content(text)
    if content is not None:
        return content
    if "no structures" in low or "no atoms" in low:
        return CrystalError("no_atoms", "the CIF holds no atom sites")
    return CrystalError("unreadable", msg[:300])


def _diagnose_content(text: str) -> CrystalError | None:
    """Name what a CIF lacks: no data block with a cell (not a CIF), or no atom sites."""
    from pymatgen.io.cif import CifFile

    if not text.strip():
        return CrystalError("unreadable", "empty file")
    try:
        blocks = [b.data for b in CifFile.from_str(text).data.values()]
    except Exception:
        return None
    cells = [d for d in blocks if "_cell_length_a" in d]
    if not cells:
        return CrystalError("unreadable", "not a CIF (no data block with a unit cell)")
    site_keys = ("_atom_site_fract_x", "_atom_site_Cartn_x")
    if not any(k in d for d in cells for k in site_keys):
        return CrystalError("no_atoms", "the CIF has a cell but no atom sites")
    return None


def read_cif(
    source: PathOrText,
    *,
    id: str | None = None,
    is_text: bool | None = None,
    max_atoms: int | None = None,
) -> Crystal:
    """Read the first structure of a CIF into a `Crystal`.

    Symmetry operations in non-P1 CIFs are applied (sites expanded to P1). The cell is kept as
    written (no reduction: see `mofasa.data.canonicalize`).

    Args:
        source: a path, or the CIF text itself.
        id: identifier to store; defaults to the file's stem.
        is_text: True: ``source`` is CIF text; False: a path; None: guess (a short single-line
            string is a path). Batch readers pass True so file content is never opened.
        max_atoms: refuse a file with more atom-site rows than this right after tokenising,
            before any structure is built or expanded (None: no limit). The count after
            symmetry expansion is `check_crystal`'s to test.

    Raises:
        CrystalError: with reason ``unreadable``, ``truncated``, ``disordered``,
            ``unknown_element``, ``no_atoms`` or ``too_many_atoms``, naming the file.
    """
    text, name = _load_text(source, is_text)
    if id is None and name is not None:
        id = Path(name).stem
    try:
        blocks = _tokenise(text)
        if blocks is not None:
            _check_site_count(blocks, max_atoms)
        fast = _fast_p1(blocks) if blocks is not None else None
        if fast is not None:
            fast.id = id
            return fast
        structure = _parse_structure(text)
        return _to_crystal(structure, id)
    except CrystalError as err:
        raise err.with_source(name or id) from None


def _to_crystal(structure, id: str | None) -> Crystal:  # noqa: ANN001 (pymatgen Structure)
    if len(structure) == 0:
        raise CrystalError("no_atoms")
    if not structure.is_ordered:
        raise CrystalError("disordered", "sites with partial occupancy or mixed species")
    numbers = []
    for site in structure:
        z = getattr(site.specie, "Z", 0)
        symbol = getattr(site.specie, "symbol", str(site.specie))
        if not isinstance(z, int) or "Dummy" in type(site.specie).__name__:
            raise CrystalError("unknown_element", f"site species {symbol!r} is not an element")
        if not 1 <= z <= MAX_Z:
            detail = f"element {symbol} (Z={z}) is outside the vocabulary Z 1..{MAX_Z}"
            raise CrystalError("unknown_element", detail)
        numbers.append(z)
    return Crystal(numbers, structure.frac_coords, structure.lattice.matrix, id=id)


def write_cif(
    crystal: Crystal,
    path: PathOrText | None = None,
    *,
    provenance: dict[str, str | int | float] | None = None,
) -> str:
    """Write a P1 CIF (8 significant decimals: round trip exact to < 1e-6).

    The lattice is stored as parameters, so reading it back gives the cell in the standard
    orientation (a along x); numbers, fractional coordinates and parameters are preserved.

    Args:
        crystal: the structure.
        path: file to write (atomically), or None for the text only.
        provenance: where the structure came from (e.g. ``{"model": ..., "seed": 0,
            "index": 12}``), written as ``_mofasa_<key>`` data items of the data block, which
            pymatgen's `CifParser` keeps in ``CifBlock.data`` and otherwise ignores.

    Returns:
        The CIF text (also written to ``path`` when given, atomically).

    Raises:
        ValueError: a provenance key that is not a valid CIF tag suffix.
    """
    from pymatgen.io.cif import CifWriter

    text = str(CifWriter(crystal.to_pymatgen()))
    if crystal.id:
        text = text.replace("data_", f"data_{_block_name(crystal.id)}_", 1)
    if provenance:
        text = _with_provenance(text, provenance)
    if path is not None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return text


def _with_provenance(text: str, provenance: dict[str, str | int | float]) -> str:
    """Insert ``_mofasa_<key> value`` lines right after the ``data_`` line."""
    lines = []
    for key, value in provenance.items():
        if not key or not all(ch.isalnum() or ch in "_-." for ch in key):
            raise ValueError(f"provenance key {key!r}: use letters, digits, '_', '-', '.'")
        lines.append(f"_mofasa_{key}   {_cif_value(value)}")
    head, sep, rest = text.partition("data_")
    block_line, newline, body = rest.partition("\n")
    return head + sep + block_line + newline + "\n".join(lines) + "\n" + body


def _cif_value(value: str | int | float) -> str:
    """A CIF 1.1 value: bare when unambiguous, else quoted, else a semicolon text field."""
    text = str(value)
    reserved = ("data_", "loop_", "save_", "global_", "stop_")
    bare = (
        text
        and not any(ch.isspace() for ch in text)
        and text[0] not in "_#$'\"[];"
        and not text.lower().startswith(reserved)
    )
    if bare:
        return text
    if "\n" not in text and "\r" not in text:
        # a quote ends a quoted value only when whitespace follows it (CIF 1.1)
        for quote in ("'", '"'):
            if f"{quote} " not in text and f"{quote}\t" not in text and not text.endswith(quote):
                return f"{quote}{text}{quote}"
    # text field: only a line starting with ';' ends it, so such lines get a leading space
    body = "\n".join(" " + ln if ln.startswith(";") else ln for ln in text.splitlines())
    return f"\n;{body}\n;"


def _block_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
