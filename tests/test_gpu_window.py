"""The GPU-window tooling on CPU: `run.init_from` warm starts, slim carry files (benchmarks/
gpu_bench.py) and a dry run of benchmarks/gpu_window.sh (slow)."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys

import pytest
import torch

from mofasa.checkpoint import MAX_PART_BYTES, load_autoencoder, load_checkpoint, save_checkpoint
from mofasa.config import from_dict, to_dict
from mofasa.data import collate
from mofasa.data.dataset import CrystalDataset
from mofasa.training.autoencoder import (
    AETrainConfig,
    build_autoencoder,
    load_ae_config,
    train_autoencoder,
)
from mofasa.training.loop import Trainer

from .conftest import ROOT, prepare_examples


def _load_gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks/gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_bench = _load_gpu_bench()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 real QMOF structures, prepared (val = train)."""
    return prepare_examples(tmp_path_factory, 8)


@pytest.fixture(scope="module")
def source_run(data, tmp_path_factory):
    """A tiny autoencoder trained 3 steps (model and EMA differ)."""
    out = tmp_path_factory.mktemp("src_run")
    train_autoencoder(cfg(data, out, "optim.total_steps=3"), resume=False)
    return out / "checkpoint.pt"


def cfg(data, out, *extra) -> AETrainConfig:
    return load_ae_config("tiny", [f"data.path={data}", f"run.out_dir={out}", "run.threads=1",
                                   "optim.total_steps=12", "run.log_every=1", "run.ckpt_every=100",
                                   "run.val_every=100", "data.batch_size=4", *extra])


def reconstruct(model, data):
    batch = collate([CrystalDataset(data, "train")[i] for i in range(3)])
    with torch.no_grad():
        return model.eval().reconstruct(batch)


def same_outputs(a, b) -> bool:
    return torch.equal(a.frac, b.frac) and torch.equal(a.atom_types, b.atom_types) and \
        torch.equal(a.lattice, b.lattice)


def make_trainer(c: AETrainConfig) -> Trainer:
    torch.manual_seed(123)  # other initial weights than the source run's
    return Trainer(build_autoencoder(c.model), kind="autoencoder", config=to_dict(c),
                   data=c.data, optim=c.optim, run=c.run)


def test_warm_start_reproduces_source_then_trains_on(data, source_run, tmp_path):
    src = load_checkpoint(source_run)
    c = cfg(data, tmp_path / "warm", f"run.init_from={source_run}")
    trainer = make_trainer(c)
    info = trainer.warm_start(source_run)
    assert info["step"] == 3 and trainer.step == 0 and trainer.prior_steps == 3
    assert not trainer.optimizer.state  # fresh optimiser
    for key, value in src["model"].items():
        assert torch.equal(trainer.model.state_dict()[key], value), key
    live, _ = load_autoencoder(source_run, ema=False)
    ema, _ = load_autoencoder(source_run, ema=True)
    assert same_outputs(reconstruct(trainer.model, data), reconstruct(live, data))
    assert same_outputs(reconstruct(trainer.ema, data), reconstruct(ema, data))
    assert not same_outputs(reconstruct(live, data), reconstruct(ema, data))  # a real check

    # Through the public path: fit() warm-starts a fresh run, trains on from step 0.
    train_autoencoder(c, stop_after=2)
    out = load_checkpoint(tmp_path / "warm" / "checkpoint.pt")
    assert out["step"] == 2 and out["cumulative_step"] == 5
    assert out["init_from"] == {"path": str(source_run), "step": 3, "cumulative_step": 3}
    assert any(not torch.equal(out["model"][k], v) for k, v in src["model"].items())
    # Resuming that run restores it; the warm start is not applied a second time.
    train_autoencoder(cfg(data, tmp_path / "warm", f"run.init_from={source_run}"),
                      stop_after=1)
    again = load_checkpoint(tmp_path / "warm" / "checkpoint.pt")
    assert again["step"] == 3 and again["cumulative_step"] == 6


def test_warm_start_keep_step_and_wrong_kind(data, source_run, tmp_path):
    trainer = make_trainer(cfg(data, tmp_path / "k", "run.init_keep_step=true"))
    trainer.warm_start(source_run)
    assert trainer.step == 3 and trainer.prior_steps == 0
    other = tmp_path / "other.pt"
    save_checkpoint({"kind": "diffusion", "model": {}}, other)
    with pytest.raises(ValueError, match="kind"):
        trainer.warm_start(other)


def test_slim_export_loads_weights_only_and_warm_starts(data, source_run, tmp_path):
    info = gpu_bench.export_slim(source_run, tmp_path / "slim.pt", max_part_bytes=40_000)
    assert info["layout"] == "model32+ema16" and len(info["files"]) > 1
    assert all(size <= 40_000 for _, size in info["files"])
    parts = sorted(tmp_path.glob("slim.pt.part*"))
    blob = io.BytesIO(b"".join(p.read_bytes() for p in parts))
    slim = torch.load(blob, map_location="cpu", weights_only=True)
    src = load_checkpoint(source_run)
    assert "optimizer" not in slim and "rng" not in slim
    assert slim["config"] == src["config"] and slim["vocab"] == src["vocab"]
    assert torch.equal(slim["data_stats"]["num_atoms_hist"], src["data_stats"]["num_atoms_hist"])
    params = {n for n, _ in build_autoencoder(
        from_dict(AETrainConfig, src["config"]).model).named_parameters()}
    for key, value in src["model"].items():
        assert torch.equal(slim["model"][key], value)  # live weights: fp32, exact
        ema = slim["ema"][key]
        if key in params and value.is_floating_point():
            assert ema.dtype == torch.bfloat16
            assert torch.equal(ema, src["ema"][key].to(torch.bfloat16))
        else:
            assert torch.equal(ema, src["ema"][key])  # buffers keep their precision

    trainer = make_trainer(cfg(data, tmp_path / "from_slim"))
    trainer.warm_start(tmp_path / "slim.pt")
    live, _ = load_autoencoder(source_run, ema=False)
    assert same_outputs(reconstruct(trainer.model, data), reconstruct(live, data))
    # The slim autoencoder also serves as an autoencoder file (bf16 EMA weights).
    model, _ = load_autoencoder(tmp_path / "slim.pt")
    assert next(model.parameters()).dtype == torch.float32


def test_slim_export_ema_only_and_byte_budget(source_run, tmp_path):
    full = gpu_bench.export_slim(source_run, tmp_path / "a.pt")
    small = gpu_bench.export_slim(source_run, tmp_path / "b.pt", max_bytes=full["bytes"] - 1)
    assert small["layout"] != full["layout"] and small["bytes"] < full["bytes"]
    slim = load_checkpoint(tmp_path / "b.pt")
    assert "model" not in slim and "ema" in slim
    with pytest.raises(ValueError, match="fits"):
        gpu_bench.export_slim(source_run, tmp_path / "c.pt", max_bytes=1000)


def test_base_autoencoder_slim_parts_fit_the_16mb_limit(tmp_path):
    """Untrained base-size autoencoder (6.4 M parameters): the carry file's parts."""
    c = load_ae_config("base")
    torch.manual_seed(0)
    model = build_autoencoder(c.model)
    state = model.state_dict()
    save_checkpoint({"kind": "autoencoder", "config": to_dict(c), "model": state,
                     "ema": {k: v.clone() for k, v in state.items()}, "step": 0},
                    tmp_path / "full.pt")
    info = gpu_bench.export_slim(tmp_path / "full.pt", tmp_path / "slim.pt")
    n = sum(p.numel() for p in model.parameters())
    assert len(info["files"]) >= 2 and all(s <= MAX_PART_BYTES for _, s in info["files"])
    assert 6 * n <= info["bytes"] <= 6 * n + 2_000_000  # fp32 model + bf16 EMA + metadata
    assert load_checkpoint(tmp_path / "slim.pt")["slim"]["layout"] == "model32+ema16"


def test_subset_and_budget(data, tmp_path):
    cut = int(sorted(CrystalDataset(data, "train").num_atoms)[3])  # keeps about half
    info = gpu_bench.subset_dataset(data, tmp_path / "sub", max_atoms=cut)
    full = CrystalDataset(data, "train", max_atoms=cut)
    sub = CrystalDataset(tmp_path / "sub", "train")
    assert len(sub) == len(full) == info["splits"]["train"] > 0
    a, b = full[len(full) - 1], sub[len(sub) - 1]
    assert a.id == b.id and (a.numbers == b.numbers).all() and (a.frac == b.frac).all()
    budget = gpu_bench.carry_budget(ROOT, [str(tmp_path / "sub")])
    assert 0 < budget["checkpoint_budget_bytes"] < 64 * 2**20


@pytest.mark.slow
def test_window_script_dry_run(tmp_path):
    """The whole window on CPU (tiny configs, prepared/example), pymatgen / ase blocked."""
    if not (ROOT / "prepared/example/manifest.json").is_file():
        pytest.skip("prepared/example missing (mofasa data prepare --input examples/qmof_cifs)")
    env = {**os.environ, "OUT": str(tmp_path / "out"), "GPU_WINDOW_DRY": "1",
           "GPU_CARRY_DIR": str(tmp_path / "carry"), "GPU_PYTHON": sys.executable,
           "GPU_BENCH": "memory", "GPU_TRAIN_SECONDS": "20"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_window.sh"), "ae-base"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "out/results.json").read_text())
    assert results["check"]["ok"] and results["carry"]["layout"] == "model32+ema16"
    assert load_checkpoint(tmp_path / "out/ae_base/slim.pt")["kind"] == "autoencoder"
    assert len([p for p in (tmp_path / "out").rglob("*") if p.is_file()]) <= 8
