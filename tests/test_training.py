"""Training loop: configs, checkpoints, exact resume, DDP (gloo), reconstruction evaluation."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess

import pytest
import torch

from mofasa.checkpoint import load_autoencoder, load_checkpoint, save_checkpoint
from mofasa.config import ConfigError
from mofasa.data import collate
from mofasa.data.dataset import CrystalDataset
from mofasa.training.autoencoder import load_ae_config, train_autoencoder

from .conftest import ROOT, prepare_examples


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """24 real QMOF structures, prepared (val = train)."""
    return prepare_examples(tmp_path_factory, 24)


def tiny_cfg(data, out, *extra):
    return load_ae_config("tiny", [f"data.path={data}", f"run.out_dir={out}", "run.threads=1",
                                   "optim.total_steps=12", "run.log_every=2", "run.ckpt_every=4",
                                   "run.val_every=6", "data.batch_size=6", *extra])


def read_losses(out):
    with open(out / "metrics.csv", newline="") as fh:
        return [(int(r["step"]), r["split"], r["name"], float(r["value"]))
                for r in csv.DictReader(fh) if r["name"] in ("loss", "type_acc", "coord_rmsd")]


def test_config_overrides_are_type_checked():
    cfg = load_ae_config("tiny", ["optim.lr=1e-4", "model.decoder.depth=3", "data.max_atoms=60"])
    assert cfg.optim.lr == 1e-4 and cfg.model.decoder.depth == 3 and cfg.data.max_atoms == 60
    with pytest.raises(ConfigError, match="unknown"):
        load_ae_config("tiny", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="expected"):
        load_ae_config("tiny", ["data.batch_size=many"])
    with pytest.raises(ConfigError, match="shipped"):
        load_ae_config("no-such-config")
    for name in ("tiny", "small", "base", "large"):
        load_ae_config(name)


def test_checkpoint_round_trip_and_parts(tmp_path):
    payload = {"kind": "x", "w": torch.randn(1000, 100), "config": {"a": 1, "b": [1.0, 2.0]}}
    files = save_checkpoint(payload, tmp_path / "c.pt", max_part_bytes=100_000)
    assert len(files) > 1 and all(f.stat().st_size <= 100_000 for f in files)
    back = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(back["w"], payload["w"]) and back["config"] == payload["config"]
    save_checkpoint(payload, tmp_path / "c.pt")  # single file again: parts removed
    assert (tmp_path / "c.pt").is_file() and not list(tmp_path.glob("c.pt.part*"))


def test_train_save_load_identical_outputs(small_data, tmp_path):
    cfg = tiny_cfg(small_data, tmp_path / "run", "optim.total_steps=4")
    train_autoencoder(cfg, resume=False)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["kind"] == "autoencoder" and ckpt["step"] == 4 and ckpt["vocab"][6] == "C"
    assert int(ckpt["data_stats"]["num_atoms_hist"].sum()) == 24
    model, _ = load_autoencoder(tmp_path / "run" / "checkpoint.pt")
    model2, _ = load_autoencoder(tmp_path / "run" / "checkpoint.pt")
    batch = collate([CrystalDataset(small_data, "train")[i] for i in range(3)])
    with torch.no_grad():
        a, b = model.reconstruct(batch), model2.reconstruct(batch)
    assert torch.equal(a.frac, b.frac) and torch.equal(a.atom_types, b.atom_types)
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    assert json.loads((tmp_path / "run" / "run.json").read_text())["parameters"] > 0


def test_kill_and_resume_gives_the_same_curve(small_data, tmp_path):
    full = tmp_path / "full"
    train_autoencoder(tiny_cfg(small_data, full), resume=False)
    part = tmp_path / "part"
    train_autoencoder(tiny_cfg(small_data, part), resume=False, stop_after=5)
    # "Killed" after step 5: the last checkpoint is step 4 (ckpt_every=4); logs past it go.
    ckpt = load_checkpoint(part / "checkpoint.pt")
    assert ckpt["step"] == 5  # a clean stop also checkpoints
    train_autoencoder(tiny_cfg(small_data, part), resume=True)
    assert read_losses(full) == read_losses(part)
    assert any(split == "val" for _, split, _, _ in read_losses(full))


NEEDS_TORCHRUN = pytest.mark.skipif(
    shutil.which("torchrun") is None and not (ROOT / ".venv/bin/torchrun").exists(),
    reason="torchrun not installed")


def _torchrun_train(family: str, data, out, *overrides: str) -> None:
    """Two gloo processes train ``family`` (tiny config, CPU) into ``out``; must succeed."""
    torchrun = shutil.which("torchrun") or str(ROOT / ".venv/bin/torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "mofasa.cli", "train",
           family, "--config", "tiny", f"data.path={data}", f"run.out_dir={out}",
           "run.log_every=2", "data.batch_size=4", "run.device=cpu", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


@NEEDS_TORCHRUN
@pytest.mark.parametrize("bottleneck", ["kl", "rvq"])
def test_ddp_two_processes_gloo(small_data, tmp_path, bottleneck):
    out = tmp_path / "ddp"
    _torchrun_train("autoencoder", small_data, out, "optim.total_steps=4", "run.ckpt_every=2",
                    f"model.bottleneck.kind={bottleneck}")
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 4
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2
    if bottleneck == "rvq":  # EMA codebooks: all-reduced statistics, finite, in the checkpoint
        books = {k: v for k, v in ckpt["model"].items() if k.endswith("embed")}
        assert books and all(torch.isfinite(v).all() for v in books.values())
        assert any("cluster_size" in k for k in ckpt["model"])


@NEEDS_TORCHRUN
def test_ddp_self_conditioning_coordflow(small_data, tmp_path):
    # half the steps skip the self-conditioning inputs: DDP must not wait for their gradients
    out = tmp_path / "ddp_sc"
    _torchrun_train("coordflow", small_data, out, "optim.total_steps=6", "run.ckpt_every=6",
                    "model.self_condition=true", "probes.every=0")
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 6


def test_reconstruction_command(small_data, tmp_path):
    from mofasa.cli import main

    run = tmp_path / "run"
    train_autoencoder(tiny_cfg(small_data, run, "optim.total_steps=2"), resume=False)
    code = main(["evaluate", "reconstruction", "--checkpoint", str(run / "checkpoint.pt"),
                 "--input", str(small_data), "--split", "train", "--limit", "5",
                 "--out", str(tmp_path / "rec")])
    assert code == 0
    summary = json.loads((tmp_path / "rec" / "summary.json").read_text())
    for key in ("match_rate", "type_accuracy", "coord_rmsd", "n_structures", "by_size"):
        assert key in summary
    assert summary["n_structures"] == 5
    assert len(list((tmp_path / "rec" / "cifs").glob("*.cif"))) == 5
