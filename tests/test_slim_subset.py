"""mofasa.checkpoint.slim (slim carry files) and mofasa.data.subset (prepared-data subsets).

Both used to live in benchmarks/gpu_bench.py; they run on GPU machines without pymatgen, ASE or
spglib, which the first test checks. The checkpoints here are built, not trained: a tiny
autoencoder / diffusion model with live weights and a (different) EMA, plus the optimiser and
RNG entries a training checkpoint has.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch

from mofasa.checkpoint import (
    MAX_PART_BYTES,
    build_diffusion,
    load_autoencoder,
    load_checkpoint,
    load_diffusion,
    save_checkpoint,
)
from mofasa.checkpoint.slim import LAYOUTS, export_slim
from mofasa.config import to_dict
from mofasa.data.dataset import CrystalDataset
from mofasa.data.elements import VOCAB_SYMBOLS
from mofasa.data.subset import subset_dataset
from mofasa.diffusion import DiffusionConfig
from mofasa.models import CrystalAutoencoder, get_preset
from mofasa.models.denoiser import get_denoiser_preset

from .conftest import ROOT, prepare_examples

HIST = torch.tensor([0, 0, 3, 5, 2])  # a training atom-count histogram


def _perturbed(state: dict[str, torch.Tensor], seed: int,
               skip: str | None = None) -> dict[str, torch.Tensor]:
    """A copy of ``state`` with every floating tensor (except under ``skip``) moved a bit."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=gen)
            if v.is_floating_point() and not (skip and k.startswith(skip)) else v.clone()
            for k, v in state.items()}


def _training_extras() -> dict:
    return {"optimizer": {"state": {}, "param_groups": []}, "rng": {"torch": torch.ones(3)},
            "vocab": list(VOCAB_SYMBOLS), "data_stats": {"num_atoms_hist": HIST}, "epoch": 1}


@pytest.fixture(scope="module")
def ae_ckpt(tmp_path_factory):
    """A tiny autoencoder checkpoint (model != EMA) and its parameter names."""
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    model = CrystalAutoencoder(cfg)
    state = model.state_dict()
    path = tmp_path_factory.mktemp("ae") / "checkpoint.pt"
    save_checkpoint({"kind": "autoencoder", "config": {"model": to_dict(cfg)}, "model": state,
                     "ema": _perturbed(state, 1), "step": 3, "cumulative_step": 3,
                     **_training_extras()}, path)
    return path, {n for n, _ in model.named_parameters()}


@pytest.fixture(scope="module")
def diffusion_ckpt(tmp_path_factory):
    """A tiny diffusion checkpoint whose frozen autoencoder is bf16-exact and shared."""
    torch.manual_seed(0)
    ae_cfg = get_preset("tiny")
    den_cfg, diff_cfg = get_denoiser_preset("tiny"), DiffusionConfig()
    model = build_diffusion(den_cfg, diff_cfg, CrystalAutoencoder(ae_cfg), HIST)
    # The frozen part came from a bf16 EMA: exact in bf16, equal in model and EMA.
    state = {k: v.to(torch.bfloat16).float() if k.startswith("autoencoder.")
             and v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("diff") / "checkpoint.pt"
    save_checkpoint({"kind": "diffusion",
                     "config": {"model": to_dict(den_cfg), "diffusion": to_dict(diff_cfg)},
                     "autoencoder": {"config": {"model": to_dict(ae_cfg)}, "source": "ae.pt",
                                     "step": 7},
                     "model": state, "ema": _perturbed(state, 2, skip="autoencoder."),
                     "step": 5, **_training_extras()}, path)
    return path, {n for n, _ in model.named_parameters()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 real QMOF structures, prepared (val = train)."""
    return prepare_examples(tmp_path_factory, 8)


# ----------------------------------------------------------------------- import rule
def test_modules_import_without_optional_packages():
    """GPU machines have torch, numpy and scipy only: blocked imports must not be needed (and
    the slim writer needs no training code)."""
    code = (
        "import sys\n"
        "sys.modules['pymatgen'] = sys.modules['ase'] = sys.modules['spglib'] = None\n"
        "import mofasa.checkpoint.slim, mofasa.data.subset\n"
        "import mofasa.geometry.lattice_torch, mofasa.models.autoencoder\n"
        "bad = sorted(m for m in sys.modules if m.startswith('mofasa.training'))\n"
        "assert not bad, bad  # slim.py may not use the training room\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


# ----------------------------------------------------------------------- slim files
def test_autoencoder_default_layout_in_parts(ae_ckpt, tmp_path):
    src_path, params = ae_ckpt
    info = export_slim(src_path, tmp_path / "slim.pt", max_part_bytes=40_000)
    assert info["layout"] == "model32+ema16" and len(info["files"]) > 1
    assert all(size <= 40_000 for _, size in info["files"])
    assert info["bytes"] == sum(size for _, size in info["files"]) and info["step"] == 3
    parts = sorted(tmp_path.glob("slim.pt.part*"))
    blob = io.BytesIO(b"".join(p.read_bytes() for p in parts))
    slim = torch.load(blob, map_location="cpu", weights_only=True)  # plain tensors only
    src = load_checkpoint(src_path)
    assert "optimizer" not in slim and "rng" not in slim
    assert slim["config"] == src["config"] and slim["vocab"] == src["vocab"]
    assert slim["epoch"] == 1 and torch.equal(slim["data_stats"]["num_atoms_hist"], HIST)
    assert slim["slim"]["layout"] == "model32+ema16" and slim["slim"]["frozen"] is None
    for key, value in src["model"].items():
        assert torch.equal(slim["model"][key], value)  # live weights: fp32, exact
        ema = slim["ema"][key]
        if key in params and value.is_floating_point():
            assert ema.dtype == torch.bfloat16
            assert torch.equal(ema, src["ema"][key].to(torch.bfloat16))
        else:
            assert torch.equal(ema, src["ema"][key])  # buffers keep their precision
    # Still an autoencoder file: live weights exact, EMA weights back in fp32.
    live, _ = load_autoencoder(tmp_path / "slim.pt", ema=False)
    for key, value in live.state_dict().items():
        assert torch.equal(value, src["model"][key])
    ema_model, _ = load_autoencoder(tmp_path / "slim.pt")
    assert next(ema_model.parameters()).dtype == torch.float32


def test_byte_budget_falls_back_then_fails(ae_ckpt, tmp_path):
    src_path, _ = ae_ckpt
    full = export_slim(src_path, tmp_path / "a.pt")
    small = export_slim(src_path, tmp_path / "b.pt", max_bytes=full["bytes"] - 1)
    assert small["layout"] != full["layout"] and small["bytes"] < full["bytes"]
    assert small["tried"][0][0] == full["layout"]  # the requested layout was tried first
    slim = load_checkpoint(tmp_path / "b.pt")
    assert "model" not in slim and "ema" in slim
    with pytest.raises(ValueError, match="fits"):
        export_slim(src_path, tmp_path / "c.pt", max_bytes=1000)
    assert not list(tmp_path.glob("c.pt*"))  # the files that did not fit are removed


def test_every_layout_and_bad_inputs(ae_ckpt, tmp_path):
    src_path, _ = ae_ckpt
    for name, (model_dt, ema_dt) in LAYOUTS.items():
        export_slim(src_path, tmp_path / f"{name}.pt", layout=name)
        slim = load_checkpoint(tmp_path / f"{name}.pt")
        assert ("model" in slim) == (model_dt is not None)
        assert ("ema" in slim) == (ema_dt is not None)
    with pytest.raises(ValueError, match="unknown layout"):
        export_slim(src_path, tmp_path / "x.pt", layout="fp8")
    other = tmp_path / "other.pt"
    save_checkpoint({"kind": "sampler", "model": {}}, other)
    with pytest.raises(ValueError, match="kind"):
        export_slim(other, tmp_path / "y.pt")


def test_diffusion_frozen_autoencoder(diffusion_ckpt, tmp_path):
    src_path, params = diffusion_ckpt
    info = export_slim(src_path, tmp_path / "slim.pt")
    assert info["layout"] == "ema32" and info["frozen_bf16_exact"] is True
    slim = load_checkpoint(tmp_path / "slim.pt")
    src = load_checkpoint(src_path)
    assert "model" not in slim and slim["slim"]["frozen"] == "bf16"
    assert slim["autoencoder"] == src["autoencoder"]
    for key, value in slim["ema"].items():
        frozen = key.startswith("autoencoder.") and key in params and value.is_floating_point()
        want = torch.bfloat16 if frozen else src["ema"][key].dtype
        assert value.dtype == want, key
        assert torch.equal(value.float(), src["ema"][key].float())  # bf16-exact: lossless
    model = load_diffusion(tmp_path / "slim.pt")
    assert torch.equal(model.local_std, src["ema"]["local_std"])
    # With both state dicts the frozen weights are stored once, shared.
    export_slim(src_path, tmp_path / "both.pt", layout="model32+ema32")
    both = load_checkpoint(tmp_path / "both.pt")
    key = next(k for k in both["ema"] if k.startswith("autoencoder.") and k in params)
    assert both["ema"][key].data_ptr() == both["model"][key].data_ptr()


def test_base_autoencoder_slim_parts_fit_the_16mb_limit(tmp_path):
    """Untrained base-size autoencoder (6.4 M parameters): the carry file's parts."""
    torch.manual_seed(0)
    cfg = get_preset("base")
    model = CrystalAutoencoder(cfg)
    state = model.state_dict()
    save_checkpoint({"kind": "autoencoder", "config": {"model": to_dict(cfg)}, "model": state,
                     "ema": {k: v.clone() for k, v in state.items()}, "step": 0},
                    tmp_path / "full.pt")
    info = export_slim(tmp_path / "full.pt", tmp_path / "slim.pt")
    n = sum(p.numel() for p in model.parameters())
    assert len(info["files"]) >= 2 and all(s <= MAX_PART_BYTES for _, s in info["files"])
    assert 6 * n <= info["bytes"] <= 6 * n + 2_000_000  # fp32 model + bf16 EMA + metadata
    assert load_checkpoint(tmp_path / "slim.pt")["slim"]["layout"] == "model32+ema16"


# --------------------------------------------------------------------------- subsets
def test_subset_keeps_small_structures_of_chosen_splits(data, tmp_path):
    full_train = CrystalDataset(data, "train")
    cut = int(sorted(full_train.num_atoms)[3])  # keeps about half
    info = subset_dataset(data, tmp_path / "sub", max_atoms=cut, splits=("train",))
    want = CrystalDataset(data, "train", max_atoms=cut)
    sub = CrystalDataset(tmp_path / "sub", "train")
    assert len(sub) == len(want) == info["splits"]["train"] > 0
    assert len(sub) < len(full_train) and max(sub.num_atoms) <= cut
    for i in range(len(sub)):
        a, b = want[i], sub[i]
        assert a.id == b.id and (a.numbers == b.numbers).all() and (a.frac == b.frac).all()
        assert (a.lattice == b.lattice).all()
    manifest = json.loads((tmp_path / "sub/manifest.json").read_text())
    assert manifest["splits"] == {"train": len(sub)} and "elements" not in manifest
    assert manifest["subset"] == {"source": str(data), "max_atoms": cut, "splits": ["train"]}
    assert not list((tmp_path / "sub").glob("val_*"))  # splits left out are not copied
    assert info["bytes"] == sum(f.stat().st_size for f in (tmp_path / "sub").iterdir())


def test_subset_with_nothing_small_enough(data, tmp_path):
    info = subset_dataset(data, tmp_path / "none", max_atoms=0)
    assert info["splits"] == {"train": 0, "val": 0}
    assert len(CrystalDataset(tmp_path / "none", "val")) == 0
