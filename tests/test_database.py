"""`mofasa db` (mofasa.data.database, mofasa.cli.db) on tiny samples.db / results.db built from the
example QMOF CIFs, and the provenance items of `write_cif`."""

from __future__ import annotations

import argparse
import csv
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest

from mofasa.cli.db import add_db_parser
from mofasa.data import read_cif, write_cif
from mofasa.data.database import (
    DatabaseQueryError,
    Query,
    export_cifs,
    export_csv,
    export_extxyz,
    parse_elements,
    parse_flag,
    select_rows,
)
from mofasa.evaluation.validity import COMPOSITION_FLAGS, REPORTED_FLAGS, RULE_FLAGS
from tests.conftest import EXAMPLES

# 32, 41, 47 and 64 atoms
A, B, C, D = "qmof-1150e7f", "qmof-57b6935", "qmof-03d42ea", "qmof-1ddbf02"
FORMULAS = {A: "C8H8Gd2O14", B: "C16H16CuN4O4", C: "C18H18CoN4O6", D: "C30H20O12Zn2"}


def crystal(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_cif(EXAMPLES / f"{name}.cif")


@pytest.fixture(scope="module")
def samples_db(tmp_path_factory) -> Path:
    """As sampling/store.py writes it, rows out of index order (a run still in progress), the
    last one a degenerate cell (elements only, not periodic)."""
    from ase import Atoms
    from ase.db import connect

    path = tmp_path_factory.mktemp("samples") / "samples.db"
    kv = {"model": "runs/small model/last.pt", "seed": 3, "steps": 50, "sampler": "ddim"}
    with connect(str(path)) as db:
        for index, name in ((2, C), (0, A), (3, D), (1, B)):
            c = crystal(name)
            db.write(c.to_ase(), name=name, index=index, n_atoms=c.num_atoms, cell_ok=True, **kv)
        flat = Atoms(numbers=crystal(B).numbers, pbc=False)
        db.write(flat, name="flat", index=4, n_atoms=len(flat), cell_ok=False,
                 cell_error="degenerate cell (volume 0 Å^3 for 41 atoms)", **kv)  # fmt: skip
    return path


def _record(index: int, name: str, **changes) -> dict:
    """A results.db record as evaluation/runner.py builds it: both modes, every flag."""
    from mofasa.evaluation.summary import size_bin

    c = crystal(name)
    rec = {"input_index": index, "name": name, "num_atoms": c.num_atoms,
           "composition": c.formula, "size_bin": size_bin(c.num_atoms)}  # fmt: skip
    for prefix in ("", "strict_"):
        rec[prefix + "check_status"] = "ok"
        rec.update({prefix + f: False for f in RULE_FLAGS})
        rec.update({prefix + f: True for f in (*COMPOSITION_FLAGS, *REPORTED_FLAGS)})
    rec.update(valid=True, valid_strict=True, novel=True, novel_match="", unique=True, vnu=True,
               crystal_system_001="triclinic")  # fmt: skip
    rec.update(changes)
    return {k: v for k, v in rec.items() if v is not None}  # None: the check did not run


@pytest.fixture(scope="module")
def results_db(tmp_path_factory) -> Path:
    """Written by the evaluation's own ResultStore: 4 structures and an unreadable input."""
    from mofasa.evaluation.store import ResultStore

    path = tmp_path_factory.mktemp("eval") / "results.db"
    store = ResultStore(path)
    records = [
        _record(0, A),
        _record(1, B, valid=False, valid_strict=False, has_atomic_overlaps=True,
                strict_has_atomic_overlaps=True, vnu=False),
        _record(2, C, valid_strict=False, strict_has_lone_molecule=True, novel=False, vnu=False,
                novel_match=A),
        # screened: stopped at undercoordinated_c, so has_atomic_overlaps was never run
        _record(3, D, valid=False, has_undercoordinated_c=True, has_atomic_overlaps=None,
                novel=False, vnu=False),
    ]
    for rec in records:
        store.add(rec, crystal(rec["name"]), None)
    bad = {"input_index": 4, "name": "broken", "read_error": "truncated: x", "valid": False}
    store.add(bad, None, None)
    return path


def names(path: Path, **query) -> list[str]:
    return [row.name for row in select_rows(path, Query(**query)).rows]


# ---------------------------------------------------------------------------- filters
def test_rows_in_index_order_with_atom_count_and_limit(samples_db):
    assert names(samples_db) == [A, B, C, D, "flat"]
    assert names(samples_db, min_atoms=41, max_atoms=47) == [B, C, "flat"]
    assert names(samples_db, min_atoms=48) == [D]
    assert names(samples_db, max_atoms=40) == [A]
    sel = select_rows(samples_db, Query(min_atoms=40, limit=2))
    assert [r.name for r in sel.rows] == [B, C] and sel.matched == 4 and sel.total == 5


def test_element_filters(samples_db, results_db):
    assert names(samples_db, elements=("N",)) == [B, C, "flat"]
    assert names(samples_db, elements=("Cu", "N")) == [B, "flat"]
    assert names(samples_db, elements=("C", "H", "O", "Gd"), only_elements=True) == [A]
    only = ("C", "H", "N", "O", "Cu", "Co")
    assert names(samples_db, elements=only, only_elements=True) == [B, C, "flat"]
    # the unreadable input holds no atoms: it matches no element filter
    assert names(results_db, elements=only, only_elements=True) == [B, C]


def test_validity_and_novelty_filters(results_db):
    assert names(results_db, valid=True) == [A, C]
    assert names(results_db, valid=False) == [B, D, "broken"]  # unreadable counts as invalid
    assert names(results_db, valid=True, strict=True) == [A, D]  # D fails the headline only
    assert names(results_db, valid=False, strict=True) == [B, C, "broken"]
    assert names(results_db, novel=True) == [A, B]
    assert names(results_db, novel=False) == [C, D, "broken"]
    assert names(results_db, valid=True, novel=True) == [A]


def test_flag_filters(results_db):
    assert names(results_db, flags={"has_atomic_overlaps": True}) == [B]
    # D's overlap check was not run (screen): it is no pass; the unreadable row has no flags
    assert names(results_db, flags={"has_atomic_overlaps": False}) == [A, C]
    assert names(results_db, flags={"has_lone_molecule": True}) == []
    assert names(results_db, flags={"has_lone_molecule": True}, strict=True) == [C]
    assert names(results_db, flags={"strict_has_lone_molecule": True}) == [C]
    both = {"has_atomic_overlaps": False, "has_undercoordinated_c": False}
    assert names(results_db, flags=both, elements=("Co",)) == [C]
    assert parse_flag("has_atomic_overlaps=false") == ("has_atomic_overlaps", False)
    assert parse_flag("strict_has_metal=Yes") == ("strict_has_metal", True)


# ---------------------------------------------------------------------------- errors
def test_bad_inputs_are_one_line_errors(samples_db, results_db, tmp_path):
    missing = tmp_path / "nope.db"
    with pytest.raises(DatabaseQueryError, match="no such file"):
        select_rows(missing)
    assert not missing.exists()  # ase.db.connect would have created it
    text = tmp_path / "notes.db"
    text.write_text("not a database\n")
    with pytest.raises(DatabaseQueryError, match="not an ASE database"):
        select_rows(text)
    plain = tmp_path / "plain.db"
    with sqlite3.connect(plain) as con:
        con.execute("CREATE TABLE t (x)")
    with pytest.raises(DatabaseQueryError, match="systems table"):
        select_rows(plain)
    with sqlite3.connect(plain) as con:  # and it was left alone
        assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["t"]
    with pytest.raises(DatabaseQueryError, match=r"not an evaluation results\.db"):
        select_rows(samples_db, Query(valid=True))
    with pytest.raises(DatabaseQueryError, match="'novel'"):
        select_rows(samples_db, Query(novel=False))
    with pytest.raises(DatabaseQueryError, match="has_atomic_overlaps"):
        select_rows(samples_db, Query(flags={"has_atomic_overlaps": False}))
    with pytest.raises(DatabaseQueryError, match="unknown flag 'has_overlaps'"):
        parse_flag("has_overlaps=false")
    with pytest.raises(DatabaseQueryError, match="NAME=true"):
        parse_flag("has_atomic_overlaps=maybe")
    with pytest.raises(DatabaseQueryError, match="Xx"):
        parse_elements("Zn,Xx")
    with pytest.raises(DatabaseQueryError, match="above --max-atoms"):
        select_rows(results_db, Query(min_atoms=50, max_atoms=40))
    for err in (DatabaseQueryError("x"),):
        assert isinstance(err, ValueError)


# ---------------------------------------------------------------------------- exports
def test_export_cifs_read_back_with_provenance(samples_db, tmp_path):
    from pymatgen.io.cif import CifFile, CifParser

    sel = select_rows(samples_db, Query(elements=("N",)))
    assert len(sel) == 3 and export_cifs(sel, tmp_path / "cifs") == 2  # "flat" has no cell
    files = sorted((tmp_path / "cifs").glob("*.cif"))
    assert [f.name for f in files] == [f"000001_{B}.cif", f"000002_{C}.cif"]
    for f, name in zip(files, (B, C), strict=True):
        structure = CifParser(f).parse_structures(primitive=False)[0]
        assert structure.composition.reduced_formula == crystal(name).to_pymatgen(
            ).composition.reduced_formula  # fmt: skip
        assert len(structure) == crystal(name).num_atoms
        block = next(iter(CifFile.from_file(f).data.values())).data
        assert block["_mofasa_name"] == name
        assert block["_mofasa_model"] == "runs/small model/last.pt"
        assert block["_mofasa_source_db"] == str(samples_db.resolve())
    assert read_cif(files[0]).formula == FORMULAS[B]


def test_export_extxyz_and_csv(results_db, tmp_path):
    from ase.db import connect
    from ase.io import read

    sel = select_rows(results_db, Query(valid=False))  # B, D and the unreadable input
    assert export_extxyz(sel, tmp_path / "sel.extxyz") == 2  # no structure: no frame
    frames = read(str(tmp_path / "sel.extxyz"), index=":")
    assert [f.info["name"] for f in frames] == [B, D]
    assert frames[0].info["has_atomic_overlaps"] is True and frames[0].info["input_index"] == 1
    row = connect(str(results_db)).get(name=B)
    assert np.allclose(frames[0].positions, row.positions) and all(frames[0].pbc)
    assert np.allclose(frames[0].cell[:], row.cell[:])

    assert export_csv(sel, tmp_path / "sel.csv") == 3  # every selected row, structure or not
    with open(tmp_path / "sel.csv", newline="") as fh:
        lines = list(csv.DictReader(fh))
    header = list(lines[0])
    assert header[:5] == ["db_row_id", "natoms", "formula", "input_index", "name"]
    assert {"valid", "valid_strict", "has_atomic_overlaps", "novel", "read_error"} <= set(header)
    assert [r["name"] for r in lines] == [B, D, "broken"]
    assert [r["valid"] for r in lines] == ["False"] * 3
    assert lines[0]["formula"] == FORMULAS[B] and lines[2]["natoms"] == "0"
    assert lines[1]["has_atomic_overlaps"] == ""  # not run: empty, not False


# ---------------------------------------------------------------------------- command line
def run_db(*argv: str) -> int:
    p = argparse.ArgumentParser(prog="mofasa")
    add_db_parser(p.add_subparsers())
    args = p.parse_args(["db", *map(str, argv)])
    return args.func(args)


def test_cli_prints_one_line_and_exports(results_db, tmp_path, capsys):
    code = run_db(results_db, "--valid", "--flag", "has_atomic_overlaps=false", "--elements",
                  "C,H,O", "--export-cifs", tmp_path / "c", "--export-csv", tmp_path / "s.csv")
    out = capsys.readouterr().out
    assert code == 0 and out.count("\n") == 1
    assert "2 of 5 rows match" in out and "wrote 2 CIFs" in out and "2 CSV rows" in out
    assert len(list((tmp_path / "c").glob("*.cif"))) == 2
    assert run_db(results_db, "--invalid", "--export-extxyz", tmp_path / "x.extxyz") == 0
    assert "1 selected rows hold no periodic structure" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--valid",), "no row has the key 'check_status'"),
        (("--flag", "has_overlap=false"), "unknown flag"),
        (("--only-elements",), "needs --elements"),
    ],
)
def test_cli_errors_exit_2_with_one_line(samples_db, capsys, argv, message):
    assert run_db(samples_db, *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mofasa db: error: ") and message in err and err.count("\n") == 1


def test_cli_missing_file(tmp_path, capsys):
    assert run_db(tmp_path / "samples.db") == 2
    assert "no such file" in capsys.readouterr().err


# ---------------------------------------------------------------------------- provenance
def test_write_cif_provenance_reads_back():
    from pymatgen.io.cif import CifFile, CifParser

    c = crystal(B)
    prov = {"model": "runs/small model/last.pt", "seed": 7, "index": 12, "guidance": 1.5,
            "note": "it's \"quoted\"", "empty": ""}  # fmt: skip
    text = write_cif(c, provenance=prov)
    assert "_mofasa_seed   7\n" in text and "_mofasa_index   12\n" in text
    block = next(iter(CifFile.from_str(text).data.values())).data
    assert {k: block[f"_mofasa_{k}"] for k in prov} == {k: str(v) for k, v in prov.items()}
    parsed = CifParser.from_str(text).parse_structures(primitive=False)[0]
    assert len(parsed) == c.num_atoms
    back = read_cif(text, is_text=True)
    assert np.array_equal(np.sort(back.numbers), np.sort(c.numbers))
    assert write_cif(c) == write_cif(c, provenance=None)  # unchanged without provenance
    with pytest.raises(ValueError, match="provenance key"):
        write_cif(c, provenance={"bad key": 1})
