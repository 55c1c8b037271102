"""Slim carry files: a checkpoint's weights only, cast down, in parts of at most 16 MB.

A GPU machine returns files of at most 16 MB and carries at most 64 MiB of working tree, so a
training run is brought back (and sent out again) as a slim file instead of its full
checkpoint. Slim files are ordinary mofasa checkpoints that ``run.init_from`` accepts:
``model`` and / or ``ema`` state dicts with parameters in fp32 or bf16 (buffers such as latent
statistics and RVQ codebooks always stay fp32), plus config, vocab, data / latent statistics
and the autoencoder record (`KEEP_KEYS`), and ``slim`` describing the layout. There is no
optimiser state and no RNG state: a warm start begins with a fresh optimiser anyway. A
diffusion model's frozen autoencoder (``autoencoder.*``) is stored in ``frozen`` precision
(bf16 by default: exact when that autoencoder came from a bf16 EMA, as the autoencoder slim
files hold).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mofasa.checkpoint.files import MAX_PART_BYTES, load_checkpoint, save_checkpoint
from mofasa.checkpoint.models import build_diffusion
from mofasa.config import from_dict
from mofasa.diffusion.schedule import DiffusionConfig
from mofasa.models.autoencoder import CrystalAutoencoder
from mofasa.models.config import AutoencoderConfig
from mofasa.models.denoiser import DenoiserConfig

__all__ = [
    "DEFAULT_LAYOUT",
    "FALLBACK",
    "FROZEN_PREFIXES",
    "KEEP_KEYS",
    "LAYOUTS",
    "export_slim",
]

# Default layouts: the autoencoder keeps live fp32 weights (best for continuing training) and
# a bf16 EMA (what diffusion and evaluation use); a diffusion model keeps its EMA in fp32 only
# because its frozen autoencoder makes model + EMA too large to carry back.
DEFAULT_LAYOUT = {"autoencoder": "model32+ema16", "diffusion": "ema32"}
LAYOUTS: dict[str, tuple[str | None, str | None]] = {  # name -> (model, ema); None: left out
    "model32+ema16": ("fp32", "bf16"),
    "model32+ema32": ("fp32", "fp32"),
    "ema32": (None, "fp32"),
    "model32": ("fp32", None),
    "ema16": (None, "bf16"),
}
FALLBACK = ("ema32", "ema16")  # tried in order when a layout exceeds the byte budget
FROZEN_PREFIXES = {"diffusion": ("autoencoder.",)}  # parameters trained with requires_grad off
KEEP_KEYS = ("kind", "mofasa_version", "config", "step", "cumulative_step", "init_from",
             "epoch", "vocab", "data_stats", "autoencoder", "latent_stats")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _parameter_names(ckpt: dict[str, Any]) -> set[str]:
    """State-dict names of the checkpoint model's parameters (the rest are buffers).

    Raises:
        ValueError: a checkpoint kind other than autoencoder / diffusion.
    """
    if ckpt["kind"] == "autoencoder":
        model = CrystalAutoencoder(from_dict(AutoencoderConfig, ckpt["config"]["model"]))
    elif ckpt["kind"] == "diffusion":
        ae = CrystalAutoencoder(from_dict(AutoencoderConfig,
                                          ckpt["autoencoder"]["config"]["model"]))
        # The atom-count histogram only sizes a buffer's contents: any will do for the names.
        model = build_diffusion(from_dict(DenoiserConfig, ckpt["config"]["model"]),
                                from_dict(DiffusionConfig, ckpt["config"]["diffusion"]), ae,
                                torch.zeros(2, dtype=torch.long))
    else:
        raise ValueError(f"cannot slim a checkpoint of kind {ckpt.get('kind')!r}")
    return {name for name, _ in model.named_parameters()}


def _cast(state: dict[str, torch.Tensor], params: set[str], dtype: str,
          frozen: tuple[str, ...], frozen_dtype: str) -> dict[str, torch.Tensor]:
    """Floating parameters to ``dtype`` (those under a ``frozen`` prefix to ``frozen_dtype``);
    buffers and integer tensors unchanged."""
    out = {}
    for key, value in state.items():
        if key in params and value.is_floating_point():
            value = value.to(_DTYPES[frozen_dtype if key.startswith(frozen) else dtype])
        out[key] = value
    return out


def _frozen_bf16_exact(source: dict[str, torch.Tensor], params: set[str],
                       prefixes: tuple[str, ...]) -> bool | None:
    """Whether the frozen parameters survive bf16 unchanged (they came from a bf16 EMA);
    None when the kind has no frozen part."""
    if not prefixes:
        return None
    return all(torch.equal(v, v.to(torch.bfloat16).to(v.dtype))
               for k, v in source.items()
               if k.startswith(prefixes) and k in params and v.is_floating_point())


def _share_frozen(model: dict[str, torch.Tensor], ema: dict[str, torch.Tensor],
                  prefixes: tuple[str, ...]) -> None:
    """Frozen weights equal in both state dicts become one shared tensor, saved once."""
    if not prefixes:
        return
    for key in list(ema):
        if key.startswith(prefixes) and key in model and model[key].dtype == ema[key].dtype \
                and torch.equal(model[key], ema[key]):
            ema[key] = model[key]


def _slim_states(ckpt: dict[str, Any], layout: str, params: set[str],
                 prefixes: tuple[str, ...], frozen: str, src: str | Path
                 ) -> dict[str, dict[str, torch.Tensor]]:
    """The ``model`` / ``ema`` state dicts of one layout (a missing one stands in for the
    other, e.g. an EMA-only slim file re-exported with live weights)."""
    states = {}
    for key, dt in zip(("model", "ema"), LAYOUTS[layout], strict=True):
        if dt is None:
            continue
        state = ckpt.get(key) or ckpt.get("ema" if key == "model" else "model")
        if not state:
            raise ValueError(f"{src}: no weights for layout {layout}")
        states[key] = _cast(state, params, dt, prefixes, frozen)
    if "model" in states and "ema" in states:
        _share_frozen(states["model"], states["ema"], prefixes)
    return states


def export_slim(src: str | Path, out: str | Path, *, layout: str | None = None,
                frozen: str = "bf16", max_bytes: int | None = None,
                max_part_bytes: int | None = None) -> dict[str, Any]:
    """Write a weights-only carry file of checkpoint ``src`` that ``run.init_from`` accepts.

    Args:
        src: a training checkpoint (or another slim file).
        out: output path; files over ``max_part_bytes`` become ``out.part000``, ...
        layout: one of `LAYOUTS` (default: `DEFAULT_LAYOUT` of the checkpoint's kind).
        frozen: precision of frozen parameters (a diffusion model's autoencoder), ``"fp32"``
            or ``"bf16"``.
        max_bytes: total size allowed in bytes; larger layouts fall back along `FALLBACK`.
        max_part_bytes: part size in bytes (default: `MAX_PART_BYTES`, 16 MB).

    Returns:
        ``{"path", "kind", "layout", "bytes", "mb", "files": [[name, bytes], ...], "step",
        "cumulative_step", "frozen_bf16_exact", "tried": [[layout, bytes], ...],
        "max_bytes"}``.

    Raises:
        ValueError: unknown layout, no weights for it, or nothing fits ``max_bytes``.
    """
    ckpt = load_checkpoint(src)
    kind = ckpt.get("kind")
    layout = layout or DEFAULT_LAYOUT.get(kind, "model32+ema16")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose {sorted(LAYOUTS)}")
    params = _parameter_names(ckpt)
    prefixes = FROZEN_PREFIXES.get(kind, ())
    base = {k: ckpt[k] for k in KEEP_KEYS if k in ckpt}
    frozen_exact = _frozen_bf16_exact(ckpt.get("ema") or ckpt.get("model") or {}, params,
                                      prefixes)
    tried: list[list[Any]] = []
    for name in dict.fromkeys((layout, *FALLBACK)):  # requested layout first, no repeats
        model_dt, ema_dt = LAYOUTS[name]
        payload = {**base, **_slim_states(ckpt, name, params, prefixes, frozen, src)}
        payload["slim"] = {"layout": name, "model": model_dt, "ema": ema_dt,
                           "frozen": frozen if prefixes else None,
                           "frozen_bf16_exact": frozen_exact, "source": str(src)}
        files = save_checkpoint(payload, out, max_part_bytes=max_part_bytes or MAX_PART_BYTES)
        size = sum(f.stat().st_size for f in files)
        tried.append([name, size])
        if max_bytes is None or size <= max_bytes:
            return {"path": str(out), "kind": kind, "layout": name, "bytes": size,
                    "mb": round(size / 1e6, 2),
                    "files": [[f.name, f.stat().st_size] for f in files],
                    "step": ckpt.get("step"), "cumulative_step": ckpt.get("cumulative_step"),
                    "frozen_bf16_exact": frozen_exact, "tried": tried, "max_bytes": max_bytes}
        for f in files:
            f.unlink()
    raise ValueError(f"no slim layout fits {max_bytes} bytes (tried {tried})")
