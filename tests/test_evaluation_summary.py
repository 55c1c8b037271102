"""Summary figures, size bins and crystal systems on hand-made records and structures."""

from __future__ import annotations

import html
import itertools
import re

import numpy as np
import pytest

from mofasa import Crystal
from mofasa.data import read_cif
from mofasa.evaluation.summary import SIZE_BINS, size_bin, summarize
from mofasa.evaluation.symmetry import crystal_system, symmetry


def test_size_bins_follow_the_protocol():
    assert [b for b, _, _ in SIZE_BINS][1:] == [
        "17-50",
        "51-90",
        "91-130",
        "131-150",
        "151-250",
        "251-500",
        ">500",
    ]
    cases = {
        17: "17-50",
        50: "17-50",
        51: "51-90",
        130: "91-130",
        131: "131-150",
        150: "131-150",
        151: "151-250",
        500: "251-500",
        501: ">500",
        5: "<17",
    }
    assert {n: size_bin(n) for n in cases} == cases


def test_crystal_system_of_space_group_numbers():
    expected = {
        1: "triclinic",
        2: "triclinic",
        3: "monoclinic",
        15: "monoclinic",
        16: "orthorhombic",
        74: "orthorhombic",
        75: "tetragonal",
        142: "tetragonal",
        143: "trigonal",
        167: "trigonal",
        168: "hexagonal",
        194: "hexagonal",
        195: "cubic",
        230: "cubic",
    }
    assert {n: crystal_system(n) for n in expected} == expected
    with pytest.raises(ValueError):
        crystal_system(0)


def test_symmetry_of_rock_salt_and_a_distorted_copy():
    a = 5.64
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    nacl = Crystal([11] * 4 + [17] * 4, np.vstack([frac, frac + 0.5]), np.eye(3) * a)
    assert symmetry(nacl) == {
        "spg_001": 225,
        "crystal_system_001": "cubic",
        "spg_01": 225,
        "crystal_system_01": "cubic",
    }
    rng = np.random.default_rng(0)
    noisy = nacl.copy(frac=nacl.frac + rng.uniform(-0.02, 0.02, nacl.frac.shape) / a)
    s = symmetry(noisy)
    assert s["crystal_system_001"] == "triclinic"  # <= 0.035 Å noise breaks symmetry at 0.01 Å
    assert s["crystal_system_01"] == "cubic"  # ... but not at 0.1 Å


def _rec(i: int, valid: bool, n: int, **kw) -> dict:
    return {
        "input_index": i,
        "name": f"s{i}",
        "num_atoms": n,
        "size_bin": size_bin(n),
        "valid": valid,
        "valid_strict": valid,
        **kw,
    }


def test_rates_are_over_the_number_requested():
    records = [
        _rec(0, True, 40, novel=True, unique=True, vnu=True, crystal_system_001="triclinic"),
        _rec(
            1,
            False,
            140,
            has_lone_molecule=True,
            novel=True,
            unique=True,
            crystal_system_001="cubic",
        ),
        _rec(2, True, 140, novel=False, unique=True, crystal_system_001="triclinic"),
        {"input_index": 3, "name": "bad", "read_error": "truncated", "valid": False},
    ]
    s = summarize(records, n_requested=10, modes=("default", "strict"))
    assert s["n_requested"] == 10 and s["n_evaluated"] == 3 and s["n_unreadable"] == 1
    assert s["valid_rate"] == 0.2 and s["valid_rate_strict"] == 0.2
    assert s["novel_rate"] == 0.2 and s["unique_rate"] == 0.3 and s["vnu_rate"] == 0.1
    assert s["flag_rates"]["has_lone_molecule"] == 0.1
    assert s["valid_rate_by_size"]["131-150"] == {
        "n": 2,
        "valid_rate": 0.5,
        "valid_rate_strict": 0.5,
        "n_valid": 1,
        "n_valid_strict": 1,
    }
    assert s["crystal_systems"]["symprec_0.01"] == {"triclinic": 2 / 3, "cubic": 1 / 3} or (
        s["crystal_systems"]["symprec_0.01"]["triclinic"] == pytest.approx(2 / 3, abs=1e-5)
    )
    assert s["failures"] == {"refused_unreadable": 1}  # by reason code (none recorded here)
    assert summarize(records, modes=["default"])["valid_rate"] == 0.5  # denominator: inputs
    assert summarize(records, modes=["default"])["valid_rate_strict"] is None  # not run
    assert summarize(records)["valid_rate"] is None  # no check ran: no mode inferred


def test_counts_beside_rates_and_every_size_bin():
    records = [
        _rec(0, True, 40, novel=True, unique=True, vnu=True, check_status="ok"),
        _rec(1, False, 40, has_lone_molecule=True, has_metal=False, novel=False, unique=True,
             check_status="ok"),
        {"input_index": 2, "name": "bad", "read_error": "truncated", "valid": False},
    ]
    s = summarize(records, n_requested=4, modes=("default",))
    assert s["counts"] == {"valid": 1, "valid_strict": None, "novel": 1, "unique": 2, "vnu": 1}
    assert s["valid_rate"] == 0.25 and s["valid_rate_strict"] is None
    assert s["flag_counts"]["has_lone_molecule"] == 1 and s["flag_counts"]["no_metal"] == 1
    assert s["flag_rates"]["has_lone_molecule"] == 0.25 and s["flag_counts_strict"] is None
    by_size = s["valid_rate_by_size"]
    assert list(by_size) == [label for label, _, _ in SIZE_BINS]  # sparse bins are kept
    assert by_size["17-50"] == {"n": 2, "valid_rate": 0.5, "n_valid": 1}
    assert by_size["51-90"] == {"n": 0, "valid_rate": None, "n_valid": 0}
    screened = summarize(records, n_requested=4, modes=("default",), screen=True)
    assert screened["flag_counts"] is None  # screened counts live in flag_rates_screened


# ---------------------------------------------------------------------------- report figures
def rock_salt(a: float = 5.64) -> Crystal:
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    cl = frac + np.array([0.5, 0, 0])
    return Crystal([11] * 4 + [17] * 4, np.vstack([frac, cl]), np.eye(3) * a, id="nacl")


def _brute_force_shortest(c: Crystal, reach: int = 4) -> float:
    best = np.inf
    for shift in itertools.product(range(-reach, reach + 1), repeat=3):
        dist = np.linalg.norm((c.frac[None] - c.frac[:, None] + shift) @ c.lattice, axis=-1)
        if not any(shift):
            np.fill_diagonal(dist, np.inf)
        best = min(best, dist.min())
    return best


def test_shortest_distance_and_density_by_hand():
    from mofasa.evaluation.report import density, shortest_distance

    nacl = rock_salt()
    assert shortest_distance(nacl) == pytest.approx(5.64 / 2)
    # 4 NaCl (22.98977 + 35.45 u, IUPAC) in (5.64 Å)^3; NaCl's handbook density is 2.165
    assert density(nacl) == pytest.approx(4 * 58.43977 / 5.64**3 * 1.6605391, rel=1e-5)
    assert density(nacl) == pytest.approx(2.164, abs=2e-3)
    # across the cell boundary: 0.02 + 0.05 of a 10 Å cell, not the 9.3 Å straight line
    pair = Crystal([6, 6], [[0.02, 0.5, 0.5], [0.95, 0.5, 0.5]], np.eye(3) * 10)
    assert shortest_distance(pair) == pytest.approx(0.7)
    # one atom in a skewed cell: its nearest image is b - a, (-0.1, 0.5, 0), not a wrapped one
    skew = Crystal([29], [[0.3, 0.3, 0.3]], [[3, 0, 0], [2.9, 0.5, 0], [0, 0, 3]])
    assert shortest_distance(skew) == pytest.approx(np.hypot(0.1, 0.5))
    assert shortest_distance(nacl, max_atoms=7) is None  # bounded cost: skipped above the cap
    flat = Crystal([6, 6], [[0, 0, 0], [0.5, 0.5, 0]], [[3, 0, 0], [0, 3, 0], [0, 0, 0]])
    assert shortest_distance(flat) is None and density(flat) is None  # no volume: no figure
    rng = np.random.default_rng(0)
    for _ in range(10):
        params = (*rng.uniform(2.5, 7, 3), *rng.uniform(60, 120, 3))
        c = Crystal.from_parameters([6] * 4, rng.random((4, 3)), params)
        assert shortest_distance(c) == pytest.approx(_brute_force_shortest(c), abs=1e-9)


def test_report_shows_counts_geometry_all_bins_and_cif_links(tmp_path):
    pytest.importorskip("matplotlib")
    from pymatgen.io.cif import CifParser

    from mofasa.evaluation.report import write_report
    from mofasa.evaluation.store import MemoryStore
    from tests.conftest import EXAMPLES

    mof = read_cif(EXAMPLES / "qmof-a0e80c5.cif")  # 26 atoms: C2H6Fe2O14P2
    nacl = rock_salt()
    records = [
        _rec(0, False, 8, name="nacl", check_status="ok", has_carbon=False, composition="Na4Cl4"),
        _rec(1, True, 26, name=mof.id, check_status="ok", composition=mof.formula),
        {"input_index": 2, "name": "bad", "read_error": "truncated", "valid": False},
    ]
    store = MemoryStore()
    for rec, crystal in zip(records, (nacl, mof, None), strict=True):
        store.add(rec, crystal, None)
    summary = summarize(records, modes=("default", "strict"))
    page = write_report(tmp_path, store.records(), summary, store).read_text()

    assert "33.3%" in page and "(1/3)" in page  # valid (headline), with its count
    assert "<pre>" not in page and '"n_requested"' not in page  # no raw summary.json dump
    for label, _, _ in SIZE_BINS:  # every protocol bin, empty ones as "-" with n = 0
        assert f"<td>{html.escape(label)}</td>" in page
    assert '<td>51-90</td><td class="num">0</td><td class="num">-</td>' in page
    assert '<td>&lt;17</td><td class="num">1</td><td class="num">0.0% (0/1)</td>' in page
    assert '<td class="num">2.820</td><td class="num">2.164</td>' in page  # d_min, density
    assert "5.640, 5.640, 5.640<br>90.00, 90.00, 90.00" in page
    assert f'<td class="num">{shortest_distance_of(mof):.3f}</td>' in page
    key = re.search(r'<p class="key" id="element-key">(.*?)</p>', page).group(1)
    assert re.findall(r"</i>(\w+)</span>", key) == ["H", "C", "O", "Na", "P", "Cl", "Fe"]
    links = re.findall(r'<a href="(report_cifs/[^"]+)"><img src="thumbnails/', page)
    assert links == ["report_cifs/000000_nacl.cif", f"report_cifs/000001_{mof.id}.cif"]
    assert (tmp_path / "thumbnails" / "000001.png").stat().st_size > 1000
    parsed = CifParser(tmp_path / links[1]).parse_structures(primitive=False)[0]
    assert len(parsed) == 26
    assert "_mofasa_input_index   1" in (tmp_path / links[1]).read_text()


def shortest_distance_of(crystal: Crystal) -> float:
    from mofasa.evaluation.report import shortest_distance

    return shortest_distance(crystal)
