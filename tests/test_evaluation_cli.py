"""`mofasa evaluate` / `mofasa relax` end to end on tiny inputs, resume, inputs, report."""

from __future__ import annotations

import importlib.metadata as md
import json
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from mofasa import Crystal
from tests.conftest import EXAMPLES

try:
    md.version("mofchecker")
except md.PackageNotFoundError:  # pragma: no cover
    pytest.skip(
        "mofchecker not installed: run `bash scripts/install_eval.sh`", allow_module_level=True
    )

from mofasa.cli import main
from mofasa.evaluation import runner
from mofasa.evaluation.runner import evaluate

A, B = "qmof-a0e80c5", "qmof-7344c24"  # 26 and 27 atoms


def run_cli(*argv: str) -> int:
    return main([str(a) for a in argv])


def read(name: str) -> Crystal:
    from mofasa.data import read_cif

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_cif(EXAMPLES / f"{name}.cif")


def methane_in_box(edge: float = 12.0) -> Crystal:
    h = 0.629
    cart = np.array([[0, 0, 0], [h, h, h], [-h, -h, h], [-h, h, -h], [h, -h, -h]]) + edge / 2
    return Crystal([6, 1, 1, 1, 1], cart / edge, np.eye(3) * edge, id="methane")


def copper(perturb: float = 0.0, seed: int = 0) -> Crystal:
    """fcc Cu (conventional cell, 4 atoms), optionally with random displacements (Å)."""
    a = 3.7  # a little off EMT's 3.6 Å, so the cell relaxes too
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    frac = frac + np.random.default_rng(seed).uniform(-perturb, perturb, frac.shape) / a
    return Crystal([29] * 4, frac, np.eye(3) * a, id="cu")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder: two real MOFs, the first again as a shuffled 2x1x1 supercell, a lone
    molecule, and a broken file."""
    from mofasa.data import write_cif

    d = tmp_path_factory.mktemp("inputs")
    shutil.copy(EXAMPLES / f"{A}.cif", d / "1_a.cif")
    shutil.copy(EXAMPLES / f"{B}.cif", d / "2_b.cif")
    a = read(A)
    frac = np.vstack([a.frac, a.frac + np.array([1, 0, 0])]) / [2, 1, 1]
    sup = Crystal(np.tile(a.numbers, 2), frac + 0.3, a.lattice * [[2], [1], [1]], id="a_super")
    write_cif(sup, d / "3_a_super.cif")
    write_cif(methane_in_box(), d / "4_methane.cif")
    (d / "5_broken.cif").write_text("data_broken\n_cell_length_a 10\n")
    return d


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("reference")
    shutil.copy(EXAMPLES / f"{A}.cif", d / f"{A}.cif")
    return d


@pytest.fixture(scope="module")
def evaluated(inputs, reference, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "out"
    code = run_cli("evaluate", inputs, "--out", out, "--reference", reference, "--workers", "2",
                   "--no-progress")  # fmt: skip
    assert code == 0
    return out


def test_evaluate_writes_summary_db_and_report(evaluated):
    summary = json.loads((evaluated / "summary.json").read_text())
    for key in ("n_requested", "n_evaluated", "valid_rate", "valid_rate_strict", "novel_rate",
                "unique_rate", "vnu_rate", "flag_rates", "valid_rate_by_size",
                "crystal_systems", "versions"):  # fmt: skip
        assert key in summary, key
    assert summary["versions"]["mofchecker"] == "0.9.6"
    assert summary["versions"]["pyeqeq"]
    assert summary["n_requested"] == 5 and summary["n_evaluated"] == 4
    # A (in the reference) and its supercell are valid; B is valid and novel; methane is not
    from ase.db import connect

    rows = {r.name: r for r in connect(str(evaluated / "results.db")).select()}
    assert sorted(r.input_index for r in rows.values()) == [0, 1, 2, 3, 4]
    assert rows["1_a"].valid and rows["1_a"].valid_strict and not rows["1_a"].novel
    assert rows["1_a"].novel_match == A and rows["1_a"].unique
    assert rows["3_a_super"].valid and not rows["3_a_super"].unique
    assert rows["3_a_super"].unique_match == "1_a"
    assert rows["2_b"].novel and rows["2_b"].unique and rows["2_b"].vnu == rows["2_b"].valid
    assert rows["4_methane"].has_lone_molecule and not rows["4_methane"].valid
    assert rows["5_broken"].read_error and not rows["5_broken"].valid
    assert rows["1_a"].natoms == 26 and rows["1_a"].crystal_system_001
    n_valid = sum(bool(r.valid) for r in rows.values())
    assert summary["valid_rate"] == pytest.approx(n_valid / 5)
    assert summary["flag_rates"]["has_lone_molecule"] == pytest.approx(0.2)
    assert summary["unique_rate"] == pytest.approx(3 / 5)
    html = (evaluated / "report.html").read_text()
    for png in ("flag_rates.png", "valid_by_size.png", "crystal_systems.png"):
        assert (evaluated / png).stat().st_size > 1000
        assert png in html
    assert html.count('src="thumbnails/') == 4
    assert len(list((evaluated / "thumbnails").glob("*.png"))) == 4


def test_rerun_resumes_without_duplicates(evaluated, inputs, reference):
    assert run_cli("evaluate", inputs, "--out", evaluated, "--reference", reference,
                   "--no-progress") == 0  # fmt: skip
    summary = json.loads((evaluated / "summary.json").read_text())
    assert summary["timing"]["resumed_from"] == 5
    assert summary["timing"]["structures_this_session"] == 0
    from ase.db import connect

    assert connect(str(evaluated / "results.db")).count() == 5
    # other settings in the same folder: refused, not mixed
    assert run_cli("evaluate", inputs, "--out", evaluated, "--no-progress") == 2


def test_killed_run_picks_up_where_it_stopped(inputs, tmp_path, monkeypatch):
    seen: list[int] = []
    original = runner._Run.process

    def dies_on_second_chunk(self, items):
        if seen:
            raise KeyboardInterrupt
        seen.extend(i.index for i in items)
        return original(self, items)

    monkeypatch.setattr(runner._Run, "process", dies_on_second_chunk)
    kw = dict(modes=("strict",), chunk=2, progress=False, report=False)
    with pytest.raises(KeyboardInterrupt):
        evaluate(inputs, tmp_path, **kw)
    assert seen == [0, 1]
    monkeypatch.setattr(runner._Run, "process", original)
    calls: list[int] = []
    monkeypatch.setattr(runner._Run, "process",
                        lambda self, items: calls.extend(i.index for i in items)
                        or original(self, items))  # fmt: skip
    result = evaluate(inputs, tmp_path, **kw)
    assert calls == [2, 3, 4]
    assert [r["input_index"] for r in result.records] == [0, 1, 2, 3, 4]
    from ase.db import connect

    assert connect(str(tmp_path / "results.db")).count() == 5


def test_python_api_on_crystals_and_ase_db(tmp_path):
    from ase.db import connect

    crystals = [read(A), methane_in_box()]
    result = evaluate(crystals, modes=("strict",), progress=False)
    assert [r["name"] for r in result.records] == [A, "methane"]
    assert result.records[0]["valid_strict"] and not result.records[1]["valid_strict"]
    assert "valid" not in result.records[0]  # the headline mode was not asked for
    assert result.summary["novel_rate"] is None  # no reference
    db_path = tmp_path / "in.db"
    with connect(str(db_path)) as db:
        for c in crystals:
            db.write(c.to_ase(), name=c.id)
    again = evaluate(db_path, tmp_path / "out", modes=("strict",), progress=False, report=False)
    assert [r["name"] for r in again.records] == [A, "methane"]
    assert [r["valid_strict"] for r in again.records] == [True, False]


def test_relaxation_with_emt_and_relax_command(tmp_path):
    result = evaluate([copper(0.1)], relax=True, calculator="emt", modes=("strict",),
                      fmax=0.02, steps=200, progress=False)  # fmt: skip
    rec = result.records[0]
    assert rec["relax_status"] == "ok" and rec["relax_converged"]
    assert 0 < rec["relax_steps"] < 200 and rec["relax_rmsd"] > 0.01
    assert rec["valid_relaxed_strict"] is False  # copper is no MOF
    assert result.summary["relaxation"]["converged_rate"] == 1.0

    from mofasa.data import write_cif

    src = tmp_path / "in"
    src.mkdir()
    write_cif(copper(0.1, seed=1), src / "cu.cif")
    out = tmp_path / "relaxed"
    assert run_cli("relax", src, "--out", out, "--calculator", "emt", "--no-progress") == 0
    from ase.db import connect

    (row,) = connect(str(out / "relaxed.db")).select()
    assert row.relax_converged and row.natoms == 4
    assert abs(row.cell[0, 0] - 3.6) < 0.05  # EMT's copper lattice constant
    assert len(list((out / "cifs").glob("*.cif"))) == 1


def test_chgnet_is_the_default_potential():
    """The default ML potential loads offline from its wheel and takes FIRE steps."""
    pytest.importorskip("chgnet")
    from mofasa.evaluation.relax import RelaxSettings, relax_crystal

    out = relax_crystal(read(A), None, RelaxSettings(fmax=0.02, steps=2))
    assert out["calculator"] == "chgnet" and out["steps"] == 2 and not out["converged"]
    assert np.isfinite(out["energy_per_atom"]) and out["rmsd"] < 0.5


def test_broken_eqeq_fails_the_command_loudly(inputs, tmp_path, monkeypatch, capsys):
    from mofasa.evaluation import compat

    monkeypatch.setattr(compat, "_require_eqeq", lambda: (_ for _ in ()).throw(
        compat.EvaluationSetupError("pyeqeq cannot be imported (test)")))  # fmt: skip
    assert run_cli("evaluate", inputs, "--out", tmp_path / "o", "--no-progress") == 2
    assert "pyeqeq" in capsys.readouterr().err
    assert not (tmp_path / "o" / "summary.json").exists()


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="Debian's `chromium` is not installed "
                    "(apt-get install chromium, or MOFASA_EVAL_BROWSER=1 "
                    "bash scripts/install_eval.sh): report screenshot not tested")  # fmt: skip
def test_report_renders_in_headless_chromium(evaluated, tmp_path):
    import re

    from PIL import Image

    page = (evaluated / "report.html").read_text()
    # the chemist's figures: counts beside rates, geometry per row, every size bin, CIF links
    assert re.search(r"\d+\.\d% <small>\(\d+/5\)</small>", page)
    assert page.count("<td>51-90</td>") == 1 and "<pre>" not in page
    assert 'id="element-key"' in page and "d<sub>min</sub> (Å)" in page
    links = re.findall(r'<a href="(report_cifs/[^"]+\.cif)"><img', page)
    assert len(links) == 4 and all((evaluated / link).is_file() for link in links)
    shot = tmp_path / "report.png"
    cmd = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}", "--window-size=1280,2000",
        (evaluated / "report.html").resolve().as_uri(),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=120, capture_output=True)
    image = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert image.shape == (2000, 1280)
    for part in (image[:1000], image[1000:]):  # text and plots, then the tables: not blank
        assert part.std() > 10
        assert (part < 128).mean() > 0.01


def test_pores_with_pyzeo_in_a_worker():
    pytest.importorskip("pyzeo", reason="pyzeo (optional pores extra) not installed")
    result = evaluate([methane_in_box(12.0)], modes=("strict",), pores=True, progress=False)
    rec = result.records[0]
    assert rec["pores_status"] == "ok"
    assert 10 < rec["pld"] <= rec["lcd"] < 17  # a 12 Å box around one small molecule
    assert rec["asa_A2"] > 0
    assert result.summary["pores"]["lcd"]["mean"] == pytest.approx(rec["lcd"], abs=1e-3)
