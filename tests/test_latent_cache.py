"""Latent cache: the cached latents are the encoder's, translations and bond images stay
consistent, a cache of another encoder is refused, and training on it matches training on the fly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mofasa.checkpoint import build_diffusion, load_autoencoder, load_checkpoint
from mofasa.data import collate
from mofasa.data.canonical import BOND_TOL, COVALENT_RADII
from mofasa.data.dataset import CrystalDataset
from mofasa.diffusion.batch import LatentBatch
from mofasa.training.autoencoder import load_ae_config, train_autoencoder
from mofasa.training.diffusion import load_diffusion_config, train_diffusion
from mofasa.training.latent_cache import (
    LatentCacheDataset,
    LatentCacheError,
    build_latent_cache,
    cache_key,
    cache_statistics,
)

from .conftest import prepare_examples

FAST = ["run.threads=1", "run.log_every=2", "run.ckpt_every=100", "run.val_every=100",
        "data.batch_size=4"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(prepared 10 examples, tiny autoencoder checkpoint, cache with 3 translations)."""
    data = prepare_examples(tmp_path_factory, 10)
    root = tmp_path_factory.mktemp("cache")
    cfg = load_ae_config("tiny", [f"data.path={data}", f"run.out_dir={root / 'ae'}",
                                  "optim.total_steps=2", *FAST])
    train_autoencoder(cfg, resume=False)
    ae_path = root / "ae" / "checkpoint.pt"
    ae, _ = load_autoencoder(ae_path)
    cache = build_latent_cache(ae, data, root / "latents", translations=3, seed=5)
    return data, ae_path, cache


def test_cached_latents_are_the_encoders_for_each_translation(setup):
    data, ae_path, cache = setup
    ae, _ = load_autoencoder(ae_path)
    ds = LatentCacheDataset(cache, "train", translate=True, seed=5)
    prepared = CrystalDataset(data, "train")
    assert len(ds) == len(prepared) and ds.translations == 3
    seen_k = set()
    for epoch in range(4):
        item = ds[(1, epoch)]
        k = ds._translation(1, epoch)
        seen_k.add(k)
        ref = prepared[1]
        shift = np.asarray(ds._a["shifts"][k, 1], dtype=np.float64)
        assert (k == 0) == (not shift.any())
        expect = (ref.frac + shift) % 1.0
        assert np.allclose(item["frac"], expect, atol=2e-6)
        batch = collate([type(ref)(ref.numbers, item["frac"], ref.lattice)])
        with torch.no_grad():
            zl, zg = ae.latents(batch)
        assert np.allclose(item["zl"], zl[0].numpy(), atol=1e-5)
        assert np.allclose(item["zg"], zg[0].numpy(), atol=1e-5)
    assert len(seen_k) > 1  # translations vary with the epoch


def test_bond_images_follow_the_wrapped_coordinates(setup):
    _, _, cache = setup
    ds = LatentCacheDataset(cache, "train", translate=True, seed=5)
    for i in range(len(ds)):
        item = ds[(i, 3)]
        p, n = item["pairs"], item["images"]
        assert len(p) > 0
        d = (item["frac"][p[:, 1]] + n - item["frac"][p[:, 0]]) @ item["lattice"]  # (E, 3)
        r = COVALENT_RADII[item["numbers"]]
        assert (np.linalg.norm(d, axis=1) < r[p[:, 0]] + r[p[:, 1]] + BOND_TOL + 1e-4).all()
        labels = item["node"]
        assert set(np.unique(labels)) <= {0, 1, 2} and (labels == 2).any()  # MOFs have metals


def test_collate_and_the_same_loss_as_on_the_fly(setup):
    data, ae_path, cache = setup
    ae, _ = load_autoencoder(ae_path)
    cfg = load_diffusion_config("tiny")
    model = build_diffusion(cfg.model, cfg.diffusion, ae).eval()
    ds = LatentCacheDataset(cache, "train")
    batch = ds.collate_fn([ds[(i, 0)] for i in (0, 3, 4)])
    assert isinstance(batch, LatentBatch) and batch.zl.shape[:2] == batch.mask.shape
    assert int(batch.bond_index.max()) < batch.mask.numel()
    plain = collate([CrystalDataset(data, "train")[i] for i in (0, 3, 4)])
    torch.manual_seed(0)
    cached_loss, _ = model.loss_terms(batch)
    torch.manual_seed(0)
    fly_loss, _ = model.loss_terms(plain)
    assert torch.allclose(cached_loss, fly_loss, atol=1e-5)


def test_a_cache_of_another_encoder_or_data_is_refused(setup, tmp_path):
    data, ae_path, cache = setup
    ae, _ = load_autoencoder(ae_path)
    key = cache_key(ae, data, None, 3, 5, "float32")
    LatentCacheDataset(cache, "train", expect=key)  # matches
    with torch.no_grad():
        next(ae.parameters()).add_(1e-3)
    other = cache_key(ae, data, None, 3, 5, "float32")
    with pytest.raises(LatentCacheError, match="autoencoder"):
        LatentCacheDataset(cache, "train", expect=other)
    with pytest.raises(LatentCacheError, match="translations"):
        LatentCacheDataset(cache, "train", expect={**key, "translations": 1})
    with pytest.raises(LatentCacheError, match="not a latent cache"):
        LatentCacheDataset(tmp_path, "train")


def test_statistics_cover_every_translation(setup):
    _, _, cache = setup
    stats = cache_statistics(LatentCacheDataset(cache, "train"))
    zl = np.asarray(np.load(cache / "train_zl.npy"), dtype=np.float64).reshape(-1, 8)
    assert np.allclose(stats["local_mean"].numpy(), zl.mean(0), atol=1e-6)
    assert stats["local_std"].shape == (8,) and (stats["local_std"] > 0).all()


def test_training_from_the_cache_builds_it_runs_and_resumes(setup, tmp_path):
    data, ae_path, _ = setup
    over = [f"data.path={data}", f"run.out_dir={tmp_path / 'dm'}", "optim.total_steps=3",
            f"cache.path={tmp_path / 'lat'}", "cache.translations=2", *FAST]
    train_diffusion(load_diffusion_config("tiny", over), ae_path, resume=False)
    assert (tmp_path / "lat" / "meta.json").is_file()
    ckpt = load_checkpoint(tmp_path / "dm" / "checkpoint.pt")
    assert ckpt["step"] == 3 and ckpt["config"]["cache"]["translations"] == 2
    assert torch.isfinite(ckpt["latent_stats"]["local_std"]).all()
    over5 = [o.replace("optim.total_steps=3", "optim.total_steps=5") for o in over]
    train_diffusion(load_diffusion_config("tiny", over5), None, resume=True)
    assert load_checkpoint(tmp_path / "dm" / "checkpoint.pt")["step"] == 5
