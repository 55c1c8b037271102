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
from typing import Any

import numpy as np

__all__ = ["CONDITION_FIELDS", "OPTIONAL_IDENTITY", "SAMPLERS", "AtomRangeWarning",
           "SampleSettings", "SampleSettingsError", "trained_atom_range"]

SAMPLERS = ("ddim", "ddpm", "euler")  # the latent family's two, the coordinate family's one
CONDITION_FIELDS = ("formula", "elements", "metal", "bonds_from", "inpaint")
#: identity keys recorded only when on, so runs from before the setting existed still resume
OPTIONAL_IDENTITY = ("restarts", "restrain_bonds")


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
        refine: corrector steps after the last sampler step (coordinate family; None: the
            model's configured count).
        restarts: restart passes (coordinate family: noise back to the model's restart time
            and integrate again, before the corrector steps; None: the model's).
        guidance: classifier-free guidance scale (1: none).
        batch_size: structures per batch (batches group equal atom counts).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
        bf16: bf16 autocast for the denoiser.
        formula: condition on a formula (any pymatgen-readable form); N is its atom count.
        elements: exactly these elements (``"Zn,C,H,O"``); N from p(N | elements).
        metal: this metal with any non-metals (``"Zn"``); N from p(N | metal).
        bonds_from: a reference CIF whose formula and bond graph are the condition.
        inpaint: a reference CIF whose ``keep`` atoms (and lattice unless ``free_lattice``)
            are given; the rest of its formula is generated.
        keep: ``metals``, ``metal-node``, ``linkers`` or site indices ``I,J,K`` of the
            reference file (with ``inpaint``).
        free_lattice: inpainting generates the lattice too.
        restrain_bonds: with ``bonds_from``, Adam steps of the bond restraint after sampling
            (`diffusion.restraint`: the given bonds pulled to the covalent-radius sums, other
            pairs pushed out of bonding distance; 0: off). Figures with it are not the model's
            alone.
    """

    model: str = "default"
    num: int = 100
    seed: int = 0
    atoms: int | None = None
    atoms_from: str = "data"
    steps: int | None = None
    sampler: str | None = None
    refine: int | None = None
    restarts: int | None = None
    guidance: float = 1.0
    batch_size: int = 64
    device: str = "auto"
    bf16: bool = False
    formula: str | None = None
    elements: str | None = None
    metal: str | None = None
    bonds_from: str | None = None
    inpaint: str | None = None
    keep: str | None = None
    free_lattice: bool = False
    restrain_bonds: int = 0

    @property
    def condition(self) -> str | None:
        """The condition's name (``formula``, ``elements``, ...) or None."""
        given = [k for k in CONDITION_FIELDS if getattr(self, k) is not None]
        return given[0] if given else None

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
        _require(self.refine is None or self.refine >= 0,
                 f"refine must be >= 0, got {self.refine} (omit it for the model's default)")
        _require(self.restarts is None or self.restarts >= 0,
                 f"restarts must be >= 0, got {self.restarts} (omit it for the model's default)")
        _require(self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}")
        _require(math.isfinite(self.guidance), f"guidance must be finite, got {self.guidance}")
        self._check_condition()
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

    def _check_condition(self) -> None:
        given = [k for k in CONDITION_FIELDS if getattr(self, k) is not None]
        flag = lambda k: "--" + k.replace("_", "-")  # noqa: E731
        _require(len(given) <= 1, f"{' and '.join(flag(k) for k in given)} cannot be combined "
                 "(give one condition)")
        _require(self.guidance == 1.0 or bool(given),
                 f"guidance {self.guidance} needs a condition, and none is given (use 1)")
        _require(self.keep is None or self.inpaint is not None, "--keep needs --inpaint REF.cif")
        _require(not self.free_lattice or self.inpaint is not None,
                 "--free-lattice needs --inpaint REF.cif")
        _require(isinstance(self.restrain_bonds, int) and self.restrain_bonds >= 0,
                 f"restrain_bonds must be an integer >= 0, got {self.restrain_bonds!r}")
        _require(not self.restrain_bonds or self.bonds_from is not None,
                 "--restrain-bonds needs --bonds-from REF.cif (it restrains the given bonds)")
        _require(self.inpaint is None or self.keep is not None,
                 "--inpaint needs --keep metals|metal-node|linkers|I,J,K")
        _require(self.atoms is None or self.condition in (None, "elements", "metal"),
                 f"--atoms cannot be combined with {flag(self.condition or '')}: the condition "
                 "fixes the atom count")
        for key in ("bonds_from", "inpaint"):
            path = getattr(self, key)
            _require(path is None or Path(path).is_file(), f"{flag(key)} {path}: no such file")
        from mofasa.data.conditions import ConditionError, parse_elements, parse_formula
        from mofasa.data.elements import IS_METAL

        try:
            if self.formula is not None:
                parse_formula(self.formula)
            if self.elements is not None:
                parse_elements(self.elements)
            metal = parse_elements(self.metal, "--metal") if self.metal is not None else None
        except ConditionError as exc:
            raise SampleSettingsError(str(exc)) from None
        _require(metal is None or (len(metal) == 1 and bool(IS_METAL[metal[0]])),
                 f"--metal {self.metal!r}: give one metal, e.g. Zn")

    def resolve(self, model: Any, size_hist: Any = None) -> SampleSettings:
        """Settings with the model's defaults filled in, checked; warns (`AtomRangeWarning`)
        when the atom counts to be sampled (``atoms``, or the support of ``size_hist``, by
        default the model's own histogram) lie outside the model's training range."""
        own = getattr(model.config, "sampler", "euler")
        sampler = self.sampler or own
        allowed = ("euler",) if own == "euler" else ("ddim", "ddpm")
        _require(sampler in allowed, f"sampler {sampler!r} does not fit this model (use "
                 f"{' or '.join(allowed)})")
        own_refine = getattr(model.config, "refine", None)
        _require(own_refine is not None or not self.refine,
                 f"refine {self.refine}: corrector steps need a coordinate-family model")
        refine = own_refine if self.refine is None else self.refine
        own_restarts = getattr(model.config, "restarts", None)
        _require(own_restarts is not None or not self.restarts,
                 f"restarts {self.restarts}: restart sampling needs a coordinate-family model")
        restarts = own_restarts if self.restarts is None else self.restarts
        out = dataclasses.replace(self, steps=int(self.steps or model.config.steps),
                                  sampler=sampler, refine=refine, restarts=restarts).check()
        _warn_atom_range(out, model.num_atoms_hist,
                         model.num_atoms_hist if size_hist is None else size_hist)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for ``settings.json``); ``atoms`` None is kept as null."""
        return dataclasses.asdict(self)

    def row_metadata(self) -> dict[str, str | int | float | bool]:
        """Key-value pairs for every database row (ASE rows take no None values)."""
        # num / batch / device do not change a structure; n_atoms (per row) says a fixed N
        # the condition goes in under its own keys (`sampling.conditions`): "formula" is
        # reserved in an ASE database
        skip = ("num", "batch_size", "device", "atoms", *CONDITION_FIELDS, "keep",
                "free_lattice")
        out = {k: v for k, v in self.to_dict().items() if v is not None and k not in skip}
        out["atoms_from"] = "fixed" if self.atoms is not None else self.atoms_from
        return out

    def identity(self) -> dict[str, Any]:
        """What a continuation of a run in the same folder must repeat (not num / batch /
        device, which do not change any structure)."""
        d = self.to_dict()
        out = {k: d[k] for k in ("model", "seed", "atoms", "atoms_from", "steps", "sampler",
                                 "refine", "guidance", "bf16", *CONDITION_FIELDS, "keep",
                                 "free_lattice")}
        for key in OPTIONAL_IDENTITY:  # off reads as before the setting existed: old runs
            if d[key]:  # still resume
                out[key] = d[key]
        return out


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
