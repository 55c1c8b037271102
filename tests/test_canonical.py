"""Canonical form: invariance to atom order, origin, cell choice and handedness, on real MOFs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from mofasa.data import Crystal, canonicalize, read_cif
from mofasa.data.canonical import ANGLE_TOL_DEG, _candidate_bases
from mofasa.geometry.lattice import lattice_to_parameters

from .conftest import read_archive_members

# Unimodular integer matrices (det +1) giving other settings of the same lattice.
SETTINGS = [
    np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]]),
    np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]]),
    np.array([[1, 0, 0], [1, 1, 0], [-1, 0, 1]]),
    np.array([[2, 1, 0], [1, 1, 0], [0, 0, 1]]),
]


def rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def permuted(c: Crystal, seed: int) -> Crystal:
    perm = np.random.default_rng(seed).permutation(c.num_atoms)
    return Crystal(c.numbers[perm], c.frac[perm], c.lattice)


def shifted(c: Crystal, seed: int) -> Crystal:
    return Crystal(c.numbers, c.frac + np.random.default_rng(seed).random(3), c.lattice)


def supercell_2x1x1(c: Crystal) -> Crystal:
    half = c.frac * [0.5, 1.0, 1.0]
    frac = np.concatenate([half, half + np.array([0.5, 0.0, 0.0])])
    lattice = c.lattice * np.array([[2.0], [1.0], [1.0]])
    return Crystal(np.concatenate([c.numbers, c.numbers]), frac, lattice)


def other_setting(c: Crystal, m: np.ndarray, seed: int) -> Crystal:
    """Basis M @ L (same lattice), expressed in a rotated Cartesian frame."""
    lattice = m.astype(float) @ c.lattice @ rotation(seed).T
    return Crystal(c.numbers, c.frac @ np.linalg.inv(m.astype(float)), lattice)


def left_handed(c: Crystal) -> Crystal:
    """Swap a and b: the same crystal in a left-handed basis."""
    return Crystal(c.numbers, c.frac[:, [1, 0, 2]], c.lattice[[1, 0, 2]])


def assert_same_canonical(x: Crystal, y: Crystal, tol: float = 1e-3) -> None:
    """Same element sequence, same cell, coordinates equal up to one global translation
    (symmetry-equivalent atoms of one element may swap)."""
    np.testing.assert_array_equal(x.numbers, y.numbers)
    np.testing.assert_allclose(x.parameters[:3], y.parameters[:3], atol=1e-4)
    np.testing.assert_allclose(x.parameters[3:], y.parameters[3:], atol=1e-3)
    np.testing.assert_allclose(x.lattice, y.lattice, atol=1e-4)
    first = x.numbers == x.numbers[0]
    for start in np.flatnonzero(first):  # candidate global translations
        t = x.frac[start] - y.frac[0]
        if _max_set_distance(x, y, t) < tol:
            return
    raise AssertionError("coordinates differ beyond one global translation")


def _max_set_distance(x: Crystal, y: Crystal, t: np.ndarray) -> float:
    worst = 0.0
    for z in np.unique(x.numbers):
        a, b = x.frac[x.numbers == z], y.frac[y.numbers == z] + t
        d = a[:, None, :] - b[None, :, :]
        d -= np.round(d)
        dist = np.linalg.norm(d @ x.lattice, axis=-1)  # (na, nb) Å
        worst = max(worst, dist.min(axis=1).max(), dist.min(axis=0).max())
    return worst


def check_form(k: Crystal) -> None:
    assert np.linalg.det(k.lattice) > 0
    assert (k.frac >= 0).all() and (k.frac < 1).all()
    angles = np.array(k.parameters[3:])
    assert (angles >= 60 - ANGLE_TOL_DEG).all() and (angles <= 120 + ANGLE_TOL_DEG).all()
    np.testing.assert_allclose(k.frac[0], 0.0, atol=1e-12)  # root atom at the origin
    from mofasa.data.canonical import element_rank

    assert (np.diff(element_rank(k.numbers)) >= 0).all()  # grouped by element, metals first


def run_invariance(c: Crystal, seed: int) -> None:
    ref = canonicalize(c)
    check_form(ref)
    variants = {
        "permutation": permuted(c, seed),
        "origin shift": shifted(c, seed),
        "supercell 2x1x1": supercell_2x1x1(permuted(c, seed + 1)),
        "other setting": other_setting(shifted(c, seed + 2), SETTINGS[seed % 4], seed),
        "left-handed": left_handed(permuted(c, seed + 3)),
    }
    for name, variant in variants.items():
        try:
            assert_same_canonical(ref, canonicalize(variant))
        except AssertionError as exc:
            raise AssertionError(f"{c.id}: {name}: {exc}") from exc


def test_invariance_examples(example_crystals):
    for seed, c in enumerate(example_crystals[:40]):
        run_invariance(c, seed)


def test_canonical_is_idempotent(example_crystals):
    for c in example_crystals[:20]:
        k = canonicalize(c)
        assert_same_canonical(k, canonicalize(k), tol=1e-6)


def test_order_metals_first_and_composition_kept(example_crystals):
    from mofasa.data.elements import IS_METAL

    for c in example_crystals[:20]:
        k = canonicalize(c)
        metal = IS_METAL[k.numbers]
        assert metal[0] and not np.any(np.diff(metal.astype(int)) > 0)  # metals form a prefix
        assert k.formula == c.formula or k.num_atoms < c.num_atoms
        np.testing.assert_allclose(k.volume * c.num_atoms / k.num_atoms, c.volume, rtol=1e-6)


def test_supercell_reduces_to_primitive(example_crystals):
    c = example_crystals[0]
    big = supercell_2x1x1(supercell_2x1x1(c))
    assert canonicalize(big).num_atoms == c.num_atoms


def test_ambiguous_cells_list_several_bases():
    # A tetragonal-like metric: a == b and all angles 90 degrees -> several equivalent bases.
    lattice = np.diag([10.0, 10.0, 14.0])
    assert len(_candidate_bases(lattice)) > 1
    generic = np.array([[9.0, 0, 0], [1.5, 10.0, 0], [2.0, 1.7, 13.0]])
    assert len(_candidate_bases(generic)) == 1


def test_ambiguous_basis_choice_is_by_atoms_not_lattice():
    """Near-equal lengths in a triclinic cell: every input basis gives the same output."""
    rng = np.random.default_rng(3)
    lattice = np.array([[10.0, 0, 0], [0.0, 10.0 + 1e-5, 0], [0.3, 0.2, 12.0]])
    numbers = np.array([30] + [8] * 5 + [6] * 6)
    c = Crystal(numbers, rng.random((12, 3)), lattice)
    flip = np.array([1.0, -1.0, 1.0])  # (a, b, c) -> (b, -a, c): right-handed, same lengths
    swapped = Crystal(numbers, c.frac[:, [1, 0, 2]] * flip, lattice[[1, 0, 2]] * flip[:, None])
    assert_same_canonical(canonicalize(c), canonicalize(swapped))


def test_canonical_cif_round_trip(example_files, tmp_path):
    from mofasa.data import write_cif

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = canonicalize(read_cif(example_files[5]))
        path = tmp_path / "k.cif"
        write_cif(k, path)
        back = read_cif(path)
    np.testing.assert_array_equal(back.numbers, k.numbers)
    np.testing.assert_allclose(back.lattice, k.lattice, atol=1e-6)
    d = back.frac - k.frac
    np.testing.assert_allclose(d - np.round(d), 0.0, atol=1e-6)
    np.testing.assert_allclose(lattice_to_parameters(back.lattice), k.parameters, atol=1e-6)


@pytest.mark.shared_data
def test_invariance_200_qmof_structures():
    """Permutation, origin shift, 2x1x1 supercell, other setting, left-handed basis on 200 real
    QMOF structures read from the shared archive."""
    members = read_archive_members(200, max_atoms=160, skip=0)
    assert len(members) == 200
    failures = []
    for seed, (name, text) in enumerate(members):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = read_cif(text, id=name)
        try:
            run_invariance(c, seed)
        except AssertionError as exc:
            failures.append(str(exc)[:200])
    assert not failures, f"{len(failures)} / 200 failed: {failures[:5]}"
