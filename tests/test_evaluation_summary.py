"""Summary figures, size bins and crystal systems on hand-made records and structures."""

from __future__ import annotations

import numpy as np
import pytest

from mofasa import Crystal
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
    }
    assert s["crystal_systems"]["symprec_0.01"] == {"triclinic": 2 / 3, "cubic": 1 / 3} or (
        s["crystal_systems"]["symprec_0.01"]["triclinic"] == pytest.approx(2 / 3, abs=1e-5)
    )
    assert s["failures"] == {"unreadable": 1}
    assert summarize(records, modes=["default"])["valid_rate"] == 0.5  # denominator: inputs
    assert summarize(records, modes=["default"])["valid_rate_strict"] is None  # not run
    assert summarize(records)["valid_rate"] is None  # no check ran: no mode inferred
