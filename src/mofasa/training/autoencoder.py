"""`mofasa train autoencoder`: config, data statistics, model construction, training."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mofasa.checkpoint import load_checkpoint
from mofasa.config import load_config, to_dict
from mofasa.data.dataset import CrystalDataset
from mofasa.models.autoencoder import CrystalAutoencoder
from mofasa.models.config import AutoencoderConfig
from mofasa.training.loop import DataConfig, OptimConfig, RunConfig, Trainer, split_datasets

__all__ = ["AETrainConfig", "build_autoencoder", "load_ae_config", "train_autoencoder"]


@dataclass(frozen=True)
class AETrainConfig:
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/autoencoder"))


def load_ae_config(source: str | Path | dict | None, overrides: list[str] | None = None
                   ) -> AETrainConfig:
    """A shipped config name (tiny, small, base, large), a YAML path or a dict, + overrides."""
    return load_config(AETrainConfig, source, overrides, kind="autoencoder")


def atom_count_histogram(dataset: CrystalDataset, max_atoms: int) -> torch.Tensor:
    """(max_atoms + 1,) int64 counts of structures per atom count: sampling draws N from it."""
    hist = np.bincount(np.asarray(dataset.num_atoms), minlength=max_atoms + 1)[: max_atoms + 1]
    return torch.from_numpy(hist.astype(np.int64))


def build_autoencoder(cfg: AutoencoderConfig) -> CrystalAutoencoder:
    return CrystalAutoencoder(cfg)


def train_autoencoder(cfg: AETrainConfig, *, resume: bool = True, init: str | None = None,
                      stop_after: int | None = None) -> dict[str, float]:
    """Train (or resume) an autoencoder as configured; returns the last logged metrics."""
    train, val = split_datasets(cfg.data, cfg.run.seed)
    torch.manual_seed(cfg.run.seed)
    model = build_autoencoder(cfg.model)
    stats = {"num_atoms_hist": atom_count_histogram(train, cfg.data.max_atoms),
             "n_train": len(train)}
    trainer = Trainer(
        model, kind="autoencoder", config=to_dict(cfg), data=cfg.data, optim=cfg.optim,
        run=cfg.run, extra_state={"data_stats": stats},
    )
    resumed = resume and trainer.resume()
    if not resumed and init:
        ckpt = load_checkpoint(init)
        model.load_state_dict(ckpt["ema"])
        trainer.ema.load_state_dict(ckpt["ema"])
    return trainer.fit(train, val if len(val) else None, stop_after=stop_after)
