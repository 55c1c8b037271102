"""`mofasa train diffusion`: config, latent statistics, model construction, training, loading.

The diffusion checkpoint is self-contained: the frozen autoencoder's weights sit in the model /
EMA state dicts (prefix ``autoencoder.``) and its config under ``autoencoder``; the latent
normalisation statistics are buffers of the model (and a readable copy under ``latent_stats``);
the training atom-count histogram is ``data_stats.num_atoms_hist``. `load_diffusion` needs no
other file. `export_diffusion` writes a slim sampling-only file (EMA weights, optionally bf16,
without the optimiser and the encoder) for bundling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mofasa.checkpoint import (
    build_diffusion,
    checkpoint_exists,
    load_autoencoder,
    load_checkpoint,
    resolve_latent_sizes,
)
from mofasa.config import ConfigError, from_dict, load_config, to_dict
from mofasa.data.batch import CrystalBatch, collate
from mofasa.data.dataset import CrystalDataset
from mofasa.diffusion.latent import latent_statistics
from mofasa.diffusion.schedule import DiffusionConfig
from mofasa.models.autoencoder import CrystalAutoencoder
from mofasa.models.config import AutoencoderConfig
from mofasa.models.denoiser import DenoiserConfig
from mofasa.training.autoencoder import atom_count_histogram
from mofasa.training.latent_cache import LatentCacheConfig, cache_statistics, open_latent_cache
from mofasa.training.loop import DataConfig, OptimConfig, RunConfig, Trainer, split_datasets

__all__ = ["DiffusionTrainConfig", "load_diffusion_config", "train_diffusion"]

KIND = "diffusion"


@dataclass(frozen=True)
class ProbeConfig:
    """``probes`` section: training-time probes (`mofasa.training.probes`) on the EMA model.

    Attributes:
        every: steps between probes (0: off); logged in metrics.csv (split ``probe``).
        structures: validation structures the SDEdit / context / attention probes use.
        samples: de novo samples of the bonded-share probe (0: skip it).
        steps: sampler steps of the de novo samples.
        seed: noise seed (the same draws every time).
    """

    every: int = 0
    structures: int = 32
    samples: int = 64
    steps: int = 20
    seed: int = 0


@dataclass(frozen=True)
class DiffusionTrainConfig:
    """Sections: ``model`` (denoiser), ``diffusion`` (schedule / objective / sampling
    defaults), ``data``, ``optim``, ``run``, ``cache`` (precomputed latents), ``probes``, and
    ``autoencoder`` (path of the autoencoder checkpoint whose latents are modelled; the
    ``--autoencoder`` option overrides it)."""

    model: DenoiserConfig = field(default_factory=DenoiserConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/diffusion"))
    cache: LatentCacheConfig = field(default_factory=LatentCacheConfig)
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    autoencoder: str = ""


def load_diffusion_config(source: str | Path | dict | None, overrides: list[str] | None = None
                          ) -> DiffusionTrainConfig:
    """A shipped config name (tiny, small, base), a YAML path or a dict, + dotted overrides."""
    return load_config(DiffusionTrainConfig, source, overrides, kind=KIND)


def _ae_record(ae_ckpt: dict, path: str) -> dict:
    """What the diffusion checkpoint keeps about its autoencoder (weights live in the model)."""
    return {"config": ae_ckpt["config"], "source": str(path), "step": int(ae_ckpt["step"])}


def _autoencoder_from_record(record: dict) -> CrystalAutoencoder:
    return CrystalAutoencoder(from_dict(AutoencoderConfig, record["config"]["model"], "model"))


def _stats_batches(train: CrystalDataset, cfg: DiffusionTrainConfig, device: torch.device
                   ) -> Iterator[CrystalBatch]:
    """A seeded random subset of the training split (with its epoch-0 translations), sorted
    by size and batched; the same on every DDP rank (no sharding)."""
    rng = np.random.default_rng(cfg.run.seed)
    idx = rng.permutation(len(train))[: cfg.diffusion.stats_max_structures]
    idx = idx[np.argsort(train.num_atoms[idx], kind="stable")]
    for start in range(0, len(idx), cfg.data.batch_size):
        chunk = idx[start : start + cfg.data.batch_size]
        yield collate([train[(int(i), 0)] for i in chunk]).to(device)


def _probe_fn(cfg: DiffusionTrainConfig, hist: torch.Tensor
              ) -> Callable[[torch.nn.Module], dict[str, float]] | None:
    """The probes on a fixed, evenly spread set of validation structures (None when off)."""
    if not cfg.probes.every:
        return None
    from mofasa.training.probes import ProbeSet, probe_structures, run_probes

    crystals = probe_structures(cfg.data.path, cfg.data.val_split, cfg.data.max_atoms,
                                cfg.probes.structures)
    if not crystals:
        return None
    probes = ProbeSet(crystals, np.flatnonzero(hist.numpy()), seed=cfg.probes.seed)
    return lambda model: run_probes(model, probes, samples=cfg.probes.samples,
                                    steps=cfg.probes.steps)


def train_diffusion(cfg: DiffusionTrainConfig, autoencoder_path: str | Path | None = None, *,
                    resume: bool = True, stop_after: int | None = None) -> dict[str, float]:
    """Train (or resume) a latent diffusion model; returns the last logged metrics.

    A fresh run loads the autoencoder (EMA weights) from ``autoencoder_path`` (default:
    ``cfg.autoencoder``), freezes it and measures the latent statistics on the training split;
    a resumed run rebuilds everything from ``run.out_dir/checkpoint.pt`` alone.

    Raises:
        ConfigError: no autoencoder given for a fresh run, or latent sizes that disagree.
    """
    train, val = split_datasets(cfg.data, cfg.run.seed)
    own = Path(cfg.run.out_dir) / "checkpoint.pt"
    torch.manual_seed(cfg.run.seed)
    if resume and checkpoint_exists(own):
        ckpt = load_checkpoint(own)
        ae_record = ckpt["autoencoder"]
        ae = _autoencoder_from_record(ae_record)  # weights come with trainer.resume()
        if autoencoder_path and str(autoencoder_path) != str(ae_record["source"]):
            print(f"note: resuming {own}, which embeds its own autoencoder "
                  f"({ae_record['source']}); --autoencoder {autoencoder_path} is ignored")
        stats = {k: v for k, v in ckpt["latent_stats"].items()}
    else:
        path = str(autoencoder_path or cfg.autoencoder)
        if not path:
            raise ConfigError("no autoencoder checkpoint: pass --autoencoder PATH "
                              "(or set autoencoder: in the config)")
        ae, ae_ckpt = load_autoencoder(path)
        ae_record, stats = _ae_record(ae_ckpt, path), None
    cfg = dataclasses.replace(cfg, autoencoder=str(ae_record["source"]),
                              model=resolve_latent_sizes(cfg.model, ae.config))
    hist = atom_count_histogram(train, cfg.data.max_atoms)
    model = build_diffusion(cfg.model, cfg.diffusion, ae, hist)
    extra = {"autoencoder": ae_record, "latent_stats": stats,
             "data_stats": {"num_atoms_hist": hist, "n_train": len(train)}}
    trainer = Trainer(model, kind=KIND, config=to_dict(cfg), data=cfg.data, optim=cfg.optim,
                      run=cfg.run, extra_state=extra, probe_fn=_probe_fn(cfg, hist),
                      probe_every=cfg.probes.every)
    if resume:
        trainer.resume()  # the autoencoder's weights too: the cache key needs them
    if cfg.cache.path:  # latents precomputed once instead of re-encoding every batch
        train, val = open_latent_cache(
            trainer.model.autoencoder, cfg.cache, cfg.data.path, max_atoms=cfg.data.max_atoms,
            seed=cfg.run.seed, translate=cfg.data.translate,
            splits=(cfg.data.train_split, cfg.data.val_split))
    if stats is None:  # measured once, on the trainer's device, then frozen in the checkpoint
        if cfg.cache.path:
            stats = cache_statistics(train)
        else:
            stats = latent_statistics(model.autoencoder,
                                      _stats_batches(train, cfg, trainer.device))
        extra["latent_stats"] = stats
    for module in (trainer.model, trainer.ema):
        module.set_latent_stats(stats)
    return trainer.fit(train, val if len(val) else None, stop_after=stop_after)
