"""`mofasa data prepare` on the example set, the memory-mapped dataset, bucketing, DDP shards."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from mofasa.data import CrystalBatch, canonicalize, read_cif
from mofasa.data import prepare as prep
from mofasa.data.dataset import BucketBatchSampler, CrystalDataset, make_loader
from mofasa.data.split import hash_split

from .conftest import EXAMPLES, ROOT

INDEX = ROOT / "examples" / "qmof_index.csv"


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    cfg = prep.PrepareConfig(max_atoms=500, workers=2)
    manifest = prep.prepare_dataset(EXAMPLES, out, index=INDEX, config=cfg, progress=False)
    return out, manifest


def test_manifest(prepared):
    out, manifest = prepared
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["n_accepted"] == manifest["n_accepted"] == 100
    assert manifest["n_rejected"] == 0 and manifest["splits"]["train"] == 100
    hist = manifest["atom_count_histogram"]
    assert sum(hist["counts"]) == 100 and sum(hist["protocol_bins"].values()) == 100
    assert manifest["elements"]["C"]["structures"] > 90
    assert len(manifest["sources"]["index_sha256"]) == 64
    assert manifest["config"]["canonical"]["length_rtol"] > 0
    assert not (out / "parts").exists()


def test_items_equal_canonical_form(prepared):
    out, _ = prepared
    ds = CrystalDataset(out, "train")
    assert len(ds) == 100 and len(CrystalDataset(out, "val")) == 0
    for i in (0, 17, 99):
        item = ds[i]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = canonicalize(read_cif(EXAMPLES / f"{item.id}.cif"))
        np.testing.assert_array_equal(item.numbers, ref.numbers)
        d = item.frac - ref.frac
        np.testing.assert_allclose(d - np.round(d), 0, atol=1.0 / 65536)
        np.testing.assert_allclose(item.parameters, ref.parameters, rtol=1e-6, atol=1e-4)


def test_dataset_is_compact(prepared):
    out, _ = prepared
    ds = CrystalDataset(out, "train")
    size = sum(p.stat().st_size for p in out.glob("train_*.npy"))
    assert size < 12 * ds.num_atoms.sum() + 64 * len(ds) + 4096  # ~7 bytes per atom + header


def test_translation_augmentation_is_seeded(prepared):
    out, _ = prepared
    ds = CrystalDataset(out, "train", translate=True, seed=5)
    a, b, c = ds[(3, 0)], ds[(3, 0)], ds[(3, 1)]
    np.testing.assert_array_equal(a.frac, b.frac)
    assert not np.allclose(a.frac, c.frac)
    # A pure translation: all pairwise fractional differences are unchanged (mod 1).
    plain = ds[3]
    d0 = plain.frac[:, None] - plain.frac[None]
    d1 = c.frac[:, None] - c.frac[None]
    np.testing.assert_allclose(((d0 - d1) + 0.5) % 1.0 - 0.5, 0, atol=1e-9)


def test_bucket_sampler_covers_everything_and_pads_little():
    rng = np.random.default_rng(0)
    sizes = rng.integers(17, 500, size=2000)
    sampler = BucketBatchSampler(sizes, 32, seed=1)
    batches = [[i for i, _ in b] for b in sampler]
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(2000))
    padded = sum(len(b) * sizes[b].max() for b in batches)
    rand = sum(len(b) * sizes[b].max() for b in np.array_split(rng.permutation(2000), 63))
    assert padded / sizes.sum() < 1.05 < rand / sizes.sum()


def test_bucket_sampler_seeds_and_epochs():
    sizes = np.arange(300) % 97 + 20
    s1, s2 = BucketBatchSampler(sizes, 16, seed=3), BucketBatchSampler(sizes, 16, seed=3)
    assert list(s1) == list(s2)
    first = list(s1)
    s1.set_epoch(1)
    assert list(s1) != first and all(e == 1 for b in s1 for _, e in b)


def test_bucket_sampler_max_atoms_per_batch():
    sizes = np.random.default_rng(2).integers(20, 300, size=500)
    sampler = BucketBatchSampler(sizes, 64, max_atoms_per_batch=2000)
    for batch in sampler:
        idx = [i for i, _ in batch]
        assert len(idx) == 1 or len(idx) * sizes[idx].max() <= 2000


def test_distributed_shards_are_disjoint_and_equal():
    sizes = np.random.default_rng(4).integers(17, 200, size=1001)
    shards = [list(BucketBatchSampler(sizes, 8, seed=7, num_replicas=3, rank=r)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    seen = [i for s in shards for b in s for i, _ in b]
    assert set(seen) == set(range(1001))
    assert len(seen) - 1001 < 3 * 8  # only the few padding batches repeat


def test_loader_yields_batches(prepared):
    out, _ = prepared
    loader = make_loader(CrystalDataset(out, "train", translate=True), batch_size=16, seed=0)
    batches = list(loader)
    assert all(isinstance(b, CrystalBatch) for b in batches)
    assert sum(b.batch_size for b in batches) == 100
    b = batches[0]
    assert b.frac.dtype == torch.float32 and b.mask.dtype == torch.bool


def test_hash_split_rule():
    # Values from ../shared/data/qmof_index.csv (stable under any filtering).
    assert hash_split("qmof-00019ff") == "train"
    with open(INDEX) as fh:
        next(fh)
        for line in fh:
            cols = line.strip().split(",")
            assert hash_split(cols[0]) == cols[11]


def test_prepare_without_index_uses_hash_rule(tmp_path):
    files = sorted(EXAMPLES.glob("*.cif"))[:6]
    src = tmp_path / "in"
    src.mkdir()
    for f in files:
        (src / f.name).write_bytes(f.read_bytes())
    manifest = prep.prepare_dataset(src, tmp_path / "out", config=prep.PrepareConfig(workers=1),
                                    progress=False)
    assert manifest["splits"]["train"] == 6  # the examples are all train by the hash rule


def test_prepare_resumes_after_interruption(tmp_path, monkeypatch):
    files = sorted(EXAMPLES.glob("*.cif"))[:12]
    src = tmp_path / "in"
    src.mkdir()
    for f in files:
        (src / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(prep, "CHUNK", 4)
    real = prep.iter_sources

    def dying(path):
        for k, item in enumerate(real(path)):
            if k == 9:
                raise KeyboardInterrupt  # killed in the middle of the third chunk
            yield item

    monkeypatch.setattr(prep, "iter_sources", dying)
    cfg = prep.PrepareConfig(workers=1)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare_dataset(src, tmp_path / "out", config=cfg, progress=False)
    assert len(list((tmp_path / "out" / "parts").glob("chunk_*.npz"))) == 2
    monkeypatch.setattr(prep, "iter_sources", real)
    manifest = prep.prepare_dataset(src, tmp_path / "out", config=cfg, progress=False)
    assert manifest["n_accepted"] == 12 and manifest["n_inputs"] == 12
    ids = (tmp_path / "out" / "train_ids.txt").read_text().split()
    assert sorted(ids) == sorted(f.stem for f in files) and len(ids) == len(set(ids))


def test_prepare_on_a_finished_output_redoes_nothing(tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for f in sorted(EXAMPLES.glob("*.cif"))[:3]:
        (src / f.name).write_bytes(f.read_bytes())
    cfg = prep.PrepareConfig(workers=1)
    first = prep.prepare_dataset(src, tmp_path / "out", config=cfg, progress=False)

    def fail(*args, **kwargs):
        raise AssertionError("a finished dataset was processed again")

    monkeypatch.setattr(prep, "_run_chunks", fail)
    again = prep.prepare_dataset(src, tmp_path / "out", config=prep.PrepareConfig(workers=2),
                                 progress=False)
    assert again["n_accepted"] == first["n_accepted"] == 3
    with pytest.raises(prep.UsageError, match="other settings"):
        prep.prepare_dataset(src, tmp_path / "out", config=prep.PrepareConfig(max_atoms=50),
                             progress=False)
