"""p(N | condition): atom counts learned from the training split, with back-off.

Mofasa leaves open how many atoms to generate when only some chemistry is asked for. Here the
training split answers: for an exact element set (``--elements Zn,C,H,O``) the atom counts of
the training structures with exactly those elements; for a metal (``--metal Zn``) those of the
structures containing it; otherwise the global histogram. Smoothing only reweights counts seen
with the condition (add-``alpha`` on their support), so a proposal is always an N some training
structure with that condition had. A condition never seen backs off (element set -> its metals
-> global) and says so in a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from mofasa.data.elements import IS_METAL, z_to_symbol

__all__ = ["AtomCountModel", "AtomCountWarning"]


class AtomCountWarning(UserWarning):
    """A condition not seen in training: p(N) backs off to a coarser one."""


def _key(elements: Iterable[int]) -> str:
    return ",".join(str(z) for z in sorted({int(z) for z in elements}))


@dataclass
class AtomCountModel:
    """Atom-count histograms per element set, per metal, and global.

    Attributes:
        by_elements: element-set key (sorted Z joined by commas) -> {N: count}.
        by_metal: metal Z -> {N: count} (structures containing that metal).
        total: {N: count}.
        alpha: add-alpha smoothing on each histogram's support.
    """

    by_elements: dict[str, dict[int, int]] = field(default_factory=dict)
    by_metal: dict[int, dict[int, int]] = field(default_factory=dict)
    total: dict[int, int] = field(default_factory=dict)
    alpha: float = 0.5

    @classmethod
    def fit(cls, structures: Iterable[np.ndarray], alpha: float = 0.5) -> AtomCountModel:
        """From the (N_i,) atomic numbers of every training structure."""
        model = cls(alpha=alpha)
        for numbers in structures:
            n, z = len(numbers), np.unique(numbers)
            hists = [model.total, model.by_elements.setdefault(_key(z), {})]
            hists += [model.by_metal.setdefault(int(m), {}) for m in z[IS_METAL[z]]]
            for hist in hists:
                hist[n] = hist.get(n, 0) + 1
        return model

    def histogram(self, elements: Iterable[int] | None = None, metal: int | None = None,
                  n_max: int | None = None) -> tuple[np.ndarray, str]:
        """(M + 1,) probabilities over N and the level used (``elements``, ``metal``,
        ``global``); warns (`AtomCountWarning`) when backing off from the condition asked."""
        asked, level, hist = None, "global", self.total
        if elements is not None:
            z = sorted({int(v) for v in elements})
            asked = "elements " + ",".join(z_to_symbol(v) for v in z)
            metals = [v for v in z if IS_METAL[v]]
            if _key(z) in self.by_elements:
                level, hist = "elements", self.by_elements[_key(z)]
            elif metals:
                merged: dict[int, int] = {}
                for m in metals:
                    for n, c in self.by_metal.get(m, {}).items():
                        merged[n] = merged.get(n, 0) + c
                if merged:
                    level, hist = "metal", merged
        elif metal is not None:
            asked = f"metal {z_to_symbol(int(metal))}"
            if int(metal) in self.by_metal:
                level, hist = "metal", self.by_metal[int(metal)]
        expected = "global" if asked is None else ("metal" if asked.startswith("metal")
                                                   else "elements")
        if level != expected:
            warnings.warn(f"no training structure has {asked}: atom counts drawn from the "
                          f"{level} histogram instead", AtomCountWarning, stacklevel=2)
        if not hist:
            raise ValueError("the atom-count model is empty")
        top = max(max(hist), n_max or 0)
        p = np.zeros(top + 1)
        for n, c in hist.items():
            p[n] = c + self.alpha
        return p / p.sum(), level

    def to_dict(self) -> dict:
        """Plain dict (strings, ints, lists): safe in a ``weights_only`` checkpoint."""
        pack = lambda h: [[int(n), int(c)] for n, c in sorted(h.items())]  # noqa: E731
        return {"alpha": float(self.alpha), "total": pack(self.total),
                "by_metal": {str(m): pack(h) for m, h in self.by_metal.items()},
                "by_elements": {k: pack(h) for k, h in self.by_elements.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> AtomCountModel:
        """Inverse of :meth:`to_dict`."""
        unpack = lambda rows: {int(n): int(c) for n, c in rows}  # noqa: E731
        return cls(by_elements={k: unpack(v) for k, v in d["by_elements"].items()},
                   by_metal={int(m): unpack(v) for m, v in d["by_metal"].items()},
                   total=unpack(d["total"]), alpha=float(d["alpha"]))
