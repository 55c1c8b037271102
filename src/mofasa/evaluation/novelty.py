"""Novelty and uniqueness with pymatgen's StructureMatcher, behind an exact-safe pre-filter.

Matcher: ``StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5, primitive_cell=True, scale=True,
attempt_supercell=True)`` (the protocol's tolerances, as GLASS used them).

Pre-filter (never rejects a pair the matcher would accept; see `could_match`):
1. ``fit`` returns False at once unless both reduced formulas are equal (its species comparator
   hashes the composition's reduced formula), so candidates are bucketed by reduced formula.
2. After its own reduction (Niggli, then ``get_primitive_structure()``), ``fit`` maps every site
   of one structure onto a supercell of the other with an *integer* multiplier and returns None
   unless the site counts are then equal (``_strict_match``: ``mask.shape[0] != mask.shape[1]``).
   So the two reduced site counts must divide one another. We reduce each structure once, with
   the matcher's own routine (cached), test the divisibility, and call ``fit(...,
   skip_structure_reduction=True)`` on the reduced pair, which is what ``fit`` does internally.
No density or volume filter: ``scale=True`` makes the matcher volume-blind.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

    from mofasa.data.crystal import Crystal

__all__ = [
    "MATCHER_SETTINGS",
    "Matcher",
    "ReferenceIndex",
    "could_match",
    "formula_key",
    "uniqueness",
]

MATCHER_SETTINGS: dict[str, Any] = {
    "ltol": 0.2,
    "stol": 0.3,
    "angle_tol": 5,
    "primitive_cell": True,
    "scale": True,
    "attempt_supercell": True,
}

FormulaKey = tuple[tuple[int, int], ...]


def formula_key(numbers: np.ndarray) -> FormulaKey:
    """Reduced formula as ((Z, count / gcd), ...) sorted by Z.

    Equal keys <=> equal pymatgen ``Composition.reduced_formula`` (pymatgen's special names such
    as "O2" for O are a one-to-one relabelling of the same reduced counts).
    """
    zs, counts = np.unique(np.asarray(numbers), return_counts=True)
    g = math.gcd(*(int(c) for c in counts)) if len(counts) else 1
    return tuple((int(z), int(c) // g) for z, c in zip(zs, counts, strict=True))


def could_match(n_a: int, n_b: int) -> bool:
    """Necessary condition on reduced (matcher-primitive) site counts: one divides the other."""
    return n_a > 0 and n_b > 0 and (n_a % n_b == 0 or n_b % n_a == 0)


class Matcher:
    """StructureMatcher with the protocol's settings, reducing each structure once.

    Args:
        **overrides: replace entries of `MATCHER_SETTINGS`.
    """

    def __init__(self, **overrides: Any) -> None:
        from pymatgen.analysis.structure_matcher import StructureMatcher

        self.settings = {**MATCHER_SETTINGS, **overrides}
        self._sm = StructureMatcher(**self.settings)
        self.n_fits = 0

    def reduce(self, structure: Structure) -> Structure:
        """The structure exactly as ``fit`` reduces it (species processing, Niggli, primitive)."""
        (processed,) = self._sm._process_species([structure])
        return self._sm._get_reduced_structure(processed, self.settings["primitive_cell"], True)

    def fit_reduced(self, a: Structure, b: Structure) -> bool:
        """``fit(a, b)`` for two outputs of `reduce`, with the exact-safe pre-filter."""
        if len(a) == 0 or len(b) == 0:
            return False
        if not could_match(len(a), len(b)):
            return False
        if a.composition.reduced_formula != b.composition.reduced_formula:
            return False
        self.n_fits += 1
        return bool(self._sm.fit(a, b, skip_structure_reduction=True))

    def fit(self, a: Structure, b: Structure) -> bool:
        """Plain ``StructureMatcher.fit`` (no pre-filter), for reference and tests."""
        return bool(self._sm.fit(a, b))


class ReferenceIndex:
    """Training structures bucketed by reduced formula; structures load and reduce lazily.

    Args:
        get: function index -> `Crystal`.
        ids: one id per structure.
        keys: one `formula_key` per structure.
    """

    def __init__(
        self, get: Callable[[int], Crystal], ids: Sequence[str], keys: Sequence[FormulaKey]
    ) -> None:
        self._get = get
        self.ids = list(ids)
        self.buckets: dict[FormulaKey, list[int]] = defaultdict(list)
        for i, key in enumerate(keys):
            self.buckets[key].append(i)
        self._reduced: dict[int, Structure] = {}

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_crystals(cls, crystals: Sequence[Crystal]) -> ReferenceIndex:
        crystals = list(crystals)
        ids = [c.id or f"ref{i}" for i, c in enumerate(crystals)]
        return cls(crystals.__getitem__, ids, [formula_key(c.numbers) for c in crystals])

    @classmethod
    def from_prepared(
        cls, path: str | Path, split: str = "train", max_atoms: int | None = None
    ) -> ReferenceIndex:
        """A split of a dataset written by `mofasa data prepare` (memory-mapped)."""
        from mofasa.data.dataset import CrystalDataset

        ds = CrystalDataset(path, split, max_atoms=max_atoms)
        numbers = np.asarray(ds._numbers)
        offsets = np.asarray(ds._offsets)
        keys = [formula_key(numbers[offsets[j] : offsets[j + 1]]) for j in ds._index]
        ids = [ds.ids[j] for j in ds._index]
        return cls(ds.__getitem__, ids, keys)

    @classmethod
    def load(cls, path: str | Path, split: str = "train") -> ReferenceIndex:
        """A prepared dataset folder (its ``split``), or any input that
        `mofasa.evaluation.inputs.iter_inputs` reads (folder/archive of CIFs, ASE db)."""
        if (Path(path) / "manifest.json").is_file():
            return cls.from_prepared(path, split)
        from mofasa.evaluation.inputs import iter_inputs

        crystals = [item.crystal for item in iter_inputs(path) if item.crystal is not None]
        return cls.from_crystals(crystals)

    def candidates(self, key: FormulaKey) -> list[int]:
        return self.buckets.get(key, [])

    def reduced(self, i: int, matcher: Matcher) -> Structure:
        if i not in self._reduced:
            self._reduced[i] = matcher.reduce(self._get(i).to_pymatgen())
        return self._reduced[i]

    def find_match(
        self, crystal: Crystal, matcher: Matcher, reduced: Structure | None = None
    ) -> tuple[str | None, int]:
        """First reference structure the matcher accepts, and the number of fits run.

        Returns:
            (matched id or None, number of full ``fit`` calls).
        """
        before = matcher.n_fits
        cands = self.candidates(formula_key(crystal.numbers))
        if not cands:
            return None, 0
        if reduced is None:
            reduced = matcher.reduce(crystal.to_pymatgen())
        for i in cands:
            if matcher.fit_reduced(reduced, self.reduced(i, matcher)):
                return self.ids[i], matcher.n_fits - before
        return None, matcher.n_fits - before


def uniqueness(
    crystals: Iterable[Crystal | None],
    matcher: Matcher | None = None,
    errors: dict[int, str] | None = None,
) -> list[tuple[bool | None, int | None]]:
    """For each structure in order: (not matched by any earlier one, index of the first match).

    ``None`` entries (structures that could not be read) give ``(None, None)`` and match nothing.
    A structure whose reduction fails gives ``(None, None)`` and matches nothing; a comparison
    that fails counts as no match. Either way the structure's message goes into ``errors``
    (index -> message) and the others go on: one bad structure never stops the run.
    """
    matcher = matcher or Matcher()
    errors = {} if errors is None else errors
    crystals = list(crystals)
    buckets: dict[FormulaKey, list[int]] = defaultdict(list)
    for i, c in enumerate(crystals):
        if c is not None and c.num_atoms:
            buckets[formula_key(c.numbers)].append(i)
    out: list[tuple[bool | None, int | None]] = [(None, None)] * len(crystals)
    for members in buckets.values():
        if len(members) == 1:
            out[members[0]] = (True, None)
            continue
        reduced = _reduce_each(crystals, members, matcher, errors)
        usable = [i for i in members if i in reduced]
        for pos, i in enumerate(usable):
            match = _first_match(i, usable[:pos], reduced, matcher, errors)
            out[i] = (match is None, match)
    return out


def _short(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def _reduce_each(
    crystals: list, members: list[int], matcher: Matcher, errors: dict[int, str]
) -> dict[int, Structure]:
    """The matcher-reduced structure of each member whose reduction succeeds."""
    reduced = {}
    for i in members:
        try:
            reduced[i] = matcher.reduce(crystals[i].to_pymatgen())
        except Exception as exc:  # this structure's failure only
            errors[i] = f"reduction failed: {_short(exc)}"
    return reduced


def _first_match(
    i: int, earlier: list[int], reduced: dict, matcher: Matcher, errors: dict[int, str]
) -> int | None:
    """The first of ``earlier`` that matches ``i``; a failing comparison is no match."""
    for j in earlier:
        try:
            if matcher.fit_reduced(reduced[i], reduced[j]):
                return j
        except Exception as exc:
            errors.setdefault(i, f"comparison with input {j} failed: {_short(exc)}")
    return None
