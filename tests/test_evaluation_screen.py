"""Screening mode (``--screen``): the same verdicts as the full mode, fewer checks run.

Needs the eval extra (`bash scripts/install_eval.sh`); skipped, with that hint, where mofchecker
is not installed at all.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import warnings

import numpy as np
import pytest

from mofasa import Crystal

try:
    md.version("mofchecker")
except md.PackageNotFoundError:  # pragma: no cover
    pytest.skip(
        "mofchecker not installed: run `bash scripts/install_eval.sh`", allow_module_level=True
    )

from mofasa.evaluation.runner import evaluate
from mofasa.evaluation.summary import summarize
from mofasa.evaluation.validity import (
    COMPOSITION_FLAGS,
    REPORTED_FLAGS,
    RULE_FLAGS,
    SCREEN_ORDER,
    check_validity,
)
from tests.conftest import EXAMPLES

REAL_MOF = EXAMPLES / "qmof-010dd4a.cif"  # 50 atoms, passes MOFChecker in both modes


@pytest.fixture(scope="module")
def real_mof() -> Crystal:
    from mofasa.data import read_cif

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_cif(REAL_MOF)


def methane_in_box(edge: float = 15.0) -> Crystal:
    """A lone CH4 molecule in a box: no metal, and a lone molecule."""
    h = 0.629
    cart = np.array([[0, 0, 0], [h, h, h], [-h, -h, h], [-h, h, -h], [h, -h, -h]]) + edge / 2
    return Crystal([6, 1, 1, 1, 1], cart / edge, np.eye(3) * edge, id="methane")


def two_atoms_apart(distance: float = 0.3, edge: float = 10.0) -> Crystal:
    """Zn, C and H in a box, with C and H ``distance`` Å apart: C, H and a metal, overlapping."""
    cart = np.array([[2.0, 2.0, 2.0], [5.0, 5.0, 5.0], [5.0 + distance, 5.0, 5.0]])
    return Crystal([30, 6, 1], cart / edge, np.eye(3) * edge, id="pair")


def with_overlap(crystal: Crystal) -> Crystal:
    """``crystal`` plus a C atom 0.3 Å from its first C."""
    first_c = int(np.flatnonzero(crystal.numbers == 6)[0])
    cart = crystal.cart[first_c] + np.array([0.3, 0.0, 0.0])
    frac = np.vstack([crystal.frac, cart @ np.linalg.inv(crystal.lattice)])
    return Crystal(np.append(crystal.numbers, 6), frac, crystal.lattice, id="overlap")


def test_screen_order_covers_the_rule():
    assert sorted(SCREEN_ORDER) == sorted(RULE_FLAGS)
    assert SCREEN_ORDER[0] == "has_atomic_overlaps"
    assert SCREEN_ORDER[-1] == "has_lone_molecule"  # by far the costliest check


@pytest.mark.parametrize("mode", ["default", "strict"])
def test_screen_and_full_give_the_same_verdicts(real_mof, mode):
    cases = {
        "methane": methane_in_box(),
        "pair": two_atoms_apart(),
        "real": real_mof,
        "real+overlap": with_overlap(real_mof),
    }
    for name, crystal in cases.items():
        full = check_validity(crystal, mode)
        screen = check_validity(crystal, mode, screen=True)
        assert screen["valid"] == full["valid"], (name, mode)
        # every flag the screen computed has the full mode's value; the rest is marked
        for flag, value in screen["flags"].items():
            assert value == full["flags"][flag], (name, flag)
        assert set(screen["flags"]).isdisjoint(screen["not_computed"])
        assert set(screen["flags"]) | set(screen["not_computed"]) == set(full["flags"])
        assert full["not_computed"] == []
    assert check_validity(real_mof, mode, screen=True)["not_computed"] == []


def test_screen_stops_early_on_overlaps_and_composition(real_mof):
    bad = with_overlap(real_mof)
    full = check_validity(bad, "strict")
    screen = check_validity(bad, "strict", screen=True)
    assert full["flags"]["has_atomic_overlaps"] is True
    assert screen["stopped_at"] == "has_atomic_overlaps"
    assert set(screen["flags"]) == {*COMPOSITION_FLAGS, "has_atomic_overlaps"}
    assert len(screen["flags"]) < len(full["flags"])
    assert "has_lone_molecule" in screen["not_computed"]
    assert "has_lone_molecule" not in screen["flags"]  # not run: absent, never "passed"

    methane = check_validity(methane_in_box(), "default", screen=True)
    assert methane["stopped_at"] == "has_metal" and methane["checked_atoms"] is None
    assert set(methane["not_computed"]) >= set(RULE_FLAGS)

    pair = check_validity(two_atoms_apart(), "default", screen=True)
    assert pair["valid"] is False and pair["stopped_at"] == "has_atomic_overlaps"


def test_screen_records_and_summary(real_mof, tmp_path):
    crystals = [real_mof, methane_in_box(), with_overlap(real_mof)]
    kw = dict(modes=("default", "strict"), progress=False, thumbnails=0)
    screened = evaluate(crystals, tmp_path / "screen", screen=True, **kw)
    full = evaluate(crystals, modes=("default", "strict"), progress=False)
    for key in ("valid", "valid_strict"):
        assert [r[key] for r in screened.records] == [r[key] for r in full.records]
    assert [r["valid"] for r in screened.records] == [True, False, False]
    real, methane, overlap = screened.records
    assert "flags_not_computed" not in real and real["has_lone_molecule"] is False
    assert overlap["has_atomic_overlaps"] is True and "has_lone_molecule" not in overlap
    assert "has_lone_molecule" in json.loads(overlap["flags_not_computed"])
    assert overlap["strict_screen_stopped_at"] == "has_atomic_overlaps"
    assert methane["screen_stopped_at"] == "has_metal"

    s = json.loads((tmp_path / "screen" / "summary.json").read_text())
    assert s["screen"] is True and full.summary["screen"] is False
    assert s["valid_rate"] == full.summary["valid_rate"] == pytest.approx(1 / 3)
    assert s["flag_rates"] is None and s["flag_rates_strict"] is None
    lone = s["flag_rates_screened"]["has_lone_molecule"]
    assert lone == {"rate": 0.0, "flagged": 0, "computed": 1}  # ran on the real MOF only
    overlaps = s["flag_rates_screened_strict"]["has_atomic_overlaps"]
    assert overlaps == {"rate": 0.5, "flagged": 1, "computed": 2}  # methane stopped before
    assert s["flag_rates_screened"]["no_metal"]["flagged"] == 1
    assert s["settings"]["screen"] is True
    assert s["settings"]["screen_order"][0] == "composition"
    assert "screen mode" in s["flag_rates_note"]
    html = (tmp_path / "screen" / "report.html").read_text()
    assert "Screen mode" in html and "checks not run (screen)" in html


def test_screened_rates_skip_structures_where_a_flag_did_not_run():
    records = [
        {"input_index": 0, "valid": False, "has_carbon": True, "has_hydrogen": True,
         "has_metal": True, "has_atomic_overlaps": True, "check_status": "ok",
         "screen_stopped_at": "has_atomic_overlaps"},
        {"input_index": 1, "valid": True, "has_carbon": True, "has_hydrogen": True,
         "has_metal": True, **dict.fromkeys(RULE_FLAGS, False),
         **dict.fromkeys(REPORTED_FLAGS, True), "check_status": "ok"},
    ]  # fmt: skip
    s = summarize(records, n_requested=4, modes=["default"], screen=True)
    assert s["valid_rate"] == 0.25  # the denominator stays the number requested
    rates = s["flag_rates_screened"]
    assert rates["has_atomic_overlaps"] == {"rate": 0.5, "flagged": 1, "computed": 2}
    assert rates["has_lone_molecule"] == {"rate": 0.0, "flagged": 0, "computed": 1}
    assert s["screen_stopped_at"] == {"has_atomic_overlaps": 1}
