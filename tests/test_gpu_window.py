"""The GPU-window tooling on CPU: `run.init_from` warm starts (also from slim carry files),
benchmarks/gpu_bench.py's subcommands and a dry run of benchmarks/gpu_window.sh (slow).

The slim writer and the dataset subsetting themselves are tested in test_slim_subset.py."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from mofasa.checkpoint import load_autoencoder, load_checkpoint, save_checkpoint
from mofasa.checkpoint.slim import export_slim
from mofasa.config import to_dict
from mofasa.data import collate
from mofasa.data.dataset import CrystalDataset
from mofasa.data.subset import subset_dataset
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


def test_warm_start_from_a_slim_file(data, source_run, tmp_path):
    export_slim(source_run, tmp_path / "slim.pt", max_part_bytes=40_000)  # in parts
    trainer = make_trainer(cfg(data, tmp_path / "from_slim"))
    trainer.warm_start(tmp_path / "slim.pt")
    live, _ = load_autoencoder(source_run, ema=False)
    assert same_outputs(reconstruct(trainer.model, data), reconstruct(live, data))


def test_bench_subcommands_call_the_package(data, source_run, tmp_path):
    """gpu_bench's export / subset subcommands (what gpu_window.sh runs) and the budget."""
    assert gpu_bench.main(["export", str(source_run), str(tmp_path / "slim.pt"),
                           "--layout", "ema16", "--out", str(tmp_path / "export.json")]) == 0
    info = json.loads((tmp_path / "export.json").read_text())
    assert info["layout"] == "ema16" and info["carry_budget"] is None
    assert load_checkpoint(tmp_path / "slim.pt")["slim"]["layout"] == "ema16"
    with pytest.raises(SystemExit) as exc:  # argparse rejects an unknown layout up front
        gpu_bench.main(["export", str(source_run), str(tmp_path / "x.pt"), "--layout", "fp8"])
    assert exc.value.code == 2 and not list(tmp_path.glob("x.pt*"))
    cut = int(sorted(CrystalDataset(data, "train").num_atoms)[3])  # keeps about half
    assert gpu_bench.main(["subset", str(data), str(tmp_path / "sub"), "--max-atoms", str(cut),
                           "--out", str(tmp_path / "subset.json")]) == 0
    expected = subset_dataset(data, tmp_path / "sub2", max_atoms=cut)["splits"]
    assert json.loads((tmp_path / "subset.json").read_text())["splits"] == expected
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
