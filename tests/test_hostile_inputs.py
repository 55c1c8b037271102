"""`evaluate`'s reader applies `mofasa data prepare`'s checks: a NaN coordinate, a flat cell or
too many atoms is a row with its reason and no later step sees it; a run made only of such
inputs finishes and writes its summary. Needs no evaluation extra (no check runs here)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mofasa import Crystal
from mofasa.evaluation import runner
from mofasa.evaluation.inputs import iter_inputs
from mofasa.evaluation.pool import IsolatedPool
from tests.test_bad_input import BAD, EXAMPLES, write_many_atoms_cif


def real_cif_with(edit: str) -> str:
    """qmof-de7a226 (36 atoms) with one atom line edited: ``nan`` x, or a duplicate at 0 Å."""
    lines = (EXAMPLES / "qmof_cifs" / "qmof-de7a226.cif").read_text().splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if line.startswith("Cu  Cu0"))
    h = lines[first + 1]
    if edit == "nan":
        lines[first + 1] = h.replace(h.split()[3], "nan", 1)
        return "".join(lines)
    lines.insert(first + 2, h.replace("H1 ", "H99 ", 1))
    return "".join(lines).replace("'Cu1 H14 C12 N4 O5'", "'Cu1 H15 C12 N4 O5'")


def box(frac: list, lattice: np.ndarray, id: str) -> Crystal:
    return Crystal([6] * len(frac), frac, lattice, id=id)


def test_objects_pass_the_prepare_checks():
    good = box([[0.1, 0.1, 0.1], [0.5, 0.5, 0.5]], np.eye(3) * 10, "good")
    items = list(iter_inputs([
        good,
        box([[np.nan, 0.1, 0.1]], np.eye(3) * 10, "nan_coordinate"),
        box([[0.1, 0.1, 0.1]], np.diag([10.0, 10.0, np.inf]), "inf_cell"),
        box([[0.1, 0.1, 0.1]], [[10, 0, 0], [0, 10, 0], [10, 10, 0]], "flat_cell"),
        box([], np.eye(3) * 10, "empty"),
        box([[0.1, 0.1, 0.1], [0.1, 0.1, 0.1]], np.eye(3) * 10, "coincident"),
        box([[0.1, 0.1, 0.1]] * 5, np.eye(3) * 10, "five_atoms"),
    ], max_atoms=4))  # fmt: skip
    got = {item.name: item.reason for item in items}
    assert got == {
        "good": None, "nan_coordinate": "non_finite", "inf_cell": "non_finite",
        "flat_cell": "degenerate_cell", "empty": "no_atoms",
        "coincident": None,  # overlaps are MOFChecker's verdict, not the reader's
        "five_atoms": "too_many_atoms",
    }  # fmt: skip
    assert all((item.crystal is None) == bool(item.error) for item in items)
    assert items[-1].num_atoms == 5


def test_ase_db_rows_pass_the_prepare_checks(tmp_path):
    from ase import Atoms
    from ase.db import connect

    path = tmp_path / "in.db"
    with connect(str(path)) as db:
        db.write(Atoms("CO", positions=[[0, 0, 0], [np.nan, 0, 0]], cell=[8, 8, 8], pbc=True),
                 name="nan_position")  # fmt: skip
        db.write(Atoms("CO", positions=[[0, 0, 0], [1.2, 0, 0]], cell=[8, 8, 8], pbc=True),
                 name="ok")  # fmt: skip
    assert [(i.name, i.reason) for i in iter_inputs(path)] == [("nan_position", "non_finite"),
                                                                ("ok", None)]  # fmt: skip


def test_refused_inputs_are_rows_and_the_run_finishes(tmp_path, monkeypatch):
    """Only refused inputs: each is a row with its reason, nothing is checked (no worker even
    starts), and summary.json is written, where a NaN coordinate used to stop the run with
    `data must be finite` after the checks, and 12,000 atoms to time out."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "real_nan.cif").write_text(real_cif_with("nan"))
    write_many_atoms_cif(folder / "many_atoms.cif")
    for name in ("degenerate_flat_angles.cif", "no_atoms.cif", "unreadable_binary.cif"):
        shutil.copy(BAD / name, folder)
    monkeypatch.setattr(runner, "require_checkers", lambda: {})

    def no_jobs(self, jobs):
        raise AssertionError("no check may run on a refused input")

    monkeypatch.setattr(IsolatedPool, "imap", no_jobs)
    out = tmp_path / "out"
    result = runner.evaluate(folder, out, progress=False, report=False)
    rows = {r["name"]: r for r in result.records}
    assert {n: r.get("read_reason") for n, r in rows.items()} == {
        "real_nan": "non_finite", "many_atoms": "too_many_atoms",
        "degenerate_flat_angles": "degenerate_cell", "no_atoms": "no_atoms",
        "unreadable_binary": "unreadable",
    }  # fmt: skip
    assert all(r["valid"] is False and r["read_error"] for r in rows.values())
    assert rows["many_atoms"]["num_atoms"] == 12_000 and rows["many_atoms"]["size_bin"] == ">500"
    assert "max_atoms=1000" in rows["many_atoms"]["read_error"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_requested"] == 5 and summary["valid_rate"] == 0.0
    assert summary["settings"]["max_atoms"] == 1000


@pytest.mark.parametrize("max_atoms", [None, 20_000])
def test_max_atoms_can_be_raised_or_lifted(max_atoms, tmp_path):
    path = tmp_path / "many_atoms.cif"
    write_many_atoms_cif(path, (2, 2, 2))  # 400 atoms
    (item,) = iter_inputs(path, max_atoms=max_atoms)
    assert item.crystal is not None and item.crystal.num_atoms == 400
    (item,) = iter_inputs(path, max_atoms=399)
    assert item.reason == "too_many_atoms" and item.num_atoms == 400
