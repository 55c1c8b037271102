"""Tests for mofasa.geometry.graphs: periodic radius / k-nearest neighbour graphs."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mofasa.geometry import graphs
from mofasa.geometry.graphs import (
    PeriodicGraph,
    interplanar_spacings,
    knn_graph_pbc,
    knn_graph_pbc_batch,
    knn_graph_pbc_dense_batch,
    radius_graph_pbc,
    radius_graph_pbc_batch,
)
from mofasa.geometry.lattice import lattice_from_parameters

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TOL = 1e-6
CASES = ["medium", "small_cell", "one_atom", "needle"]

# --------------------------------------------------------------------------------------------
# fixtures / reference implementation
# --------------------------------------------------------------------------------------------


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _skewed_lattice(rng: np.random.Generator, scale: float) -> np.ndarray:
    """Random, strongly sheared triclinic cell (not in standard orientation)."""
    while True:
        lat = scale * (np.diag(rng.uniform(0.8, 1.2, 3)) + rng.uniform(-0.7, 0.7, (3, 3)))
        d = interplanar_spacings(lat)
        lengths = np.linalg.norm(lat, axis=1)
        # Keep it skewed but not absurd: plane spacing well below the longest edge.
        if d.min() > 0.25 * scale and d.min() < 0.8 * lengths.max():
            return lat


def _case(name: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(frac, lattice, cutoff) test crystals; frac deliberately not wrapped into [0, 1)."""
    rng = np.random.default_rng(CASES.index(name) + 100)
    if name == "medium":  # ordinary triclinic cell, cutoff < cell
        lat, n, cutoff = _skewed_lattice(rng, 9.0), 24, 4.5
    elif name == "small_cell":  # cell much smaller than the cutoff
        lat, n, cutoff = _skewed_lattice(rng, 3.0), 4, 6.5
    elif name == "one_atom":  # a single atom: all neighbours are its own images
        lat, n, cutoff = _skewed_lattice(rng, 2.2), 1, 5.0
    elif name == "needle":  # one very thin axis, extreme angles, rotated
        lat = lattice_from_parameters(1.6, 7.0, 6.0, 70.0, 100.0, 40.0) @ _rotation(rng).T
        n, cutoff = 6, 4.0
    else:
        raise KeyError(name)
    frac = rng.random((n, 3)) + rng.integers(-1, 3, (n, 3))
    return frac, lat, cutoff


def _ref_radius(
    frac: np.ndarray, lat: np.ndarray, cutoff: float, self_loops: bool = False
) -> dict[tuple[int, ...], float]:
    """Brute force: explicit loop over a generous box of images. {(i, j, n0, n1, n2): d}."""
    d = interplanar_spacings(lat)
    span = frac.max(0) - frac.min(0)
    m = [math.ceil(cutoff / d[a]) + math.ceil(span[a]) + 1 for a in range(3)]
    images = np.array(list(itertools.product(*(range(-k, k + 1) for k in m))))
    diff = frac[None, :, :] - frac[:, None, :]  # (i, j, 3) = f_j - f_i
    # (N, N, S): every pair against every image of the box, no pruning at all.
    dist = np.linalg.norm((diff[:, :, None, :] + images) @ lat, axis=-1)
    out: dict[tuple[int, ...], float] = {}
    for i, j, s in zip(*np.nonzero(dist <= cutoff), strict=True):
        n = tuple(int(x) for x in images[s])
        if i == j and n == (0, 0, 0) and not self_loops:
            continue
        out[(int(i), int(j), *n)] = float(dist[i, j, s])
    return out


def _ref_knn(frac: np.ndarray, lat: np.ndarray, k: int, cutoff: float | None = None):
    """Per centre: list of (d, j, offset) sorted by distance then j then offset."""
    n = len(frac)
    radius = cutoff if cutoff is not None else 2.0
    while True:
        ref = _ref_radius(frac, lat, radius)
        per: dict[int, list] = {i: [] for i in range(n)}
        for (i, j, *off), dist in ref.items():
            per[i].append((dist, j, tuple(off)))
        if cutoff is not None or all(len(v) >= k for v in per.values()):
            return {i: sorted(v)[:k] for i, v in per.items()}
        radius *= 1.5


def _as_dict(g: PeriodicGraph) -> dict[tuple[int, ...], float]:
    ei = g.edge_index.cpu().numpy()
    off = g.offsets.cpu().numpy()
    dist = g.distances.detach().cpu().numpy()
    keys = [(int(i), int(j), *map(int, o)) for i, j, o in zip(ei[0], ei[1], off, strict=True)]
    assert len(set(keys)) == len(keys), "duplicate edges"
    return dict(zip(keys, dist.tolist(), strict=True))


def _t(x: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(np.array(x), dtype=dtype)  # copy: pymatgen arrays are read-only


def _assert_consistent(g: PeriodicGraph, frac: torch.Tensor, lat: torch.Tensor) -> None:
    """Shapes/dtypes and vectors == (frac[j] + n - frac[i]) @ L, distances == |vectors|."""
    e = g.num_edges
    assert g.edge_index.shape == (2, e) and g.edge_index.dtype == torch.int64
    assert g.offsets.shape == (e, 3) and g.offsets.dtype == torch.int64
    assert g.vectors.shape == (e, 3) and g.vectors.dtype == frac.dtype
    assert g.distances.shape == (e,) and g.distances.dtype == frac.dtype
    i, j = g.edge_index
    expect = (frac[j] + g.offsets.to(frac.dtype) - frac[i]) @ lat
    torch.testing.assert_close(g.vectors, expect)
    torch.testing.assert_close(g.distances, g.vectors.norm(dim=-1))


def _assert_knn_matches(g: PeriodicGraph, ref: dict[int, list], n: int) -> None:
    """Same per-centre sorted distances, same edges up to exact ties at the k-th distance."""
    ei = g.edge_index.numpy()
    assert np.all(np.diff(ei[0]) >= 0), "centres not sorted"
    got = _as_dict(g)
    for i in range(n):
        sel = ei[0] == i
        dist = g.distances.detach().numpy()[sel]
        assert np.all(np.diff(dist) >= 0), "distances not sorted within a centre"
        want = ref[i]
        np.testing.assert_allclose(dist, [w[0] for w in want], atol=TOL, rtol=0)
        ref_keys = {(i, w[1], *w[2]): w[0] for w in want}
        kth = want[-1][0] if want else 0.0
        for key, dk in ref_keys.items():
            if dk < kth - TOL:  # strictly inside the k-th shell: must be present
                assert key in got
        for key, dk in got.items():
            if key[0] == i and key not in ref_keys:
                assert abs(dk - kth) < TOL  # only a tie partner may differ


# --------------------------------------------------------------------------------------------
# brute-force reference
# --------------------------------------------------------------------------------------------


def test_interplanar_spacings_match_reciprocal_lattice():
    rng = np.random.default_rng(0)
    lat = _skewed_lattice(rng, 5.0)
    recip = np.linalg.inv(lat).T  # rows g_a with g_a . L[b] = delta_ab
    np.testing.assert_allclose(interplanar_spacings(lat), 1.0 / np.linalg.norm(recip, axis=1))
    np.testing.assert_allclose(
        interplanar_spacings(torch.tensor(lat)), 1.0 / np.linalg.norm(recip, axis=1)
    )


@pytest.mark.parametrize("name", CASES)
def test_radius_matches_bruteforce(name):
    frac, lat, cutoff = _case(name)
    f, L = _t(frac), _t(lat)
    g = radius_graph_pbc(f, L, cutoff)
    _assert_consistent(g, f, L)
    got, ref = _as_dict(g), _ref_radius(frac, lat, cutoff)
    assert got.keys() == ref.keys()
    np.testing.assert_allclose([got[k] for k in ref], list(ref.values()), atol=TOL, rtol=0)
    # Documented order: i, then j, then offset lexicographically.
    keys = list(got.keys())
    assert keys == sorted(keys)
    if name in ("small_cell", "one_atom"):
        # Cells smaller than the cutoff: an atom is its own neighbour through images.
        assert any(i == j for i, j, *_ in keys)


def test_radius_self_loops():
    frac, lat, cutoff = _case("small_cell")
    f, L = _t(frac), _t(lat)
    g0 = _as_dict(radius_graph_pbc(f, L, cutoff))
    g1 = _as_dict(radius_graph_pbc(f, L, cutoff, self_loops=True))
    extra = set(g1) - set(g0)
    assert extra == {(i, i, 0, 0, 0) for i in range(len(frac))}
    assert all(g1[k] == 0.0 for k in extra)
    assert _ref_radius(frac, lat, cutoff, self_loops=True).keys() == g1.keys()


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("k", [1, 5, 12])
def test_knn_matches_bruteforce(name, k):
    frac, lat, _ = _case(name)
    f, L = _t(frac), _t(lat)
    g = knn_graph_pbc(f, L, k)
    _assert_consistent(g, f, L)
    assert torch.equal(
        torch.bincount(g.edge_index[0], minlength=len(frac)), torch.full((len(frac),), k)
    )
    _assert_knn_matches(g, _ref_knn(frac, lat, k), len(frac))


def test_knn_tiny_cell_many_neighbours():
    """1 atom in a 2 Å cubic cell, k = 12 and k = 60: needs several image shells."""
    f = torch.zeros(1, 3, dtype=torch.float64)
    L = 2.0 * torch.eye(3, dtype=torch.float64)
    g = knn_graph_pbc(f, L, 12)
    # 6 faces at 2 Å, then 6 of the 12 edge-diagonals at 2*sqrt(2) Å, ties broken by offset.
    faces = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, 0, 1], [0, 1, 0], [1, 0, 0]]
    diags = [[-1, -1, 0], [-1, 0, -1], [-1, 0, 1], [-1, 1, 0], [0, -1, -1], [0, -1, 1]]
    assert g.offsets.tolist() == faces + diags
    torch.testing.assert_close(
        g.distances, torch.tensor([2.0] * 6 + [2.0 * math.sqrt(2.0)] * 6, dtype=torch.float64)
    )
    g60 = knn_graph_pbc(f, L, 60)
    assert g60.num_edges == 60
    _assert_knn_matches(g60, _ref_knn(f.numpy(), L.numpy(), 60), 1)


def test_knn_grows_radius_for_isolated_atom(monkeypatch):
    """A tight cluster plus one lone atom: the density-based first radius is far too small
    for the lone atom, so the search must grow (only for that atom) and still be exact."""
    rng = np.random.default_rng(8)
    lat = lattice_from_parameters(15.0, 14.0, 16.0, 80.0, 100.0, 75.0)
    frac = np.vstack([0.3 * rng.random((20, 3)) - 0.15, [[0.5, 0.5, 0.5]]])
    calls: list[int] = []
    search = graphs._search

    def counting_search(frac_w, lattice, cutoff, centers, self_loops):
        calls.append(int(centers.numel()))
        return search(frac_w, lattice, cutoff, centers, self_loops)

    monkeypatch.setattr(graphs, "_search", counting_search)
    # Small growth steps make intermediate rounds where the lone atom has 1..7 candidates.
    monkeypatch.setattr(graphs, "_KNN_GROWTH", 1.05)
    g = knn_graph_pbc(_t(frac), _t(lat), 8)
    assert len(calls) > 1 and calls[-1] == 1  # later rounds only redo the lone atom
    _assert_knn_matches(g, _ref_knn(frac, lat, 8), len(frac))


@pytest.mark.parametrize("name", ["medium", "small_cell"])
def test_knn_with_cutoff(name):
    frac, lat, _ = _case(name)
    f, L = _t(frac), _t(lat)
    k, cutoff = 10, 3.2
    g = knn_graph_pbc(f, L, k, cutoff=cutoff)
    _assert_consistent(g, f, L)
    avail = np.bincount([i for i, *_ in _ref_radius(frac, lat, cutoff)], minlength=len(frac))
    counts = torch.bincount(g.edge_index[0], minlength=len(frac)).numpy()
    np.testing.assert_array_equal(counts, np.minimum(k, avail))
    assert float(g.distances.max()) <= cutoff
    _assert_knn_matches(g, _ref_knn(frac, lat, k, cutoff=cutoff), len(frac))


def test_chunked_search_identical(monkeypatch):
    frac, lat, cutoff = _case("small_cell")
    f, L = _t(frac), _t(lat)
    full_r, full_k = radius_graph_pbc(f, L, cutoff), knn_graph_pbc(f, L, 7)
    # Forces both centre chunks and image chunks (and the re-sort across image blocks).
    monkeypatch.setattr(graphs, "_CHUNK_ELEMENTS", 40)
    small_r, small_k = radius_graph_pbc(f, L, cutoff), knn_graph_pbc(f, L, 7)
    for a, b in ((full_r, small_r), (full_k, small_k)):
        assert torch.equal(a.edge_index, b.edge_index)
        assert torch.equal(a.offsets, b.offsets)
        torch.testing.assert_close(a.distances, b.distances)


def test_float32_matches_float64():
    frac, lat, cutoff = _case("medium")
    g64 = _as_dict(radius_graph_pbc(_t(frac), _t(lat), cutoff))
    g32g = radius_graph_pbc(_t(frac, torch.float32), _t(lat, torch.float32), cutoff)
    assert g32g.distances.dtype == torch.float32
    g32 = _as_dict(g32g)
    for key in set(g64) ^ set(g32):  # only edges within float32 rounding of the cutoff
        assert abs(g64.get(key, g32.get(key)) - cutoff) < 1e-4
    common = sorted(set(g64) & set(g32))
    np.testing.assert_allclose([g32[k] for k in common], [g64[k] for k in common], atol=1e-4)


# --------------------------------------------------------------------------------------------
# pymatgen
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pymatgen_structures() -> list:
    """Up to two ``examples/*.cif`` MOFs (if present) plus a hand-built MOF-like cell."""
    pytest.importorskip("pymatgen")
    from pymatgen.core import Lattice, Structure

    out = []
    cifs = sorted(EXAMPLES.glob("*.cif")) if EXAMPLES.is_dir() else []
    for path in cifs[:2]:
        try:
            s = Structure.from_file(str(path))
        except Exception:  # an unparsable example is not this module's concern
            continue
        if len(s) <= 800:  # keep the file fast
            out.append((path.name, s))
    # Hand-built MOF-like stand-in: skewed, rotated cell with 60 atoms of mixed species.
    rng = np.random.default_rng(42)
    lat = lattice_from_parameters(11.0, 13.5, 12.0, 78.0, 104.0, 62.0) @ _rotation(rng).T
    species = rng.choice(["C", "H", "O", "N", "Zn"], size=60).tolist()
    out.append(("handbuilt", Structure(Lattice(lat), species, rng.random((60, 3)))))
    return out


@pytest.mark.parametrize("cutoff", [3.0, 6.0])
def test_radius_matches_pymatgen(pymatgen_structures, cutoff):
    for name, s in pymatgen_structures:
        frac, lat = np.asarray(s.frac_coords), np.asarray(s.lattice.matrix)
        centre, point, images, dist = s.get_neighbor_list(cutoff)
        ref = {
            (int(i), int(j), *map(int, np.round(o))): float(d)
            for i, j, o, d in zip(centre, point, images, dist, strict=True)
        }
        got = _as_dict(radius_graph_pbc(_t(frac), _t(lat), cutoff))
        # Ignore edges sitting on the cutoff sphere (floating-point ambiguity only).
        on_shell = {k for k, d in {**ref, **got}.items() if abs(d - cutoff) < 1e-6}
        assert set(got) - on_shell == set(ref) - on_shell, name
        keys = sorted(set(ref) - on_shell)
        np.testing.assert_allclose([got[k] for k in keys], [ref[k] for k in keys], atol=TOL)


# --------------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------------


def _padded_batch():
    crystals = [_case(n) for n in ("medium", "one_atom", "small_cell", "needle")]
    n_pad = max(len(c[0]) for c in crystals) + 3
    b = len(crystals) + 1  # the last crystal is all padding
    frac = torch.full((b, n_pad, 3), float("nan"), dtype=torch.float64)
    lat = torch.eye(3, dtype=torch.float64).repeat(b, 1, 1)
    mask = torch.zeros(b, n_pad, dtype=torch.bool)
    rng = np.random.default_rng(3)
    slots = []
    for bi, (f, L, _) in enumerate(crystals):
        idx = np.sort(rng.choice(n_pad, size=len(f), replace=False))  # padding interleaved
        frac[bi, idx] = _t(f)
        lat[bi] = _t(L)
        mask[bi, idx] = True
        slots.append(idx)
    return frac, lat, mask, slots


@pytest.mark.parametrize("kind", ["radius", "knn", "knn_cutoff"])
def test_batch_equals_single(kind):
    frac, lat, mask, slots = _padded_batch()
    n_pad = frac.shape[1]
    if kind == "radius":
        gb = radius_graph_pbc_batch(frac, lat, mask, 4.0)

        def single(f, L):
            return radius_graph_pbc(f, L, 4.0)
    else:
        cut = 3.5 if kind == "knn_cutoff" else None
        gb = knn_graph_pbc_batch(frac, lat, mask, 8, cutoff=cut)

        def single(f, L):
            return knn_graph_pbc(f, L, 8, cutoff=cut)

    assert torch.isfinite(gb.distances).all()
    ei, off, dist = [], [], []
    for bi, idx in enumerate(slots):
        idx_t = torch.as_tensor(idx)
        g = single(frac[bi, idx_t], lat[bi])
        ei.append(idx_t[g.edge_index] + bi * n_pad)
        off.append(g.offsets)
        dist.append(g.distances)
    assert torch.equal(gb.edge_index, torch.cat(ei, 1))
    assert torch.equal(gb.offsets, torch.cat(off))
    torch.testing.assert_close(gb.distances, torch.cat(dist))
    # No edge touches a padded atom.
    assert mask.reshape(-1)[gb.edge_index].all()


def _edge_table(g: PeriodicGraph) -> dict[tuple[int, ...], float]:
    """Edges strictly inside their centre's k-th distance (ties there may pick either image)."""
    i = g.edge_index[0]
    kth = torch.zeros(int(i.max()) + 1, dtype=g.distances.dtype).scatter_reduce(
        0, i, g.distances, "amax")
    inner = g.distances < kth[i] - 1e-9
    keys = torch.cat([g.edge_index.T, g.offsets], dim=1)[inner].tolist()
    return {tuple(k): float(d) for k, d in zip(keys, g.distances[inner].tolist(), strict=True)}


def _random_batch(seed: int, b: int, n: int, scale: float, skew: float):
    gen = torch.Generator().manual_seed(seed)
    frac = torch.rand(b, n, 3, generator=gen, dtype=torch.float64) * 3 - 1  # unwrapped too
    lat = (torch.diag_embed(torch.full((b, 3), scale, dtype=torch.float64))
           + skew * torch.randn(b, 3, 3, generator=gen, dtype=torch.float64))
    sizes = torch.randint(1, n + 1, (b,), generator=gen)
    return frac, lat, torch.arange(n)[None] < sizes[:, None]


@pytest.mark.parametrize("batch", ["fixtures", "mof_like", "small_cells"])
@pytest.mark.parametrize("chunk", [None, 200])
def test_dense_knn_batch_equals_exact(batch, chunk, monkeypatch):
    """The padded search finds the same k nearest images as the exact per-crystal search;
    only the choice and order among equal distances may differ (checked: each centre's
    distances in order, and its edges inside its k-th distance as a set)."""
    if chunk is not None:  # many chunks (one crystal each)
        monkeypatch.setattr(graphs, "_CHUNK_ELEMENTS", chunk)
    if batch == "fixtures":  # a one-atom cell, a small cell and a needle: exact fallbacks
        frac, lat, mask, _ = _padded_batch()
    elif batch == "mof_like":
        frac, lat, mask = _random_batch(0, 12, 40, 10.0, 0.5)
    else:  # cells of ~3-4 Å: the 27-image pass and the fallback
        frac, lat, mask = _random_batch(1, 10, 6, 3.5, 0.8)
    k = 12
    ref = knn_graph_pbc_batch(frac, lat, mask, k)
    got = knn_graph_pbc_dense_batch(frac, lat, mask, k)
    assert got.edge_index.shape == ref.edge_index.shape
    assert torch.equal(got.edge_index[0], ref.edge_index[0])  # same centres, same order
    torch.testing.assert_close(got.distances, ref.distances)  # same distance order per centre
    a, b = _edge_table(got), _edge_table(ref)
    assert a.keys() == b.keys()
    assert max(abs(a[e] - b[e]) for e in a) < 1e-9
    assert mask.reshape(-1)[got.edge_index].all()
    torch.testing.assert_close(  # vectors are the edges' own geometry
        got.vectors.norm(dim=-1), got.distances)


def test_dense_knn_gradients_and_empty():
    frac, lat, mask = _random_batch(2, 3, 10, 8.0, 0.3)
    frac.requires_grad_(True)
    g = knn_graph_pbc_dense_batch(frac, lat, mask, 4)
    g.distances.sum().backward()
    assert frac.grad is not None and torch.isfinite(frac.grad).all()
    empty = knn_graph_pbc_dense_batch(frac.detach(), lat, torch.zeros_like(mask), 4)
    assert empty.num_edges == 0 and empty.vectors.shape == (0, 3)
    with pytest.raises(ValueError, match="k must be"):
        knn_graph_pbc_dense_batch(frac.detach(), lat, mask, 0)


def test_batch_all_padding_is_empty():
    frac = torch.rand(2, 4, 3)
    lat = torch.eye(3).repeat(2, 1, 1) * 5
    mask = torch.zeros(2, 4, dtype=torch.bool)
    for g in (
        radius_graph_pbc_batch(frac, lat, mask, 3.0),
        knn_graph_pbc_batch(frac, lat, mask, 4),
    ):
        assert g.num_edges == 0
        assert g.edge_index.shape == (2, 0) and g.vectors.shape == (0, 3)


# --------------------------------------------------------------------------------------------
# invariances
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", ["radius", "knn"])
def test_permutation_equivariance(build):
    frac, lat, cutoff = _case("medium")
    f, L = _t(frac), _t(lat)
    perm = torch.as_tensor(np.random.default_rng(5).permutation(len(frac)))

    def make(x):
        return radius_graph_pbc(x, L, cutoff) if build == "radius" else knn_graph_pbc(x, L, 9)

    g, gp = _as_dict(make(f)), _as_dict(make(f[perm]))
    mapped = {(int(perm[i]), int(perm[j]), *o): d for (i, j, *o), d in gp.items()}
    assert mapped.keys() == g.keys()
    np.testing.assert_allclose([mapped[k] for k in g], list(g.values()), atol=1e-12)


@pytest.mark.parametrize("build", ["radius", "knn"])
def test_translation_invariance(build):
    frac, lat, cutoff = _case("small_cell")
    f, L = _t(frac), _t(lat)
    shift = torch.tensor([0.37, -1.21, 2.73], dtype=torch.float64)

    def make(x):
        return radius_graph_pbc(x, L, cutoff) if build == "radius" else knn_graph_pbc(x, L, 11)

    g, gt = make(f), make(f + shift)
    assert g.num_edges == gt.num_edges
    np.testing.assert_allclose(
        np.sort(g.distances.numpy()), np.sort(gt.distances.numpy()), atol=1e-9
    )
    if build == "knn":  # per-centre neighbour distances are unchanged too
        torch.testing.assert_close(g.distances, gt.distances)


def test_rotation_invariance():
    frac, lat, cutoff = _case("needle")
    f, L = _t(frac), _t(lat)
    R = _t(_rotation(np.random.default_rng(11)))
    g, gr = radius_graph_pbc(f, L, cutoff), radius_graph_pbc(f, L @ R.T, cutoff)
    assert torch.equal(g.edge_index, gr.edge_index)
    assert torch.equal(g.offsets, gr.offsets)
    torch.testing.assert_close(gr.distances, g.distances)
    torch.testing.assert_close(gr.vectors, g.vectors @ R.T)
    gk, gkr = knn_graph_pbc(f, L, 10), knn_graph_pbc(f, L @ R.T, 10)
    torch.testing.assert_close(gkr.distances, gk.distances)


# --------------------------------------------------------------------------------------------
# gradients, validation, devices
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", ["radius", "radius_self", "knn"])
def test_gradients_flow(build):
    frac, lat, cutoff = _case("small_cell")
    f = _t(frac).requires_grad_(True)
    L = _t(lat).requires_grad_(True)
    if build == "knn":
        g = knn_graph_pbc(f, L, 6)
    else:
        g = radius_graph_pbc(f, L, cutoff, self_loops=build == "radius_self")
    g.distances.sum().backward()
    for p in (f, L):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert L.grad.abs().sum() > 0
    # Sum over all ordered pairs is translation invariant: frac gradients sum to zero.
    torch.testing.assert_close(f.grad.sum(0), torch.zeros(3, dtype=torch.float64))


def test_gradcheck_distances():
    frac, lat, cutoff = _case("medium")
    f0 = _t(frac[:6])
    L0 = _t(lat)
    topology = radius_graph_pbc(f0, L0, cutoff)

    def fn(f, L):
        g = radius_graph_pbc(f, L, cutoff)
        assert torch.equal(g.edge_index, topology.edge_index)  # discrete part fixed under eps
        return g.distances, g.vectors

    assert torch.autograd.gradcheck(
        fn, (f0.clone().requires_grad_(True), L0.clone().requires_grad_(True))
    )


def test_input_validation():
    f = torch.rand(3, 3, dtype=torch.float64)
    L = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="singular"):
        radius_graph_pbc(f, torch.zeros(3, 3, dtype=torch.float64), 2.0)
    with pytest.raises(TypeError):
        radius_graph_pbc(f, L.float(), 2.0)
    with pytest.raises(ValueError):
        radius_graph_pbc(f, L, 0.0)
    with pytest.raises(ValueError):
        knn_graph_pbc(f, L, 0)
    with pytest.raises(ValueError):
        radius_graph_pbc(f[:, :2], L, 1.0)
    empty = radius_graph_pbc(f[:0], L, 2.0)
    assert empty.num_edges == 0 and knn_graph_pbc(f[:0], L, 3).num_edges == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    frac, lat, cutoff = _case("medium")
    for dtype in (torch.float32, torch.float64):
        f, L = _t(frac, dtype), _t(lat, dtype)
        for make in (
            lambda x, y: radius_graph_pbc(x, y, cutoff),
            lambda x, y: knn_graph_pbc(x, y, 12),
        ):
            gc, gg = make(f, L), make(f.cuda(), L.cuda())
            assert gg.distances.device.type == "cuda"
            assert torch.equal(gc.edge_index, gg.edge_index.cpu())
            assert torch.equal(gc.offsets, gg.offsets.cpu())
            torch.testing.assert_close(gc.distances, gg.distances.cpu())
