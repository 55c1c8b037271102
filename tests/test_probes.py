"""Bonded share and the training-time probes: known answers, ranges, logging into metrics.csv."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest
import torch

from mofasa.checkpoint import build_diffusion, load_autoencoder
from mofasa.data import Crystal, read_cif
from mofasa.data.elements import COVALENT_RADII
from mofasa.data.quality import bonded_share, nearest_neighbours, pooled_bonded_share
from mofasa.training.autoencoder import load_ae_config, train_autoencoder
from mofasa.training.diffusion import load_diffusion_config, train_diffusion
from mofasa.training.probes import ProbeSet, _near_pairs, run_probes

from .conftest import EXAMPLES, prepare_examples

FAST = ["run.threads=1", "run.log_every=2", "run.ckpt_every=100", "run.val_every=100",
        "data.batch_size=4"]


def _brute_nearest(c: Crystal) -> np.ndarray:
    shifts = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])
    d = c.frac[None, :, None] - c.frac[:, None, None] + shifts  # (N, N, 27, 3)
    dist = np.linalg.norm(d @ c.lattice, axis=-1)
    dist[np.arange(c.num_atoms), np.arange(c.num_atoms), 13] = np.inf
    return dist.min(axis=(1, 2))


def test_bonded_share_on_real_and_random_structures():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        real = [read_cif(p) for p in sorted(EXAMPLES.glob("*.cif"))[:5]]
    for c in real:
        dist, _ = nearest_neighbours(c)
        assert np.allclose(dist, _brute_nearest(c))  # cells here exceed 8 Å: 27 images suffice
        assert bonded_share(c) > 0.9
    rng = np.random.default_rng(0)
    shuffled = [Crystal(c.numbers, rng.random(c.frac.shape), c.lattice) for c in real]
    assert pooled_bonded_share(shuffled) < 0.7 < pooled_bonded_share(real)


def test_bonded_share_hand_built():
    # C-C at 1.5 Å (radii sum 1.52: bonded) and an H 3.5 Å from everything (not bonded)
    lat = np.eye(3) * 10.0
    frac = np.array([[0.0, 0, 0], [0.15, 0, 0], [0.5, 0.5, 0.5]])
    c = Crystal([6, 6, 1], frac, lat)
    assert bonded_share(c) == pytest.approx(2 / 3)
    assert COVALENT_RADII[6] * 2 == pytest.approx(1.52, abs=0.01)
    flat = Crystal([6, 6], frac[:2], np.array([[10.0, 0, 0], [0, 10, 0], [10, 10, 0]]))
    assert bonded_share(flat) == 0.0  # no usable cell


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    data = prepare_examples(tmp_path_factory, 8)
    root = tmp_path_factory.mktemp("probes")
    train_autoencoder(load_ae_config("tiny", [f"data.path={data}", f"run.out_dir={root / 'ae'}",
                                              "optim.total_steps=2", *FAST]), resume=False)
    return data, root / "ae" / "checkpoint.pt"


def test_probes_are_finite_and_in_range(tiny):
    from mofasa.data.dataset import CrystalDataset

    data, ae_path = tiny
    ae, _ = load_autoencoder(ae_path)
    cfg = load_diffusion_config("tiny")
    model = build_diffusion(cfg.model, cfg.diffusion, ae)
    ds = CrystalDataset(data, "val")
    probes = ProbeSet([ds[i] for i in range(4)], [20, 30], seed=0)
    a = run_probes(model, probes, samples=3, steps=3)
    b = run_probes(model, probes, samples=3, steps=3)
    assert a == b  # fixed noise: probe curves compare like with like
    for key in ("sdedit_bonded", "sdedit_floor", "denovo_bonded", "near_attention",
                "near_uniform"):
        assert 0.0 <= a[key] <= 1.0, key
    assert np.isfinite(a["context_gap"]) and a["context_x0_rmse"] > 0
    near = _near_pairs(probes.batch, 2.0)
    assert near.any() and not near.diagonal(dim1=1, dim2=2).any()
    assert torch.equal(near, near.transpose(1, 2))


def test_training_logs_probes_and_plots_them(tiny, tmp_path):
    data, ae_path = tiny
    over = [f"data.path={data}", f"run.out_dir={tmp_path / 'dm'}", "optim.total_steps=4",
            "probes.every=2", "probes.samples=2", "probes.steps=2", "probes.structures=3",
            f"cache.path={tmp_path / 'lat'}", *FAST]
    train_diffusion(load_diffusion_config("tiny", over), ae_path, resume=False)
    with open(tmp_path / "dm" / "metrics.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "probe"]
    names = {r["name"] for r in rows}
    assert {"sdedit_bonded", "context_gap", "near_attention", "denovo_bonded",
            "probe_seconds"} <= names
    assert sorted({int(r["step"]) for r in rows}) == [2, 4]
    assert (tmp_path / "dm" / "curves.png").stat().st_size > 0
