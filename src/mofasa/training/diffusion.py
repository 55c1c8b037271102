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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mofasa.data.batch import CrystalBatch, collate
from mofasa.data.dataset import CrystalDataset
from mofasa.diffusion.latent import LatentDiffusion, latent_statistics
from mofasa.diffusion.schedule import DiffusionConfig
from mofasa.models.autoencoder import CrystalAutoencoder
from mofasa.models.config import AutoencoderConfig
from mofasa.models.denoiser import Denoiser, DenoiserConfig
from mofasa.training.autoencoder import atom_count_histogram, load_autoencoder
from mofasa.training.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from mofasa.training.config import ConfigError, from_dict, load_config, to_dict
from mofasa.training.loop import DataConfig, OptimConfig, RunConfig, Trainer

__all__ = [
    "DiffusionTrainConfig",
    "build_diffusion",
    "export_diffusion",
    "load_diffusion",
    "load_diffusion_config",
    "train_diffusion",
]

KIND = "diffusion"


@dataclass(frozen=True)
class DiffusionTrainConfig:
    """Sections: ``model`` (denoiser), ``diffusion`` (schedule / objective / sampling
    defaults), ``data``, ``optim``, ``run``, and ``autoencoder`` (path of the autoencoder
    checkpoint whose latents are modelled; the ``--autoencoder`` option overrides it)."""

    model: DenoiserConfig = field(default_factory=DenoiserConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/diffusion"))
    autoencoder: str = ""


def load_diffusion_config(source: str | Path | dict | None, overrides: list[str] | None = None
                          ) -> DiffusionTrainConfig:
    """A shipped config name (tiny, small, base), a YAML path or a dict, + dotted overrides."""
    return load_config(DiffusionTrainConfig, source, overrides, kind=KIND)


def _resolve_latent_sizes(cfg: DenoiserConfig, ae: AutoencoderConfig) -> DenoiserConfig:
    dl, dg = ae.latent_dim, ae.global_latent_dim
    for name, want in (("latent_dim", dl), ("global_latent_dim", dg)):
        have = getattr(cfg, name)
        if have not in (0, want):
            raise ConfigError(f"model.{name}={have} but the autoencoder has {want} (use 0)")
    return dataclasses.replace(cfg, latent_dim=dl, global_latent_dim=dg)


def build_diffusion(cfg: DiffusionTrainConfig, autoencoder: CrystalAutoencoder,
                    num_atoms_hist: torch.Tensor | None = None) -> LatentDiffusion:
    """`LatentDiffusion` from a config (latent sizes resolved) around ``autoencoder``."""
    den = Denoiser(_resolve_latent_sizes(cfg.model, autoencoder.config))
    return LatentDiffusion(autoencoder, den, cfg.diffusion, num_atoms_hist)


def _ae_record(ae_ckpt: dict, path: str) -> dict:
    """What the diffusion checkpoint keeps about its autoencoder (weights live in the model)."""
    return {"config": ae_ckpt["config"], "source": str(path), "step": int(ae_ckpt["step"])}


def _autoencoder_from_record(record: dict) -> CrystalAutoencoder:
    from mofasa.training.autoencoder import AETrainConfig

    return CrystalAutoencoder(from_dict(AETrainConfig, record["config"]).model)


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


def train_diffusion(cfg: DiffusionTrainConfig, autoencoder_path: str | Path | None = None, *,
                    resume: bool = True, stop_after: int | None = None) -> dict[str, float]:
    """Train (or resume) a latent diffusion model; returns the last logged metrics.

    A fresh run loads the autoencoder (EMA weights) from ``autoencoder_path`` (default:
    ``cfg.autoencoder``), freezes it and measures the latent statistics on the training split;
    a resumed run rebuilds everything from ``run.out_dir/checkpoint.pt`` alone.

    Raises:
        ConfigError: no autoencoder given for a fresh run, or latent sizes that disagree.
    """
    train = CrystalDataset(cfg.data.path, cfg.data.train_split, translate=cfg.data.translate,
                           seed=cfg.run.seed, max_atoms=cfg.data.max_atoms)
    val = CrystalDataset(cfg.data.path, cfg.data.val_split, max_atoms=cfg.data.max_atoms)
    if len(train) == 0:
        raise ValueError(f"{cfg.data.path}: no training structures with <= "
                         f"{cfg.data.max_atoms} atoms")
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
                              model=_resolve_latent_sizes(cfg.model, ae.config))
    hist = atom_count_histogram(train, cfg.data.max_atoms)
    model = build_diffusion(cfg, ae, hist)
    extra = {"autoencoder": ae_record, "latent_stats": stats,
             "data_stats": {"num_atoms_hist": hist, "n_train": len(train)}}
    trainer = Trainer(model, kind=KIND, config=to_dict(cfg), data=cfg.data, optim=cfg.optim,
                      run=cfg.run, extra_state=extra)
    if stats is None:  # measured once, on the trainer's device, then frozen in the checkpoint
        batches = _stats_batches(train, cfg, trainer.device)
        stats = latent_statistics(model.autoencoder, batches)
        extra["latent_stats"] = stats
    for module in (trainer.model, trainer.ema):
        module.set_latent_stats(stats)
    if resume:
        trainer.resume()
    return trainer.fit(train, val if len(val) else None, stop_after=stop_after)


def load_diffusion(path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu"
                   ) -> LatentDiffusion:
    """A ready-to-sample `LatentDiffusion` (eval mode) from a diffusion checkpoint alone.

    Args:
        path: a training checkpoint or an `export_diffusion` file (single file or parts).
        ema: use the EMA weights (training checkpoints only; exports hold EMA weights).
        device: where to put the model.

    Returns:
        The model, with ``num_atoms_hist`` set and ``checkpoint_info`` (kind, step, config,
        source path) attached.
    """
    ckpt = load_checkpoint(path, map_location="cpu")
    if ckpt.get("kind") != KIND:
        raise ValueError(f"{path}: checkpoint kind {ckpt.get('kind')!r}, expected {KIND!r}")
    cfg = from_dict(DiffusionTrainConfig, ckpt["config"])
    ae = _autoencoder_from_record(ckpt["autoencoder"])
    hist = ckpt["data_stats"]["num_atoms_hist"]
    model = build_diffusion(cfg, ae, hist)
    state = ckpt["ema" if ema or "model" not in ckpt else "model"]
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = set(ckpt.get("dropped_keys", []))
    if unexpected or set(missing) - allowed:
        raise ValueError(f"{path}: state dict mismatch (missing {sorted(set(missing) - allowed)}"
                         f", unexpected {sorted(unexpected)})")
    model.checkpoint_info = {"path": str(path), "step": int(ckpt["step"]), "config": cfg,
                             "autoencoder": ckpt["autoencoder"]["source"],
                             "can_encode": not allowed}
    return model.to(device).eval()


def _decoder_only_keys(model: LatentDiffusion) -> set[str]:
    """State-dict keys of autoencoder parameters that decoding does not use (the encoder):
    those that get no gradient through ``decode_latents``, checked by filling them with NaN."""
    ae = model.autoencoder
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(2, 3, dtype=torch.bool)
    zl = torch.randn(2, 3, ae.config.latent_dim, generator=gen)
    zg = torch.randn(2, ae.config.global_latent_dim, generator=gen)

    def decode_sum() -> torch.Tensor:
        out = ae.decode_latents(zl, zg, mask)
        return out.type_logits.sum() + out.coord_vectors.sum() + out.lengths.sum() + \
            out.angles.sum()

    params = dict(ae.named_parameters())
    saved = {n: (p.requires_grad, p.detach().clone()) for n, p in params.items()}
    try:
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        decode_sum().backward()
        unused = {n for n, p in params.items() if p.grad is None}
        with torch.no_grad():
            for n in unused:
                params[n].fill_(float("nan"))
            if not torch.isfinite(decode_sum()):
                raise RuntimeError("decoding uses parameters that get no gradient")
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.grad = None
                p.copy_(saved[n][1])
                p.requires_grad_(saved[n][0])
    return {f"autoencoder.{n}" for n in unused}


def _swap_decoder(state: dict, model: LatentDiffusion, decoder_from: str | Path,
                  record: dict) -> dict:
    """``state`` with the autoencoder's decoding weights taken from another autoencoder
    checkpoint (EMA) whose encoder is the same (a decoder fine-tuned with
    ``model.freeze_encoder``), so the latents the denoiser learned keep their meaning.

    Raises:
        ValueError: other latent sizes, or encoder weights that differ (the latents would).
    """
    ae_ckpt = load_checkpoint(decoder_from)
    if ae_ckpt.get("kind") != "autoencoder":
        raise ValueError(f"{decoder_from}: not an autoencoder checkpoint")
    encoder_only = _decoder_only_keys(model)  # 'autoencoder.*' keys decoding does not read
    out = dict(state)
    for key, value in ae_ckpt["ema"].items():
        name = f"autoencoder.{key}"
        if name not in state or state[name].shape != value.shape:
            raise ValueError(f"{decoder_from}: {key} does not fit this model's autoencoder")
        if name in encoder_only:
            if not torch.allclose(state[name].float(), value.float(), rtol=0.0, atol=1e-6):
                raise ValueError(f"{decoder_from}: encoder weight {key} differs from the one "
                                 "the diffusion model was trained on (its latents would change)")
        else:
            out[name] = value
    record["decoder_source"] = {"path": str(decoder_from), "step": int(ae_ckpt["step"])}
    return out


def export_diffusion(checkpoint: str | Path, out: str | Path, *, bf16: bool = True,
                     drop_encoder: bool = True, decoder_from: str | Path | None = None) -> Path:
    """Write a slim, sampling-only copy of a diffusion checkpoint (e.g. the bundled model).

    Args:
        checkpoint: a training checkpoint.
        out: output file.
        bf16: store floating weights in bf16 (halves the size; loading casts back to fp32).
        drop_encoder: leave out the autoencoder's encoder (sampling only decodes).
        decoder_from: optional autoencoder checkpoint with the same (frozen) encoder and a
            fine-tuned decoder (``model.freeze_encoder=true model.decoder_noise=...``): its
            EMA decoder replaces the embedded one.

    Returns:
        ``out`` as a Path.
    """
    ckpt = load_checkpoint(checkpoint)
    model = load_diffusion(checkpoint)
    ema = ckpt["ema"]
    if decoder_from is not None:
        ckpt["autoencoder"] = dict(ckpt["autoencoder"])
        ema = _swap_decoder(ema, model, decoder_from, ckpt["autoencoder"])
    dropped = _decoder_only_keys(model) if drop_encoder else set()
    state = {k: v for k, v in ema.items() if k not in dropped}
    if bf16:
        state = {k: v.to(torch.bfloat16) if v.is_floating_point() and "_mean" not in k
                 and "_std" not in k else v for k, v in state.items()}
    keep = ("kind", "mofasa_version", "config", "step", "vocab", "autoencoder", "latent_stats",
            "data_stats")
    payload = {k: ckpt[k] for k in keep if k in ckpt}
    payload.update(ema=state, dropped_keys=sorted(dropped))
    save_checkpoint(payload, out)
    return Path(out)
