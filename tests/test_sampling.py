"""End to end: tiny autoencoder -> tiny diffusion -> checkpoint -> samples, CLI, resume.

One module fixture prepares 16 example QMOF structures and trains a tiny autoencoder and a tiny
diffusion model for a few steps each (seconds on CPU); every test samples a handful of small
structures with a few steps.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys

import numpy as np
import pytest
import torch

from mofasa.data.prepare import PrepareConfig, prepare_dataset
from mofasa.sampling import api as sampling_api
from mofasa.sampling import sample, write_samples
from mofasa.sampling import store as sampling_store
from mofasa.sampling.cli import add_sample_parser, add_train_diffusion_parser
from mofasa.sampling.store import SamplingSettingsError, done_indices
from mofasa.training.autoencoder import load_ae_config, train_autoencoder
from mofasa.training.checkpoint import load_checkpoint, save_checkpoint
from mofasa.training.diffusion import (
    export_diffusion,
    load_diffusion,
    load_diffusion_config,
    train_diffusion,
)

from .conftest import EXAMPLES

FAST = ["run.threads=1", "run.log_every=2", "run.ckpt_every=100", "run.val_every=100",
        "data.batch_size=8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(prepared data, autoencoder checkpoint, diffusion checkpoint) of tiny models."""
    root = tmp_path_factory.mktemp("e2e")
    src = root / "cifs"
    src.mkdir()
    smallest = sorted(EXAMPLES.glob("*.cif"), key=lambda f: (f.stat().st_size, f.name))[:16]
    for f in smallest:
        shutil.copy(f, src / f.name)
    data = root / "prepared"
    prepare_dataset(src, data, config=PrepareConfig(workers=1), progress=False)
    ae_cfg = load_ae_config("tiny", [f"data.path={data}", f"run.out_dir={root / 'ae'}",
                                     "optim.total_steps=3", *FAST])
    train_autoencoder(ae_cfg, resume=False)
    cfg = load_diffusion_config("tiny", [f"data.path={data}", f"run.out_dir={root / 'dm'}",
                                         "optim.total_steps=3", "diffusion.steps=4", *FAST])
    train_diffusion(cfg, root / "ae" / "checkpoint.pt", resume=False)
    return data, root / "ae" / "checkpoint.pt", root / "dm" / "checkpoint.pt"


def sample_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mofasa")
    add_sample_parser(parser.add_subparsers(dest="command"))
    return parser


def run_sample_cli(*argv: str) -> int:
    args = sample_parser().parse_args(["sample", *argv])
    return args.func(args)


def read_db(path):
    from ase.db import connect

    return [(row.key_value_pairs, row.toatoms()) for row in connect(str(path)).select()]


# --------------------------------------------------------------------------------------------


def test_diffusion_checkpoint_is_self_contained(trained):
    _, ae_path, dm_path = trained
    ckpt = load_checkpoint(dm_path)
    assert ckpt["kind"] == "diffusion" and ckpt["step"] == 3
    assert ckpt["autoencoder"]["source"] == str(ae_path)
    assert ckpt["config"]["model"]["latent_dim"] == 8  # resolved from the autoencoder
    assert any(k.startswith("autoencoder.") for k in ckpt["ema"])  # weights embedded
    assert int(ckpt["data_stats"]["num_atoms_hist"].sum()) == 16
    stats = ckpt["latent_stats"]
    assert stats["local_std"].shape == (8,) and (stats["local_std"] > 0).all()
    assert torch.equal(ckpt["ema"]["local_std"], stats["local_std"])
    hidden = ae_path.rename(ae_path.with_name("moved.pt"))  # loads without the autoencoder file
    try:
        model = load_diffusion(dm_path)
    finally:
        hidden.rename(ae_path)
    assert model.num_atoms_hist.sum() == 16 and not model.training


def test_save_load_gives_identical_samples(trained):
    _, _, dm_path = trained
    a = sample(str(dm_path), num=3, steps=3, seed=7, device="cpu")
    b = sample(load_diffusion(dm_path), num=3, steps=3, seed=7, device="cpu")
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.numbers, y.numbers) and np.array_equal(x.frac, y.frac)
        assert np.array_equal(x.lattice, y.lattice)
    # sizes come from the training histogram; structure i depends on (seed, i) only
    hist = load_diffusion(dm_path).num_atoms_hist
    assert all(hist[c.num_atoms] > 0 for c in a)
    one_by_one = sample(str(dm_path), num=3, steps=3, seed=7, device="cpu", batch_size=1)
    for x, y in zip(a, one_by_one, strict=True):
        assert np.array_equal(x.numbers, y.numbers)
        assert np.allclose(x.frac, y.frac, atol=1e-4)
    other = sample(str(dm_path), num=3, steps=3, seed=8, device="cpu")
    assert any(x.num_atoms != y.num_atoms or not np.allclose(x.frac, y.frac)
               for x, y in zip(a, other, strict=True))
    fixed = sample(str(dm_path), num=2, atoms=5, steps=2, seed=0, device="cpu",
                   sampler="ddpm")
    assert [c.num_atoms for c in fixed] == [5, 5] and fixed[0].metadata["sampler"] == "ddpm"


def test_sample_cli_writes_cifs_and_database(trained, tmp_path):
    _, _, dm_path = trained
    out = tmp_path / "samples"
    code = run_sample_cli("--model", str(dm_path), "--num", "4", "--steps", "3", "--seed", "3",
                          "--batch-size", "2", "--device", "cpu", "--out", str(out),
                          "--no-progress")
    assert code == 0
    cifs = sorted((out / "cifs").glob("*.cif"))
    assert [c.stem for c in cifs] == [f"sample_{i:06d}" for i in range(4)]
    rows = read_db(out / "samples.db")
    assert sorted(kv["index"] for kv, _ in rows) == [0, 1, 2, 3]
    for kv, atoms in rows:
        assert kv["model"] == str(dm_path) and kv["seed"] == 3 and kv["steps"] == 3
        assert kv["n_atoms"] == len(atoms) and kv["name"] == f"sample_{kv['index']:06d}"
        assert atoms.pbc.all() and atoms.cell.volume > 0
    from mofasa.data import read_cif

    back = read_cif(cifs[0])
    assert back.num_atoms == rows[[kv["index"] for kv, _ in rows].index(0)][0]["n_atoms"]
    # other settings in the same folder are refused
    with pytest.raises(SamplingSettingsError, match="other settings"):
        write_samples(out, str(dm_path), 4, steps=3, seed=4, device="cpu", progress=False)
    code = run_sample_cli("--model", str(dm_path), "--num", "4", "--steps", "3", "--seed", "4",
                          "--out", str(out), "--no-progress", "--device", "cpu")
    assert code == 2


def test_killed_sampling_run_resumes_without_duplicates(trained, tmp_path, monkeypatch):
    _, _, dm_path = trained
    kwargs = {"steps": 3, "seed": 1, "batch_size": 2, "device": "cpu", "progress": False,
              "atoms_from": "data"}
    full = write_samples(tmp_path / "full", str(dm_path), 5, **kwargs)
    assert full["written"] == 5
    real = sampling_store.iter_samples

    def dies_after_first_batch(*args, **kw):
        gen = real(*args, **kw)
        yield next(gen)
        raise KeyboardInterrupt

    monkeypatch.setattr(sampling_store, "iter_samples", dies_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        write_samples(tmp_path / "part", str(dm_path), 5, **kwargs)
    monkeypatch.setattr(sampling_store, "iter_samples", real)
    assert len(done_indices(tmp_path / "part" / "samples.db")) == 2
    again = write_samples(tmp_path / "part", str(dm_path), 5, **kwargs)
    assert again["written"] == 3 and again["skipped"] == 2
    assert write_samples(tmp_path / "part", str(dm_path), 5, **kwargs)["written"] == 0
    rows = {kv["index"]: atoms for kv, atoms in read_db(tmp_path / "part" / "samples.db")}
    ref = {kv["index"]: atoms for kv, atoms in read_db(tmp_path / "full" / "samples.db")}
    assert len(read_db(tmp_path / "part" / "samples.db")) == 5 and sorted(rows) == list(range(5))
    for i in range(5):  # the resumed run wrote the same structures as the uninterrupted one
        assert (rows[i].numbers == ref[i].numbers).all()
        assert np.allclose(rows[i].get_scaled_positions(), ref[i].get_scaled_positions(),
                           atol=1e-4)
    assert len(list((tmp_path / "part" / "cifs").glob("*.cif"))) == 5
    assert not list((tmp_path / "part" / "cifs").glob("*.tmp"))


def test_atoms_from_dataset_and_evaluate_flag(trained, tmp_path, monkeypatch, capsys):
    data, _, dm_path = trained
    monkeypatch.setitem(sys.modules, "mofasa.evaluation", None)  # evaluator absent
    code = run_sample_cli("--model", str(dm_path), "--num", "2", "--steps", "2", "--atoms-from",
                          str(data), "--device", "cpu", "--out", str(tmp_path / "o"),
                          "--no-progress", "--evaluate")
    assert code == 0
    captured = capsys.readouterr().out
    assert "evaluation is not installed" in captured
    assert json.loads(captured[: captured.rindex("}") + 1])["written"] == 2
    with pytest.raises(SystemExit):  # --atoms and --atoms-from exclude each other
        sample_parser().parse_args(["sample", "--out", "x", "--atoms", "3", "--atoms-from", "d"])


def test_default_model_error_is_clear(monkeypatch, tmp_path):
    monkeypatch.setattr(sampling_api, "DEFAULT_MODEL_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="no default model is bundled"):
        sample("default", num=1)
    assert run_sample_cli("--out", str(tmp_path / "o"), "--num", "1", "--no-progress") == 2


def test_train_diffusion_cli_resumes_from_its_checkpoint(trained, tmp_path):
    data, _, dm_path = trained
    run = tmp_path / "dm"
    shutil.copytree(dm_path.parent, run)
    parser = argparse.ArgumentParser(prog="mofasa")
    add_train_diffusion_parser(parser.add_subparsers(dest="kind"))
    args = parser.parse_args(["diffusion", "--config", "tiny", f"data.path={data}",
                              f"run.out_dir={run}", "optim.total_steps=5", *FAST])
    assert args.func(args) == 0  # no --autoencoder: the checkpoint embeds it
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["step"] == 5
    before = load_checkpoint(dm_path)
    assert torch.equal(ckpt["latent_stats"]["local_mean"], before["latent_stats"]["local_mean"])
    fresh = parser.parse_args(["diffusion", "--config", "tiny", f"data.path={data}",
                               f"run.out_dir={tmp_path / 'none'}", "autoencoder=", "--no-resume"])
    from mofasa.training.config import ConfigError

    with pytest.raises(ConfigError, match="autoencoder"):
        fresh.func(fresh)


def test_export_for_bundling(trained, tmp_path):
    _, _, dm_path = trained
    full = export_diffusion(dm_path, tmp_path / "fp32.pt", bf16=False)
    small = export_diffusion(dm_path, tmp_path / "bf16.pt")
    assert small.stat().st_size < full.stat().st_size < dm_path.stat().st_size
    ckpt = load_checkpoint(full)
    assert "optimizer" not in ckpt and ckpt["dropped_keys"]
    assert not any(k.startswith("autoencoder.encoder.") for k in ckpt["ema"])
    a = sample(str(dm_path), num=2, steps=2, seed=0, device="cpu")
    b = sample(str(full), num=2, steps=2, seed=0, device="cpu")
    c = sample(str(small), num=2, steps=2, seed=0, device="cpu")
    assert all(np.array_equal(x.frac, y.frac) for x, y in zip(a, b, strict=True))
    assert [x.num_atoms for x in a] == [x.num_atoms for x in c]
    assert load_diffusion(small).checkpoint_info["can_encode"] is False


def test_export_with_a_fine_tuned_decoder(trained, tmp_path):
    data, ae_path, dm_path = trained
    # the deployed recipe: start from the EMA weights, freeze the encoder, noise the latents
    ckpt = load_checkpoint(ae_path)
    ckpt["model"] = {k: v.clone() for k, v in ckpt["ema"].items()}
    save_checkpoint(ckpt, tmp_path / "ft" / "checkpoint.pt")
    cfg = load_ae_config("tiny", [f"data.path={data}", f"run.out_dir={tmp_path / 'ft'}",
                                  "optim.total_steps=6", "model.freeze_encoder=true",
                                  "model.decoder_noise=0.3", *FAST])
    train_autoencoder(cfg, resume=True)
    out = export_diffusion(dm_path, tmp_path / "ft.pt", bf16=False, drop_encoder=False,
                           decoder_from=tmp_path / "ft" / "checkpoint.pt")
    exported = load_checkpoint(out)["ema"]
    tuned = load_checkpoint(tmp_path / "ft" / "checkpoint.pt")["ema"]
    orig = load_checkpoint(dm_path)["ema"]
    dec = [k for k in tuned if k.startswith("decoder.")]
    assert dec and all(torch.equal(exported[f"autoencoder.{k}"], tuned[k]) for k in dec)
    assert any(not torch.equal(orig[f"autoencoder.{k}"], tuned[k]) for k in dec)
    enc = [k for k in tuned if k.startswith("encoder.")]
    assert all(torch.equal(exported[f"autoencoder.{k}"], orig[f"autoencoder.{k}"]) for k in enc)
    assert load_checkpoint(out)["autoencoder"]["decoder_source"]["step"] == 6
    assert len(sample(str(out), num=2, steps=2, seed=0, device="cpu")) == 2
    # a decoder whose encoder moved is refused: its latents are not the denoiser's
    train_autoencoder(load_ae_config("tiny", [f"data.path={data}",
                                              f"run.out_dir={tmp_path / 'moved'}",
                                              "optim.total_steps=2", *FAST]), resume=False)
    with pytest.raises(ValueError, match="encoder weight"):
        export_diffusion(dm_path, tmp_path / "bad.pt", decoder_from=tmp_path / "moved" /
                         "checkpoint.pt")


def test_latent_diagnostics_benchmark_runs(trained):
    """benchmarks/latent_diagnostics.py end to end on the tiny model (a smoke test: the probes'
    shapes and the no-denoising reference sigma / alpha, not the tiny model's quality)."""
    import subprocess
    from pathlib import Path

    data, _, dm_path = trained
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "latent_diagnostics.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--model", str(dm_path), "--data", str(data),
         "--split", "train", "--structures", "3", "--samples", "2"],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["structures"] == 3
    assert set(out["decoder_noise_bonded"]) == {"0.0", "0.1", "0.2", "0.3", "0.5"}
    for row in out["denoiser"]:
        assert np.isfinite(row["x0_rmse"])
        # variance preserving: alpha = sqrt(1 - sigma^2)
        ref = row["sigma"] / np.sqrt(1.0 - row["sigma"] ** 2)
        assert row["no_denoising"] == pytest.approx(ref, abs=2e-3)
    assert [r["t"] for r in out["denoiser"]] == sorted(r["t"] for r in out["denoiser"])
    assert set(out["sdedit_bonded"]) == {"0.1", "0.2", "0.4"}
    assert [r["t"] for r in out["context"]] == [0.1, 0.3, 0.5]
    assert all(np.isfinite(r["x0_rmse_context_destroyed"]) for r in out["context"])
    assert 0.0 <= out["random_latent_floor"] <= 1.0
    assert out["samples"]["num"] == 2 and 0.0 <= out["samples"]["bonded_atom_share"] <= 1.0
