"""One self-describing checkpoint file, written atomically, loaded with ``weights_only=True``.

A checkpoint is a dict of plain types and tensors::

    {"format": "mofasa-checkpoint-v1", "kind": "autoencoder", "mofasa_version": "...",
     "config": {...}, "model": state_dict, "ema": state_dict, "optimizer": state_dict,
     "step": int, "epoch": int, "batch_in_epoch": int, "rng": {...}, "data_stats": {...},
     "vocab": [...]}

Files larger than `MAX_PART_BYTES` (the most a GPU machine returns per file) are written as
``NAME.part000``, ``NAME.part001``, ...; `load_checkpoint(NAME)` reassembles them.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMAT", "MAX_PART_BYTES", "checkpoint_exists", "load_checkpoint", "save_checkpoint"]

FORMAT = "mofasa-checkpoint-v1"
MAX_PART_BYTES = 16 * 1000 * 1000  # 16 MB: what one GPU-machine call returns per file


def _parts(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".part[0-9][0-9][0-9]"))


def checkpoint_exists(path: str | Path) -> bool:
    path = Path(path)
    return path.is_file() or bool(_parts(path))


def save_checkpoint(payload: dict[str, Any], path: str | Path,
                    max_part_bytes: int = MAX_PART_BYTES) -> list[Path]:
    """Write ``payload`` atomically (temp file + rename); split into parts when large.

    Returns:
        The files written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    data = buffer.getvalue()
    chunks = [data[i : i + max_part_bytes] for i in range(0, len(data), max_part_bytes)] or [b""]
    targets = [path] if len(chunks) == 1 else [
        path.with_name(f"{path.name}.part{k:03d}") for k in range(len(chunks))]
    for chunk, target in zip(chunks, targets, strict=True):
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    # Remove stale leftovers of the other layout (single file vs parts, or more parts before).
    stale = _parts(path)[len(targets):] if len(targets) > 1 else _parts(path)
    if len(targets) > 1 and path.is_file():
        stale.append(path)
    for old in stale:
        old.unlink()
    return targets


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint (single file or parts) with ``weights_only=True``.

    Raises:
        FileNotFoundError: if neither the file nor its parts exist.
        ValueError: if the file is not a mofasa checkpoint.
    """
    path = Path(path)
    if path.is_file():
        source: Any = path
    else:
        parts = _parts(path)
        if not parts:
            raise FileNotFoundError(f"no checkpoint at {path} (nor {path.name}.part000...)")
        source = io.BytesIO(b"".join(p.read_bytes() for p in parts))
    ckpt = torch.load(source, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a mofasa checkpoint (format {FORMAT} expected)")
    return ckpt
