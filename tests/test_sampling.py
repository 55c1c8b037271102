"""End to end: tiny autoencoder -> tiny diffusion -> checkpoint -> samples, CLI, resume.

One module fixture prepares 16 example QMOF structures and trains a tiny autoencoder and a tiny
diffusion model for a few steps each (seconds on CPU); every test samples a handful of small
structures with a few steps.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from mofasa.checkpoint import export_diffusion, load_checkpoint, load_diffusion, save_checkpoint
from mofasa.checkpoint import models as checkpoint_models
from mofasa.cli import main
from mofasa.data.prepare import PrepareConfig, prepare_dataset
from mofasa.sampling import SampleSettings, sample
from mofasa.sampling import store as sampling_store
from mofasa.sampling.settings import AtomRangeWarning, SampleSettingsError
from mofasa.sampling.store import done_indices
from mofasa.training.autoencoder import load_ae_config, train_autoencoder
from mofasa.training.diffusion import load_diffusion_config, train_diffusion

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


def run_sample_cli(*argv: str) -> int:
    return main(["sample", *argv])


def write_samples(out, model, num, **kw):
    progress = kw.pop("progress", False)
    return sampling_store.write_samples(out, SampleSettings(model=str(model), num=num, **kw),
                                        progress=progress)


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
    fixed = sample(str(dm_path), num=2, atoms=30, steps=2, seed=0, device="cpu",
                   sampler="ddpm")
    assert [c.num_atoms for c in fixed] == [30, 30] and fixed[0].metadata["sampler"] == "ddpm"


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
    assert [kv["index"] for kv, _ in rows] == [0, 1, 2, 3]  # rewritten in index order
    for kv, atoms in rows:
        assert kv["model"] == str(dm_path) and kv["seed"] == 3 and kv["steps"] == 3
        assert kv["n_atoms"] == len(atoms) and kv["name"] == f"sample_{kv['index']:06d}"
        assert atoms.pbc.all() and atoms.cell.volume > 0
    from mofasa.data import read_cif

    back = read_cif(cifs[0])
    assert back.num_atoms == rows[[kv["index"] for kv, _ in rows].index(0)][0]["n_atoms"]
    # other settings in the same folder are refused
    with pytest.raises(SampleSettingsError, match="other settings"):
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
    monkeypatch.setitem(sys.modules, "mofasa.evaluation.compat", None)  # evaluator absent
    code = run_sample_cli("--model", str(dm_path), "--num", "2", "--steps", "2", "--atoms-from",
                          str(data), "--device", "cpu", "--out", str(tmp_path / "o"),
                          "--no-progress", "--evaluate")
    assert code == 2  # the samples are written, then the missing extra is named with its hint
    captured = capsys.readouterr()
    assert "install_eval.sh" in captured.err and captured.err.count("\n") == 1
    assert json.loads(captured.out[: captured.out.rindex("}") + 1])["written"] == 2
    with pytest.raises(SystemExit):  # --atoms and --atoms-from exclude each other
        main(["sample", "--out", "x", "--atoms", "3", "--atoms-from", "d"])


def test_default_model_error_is_clear(monkeypatch, tmp_path):
    monkeypatch.setattr(checkpoint_models, "default_model_path", lambda: (_ for _ in ()).throw(
        FileNotFoundError("no default model is bundled with this mofasa")))
    with pytest.raises(FileNotFoundError, match="no default model is bundled"):
        sample("default", num=1)
    assert run_sample_cli("--out", str(tmp_path / "o"), "--num", "1", "--no-progress") == 2


def test_train_diffusion_cli_resumes_from_its_checkpoint(trained, tmp_path):
    data, _, dm_path = trained
    run = tmp_path / "dm"
    shutil.copytree(dm_path.parent, run)
    assert main(["train", "diffusion", "--config", "tiny", f"data.path={data}",
                 f"run.out_dir={run}", "optim.total_steps=5", *FAST]) == 0  # no --autoencoder
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["step"] == 5
    before = load_checkpoint(dm_path)
    assert torch.equal(ckpt["latent_stats"]["local_mean"], before["latent_stats"]["local_mean"])
    from mofasa.config import ConfigError

    cfg = load_diffusion_config("tiny", [f"data.path={data}", f"run.out_dir={tmp_path / 'n'}",
                                         "autoencoder=''"])
    with pytest.raises(ConfigError, match="autoencoder"):
        train_diffusion(cfg, None, resume=False)


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


@pytest.mark.parametrize("argv, message", [
    (["--atoms", "0"], "atoms must be >= 1"),
    (["--steps", "-3"], "steps must be >= 1"),
    (["--steps", "0"], "steps must be >= 1"),
    (["--refine", "-1"], "refine must be >= 0"),
    (["--restarts", "-2"], "restarts must be >= 0"),
    (["--device", "banana"], "unknown device 'banana'"),
    (["--guidance", "2"], "needs a condition"),
    (["--num", "-1"], "num must be >= 0"),
    (["--batch-size", "0"], "batch size must be >= 1"),
    (["--atoms-from", "/nonexistent"], "neither 'data' nor a prepared dataset"),
])
def test_sample_cli_rejects_bad_settings_before_any_work(trained, tmp_path, capsys, argv,
                                                         message):
    _, _, dm_path = trained
    out = tmp_path / "o"
    code = run_sample_cli("--model", str(dm_path), "--num", "2", "--out", str(out),
                          "--no-progress", *argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert "Traceback" not in err and not out.exists()  # nothing left behind


def test_corrected_rerun_after_a_rejected_one_runs(trained, tmp_path):
    _, _, dm_path = trained
    out = tmp_path / "o"
    common = ["--model", str(dm_path), "--num", "2", "--steps", "2", "--device", "cpu",
              "--out", str(out), "--no-progress"]
    assert run_sample_cli(*common, "--atoms", "0") == 2
    assert run_sample_cli(*common, "--atoms", "30") == 0
    assert json.loads((out / "settings.json").read_text())["identity"]["atoms"] == 30


def test_corrector_steps_need_a_coordinate_family_model(trained):
    from mofasa.sampling.settings import SampleSettingsError

    _, _, dm_path = trained
    with pytest.raises(SampleSettingsError, match="coordinate-family"):
        sample(str(dm_path), num=1, steps=2, refine=2, device="cpu")
    with pytest.raises(SampleSettingsError, match="coordinate-family"):
        sample(str(dm_path), num=1, steps=2, restarts=1, device="cpu")
    assert len(sample(str(dm_path), num=1, steps=2, refine=0, device="cpu")) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_sample_cli_refuses_cuda_without_cuda(trained, tmp_path, capsys):
    _, _, dm_path = trained
    code = run_sample_cli("--model", str(dm_path), "--out", str(tmp_path / "o"), "--device",
                          "cuda", "--no-progress")
    assert code == 2 and "CUDA is not available" in capsys.readouterr().err


def test_atom_counts_outside_the_trained_range_warn(trained, tmp_path, capsys):
    _, _, dm_path = trained
    lo_hi = load_diffusion(dm_path).num_atoms_hist.nonzero().flatten()
    big = int(lo_hi.max()) + 50
    code = run_sample_cli("--model", str(dm_path), "--num", "1", "--steps", "1", "--atoms",
                          str(big), "--device", "cpu", "--out", str(tmp_path / "o"),
                          "--no-progress")
    err = capsys.readouterr().err
    assert code == 0
    assert f"sampling {big} atoms, but the model was trained on {int(lo_hi.min())}-" in err
    with pytest.warns(AtomRangeWarning):
        sample(str(dm_path), num=1, steps=1, atoms=big, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", AtomRangeWarning)  # inside the range: silent
        sample(str(dm_path), num=1, steps=1, atoms=int(lo_hi.min()), device="cpu")


def test_settings_and_provenance_are_recorded(trained, tmp_path):
    from ase.db import connect

    _, _, dm_path = trained
    out = tmp_path / "o"
    write_samples(out, dm_path, 3, steps=2, seed=5, device="cpu", batch_size=2)
    db = connect(str(out / "samples.db"))
    assert db.metadata["model"] == str(dm_path) and db.metadata["settings"]["seed"] == 5
    rows = list(db.select())
    assert [r.key_value_pairs["index"] for r in rows] == [0, 1, 2]
    assert all(r.key_value_pairs["steps"] == 2 and r.cell_ok for r in rows)
    text = (out / "cifs" / "sample_000001.cif").read_text()
    assert "_mofasa_seed" in text and "_mofasa_index" in text
    from pymatgen.core import Structure

    s = Structure.from_file(str(out / "cifs" / "sample_000001.cif"))
    assert s.volume > 0 and len(s) == rows[1].natoms


def test_degenerate_decoded_cell_is_recorded_not_written(trained, tmp_path, monkeypatch):
    _, _, dm_path = trained
    real = sampling_store.iter_samples

    def flat_first(*args, **kw):
        for crystals in real(*args, **kw):
            for c in crystals:
                if c.metadata["index"] == 0:
                    c.lattice = c.lattice.copy()
                    c.lattice[2] = c.lattice[0]  # a flat cell: zero volume
            yield crystals

    monkeypatch.setattr(sampling_store, "iter_samples", flat_first)
    summary = write_samples(tmp_path / "o", dm_path, 2, steps=2, device="cpu")
    assert summary["degenerate"] == 1
    rows = read_db(tmp_path / "o" / "samples.db")
    assert rows[0][0]["cell_ok"] is False and "degenerate cell" in rows[0][0]["cell_error"]
    assert rows[1][0]["cell_ok"] is True
    assert not (tmp_path / "o" / "cifs" / "sample_000000.cif").exists()
    assert (tmp_path / "o" / "cifs" / "sample_000001.cif").exists()


def test_sampling_the_default_model_never_imports_training():
    code = ("import sys, mofasa\n"
            "mofasa.sample(model='default', num=1, seed=0)\n"
            "bad = [m for m in sys.modules if m.startswith('mofasa.training')]\n"
            "assert not bad, bad\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
