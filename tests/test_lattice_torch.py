"""mofasa.geometry.lattice_torch against its numpy twin mofasa.geometry.lattice.

Random cells and real QMOF cells (as written in the CIF, so in arbitrary orientations), float32
and float64, several batch shapes, finite gradients. Fast: no model, four small CIFs.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mofasa.data import read_cif
from mofasa.geometry import lattice as nplat
from mofasa.geometry.lattice_torch import (
    cart_to_frac_torch,
    frac_to_cart_torch,
    lattice_from_parameters_torch,
    lattice_to_parameters_torch,
    min_image_frac_torch,
    scaled_lattice_parameters_torch,
    volume_torch,
    wrap_frac_torch,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "qmof_cifs"
REAL_IDS = ["qmof-a0e80c5", "qmof-7344c24", "qmof-f528aef", "qmof-1150e7f"]
DTYPES = [torch.float32, torch.float64]
BATCH_SHAPES = [(), (5,), (2, 3)]


def _rel_tol(dtype: torch.dtype) -> float:
    """Relative tolerance against the float64 numpy reference."""
    return 1e-10 if dtype == torch.float64 else 2e-6


def _random_parameters(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 6) valid (a, b, c, alpha, beta, gamma): Å in [3, 30], degrees in [55, 125]."""
    rows: list[np.ndarray] = []
    while len(rows) < count:
        p = np.concatenate([rng.uniform(3.0, 30.0, 3), rng.uniform(55.0, 125.0, 3)])
        try:
            nplat.lattice_from_parameters(*p)
        except ValueError:  # angle triple that forms no cell
            continue
        rows.append(p)
    return np.stack(rows)  # (count, 6)


def _random_lattices(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 3, 3) random cells in random orientations, some left-handed."""
    params = _random_parameters(rng, count)  # (count, 6)
    out = []
    for k, p in enumerate(params):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # random orthogonal (det +-1)
        out.append(nplat.lattice_from_parameters(*p) @ q * (-1.0 if k % 3 == 0 else 1.0))
    return np.stack(out)  # (count, 3, 3)


@pytest.fixture(scope="module")
def real_crystals() -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [read_cif(EXAMPLES / f"{name}.cif") for name in REAL_IDS]


@pytest.fixture(scope="module")
def lattices(real_crystals) -> np.ndarray:
    """(4 + 12, 3, 3) float64: the real cells first, then random ones."""
    real = np.stack([c.lattice for c in real_crystals])
    return np.concatenate([real, _random_lattices(np.random.default_rng(0), 12)])


def _t(x: np.ndarray, dtype: torch.dtype, grad: bool = False) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype, requires_grad=grad)


def _assert_finite_grad(out: torch.Tensor, *inputs: torch.Tensor) -> None:
    grads = torch.autograd.grad(out.sum(), inputs)
    for g in grads:
        assert g is not None and torch.isfinite(g).all()


# --------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("dtype", DTYPES)
def test_lattice_to_parameters_matches_numpy(lattices, dtype):
    lat = _t(lattices, dtype, grad=True)  # (S, 3, 3)
    lengths, angles = lattice_to_parameters_torch(lat)  # (S, 3) x 2
    assert lengths.dtype == angles.dtype == dtype and lengths.shape == angles.shape == (16, 3)
    ref = np.array([nplat.lattice_to_parameters(x) for x in lattices])  # (S, 6)
    tol = _rel_tol(dtype)
    np.testing.assert_allclose(lengths.detach().double().numpy(), ref[:, :3], rtol=tol)
    # arccos loses relative precision: an angle error is ~ eps / sin(angle) radians
    np.testing.assert_allclose(angles.detach().double().numpy(), ref[:, 3:], atol=3e3 * tol)
    _assert_finite_grad(lengths + angles, lat)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lattice_from_parameters_matches_numpy(lattices, dtype):
    params = np.array([nplat.lattice_to_parameters(x) for x in lattices])  # (S, 6)
    lengths, angles = _t(params[:, :3], dtype, True), _t(params[:, 3:], dtype, True)
    got = lattice_from_parameters_torch(lengths, angles)  # (S, 3, 3)
    assert got.dtype == dtype and got.shape == (16, 3, 3)
    ref = np.stack([nplat.lattice_from_parameters(*p) for p in params])  # (S, 3, 3)
    scale = params[:, :3].max()
    atol = scale * 10 * _rel_tol(dtype)  # Å
    np.testing.assert_allclose(got.detach().double().numpy(), ref, atol=atol)
    assert (volume_torch(got.detach()) > 0).all()  # right-handed
    _assert_finite_grad(got, lengths, angles)


def test_parameter_round_trip_keeps_the_metric(lattices):
    """Standard orientation of a cell's parameters: the same Gram matrix L L^T."""
    lat = _t(lattices, torch.float64)  # (S, 3, 3)
    rebuilt = lattice_from_parameters_torch(*lattice_to_parameters_torch(lat))  # (S, 3, 3)
    torch.testing.assert_close(rebuilt @ rebuilt.mT, lat @ lat.mT, rtol=1e-10, atol=1e-8)


def test_degenerate_angles_give_a_finite_flat_cell():
    # alpha = beta = 60, gamma = 120: c lies in the ab plane; numpy raises, torch must not
    with pytest.raises(ValueError):
        nplat.lattice_from_parameters(5.0, 5.0, 5.0, 60.0, 60.0, 120.0)
    angles = torch.tensor([[60.0, 60.0, 120.0]], dtype=torch.float64, requires_grad=True)
    lat = lattice_from_parameters_torch(torch.full((1, 3), 5.0, dtype=torch.float64), angles)
    flatness = abs(float(volume_torch(lat.detach())[0])) / 5.0**3  # V / (a b c)
    assert torch.isfinite(lat).all() and flatness < 1e-5
    _assert_finite_grad(lat, angles)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scaled_parameters(lattices, dtype):
    n = torch.tensor([1, 8, 27, 100] * 4)  # (S,)
    lat = _t(lattices, dtype, grad=True)
    log_scaled, lengths, angles = scaled_lattice_parameters_torch(lat, n)  # (S, 3) x 3
    ref_len = np.linalg.norm(lattices, axis=-1)  # (S, 3)
    ref = np.log(ref_len / np.cbrt(n.numpy().astype(np.float64))[:, None])
    np.testing.assert_allclose(log_scaled.detach().double().numpy(), ref,
                               atol=10 * _rel_tol(dtype))
    l2, a2 = lattice_to_parameters_torch(lat)
    assert torch.equal(lengths, l2) and torch.equal(angles, a2)
    # N = 0 (an empty crystal) is clamped to 1, not a division by zero
    zero, _, _ = scaled_lattice_parameters_torch(lat[:1], torch.zeros(1, dtype=torch.long))
    torch.testing.assert_close(zero, lengths[:1].log())
    _assert_finite_grad(log_scaled, lat)


# ------------------------------------------------------------------------ volume, cart
@pytest.mark.parametrize("dtype", DTYPES)
def test_volume_matches_numpy_including_sign(lattices, dtype):
    lat = _t(lattices, dtype, grad=True)
    vol = volume_torch(lat)  # (S,)
    ref = np.array([nplat.volume(x) for x in lattices])
    assert (ref < 0).any() and (ref > 0).any()  # both handednesses are covered
    np.testing.assert_allclose(vol.detach().double().numpy(), ref, rtol=10 * _rel_tol(dtype))
    _assert_finite_grad(vol, lat)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cartesian_conversions_match_numpy(real_crystals, dtype):
    for crystal in real_crystals:
        frac = _t(crystal.frac, dtype, grad=True)  # (N, 3)
        lat = _t(crystal.lattice, dtype, grad=True)  # (3, 3)
        cart = frac_to_cart_torch(frac, lat)  # (N, 3)
        ref = nplat.frac_to_cart(crystal.frac, crystal.lattice)
        scale = np.abs(crystal.lattice).sum()
        np.testing.assert_allclose(cart.detach().double().numpy(), ref,
                                   atol=scale * _rel_tol(dtype))
        back = cart_to_frac_torch(cart, lat)  # (N, 3)
        ref_back = nplat.cart_to_frac(ref, crystal.lattice)
        np.testing.assert_allclose(back.detach().double().numpy(), ref_back,
                                   atol=100 * _rel_tol(dtype))
        np.testing.assert_allclose(ref_back, crystal.frac, atol=1e-10)
        _assert_finite_grad(back, frac, lat)


@pytest.mark.parametrize("shape", BATCH_SHAPES)
def test_batch_shapes_match_one_cell_at_a_time(lattices, shape):
    """Every function broadcasts over leading dimensions exactly like a loop over cells."""
    count = int(np.prod(shape))
    lat = _t(lattices[:count], torch.float64).reshape(*shape, 3, 3)
    frac = torch.rand(*shape, 7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lengths, angles = lattice_to_parameters_torch(lat)
    outs = {
        "lengths": lengths,  # (*shape, 3)
        "angles": angles,  # (*shape, 3)
        "lattice": lattice_from_parameters_torch(lengths, angles),  # (*shape, 3, 3)
        "volume": volume_torch(lat),  # shape
        "cart": frac_to_cart_torch(frac, lat),  # (*shape, 7, 3)
    }
    outs["frac"] = cart_to_frac_torch(outs["cart"], lat)  # (*shape, 7, 3)
    expected = {"lengths": (*shape, 3), "angles": (*shape, 3), "lattice": (*shape, 3, 3),
                "volume": shape, "cart": (*shape, 7, 3), "frac": (*shape, 7, 3)}
    assert {k: tuple(v.shape) for k, v in outs.items()} == expected
    flat_lat, flat_frac = lat.reshape(-1, 3, 3), frac.reshape(-1, 7, 3)
    for k in range(count):
        one_l, one_a = lattice_to_parameters_torch(flat_lat[k])
        torch.testing.assert_close(outs["lengths"].reshape(-1, 3)[k], one_l)
        torch.testing.assert_close(outs["angles"].reshape(-1, 3)[k], one_a)
        torch.testing.assert_close(outs["lattice"].reshape(-1, 3, 3)[k],
                                   lattice_from_parameters_torch(one_l, one_a))
        torch.testing.assert_close(outs["cart"].reshape(-1, 7, 3)[k],
                                   frac_to_cart_torch(flat_frac[k], flat_lat[k]))
    torch.testing.assert_close(outs["frac"], frac)


# ---------------------------------------------------------------------- wrap, min image
WRAP_EDGES = [-1e-17, -0.0, 0.0, 1.0, -1.0, 0.999999999, 1e-300, -2.5, 3.75, 0.5, -7.0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_wrap_frac_matches_numpy(dtype):
    rng = np.random.default_rng(1)
    values = np.concatenate([WRAP_EDGES, rng.uniform(-5.0, 5.0, 200)])
    if dtype == torch.float32:
        values = values.astype(np.float32).astype(np.float64)  # the same numbers in both
    x = _t(values, dtype, grad=True)
    got = wrap_frac_torch(x)
    assert got.dtype == dtype and (got >= 0).all() and (got < 1).all()
    ref = nplat.wrap_frac(values)
    if dtype == torch.float64:
        np.testing.assert_array_equal(got.detach().numpy(), ref)  # bit for bit
    else:  # remainder in float32 rounds near 1.0 differently: compare on the torus
        d = got.detach().double().numpy() - ref
        np.testing.assert_allclose(d - np.round(d), 0.0, atol=1e-6)
    (g,) = torch.autograd.grad(got.sum(), x)
    assert torch.equal(g, torch.ones_like(x))  # gradient: identity


@pytest.mark.parametrize("dtype", DTYPES)
def test_min_image_matches_numpy_away_from_ties(dtype):
    rng = np.random.default_rng(2)
    values = rng.uniform(-4.0, 4.0, (50, 3))
    values = values[np.abs(np.abs(values - np.floor(values)) - 0.5) > 1e-3]  # no +-0.5 ties
    x = _t(values, dtype, grad=True)
    got = min_image_frac_torch(x)
    assert got.dtype == dtype and (got.abs() <= 0.5).all()
    np.testing.assert_allclose(got.detach().double().numpy(), nplat.min_image_frac(values),
                               atol=10 * _rel_tol(dtype))
    (g,) = torch.autograd.grad(got.sum(), x)
    assert torch.equal(g, torch.ones_like(x))  # the integer shift carries no gradient
    # at an exact tie both are minimum images (|d| = 1/2), if not always the same one
    tie = min_image_frac_torch(torch.tensor([0.5, -0.5, 1.5, 2.5], dtype=dtype))
    assert (tie.abs() == 0.5).all()


# ------------------------------------------------------------------------- room rules
def test_models_keep_no_lattice_maths_of_their_own():
    """The lattice maths lives in geometry/ only: models import it, define none."""
    import inspect

    from mofasa.models import autoencoder, losses

    for module in (autoencoder, losses):
        src = inspect.getsource(module)
        assert "def lattice_matrix_from_parameters" not in src and "def lattice_targets" not in src
        assert "mofasa.geometry.lattice_torch" in src


def test_lattice_torch_imports_only_torch():
    """geometry/ is pure maths: the torch twin imports nothing but torch (and itertools)."""
    path = ROOT / "src/mofasa/geometry/lattice_torch.py"
    tree = ast.parse(path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    assert roots <= {"__future__", "torch", "itertools"}, roots
