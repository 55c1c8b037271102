"""Models from checkpoints: load, build and export, without the training stack.

An autoencoder checkpoint's ``config`` holds the training config (``model`` is the
`AutoencoderConfig`); a diffusion checkpoint's ``config`` holds ``model`` (`DenoiserConfig`) and
``diffusion`` (`DiffusionConfig`), embeds its autoencoder (weights under ``autoencoder.`` in the
state dicts, config under ``autoencoder.config.model``), the latent statistics (buffers) and the
training atom-count histogram (``data_stats.num_atoms_hist``). Only those sections are read here,
so loading a model imports neither `mofasa.training` nor the data pipeline.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

import torch

from mofasa.checkpoint.device import resolve_device
from mofasa.checkpoint.files import checkpoint_exists, load_checkpoint, save_checkpoint
from mofasa.config import ConfigError, from_dict
from mofasa.diffusion.coordflow import CoordFlow
from mofasa.diffusion.latent import LatentDiffusion
from mofasa.diffusion.schedule import DiffusionConfig
from mofasa.models.autoencoder import CrystalAutoencoder
from mofasa.models.config import AutoencoderConfig
from mofasa.models.denoiser import Denoiser, DenoiserConfig

__all__ = [
    "DIFFUSION_KIND",
    "build_diffusion",
    "default_model_path",
    "export_coordflow",
    "export_diffusion",
    "extract_autoencoder",
    "load_any_autoencoder",
    "load_autoencoder",
    "load_coordflow",
    "load_diffusion",
    "load_model",
    "resolve_latent_sizes",
]

DIFFUSION_KIND = "diffusion"
COORDFLOW_KIND = "coordflow"
AUTOENCODER_KIND = "autoencoder"


def default_model_path() -> Path:
    """The bundled default model (``mofasa/sampling/default/model.pt``, maybe in parts).

    Raises:
        FileNotFoundError: no default model is bundled.
    """
    path = Path(str(resources.files("mofasa") / "sampling" / "default" / "model.pt"))
    if not checkpoint_exists(path):
        raise FileNotFoundError(
            f"no default model is bundled with this mofasa (looked for {path}); pass a "
            "diffusion checkpoint instead (--model PATH / model=PATH), e.g. one trained with "
            "`mofasa train diffusion`")
    return path


def _model_path(model: str | Path) -> Path:
    return default_model_path() if str(model) == "default" else Path(model)


def _check_kind(ckpt: dict, path: str | Path, kind: str) -> None:
    if ckpt.get("kind") != kind:
        raise ValueError(f"{path}: checkpoint kind {ckpt.get('kind')!r}, expected {kind!r}")


def load_autoencoder(path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu"
                     ) -> tuple[CrystalAutoencoder, dict]:
    """Model (EMA weights by default, eval mode) and the raw checkpoint dict."""
    ckpt = load_checkpoint(path, map_location="cpu")
    _check_kind(ckpt, path, AUTOENCODER_KIND)
    model = CrystalAutoencoder(from_dict(AutoencoderConfig, ckpt["config"]["model"], "model"))
    state = ckpt["ema" if ema and "ema" in ckpt else "model"]
    model.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in state.items()})
    return model.to(resolve_device(device)).eval(), ckpt


def resolve_latent_sizes(cfg: DenoiserConfig, ae: AutoencoderConfig) -> DenoiserConfig:
    """``cfg`` with its latent sizes taken from the autoencoder (0 in a config means 'its')."""
    dl, dg = ae.latent_dim, ae.global_latent_dim
    for name, want in (("latent_dim", dl), ("global_latent_dim", dg)):
        have = getattr(cfg, name)
        if have not in (0, want):
            raise ConfigError(f"model.{name}={have} but the autoencoder has {want} (use 0)")
    return dataclasses.replace(cfg, latent_dim=dl, global_latent_dim=dg)


def build_diffusion(model: DenoiserConfig, diffusion: DiffusionConfig,
                    autoencoder: CrystalAutoencoder,
                    num_atoms_hist: torch.Tensor | None = None) -> LatentDiffusion:
    """`LatentDiffusion` (latent sizes resolved) around ``autoencoder``."""
    den = Denoiser(resolve_latent_sizes(model, autoencoder.config))
    return LatentDiffusion(autoencoder, den, diffusion, num_atoms_hist)


def _diffusion_from_checkpoint(ckpt: dict) -> LatentDiffusion:
    """The (untrained) model a diffusion checkpoint describes."""
    cfg = ckpt["config"]
    ae = CrystalAutoencoder(from_dict(AutoencoderConfig, ckpt["autoencoder"]["config"]["model"],
                                      "autoencoder.model"))
    return build_diffusion(from_dict(DenoiserConfig, cfg["model"], "model"),
                           from_dict(DiffusionConfig, cfg.get("diffusion"), "diffusion"), ae,
                           ckpt["data_stats"]["num_atoms_hist"])


def load_diffusion(path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu"
                   ) -> LatentDiffusion:
    """A ready-to-sample `LatentDiffusion` (eval mode) from a diffusion checkpoint alone.

    Args:
        path: a training checkpoint or an `export_diffusion` file (single file or parts).
        ema: use the EMA weights (training checkpoints only; exports hold EMA weights).
        device: where to put the model (``auto``, ``cpu``, ``cuda``...).

    Returns:
        The model, with ``num_atoms_hist`` set and ``checkpoint_info`` (path, step, denoiser
        and diffusion configs, autoencoder source, can_encode) attached.
    """
    dev = resolve_device(device)
    ckpt = load_checkpoint(path, map_location="cpu")
    _check_kind(ckpt, path, DIFFUSION_KIND)
    model = _diffusion_from_checkpoint(ckpt)
    state = ckpt["ema" if ema or "model" not in ckpt else "model"]
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = set(ckpt.get("dropped_keys", []))
    if unexpected or set(missing) - allowed:
        raise ValueError(f"{path}: state dict mismatch (missing {sorted(set(missing) - allowed)}"
                         f", unexpected {sorted(unexpected)})")
    model.checkpoint_info = {
        "path": str(path), "step": int(ckpt["step"]), "config": ckpt["config"],
        "autoencoder": ckpt["autoencoder"]["source"], "can_encode": not allowed,
        "max_atoms": _trained_max_atoms(ckpt)}
    return model.to(dev).eval()


def _trained_max_atoms(ckpt: dict) -> int | None:
    data = ckpt["config"].get("data") or {}
    return int(data["max_atoms"]) if data.get("max_atoms") else None


def load_model(model: str | Path | LatentDiffusion | CoordFlow = "default",
               device: str = "auto") -> LatentDiffusion | CoordFlow:
    """``"default"``, a checkpoint path, or a model -> the model in eval mode, of either
    family (the checkpoint's ``kind`` says which: ``diffusion`` latent, ``coordflow``
    explicit coordinates)."""
    if isinstance(model, (LatentDiffusion, CoordFlow)):
        return model.to(resolve_device(device)).eval()
    path = _model_path(model)
    if load_checkpoint(path, map_location="cpu").get("kind") == COORDFLOW_KIND:
        return load_coordflow(path, device=device)
    return load_diffusion(path, device=device)


def load_any_autoencoder(checkpoint: str | Path, device: str | torch.device = "cpu"
                         ) -> CrystalAutoencoder:
    """An autoencoder from an autoencoder checkpoint, a diffusion checkpoint (which embeds one)
    or ``default`` (the bundled model); the diffusion export must have kept its encoder."""
    path = _model_path(checkpoint)
    if load_checkpoint(path).get("kind") == AUTOENCODER_KIND:
        return load_autoencoder(path, device=device)[0]
    model = load_diffusion(path, device=device)
    if not model.checkpoint_info.get("can_encode", False):
        raise ValueError(f"{path}: this export dropped the encoder; reconstruction needs "
                         "the full autoencoder checkpoint")
    return model.autoencoder.eval()


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
    if ae_ckpt.get("kind") != AUTOENCODER_KIND:
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


def export_coordflow(checkpoint: str | Path, out: str | Path, *, bf16: bool = True,
                     steps: int | None = None, refine: int | None = None,
                     refine_t: float | None = None, restarts: int | None = None) -> Path:
    """Write a sampling-only copy of a coordinate-family checkpoint: EMA weights (bf16
    unless ``bf16=False``; loading casts back to fp32), config, step, data statistics;
    ``steps``, ``refine``, ``refine_t`` and ``restarts`` replace the default sampler step
    count, corrector count, corrector time and restart count (``flow.*`` of the config)."""
    from mofasa.diffusion.coordflow import CoordFlowConfig

    ckpt = load_checkpoint(checkpoint)
    _check_kind(ckpt, checkpoint, COORDFLOW_KIND)
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    given = {k: v for k, v in (("steps", steps), ("refine", refine), ("refine_t", refine_t),
                               ("restarts", restarts)) if v is not None}
    flow = {**ckpt["config"]["flow"], **given}
    from_dict(CoordFlowConfig, flow, "flow")  # the config's own checks (ValueError)
    ckpt["config"] = {**ckpt["config"], "flow": flow}
    state = {k: v.to(torch.bfloat16) if bf16 and v.is_floating_point() else v
             for k, v in ckpt["ema"].items()}
    keep = ("kind", "mofasa_version", "config", "step", "cumulative_step", "init_from",
            "data_stats")
    payload = {k: ckpt[k] for k in keep if k in ckpt}
    payload["ema"] = state
    save_checkpoint(payload, out)
    return Path(out)


def extract_autoencoder(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the autoencoder a diffusion checkpoint embeds (EMA weights, fp32) as an autoencoder
    checkpoint of its own, e.g. to train a new denoiser on the bundled model's latents.

    Raises:
        ValueError: not a diffusion checkpoint, or an export that dropped the encoder.
    """
    path = _model_path(checkpoint)
    ckpt = load_checkpoint(path)
    _check_kind(ckpt, path, DIFFUSION_KIND)
    if ckpt.get("dropped_keys"):
        raise ValueError(f"{path}: this export dropped the encoder; no autoencoder to extract")
    prefix = "autoencoder."
    weights = ckpt.get("ema") or ckpt["model"]  # a slim carry file may hold either
    state = {k[len(prefix):]: v.float() if v.is_floating_point() else v
             for k, v in weights.items() if k.startswith(prefix)}
    record = ckpt["autoencoder"]
    payload = {"kind": AUTOENCODER_KIND, "mofasa_version": ckpt.get("mofasa_version"),
               "config": record["config"], "ema": state, "model": state,
               "step": int(record["step"]), "vocab": ckpt.get("vocab"),
               "extracted_from": {"path": str(path), "source": record["source"],
                                  "decoder_source": record.get("decoder_source")}}
    save_checkpoint(payload, out)
    return Path(out)


def load_coordflow(path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu"
                   ) -> CoordFlow:
    """A ready-to-sample `CoordFlow` (explicit-coordinate hybrid, eval mode) from its checkpoint
    (its ``config`` holds ``model`` and ``flow``; the histogram is ``data_stats``)."""
    from mofasa.diffusion.coordflow import CoordFlowConfig
    from mofasa.models.coord_denoiser import CoordDenoiser, CoordDenoiserConfig

    ckpt = load_checkpoint(path, map_location="cpu")
    _check_kind(ckpt, path, COORDFLOW_KIND)
    cfg = ckpt["config"]
    model = CoordFlow(CoordDenoiser(from_dict(CoordDenoiserConfig, cfg["model"], "model")),
                      from_dict(CoordFlowConfig, cfg["flow"], "flow"),
                      ckpt["data_stats"]["num_atoms_hist"])
    state = ckpt["ema" if ema or "model" not in ckpt else "model"]
    model.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in state.items()})
    model.checkpoint_info = {"path": str(path), "step": int(ckpt["step"]), "config": cfg}
    model.data_stats = dict(ckpt["data_stats"])
    return model.to(resolve_device(device)).eval()
