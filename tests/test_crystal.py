"""The `Crystal` contract, lattice maths, CIF round trips, conversions, imports."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from mofasa import Crystal, CrystalBatch, collate
from mofasa.data import read_cif, write_cif
from mofasa.data.elements import NUM_TOKENS, VOCAB_SYMBOLS
from mofasa.geometry.lattice import (
    lattice_from_parameters,
    lattice_to_parameters,
    make_right_handed,
    wrap_frac,
)


def test_wrap_clamps_negative_zero():
    x = np.array([[-1e-17, 1.0, 0.5], [-0.25, 2.0000000000000004, -3.0]])
    w = wrap_frac(x)
    assert (w >= 0).all() and (w < 1).all()
    np.testing.assert_allclose(w, [[0.0, 0.0, 0.5], [0.75, 0.0, 0.0]], atol=1e-15)
    assert (-1e-17 % 1.0) == 1.0  # the float trap the clamp exists for


def test_crystal_wraps_and_validates():
    c = Crystal([6, 8], [[-1e-17, 0.5, 1.0], [1.25, -0.5, 0.0]], np.eye(3) * 5)
    assert (c.frac >= 0).all() and (c.frac < 1).all()
    with pytest.raises(ValueError):
        Crystal([6], [[0, 0, 0], [0.5, 0.5, 0.5]], np.eye(3))
    with pytest.raises(ValueError):
        Crystal([0], [[0, 0, 0]], np.eye(3))


@pytest.mark.parametrize(
    "params",
    [(5.0, 6.0, 7.0, 90.0, 90.0, 90.0), (9.1, 10.2, 13.3, 71.0, 82.5, 104.0),
     (8.0, 8.0, 8.0, 60.0, 60.0, 60.0), (11.0, 12.5, 9.0, 118.0, 95.0, 100.5)],
)
def test_lattice_parameter_round_trip(params):
    lat = lattice_from_parameters(*params)
    assert np.linalg.det(lat) > 0
    np.testing.assert_allclose(lattice_to_parameters(lat), params, atol=1e-10)
    rot, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    np.testing.assert_allclose(lattice_to_parameters(lat @ rot.T), params, atol=1e-10)


def test_invalid_angles_raise():
    with pytest.raises(ValueError):
        lattice_from_parameters(5, 5, 5, 170, 10, 10)


def test_make_right_handed_keeps_positions():
    lat = lattice_from_parameters(5, 6, 7, 80, 95, 100)[[1, 0, 2]]  # swapped: left-handed
    frac = np.random.default_rng(1).random((5, 3))
    assert np.linalg.det(lat) < 0
    lat2, frac2 = make_right_handed(lat, frac)
    assert np.linalg.det(lat2) > 0
    d = frac2 @ lat2 - frac @ lat
    d_frac = np.linalg.solve(lat2.T, d.T).T
    np.testing.assert_allclose(d_frac - np.round(d_frac), 0, atol=1e-12)


def test_cif_round_trip_lossless(example_files, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in example_files[:10]:
            c = read_cif(path)
            out = tmp_path / "rt.cif"
            write_cif(c, out)
            back = read_cif(out)
            np.testing.assert_array_equal(back.numbers, c.numbers)
            d = back.frac - c.frac
            np.testing.assert_allclose(d - np.round(d), 0, atol=1e-6)
            np.testing.assert_allclose(back.parameters, c.parameters, atol=1e-6)
            assert back.id == "rt"


def test_read_cif_from_text_and_symmetry_expansion():
    text = """data_nacl
_symmetry_space_group_name_H-M   'F m -3 m'
_cell_length_a 5.64
_cell_length_b 5.64
_cell_length_c 5.64
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_Int_Tables_number 225
loop_
 _symmetry_equiv_pos_as_xyz
 'x, y, z'
 'x, y+1/2, z+1/2'
 'x+1/2, y, z+1/2'
 'x+1/2, y+1/2, z'
loop_
 _atom_site_label
 _atom_site_type_symbol
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
 Na1 Na 0 0 0 1
 Cl1 Cl 0.5 0.5 0.5 1
"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = read_cif(text, id="nacl")
    assert c.num_atoms == 8 and sorted(set(c.symbols)) == ["Cl", "Na"]
    from mofasa.data import canonicalize

    assert canonicalize(c).num_atoms == 2  # FCC primitive cell


def test_pymatgen_and_ase_conversions(example_crystals):
    c = example_crystals[0]
    s = c.to_pymatgen()
    back = Crystal.from_pymatgen(s, id=c.id)
    np.testing.assert_allclose(back.frac, c.frac, atol=1e-12)
    np.testing.assert_allclose(back.lattice, c.lattice, atol=1e-12)
    atoms = c.to_ase()
    back = Crystal.from_ase(atoms)
    np.testing.assert_array_equal(back.numbers, c.numbers)
    d = back.frac - c.frac
    np.testing.assert_allclose(d - np.round(d), 0, atol=1e-10)
    np.testing.assert_allclose(atoms.get_volume(), c.volume, rtol=1e-12)


def test_collate_and_unbatch(example_crystals):
    crystals = example_crystals[:4]
    batch = collate(crystals, dtype=torch.float64)
    assert isinstance(batch, CrystalBatch)
    n = max(c.num_atoms for c in crystals)
    assert batch.atom_types.shape == (4, n) and batch.frac.shape == (4, n, 3)
    assert batch.mask.sum().item() == sum(c.num_atoms for c in crystals)
    assert (batch.atom_types[~batch.mask] == 0).all()
    lengths, angles = batch.lattice_parameters()
    np.testing.assert_allclose(lengths[1].numpy(), crystals[1].parameters[:3], atol=1e-10)
    np.testing.assert_allclose(angles[2].numpy(), crystals[2].parameters[3:], atol=1e-8)
    for a, b in zip(batch.unbatch(), crystals, strict=True):
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_allclose(a.frac, b.frac)


def test_vocabulary_is_fixed():
    assert NUM_TOKENS == 101 and VOCAB_SYMBOLS[1] == "H" and VOCAB_SYMBOLS[100] == "Fm"


def test_models_import_without_pymatgen_or_ase():
    code = (
        "import sys\n"
        "sys.modules['pymatgen'] = None\nsys.modules['ase'] = None\n"
        "import mofasa, mofasa.data, mofasa.data.dataset, mofasa.geometry.graphs\n"
        "import mofasa.models, mofasa.diffusion, mofasa.training\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


def test_cli_version_and_help():
    for args in (["--version"], ["--help"], ["data", "prepare", "--help"]):
        out = subprocess.run([sys.executable, "-m", "mofasa.cli", *args], capture_output=True,
                             text=True, check=False)
        assert out.returncode == 0, out.stderr
        assert "mofasa" in out.stdout
