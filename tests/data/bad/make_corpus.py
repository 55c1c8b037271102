"""Regenerate the hostile-input corpus in this folder (``python tests/data/bad/make_corpus.py``).

The files are committed; this script documents how each was made and is deterministic. Most are
edited copies of real QMOF CIFs from ``examples/qmof_cifs``; the rest are tiny synthetic CIFs
(a CO2-like trio of atoms in a 10 Å cube) with one thing wrong. Expected reason codes are listed
in ``tests/test_bad_input.py``.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
QMOF = HERE.parents[2] / "examples" / "qmof_cifs"
P21C = ("x, y, z", "-x, y+1/2, -z+1/2", "-x, -y, -z", "x, -y+1/2, z+1/2")
CUBE = (10.0, 10.0, 10.0, 90.0, 90.0, 90.0)
ATOM_COLUMNS = (
    "_atom_site_type_symbol",
    "_atom_site_label",
    "_atom_site_symmetry_multiplicity",
    "_atom_site_fract_x",
    "_atom_site_fract_y",
    "_atom_site_fract_z",
    "_atom_site_occupancy",
)


def write(name: str, content: str | bytes) -> None:
    path = HERE / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


def simple_cif(
    cell: tuple, rows: list | None, *, formula: str | None = None, ops: tuple = ("x, y, z",),
    header: str = "",
) -> str:
    a, b, c, al, be, ga = cell
    text = "# mofasa hostile-input corpus\n" + header + "data_bad\n"
    text += f"_cell_length_a   {a}\n_cell_length_b   {b}\n_cell_length_c   {c}\n"
    text += f"_cell_angle_alpha   {al}\n_cell_angle_beta   {be}\n_cell_angle_gamma   {ga}\n"
    if formula:
        text += f"_chemical_formula_sum   '{formula}'\n"
    text += "loop_\n _symmetry_equiv_pos_as_xyz\n" + "".join(f"  '{o}'\n" for o in ops)
    if rows is None:
        return text
    cols = ["_atom_site_type_symbol", "_atom_site_label", "_atom_site_fract_x",
            "_atom_site_fract_y", "_atom_site_fract_z", "_atom_site_occupancy"]
    text += "loop_\n" + "".join(f" {c}\n" for c in cols)
    text += "".join("  " + "  ".join(str(v) for v in r) + "\n" for r in rows)
    return text


def co2(first: str = "C") -> list[list]:
    return [
        [first, f"{first}1", 0.50, 0.50, 0.50, 1.0],
        ["O", "O1", 0.616, 0.50, 0.50, 1.0],
        ["O", "O2", 0.384, 0.50, 0.50, 1.0],
    ]


def main() -> None:
    real = (QMOF / "qmof-de7a226.cif").read_text()  # 36 atoms, formula 'Cu1 H14 C12 N4 O5'
    lines = real.splitlines(keepends=True)
    first_atom = next(i for i, line in enumerate(lines) if line.startswith("Cu  Cu0"))

    # unreadable
    garbage = random.Random(1234)
    write("unreadable_binary.cif", b"\x89PNG\r\n\x1a\n" + bytes(garbage.randrange(256)
                                                                 for _ in range(600)))
    write("unreadable_empty.cif", "")
    write("unreadable_not_cif.cif", "3\nwater molecule in XYZ format, not a CIF\n"
          "O 0.000 0.000 0.000\nH 0.757 0.586 0.000\nH -0.757 0.586 0.000\n")

    # truncated: mid-line inside the atom loop; at a line end (atoms missing vs formula_sum)
    half = lines[first_atom + 20]
    write("truncated_mid_line.cif", "".join(lines[: first_atom + 20]) + half[: len(half) // 2])
    write("truncated_missing_atoms.cif", "".join(lines[: first_atom + 20]))

    # disordered: C and N share one site with occupancy 0.5 each
    rows = co2()
    rows[0][5] = 0.5
    rows.insert(1, ["N", "N1", 0.50, 0.50, 0.50, 0.5])
    write("disordered_half_occupancy.cif", simple_cif(CUBE, rows))

    # unknown elements: not a symbol, a dummy species, nobelium (Z = 102 > 100)
    write("unknown_element_Xx.cif", simple_cif(CUBE, co2("Xx")))
    write("unknown_element_dummy_X.cif", simple_cif(CUBE, co2("X")))
    write("unknown_element_Z102.cif", simple_cif(CUBE, co2("No")))

    write("no_atoms.cif", simple_cif(CUBE, None))

    # non-finite values
    rows = co2()
    rows[1][2] = "nan"
    write("non_finite_nan_coordinate.cif", simple_cif(CUBE, rows))
    write("non_finite_nan_cell.cif", simple_cif((10.0, "nan", 10.0, 90.0, 90.0, 90.0), co2()))
    write("non_finite_nan_angle.cif", simple_cif((10.0, 10.0, 10.0, 90.0, "nan", 90.0), co2()))

    # degenerate cells
    write("degenerate_zero_length.cif", simple_cif((10.0, 0.0, 10.0, 90.0, 90.0, 90.0), co2()))
    flat = (10.0, 10.0, 10.0, 60.0, 60.0, 120.0)  # alpha + beta = gamma: coplanar vectors
    write("degenerate_flat_angles.cif", simple_cif(flat, co2()))
    write("degenerate_flat_angles_p21c.cif", simple_cif(flat, co2(), ops=P21C))
    write("degenerate_impossible_angles.cif",
          simple_cif((10.0, 10.0, 10.0, 60.0, 60.0, 130.0), co2()))
    write("degenerate_tiny_volume.cif", simple_cif((10.0, 10.0, 0.3, 90.0, 90.0, 90.0), co2()))

    # huge cell: b = 600 Å
    d = 1.16 / 600
    rows = [["C", "C1", 0.50, 0.50, 0.50, 1.0], ["O", "O1", 0.50, 0.50 + d, 0.50, 1.0],
            ["O", "O2", 0.50, 0.50 - d, 0.50, 1.0]]
    write("huge_cell.cif", simple_cif((10.0, 600.0, 10.0, 90.0, 90.0, 90.0), rows))

    # overlapping atoms: the real file plus a copy of H1 moved 0.1 Å along a
    over = lines[:]
    h1 = over[first_atom + 1]
    x = h1.split()[3]
    over.insert(first_atom + 2, h1.replace("H1 ", "H99 ", 1)
                .replace(x, f"{float(x) + 0.1 / 6.00465405:.8f}", 1))
    write("overlapping_atoms.cif",
          "".join(over).replace("'Cu1 H14 C12 N4 O5'", "'Cu1 H15 C12 N4 O5'"))

    # too many atoms: a real 148-atom structure, per-atom charge columns dropped
    out, in_atoms = [], False
    for line in (QMOF / "qmof-1360e97.cif").read_text().splitlines():
        if line.startswith(" _atom_site_"):
            in_atoms = True
            if line.strip() in ATOM_COLUMNS:
                out.append(line)
        elif in_atoms and line.strip():
            out.append("  ".join(line.split()[: len(ATOM_COLUMNS)]))
        else:
            out.append(line)
    write("too_many_atoms.cif", "\n".join(out) + "\n")

    # checksum mismatch: a real file with gamma edited; the index holds the original's sha256
    original = (QMOF / "qmof-f528aef.cif").read_bytes()
    write("checksum_mismatch.cif", original.replace(b"0.", b"0.9", 1))
    sha = hashlib.sha256(original).hexdigest()
    write("checksum_index.csv", f"qmof_id,split,cif_sha256\nchecksum_mismatch,val,{sha}\n")

    # GOOD: P2_1/c with three general sites (x4) and Zn on the inversion centre (x2): 14 atoms
    rows = [
        ["Zn", "Zn1", 0.0, 0.0, 0.0, 1.0],
        ["O", "O1", 0.15, 0.10, 0.05, 1.0],
        ["C", "C1", 0.25, 0.20, 0.10, 1.0],
        ["H", "H1", 0.30, 0.30, 0.20, 1.0],
    ]
    write("good_symmetry_p21c.cif", simple_cif(
        (8.0, 9.0, 10.0, 90.0, 105.0, 90.0), rows, ops=P21C, formula="Zn2 O4 C4 H4",
        header="# GOOD: non-P1, expands to 14 atoms\n"))

    # GOOD: standard uncertainties on the cell and on five x coordinates
    unc = lines[:]
    for i, line in enumerate(unc):
        if line.startswith("_cell_length_a"):
            unc[i] = line.rstrip("\n") + "(3)\n"
        if line.startswith("_cell_angle_beta"):
            unc[i] = line.rstrip("\n") + "(12)\n"
    for k in range(first_atom, first_atom + 5):
        x = unc[k].split()[3]
        unc[k] = unc[k].replace(x, x[:6] + "(5)", 1)
    write("good_uncertainties.cif", "".join(unc))

    # GOOD: CR-only line ends (legal CIF 1.1 line terminators)
    write("good_cr_line_endings.cif", real.replace("\n", "\r").encode())


if __name__ == "__main__":
    main()
