"""Geometry optimisation through any ASE calculator (default: CHGNet, weights in its wheel).

Protocol: cell and positions relaxed together (``FrechetCellFilter``) with FIRE, until the
largest force (and scaled stress) is below ``fmax`` = 0.02 eV/Å or ``steps`` = 200 steps; a run
that stops on the step limit is recorded as not converged.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mofasa.data.crystal import Crystal

if TYPE_CHECKING:  # pragma: no cover
    from ase.calculators.calculator import Calculator

__all__ = ["CalculatorSpec", "RelaxSettings", "make_calculator", "relax_crystal", "relax_rmsd"]

#: None / "chgnet" (default), "emt" (ASE's toy potential, for tests), a zero-argument factory,
#: or a calculator instance
CalculatorSpec = Any


@dataclass(frozen=True)
class RelaxSettings:
    """Optimiser settings (protocol defaults)."""

    fmax: float = 0.02  # eV/Å
    steps: int = 200
    max_seconds: float | None = None  # stop (not converged) past this wall time
    device: str | None = None  # for CHGNet: None picks CUDA when present


_CACHE: dict[Any, Calculator] = {}


def make_calculator(spec: CalculatorSpec = None, device: str | None = None) -> Calculator:
    """An ASE calculator from a spec; named ones are built once per process and cached."""
    if spec is None or (isinstance(spec, str) and spec.lower() == "chgnet"):
        key = ("chgnet", device)
        if key not in _CACHE:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
            from chgnet.model import CHGNet
            from chgnet.model.dynamics import CHGNetCalculator

            if device is None:
                import torch

                device = "cuda" if torch.cuda.is_available() else "cpu"
            with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints on load
                model = CHGNet.load(use_device=device, verbose=False)
                _CACHE[key] = CHGNetCalculator(model, use_device=device, on_isolated_atoms="ignore")
        return _CACHE[key]
    if isinstance(spec, str) and spec.lower() == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    if isinstance(spec, str):
        raise ValueError(f"unknown calculator {spec!r} (use 'chgnet', 'emt' or a factory)")
    if callable(spec) and not hasattr(spec, "get_potential_energy"):
        return spec()
    return spec


def calculator_name(spec: CalculatorSpec) -> str:
    if spec is None:
        return "chgnet"
    if isinstance(spec, str):
        return spec.lower()
    return getattr(spec, "__name__", type(spec).__name__)


def relax_rmsd(before: Crystal, after: Crystal) -> float:
    """RMS displacement (Å) of the atoms between two structures with the same atom order.

    Displacements are taken in fractional coordinates by minimum image, the mean displacement (a
    rigid drift) is removed, and the result is expressed in the relaxed cell.
    """
    d = after.frac - before.frac  # (N, 3)
    d -= np.round(d)
    d -= d.mean(axis=0)
    cart = d @ after.lattice  # (N, 3) Å
    return float(np.sqrt((cart**2).sum(axis=1).mean())) if len(cart) else 0.0


def relax_crystal(
    crystal: Crystal,
    calculator: CalculatorSpec = None,
    settings: RelaxSettings | None = None,
) -> dict[str, Any]:
    """Relax cell and positions with FIRE + FrechetCellFilter.

    Returns:
        ``{"crystal": relaxed Crystal, "converged": bool, "steps": int, "seconds": float,
        "rmsd": Å, "energy_per_atom": eV, "fmax_final": eV/Å, "calculator": name}``.
    """
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    settings = settings or RelaxSettings()
    calc = make_calculator(calculator, settings.device)
    atoms = crystal.to_ase()
    atoms.calc = calc
    start = time.perf_counter()
    filtered = FrechetCellFilter(atoms)
    opt = FIRE(filtered, logfile=None)
    converged = False
    with warnings.catch_warnings():  # per-step noise: CHGNet's tensor conversion, scipy's logm
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        for converged in opt.irun(fmax=settings.fmax, steps=settings.steps):
            elapsed = time.perf_counter() - start
            if settings.max_seconds is not None and elapsed > settings.max_seconds:
                converged = False
                break
    forces = filtered.get_forces()
    relaxed = Crystal.from_ase(atoms, id=crystal.id)
    return {
        "crystal": relaxed,
        "converged": bool(converged),
        "steps": int(opt.nsteps),
        "seconds": time.perf_counter() - start,
        "rmsd": relax_rmsd(crystal, relaxed),
        "energy_per_atom": float(atoms.get_potential_energy()) / max(len(atoms), 1),
        "fmax_final": float(np.sqrt((forces**2).sum(axis=1)).max()) if len(forces) else 0.0,
        "calculator": calculator_name(calculator),
    }
