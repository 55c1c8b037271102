"""MOFChecker validity on hand-built structures with known answers, and the compatibility layer.

Needs the eval extra (`bash scripts/install_eval.sh`); skipped, with that hint, where mofchecker
is not installed at all. A *broken* install is not skipped: it must fail loudly (tested below).
"""

from __future__ import annotations

import importlib.metadata as md
import sys
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

from mofasa.evaluation import compat
from mofasa.evaluation.validity import (
    COMPOSITION_FLAGS,
    REPORTED_FLAGS,
    RULE_FLAGS,
    check_validity,
)
from tests.conftest import EXAMPLES

REAL_MOF = EXAMPLES / "qmof-010dd4a.cif"  # 50 atoms, Cu paddle-wheel-free, passes MOFChecker


@pytest.fixture(scope="module")
def real_mof() -> Crystal:
    from mofasa.data import read_cif

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_cif(REAL_MOF)


def with_extra_atom(crystal: Crystal, z: int, near: int, offset: float) -> Crystal:
    """``crystal`` plus one atom of element ``z`` at ``offset`` Å (along x) from atom ``near``."""
    cart = crystal.cart[near] + np.array([offset, 0.0, 0.0])
    frac = np.vstack([crystal.frac, cart @ np.linalg.inv(crystal.lattice)])
    return Crystal(np.append(crystal.numbers, z), frac, crystal.lattice, id="extra")


def methane_in_box(edge: float = 15.0) -> Crystal:
    """An isolated CH4 molecule in a cubic box: a lone molecule by construction."""
    h = 0.629  # Å: C-H 1.09 Å along the cube diagonals
    cart = np.array([[0, 0, 0], [h, h, h], [-h, -h, h], [-h, h, -h], [h, -h, -h]]) + edge / 2
    return Crystal([6, 1, 1, 1, 1], cart / edge, np.eye(3) * edge, id="methane")


def test_flag_list_follows_the_protocol():
    assert len(RULE_FLAGS) == 12
    assert "has_suspicicious_terminal_oxo" in RULE_FLAGS  # mofchecker 0.9.6's spelling (sic)
    assert "has_3d_connected_graph" not in RULE_FLAGS
    assert REPORTED_FLAGS == ("has_3d_connected_graph",)
    assert COMPOSITION_FLAGS == ("has_carbon", "has_hydrogen", "has_metal")


def test_compat_layer_is_active():
    versions = compat.require_checkers()
    assert versions["mofchecker"] == "0.9.6"
    import mofchecker
    from pymatgen.analysis import graphs, local_env
    from pymatgen.core.periodic_table import Element

    assert compat.is_applied()
    assert local_env.BrunnerNN_relative is local_env.BrunnerNNRelative
    assert callable(graphs.StructureGraph.with_local_env_strategy)
    assert Element("Nd").is_rare_earth_metal and not Element("Zn").is_rare_earth_metal
    assert mofchecker.SpacegroupAnalyzer._mofasa_compat
    assert int(md.version("setuptools").split(".")[0]) < 81  # pyeqeq's pkg_resources


def test_real_qmof_mof_passes_both_modes(real_mof):
    for mode in ("default", "strict"):
        result = check_validity(real_mof, mode)
        assert result["valid"], (mode, result)
        assert not result["errors"]
        assert all(result["flags"][f] is False for f in RULE_FLAGS)
        assert result["checked_atoms"] == real_mof.num_atoms


def test_flags_equal_mofchecker_properties(real_mof):
    """Reading each check's is_ok gives mofchecker's own property values."""
    MOFChecker = compat.import_mofchecker()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checker = MOFChecker(real_mof.to_pymatgen(), symprec=None, angle_tolerance=None,
                             primitive=False)  # fmt: skip
        expected = {f: getattr(checker, f) for f in RULE_FLAGS + COMPOSITION_FLAGS + REPORTED_FLAGS}
    assert check_validity(real_mof, "strict")["flags"] == expected


def test_atoms_0p3_angstrom_apart_overlap(real_mof):
    """A second C 0.3 Å from a C: overlap in both modes. In the headline mode spglib cannot find
    a symmetry at symprec 0.5, which current pymatgen raises as SymmetryUndeterminedError; the
    compatibility layer must turn it into mofchecker's skip, not a failed structure."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    carbon = int(np.flatnonzero(real_mof.numbers == 6)[0])
    bad = with_extra_atom(real_mof, 6, carbon, 0.3)
    with pytest.raises(ValueError, match="symmetry"):  # the pymatgen behaviour being handled
        SpacegroupAnalyzer(bad.to_pymatgen(), symprec=0.5, angle_tolerance=5)
    for mode in ("default", "strict"):
        result = check_validity(bad, mode)
        assert "constructor" not in result["errors"], result["errors"]
        assert result["flags"]["has_atomic_overlaps"] is True
        assert result["valid"] is False


def test_isolated_molecule_is_a_lone_molecule():
    result = check_validity(methane_in_box(), "strict")
    assert result["flags"]["has_lone_molecule"] is True
    assert result["flags"]["has_metal"] is False
    assert result["valid"] is False


def test_none_or_raising_check_is_invalid_with_error(real_mof, monkeypatch):
    from mofchecker.checks.floating_solvent import FloatingSolventCheck
    from mofchecker.checks.local_structure.overlapping_atoms import AtomicOverlapCheck

    def broken(self):
        raise RuntimeError("checker bug")

    monkeypatch.setattr(AtomicOverlapCheck, "_run_check", lambda self: (None, []))
    monkeypatch.setattr(FloatingSolventCheck, "_run_check", broken)
    result = check_validity(real_mof, "strict")
    assert result["valid"] is False
    assert result["flags"]["has_atomic_overlaps"] is None
    assert result["errors"]["has_atomic_overlaps"] == "check returned None"
    assert result["flags"]["has_lone_molecule"] is None
    assert "RuntimeError: checker bug" in result["errors"]["has_lone_molecule"]


def test_eqeq_import_failure_is_loud(real_mof, monkeypatch):
    """Without pyeqeq, mofchecker 0.9.6 would flag every structure with high charges (0% valid).
    We raise instead: at setup, and at the check itself."""
    from mofchecker.checks.charge_check import ChargeCheck

    for name in [m for m in sys.modules if m == "pyeqeq" or m.startswith("pyeqeq.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyeqeq", None)  # any `import pyeqeq...` raises ImportError
    with pytest.raises(compat.EvaluationSetupError, match="setuptools<81"):
        compat.require_checkers()
    with pytest.raises(compat.EvaluationSetupError, match="pyeqeq"):
        check_validity(real_mof, "strict")
    with pytest.raises(compat.EvaluationSetupError):
        ChargeCheck(real_mof.to_pymatgen())._run_check()


def test_unknown_mode_rejected(real_mof):
    with pytest.raises(ValueError, match="mode"):
        check_validity(real_mof, "fast")


def test_index_cache_keyed_by_species_returns_mofchecker_values(real_mof):
    """The compat layer keys mofchecker's element-index cache by the species sequence (its
    equality-keyed lru_cache costs O(N^2) per look-up); the values must be mofchecker's own."""
    compat.import_mofchecker()
    from mofchecker.checks.utils import get_indices as module
    from pymatgen.core import IStructure

    assert module.get_indices._mofasa_compat
    compute = module._get_indices.__wrapped__
    s = real_mof.to_pymatgen()
    shuffled = real_mof.copy(numbers=np.roll(real_mof.numbers, 7)).to_pymatgen()
    for structure in (s, shuffled, s, IStructure.from_sites(s)):
        assert module.get_indices(structure) == compute(IStructure.from_sites(structure))
    assert module.get_c_indices(shuffled) != module.get_c_indices(s)


def test_coincident_atoms_are_an_overlap_without_running_mofchecker(real_mof):
    """Two atoms at 0 Å make mofchecker's EQeq charge check (C++) segfault, in both modes of
    the full run. The verdict is known without it (has_atomic_overlaps by mofchecker's own
    rule), so it is given without mofchecker. Run in the isolated pool: before the fix this
    killed the process."""
    from mofasa.evaluation import jobs
    from mofasa.evaluation.pool import IsolatedPool

    hydrogen = int(np.flatnonzero(real_mof.numbers == 1)[0])
    bad = with_extra_atom(real_mof, 1, hydrogen, 0.0)
    todo = [((mode, screen), jobs.validity_job, (bad, mode, screen))
            for mode in ("default", "strict") for screen in (False, True)]  # fmt: skip
    with IsolatedPool(workers=2, timeout=120) as pool:
        results = {r.key: r for r in pool.imap(todo)}
    for (mode, screen), res in results.items():
        assert res.status == "ok", (mode, screen, res.error)  # not "crash" (SIGSEGV)
        v = res.value
        assert v["valid"] is False and v["flags"]["has_atomic_overlaps"] is True
        assert all(v["flags"][f] is True for f in COMPOSITION_FLAGS)  # C, H, Cu: computed
        assert "has_high_charges" in v["not_computed"]  # the check that crashes: not run
        assert "coincident atoms 0.000 Å apart" in v["skipped"]
        if screen:
            assert v["stopped_at"] == "has_atomic_overlaps"


def test_close_but_not_coincident_atoms_still_run_mofchecker(real_mof):
    hydrogen = int(np.flatnonzero(real_mof.numbers == 1)[0])
    result = check_validity(with_extra_atom(real_mof, 1, hydrogen, 0.2), "strict")
    assert "skipped" not in result and not result["not_computed"]
    assert result["flags"]["has_atomic_overlaps"] is True
    assert result["flags"]["has_high_charges"] is not None  # the charge check ran
