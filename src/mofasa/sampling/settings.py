"""`SampleSettings`: every choice of a sampling run, checked once and resolved against the model.

The CLI, `mofasa.sample` and the resumable writer all build one frozen `SampleSettings`, call
:meth:`SampleSettings.check` before any work (values that cannot make sense are a
`SampleSettingsError`, a one-line usage error), then :meth:`SampleSettings.resolve` once the
model is loaded (the model's defaults fill ``steps`` / ``sampler``; an atom count outside the
range the model was trained on is warned about). The resolved settings are what
``settings.json`` and every database row record, and what a resumed run must repeat.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from mofasa.diffusion.latent import LatentDiffusion

__all__ = ["SAMPLERS", "AtomRangeWarning", "SampleSettings", "SampleSettingsError",
           "trained_atom_range"]

SAMPLERS = ("ddim", "ddpm")


class SampleSettingsError(ValueError):
    """A sampling setting that cannot work (bad value, or disagreeing with an earlier run)."""


class AtomRangeWarning(UserWarning):
    """Atom counts outside the range the model was trained on."""


@dataclass(frozen=True)
class SampleSettings:
    """What a sampling run does; structure i depends only on these and i.

    Attributes:
        model: ``"default"`` or a diffusion checkpoint path (as given; recorded).
        num: number of structures (indices 0..num-1).
        seed: run seed.
        atoms: fixed atom count N, or None to draw N per structure.
        atoms_from: ``"data"`` (the model's training histogram) or a prepared dataset folder
            whose train split's histogram to draw N from (unused with ``atoms``).
        steps: sampler steps (None: the model's configured count).
        sampler: ``"ddim"`` or ``"ddpm"`` (None: the model's).
        guidance: classifier-free guidance scale (1: none).
        batch_size: structures per batch (batches group equal atom counts).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
        bf16: bf16 autocast for the denoiser.
    """

    model: str = "default"
    num: int = 100
    seed: int = 0
    atoms: int | None = None
    atoms_from: str = "data"
    steps: int | None = None
    sampler: str | None = None
    guidance: float = 1.0
    batch_size: int = 64
    device: str = "auto"
    bf16: bool = False

    def check(self) -> SampleSettings:
        """Reject values that cannot work, before any file is written or model loaded.

        Raises:
            SampleSettingsError: naming the setting and the accepted values.
        """
        _require(isinstance(self.num, int) and self.num >= 0, f"num must be >= 0, got {self.num}")
        _require(self.atoms is None or self.atoms >= 1,
                 f"atoms must be >= 1, got {self.atoms}")
        _require(self.steps is None or self.steps >= 1,
                 f"steps must be >= 1, got {self.steps} (omit it for the model's default)")
        _require(self.sampler is None or self.sampler in SAMPLERS,
                 f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        _require(self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}")
        _require(math.isfinite(self.guidance), f"guidance must be finite, got {self.guidance}")
        # No condition reaches the model in this version: any other scale would be ignored.
        _require(self.guidance == 1.0,
                 f"guidance {self.guidance} needs a condition, and none is given (use 1)")
        _require(self.atoms is not None or self.atoms_from == "data"
                 or (Path(self.atoms_from) / "manifest.json").is_file(),
                 f"atoms_from {self.atoms_from!r} is neither 'data' nor a prepared dataset "
                 "folder (no manifest.json there)")
        from mofasa.checkpoint import DeviceError, resolve_device

        try:
            resolve_device(self.device)
        except DeviceError as exc:
            raise SampleSettingsError(str(exc)) from None
        return self

    def resolve(self, model: LatentDiffusion, size_hist: Any = None) -> SampleSettings:
        """Settings with the model's defaults filled in, checked; warns (`AtomRangeWarning`)
        when the atom counts to be sampled (``atoms``, or the support of ``size_hist``, by
        default the model's own histogram) lie outside the model's training range."""
        out = dataclasses.replace(self, steps=int(self.steps or model.config.steps),
                                  sampler=self.sampler or model.config.sampler).check()
        _warn_atom_range(out, model.num_atoms_hist,
                         model.num_atoms_hist if size_hist is None else size_hist)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for ``settings.json``); ``atoms`` None is kept as null."""
        return dataclasses.asdict(self)

    def row_metadata(self) -> dict[str, str | int | float | bool]:
        """Key-value pairs for every database row (ASE rows take no None values)."""
        # num / batch / device do not change a structure; n_atoms (per row) says a fixed N
        out = {k: v for k, v in self.to_dict().items() if v is not None and k not in
               ("num", "batch_size", "device", "atoms")}
        out["atoms_from"] = "fixed" if self.atoms is not None else self.atoms_from
        return out

    def identity(self) -> dict[str, Any]:
        """What a continuation of a run in the same folder must repeat (not num / batch /
        device, which do not change any structure)."""
        d = self.to_dict()
        return {k: d[k] for k in ("model", "seed", "atoms", "atoms_from", "steps", "sampler",
                                  "guidance", "bf16")}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SampleSettingsError(message)


def trained_atom_range(hist: Any) -> tuple[int, int] | None:
    """(smallest, largest) atom count with training structures, from a (M + 1,) histogram."""
    h = np.asarray(hist.cpu() if hasattr(hist, "cpu") else hist)
    seen = np.flatnonzero(h > 0)
    return (int(seen[0]), int(seen[-1])) if seen.size else None


def _warn_atom_range(settings: SampleSettings, trained_hist: Any, size_hist: Any) -> None:
    trained = trained_atom_range(trained_hist)
    if trained is None:
        return
    lo, hi = trained
    if settings.atoms is not None:
        wanted: tuple[int, int] | None = (settings.atoms, settings.atoms)
    else:
        wanted = trained_atom_range(size_hist)
    if wanted is not None and (wanted[0] < lo or wanted[1] > hi):
        what = (f"{wanted[0]} atoms" if wanted[0] == wanted[1]
                else f"atom counts {wanted[0]}-{wanted[1]}")
        warnings.warn(f"sampling {what}, but the model was trained on {lo}-{hi} atoms: "
                      "expect structures of poor quality", AtomRangeWarning, stacklevel=3)
