"""Novelty / uniqueness: StructureMatcher with the protocol's tolerances and an exact-safe
pre-filter (same reduced formula; reduced site counts divide one another)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from mofasa import Crystal
from mofasa.evaluation.novelty import (
    MATCHER_SETTINGS,
    Matcher,
    ReferenceIndex,
    could_match,
    formula_key,
    uniqueness,
)
from tests.conftest import EXAMPLES

SMALL = ["qmof-a0e80c5", "qmof-7344c24", "qmof-045f7a6", "qmof-d2fbf4b"]  # 26-40 atoms


@pytest.fixture(scope="module")
def small() -> dict[str, Crystal]:
    from mofasa.data import read_cif

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: read_cif(EXAMPLES / f"{name}.cif") for name in SMALL}


def supercell_shuffled(c: Crystal, seed: int = 0) -> Crystal:
    """2x1x1 supercell, atoms permuted, origin shifted: the same crystal."""
    rng = np.random.default_rng(seed)
    frac = np.vstack([c.frac, c.frac + np.array([1, 0, 0])]) / [2, 1, 1]
    numbers = np.concatenate([c.numbers, c.numbers])
    order = rng.permutation(len(numbers))
    lattice = c.lattice * np.array([[2], [1], [1]])
    return Crystal(numbers[order], frac[order] + rng.random(3), lattice, id="super")


def test_settings_are_the_protocols():
    assert MATCHER_SETTINGS == {
        "ltol": 0.2, "stol": 0.3, "angle_tol": 5,
        "primitive_cell": True, "scale": True, "attempt_supercell": True,
    }  # fmt: skip


def test_formula_key_equals_reduced_formula(example_crystals):
    keys = {}
    for c in example_crystals[:40]:
        keys.setdefault(formula_key(c.numbers), set()).add(
            c.to_pymatgen().composition.reduced_formula
        )
    assert all(len(v) == 1 for v in keys.values())
    assert formula_key(np.array([8, 8, 1, 1])) == formula_key(np.array([8, 1])) == ((1, 1), (8, 1))


def test_could_match_is_divisibility():
    assert could_match(10, 20) and could_match(20, 10) and could_match(7, 7)
    assert not could_match(10, 15) and not could_match(0, 5)


def test_prefilter_never_rejects_a_matcher_match(small):
    """On pairs the plain matcher accepts or rejects, the pre-filtered path agrees."""
    m = Matcher()
    a = small["qmof-a0e80c5"]
    rng = np.random.default_rng(1)
    jiggled = a.copy(frac=a.frac + rng.normal(0, 0.003, a.frac.shape))
    scaled = a.copy(lattice=a.lattice * 1.08)
    pairs = [
        (a, supercell_shuffled(a)),
        (supercell_shuffled(a, 3), a),
        (a, jiggled),
        (a, scaled),
        (small["qmof-045f7a6"], small["qmof-d2fbf4b"]),  # isostructural, other metal
        (a, small["qmof-7344c24"]),
    ]
    expected = [True, True, True, True, False, False]
    for (x, y), want in zip(pairs, expected, strict=True):
        sx, sy = x.to_pymatgen(), y.to_pymatgen()
        plain = m.fit(sx, sy)
        fast = m.fit_reduced(m.reduce(sx), m.reduce(sy))
        assert plain == fast == want


def test_uniqueness_in_order(small):
    a, b = small["qmof-a0e80c5"], small["qmof-7344c24"]
    flags = uniqueness([a, b, supercell_shuffled(a), None, b.copy(frac=b.frac + 0.25)])
    assert flags == [(True, None), (True, None), (False, 0), (None, None), (False, 1)]


def test_novelty_against_a_reference(small):
    ref = ReferenceIndex.from_crystals([small["qmof-a0e80c5"], small["qmof-045f7a6"]])
    m = Matcher()
    match, fits = ref.find_match(supercell_shuffled(small["qmof-a0e80c5"]), m)
    assert match == "qmof-a0e80c5" and fits == 1
    match, fits = ref.find_match(small["qmof-d2fbf4b"], m)  # same net, other metal: novel
    assert match is None and fits == 0  # rejected by the formula bucket, no fit needed


def test_reference_from_a_prepared_dataset(tmp_path, small):
    from mofasa.data.prepare import PrepareConfig, prepare_dataset

    src = tmp_path / "cifs"
    src.mkdir()
    for name in SMALL:
        (src / f"{name}.cif").write_bytes((EXAMPLES / f"{name}.cif").read_bytes())
    prepare_dataset(src, tmp_path / "prep", config=PrepareConfig(workers=1), progress=False)
    import json

    manifest = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    refs = [
        ReferenceIndex.load(tmp_path / "prep", split)
        for split in ("train", "val", "test")
        if manifest["splits"][split]
    ]
    assert sum(len(r) for r in refs) == len(SMALL)
    m = Matcher()
    query = supercell_shuffled(small["qmof-7344c24"], 5)
    hits = [r.find_match(query, m)[0] for r in refs]
    assert [h for h in hits if h] == ["qmof-7344c24"]


def test_uniqueness_records_a_failing_structure_and_goes_on(small, monkeypatch):
    """A structure whose matcher step raises (as cKDTree's "data must be finite" did on a NaN
    coordinate) is recorded and matches nothing; the others are still compared."""
    a, b = small["qmof-a0e80c5"], small["qmof-7344c24"]
    broken = a.copy(lattice=a.lattice * 1.3, id="broken")  # same formula: same bucket as a
    m = Matcher()
    real_reduce = m.reduce

    def reduce(structure):
        if abs(structure.volume - broken.volume) < 1e-6:
            raise ValueError("data must be finite")
        return real_reduce(structure)

    monkeypatch.setattr(m, "reduce", reduce)
    errors: dict[int, str] = {}
    flags = uniqueness([a, broken, supercell_shuffled(a), b], m, errors=errors)
    assert flags == [(True, None), (None, None), (False, 0), (True, None)]
    assert errors == {1: "reduction failed: ValueError: data must be finite"}
