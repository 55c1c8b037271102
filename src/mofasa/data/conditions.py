"""What a conditional sample is told, in the canonical atom order (numpy; no model code).

A `Condition` describes one crystal of N atoms in canonical order (`data/canonical.py`):

* ``allowed`` (N, 101) bool: the elements each atom may be. A formula gives one element per
  atom (the canonical order sorts atoms by element rank first, so a formula fixes the element
  at every index); ``--elements`` allows the same set at every atom; ``--metal`` allows that
  metal and every non-metal. Written types never leave ``allowed``.
* ``composition`` (101,) element fractions when the formula is known, and ``present`` (101,)
  the elements that must occur.
* ``bonds`` (E, 2) bonded index pairs (the canonical bond rule of a reference).
* ``keep`` (N,) bool with ``frac`` (N, 3): atoms whose fractional coordinates are given
  (inpainting), and ``lattice`` (3, 3) when the cell is given too.

`condition_arrays` turns a list of them into the padded arrays the models take. Helpers read
formulas (`parse_formula`), references (`reference_condition`) and inpainting selections
(`keep_selection`); `node_labels` gives the metal / metal-node / linker labels both training
masks and ``--keep`` use.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mofasa.data.canonical import CanonicalFrame, bond_edges, canonicalize_mapped, element_rank
from mofasa.data.elements import IS_METAL, MAX_Z, NUM_TOKENS, symbol_to_z, z_to_symbol

__all__ = ["HOP_CLASSES", "KEEP_KINDS", "Condition", "ConditionError", "condition_arrays",
           "formula_condition", "formula_string", "hop_classes", "keep_selection",
           "node_labels", "parse_elements", "parse_formula", "reference_condition",
           "set_condition"]

KEEP_KINDS = ("metals", "metal-node", "linkers")
MAX_HOPS = 3  # bond-graph distances 1..3 are told apart; farther pairs share one class
HOP_BONDED = 2  # the hop class of a bonded pair (`hop_classes`: 1 + hops)
HOP_CLASSES = MAX_HOPS + 3  # none given, self, 1..MAX_HOPS hops, farther


class ConditionError(ValueError):
    """A condition that cannot be built (bad formula, unreadable reference, bad selection)."""


@dataclass(frozen=True)
class Condition:
    """One crystal's condition (module docstring); None fields are not given."""

    num_atoms: int
    allowed: np.ndarray | None = None  # (N, 101) bool
    composition: np.ndarray | None = None  # (101,) fractions summing to 1
    present: np.ndarray | None = None  # (101,) bool
    bonds: np.ndarray | None = None  # (E, 2) int64, i != j, both directions
    keep: np.ndarray | None = None  # (N,) bool
    frac: np.ndarray | None = None  # (N, 3) kept coordinates (other rows unused)
    lattice: np.ndarray | None = None  # (3, 3) given cell (Å)
    frame: CanonicalFrame | None = None  # reference file -> canonical frame (inpainting)

    @property
    def kinds(self) -> tuple[str, ...]:
        """Which conditions are given: formula, elements, bonds, keep, lattice."""
        out = []
        if self.composition is not None:
            out.append("formula")
        elif self.allowed is not None:
            out.append("elements")
        out += [k for k in ("bonds", "keep", "lattice") if getattr(self, k) is not None]
        return tuple(out)

    def elements(self) -> np.ndarray | None:
        """(N,) atomic numbers when every atom's element is fixed, else None."""
        if self.allowed is None or not (self.allowed.sum(1) == 1).all():
            return None
        return self.allowed.argmax(1)


def parse_formula(text: str) -> dict[int, int]:
    """Element counts of a formula (any order, spaces, explicit 1, parentheses: anything
    pymatgen's `Composition` reads); counts must be whole numbers.

    Raises:
        ConditionError: naming the formula and what is wrong with it.
    """
    from pymatgen.core import Composition, Element

    if not isinstance(text, str) or not text.strip():
        raise ConditionError("formula is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            comp = Composition(text)
    except (ValueError, KeyError) as exc:
        raise ConditionError(f"formula {text!r} cannot be read: {exc}") from None
    counts: dict[int, int] = {}
    for el, amount in comp.items():
        if not isinstance(el, Element):  # pymatgen reads unknown symbols as dummy species
            raise ConditionError(f"formula {text!r}: unknown element "
                                 f"{getattr(el, 'symbol', el)!s}")
        z = int(el.Z)
        if not 1 <= z <= MAX_Z:
            raise ConditionError(f"formula {text!r}: element {el} is outside Z = 1..{MAX_Z}")
        if amount <= 0 or abs(amount - round(amount)) > 1e-6:
            raise ConditionError(f"formula {text!r}: {el} has a non-integer count {amount:g}")
        counts[z] = counts.get(z, 0) + round(amount)
    if not counts:
        raise ConditionError(f"formula {text!r} has no elements")
    return counts


def formula_string(numbers: np.ndarray) -> str:
    """Formula in canonical element order (metals first), explicit counts: ``Zn4O13C24H12``."""
    z, n = np.unique(np.asarray(numbers), return_counts=True)
    order = np.argsort(element_rank(z), kind="stable")
    return "".join(f"{z_to_symbol(int(z[k]))}{int(n[k])}" for k in order)


def _canonical_numbers(counts: dict[int, int]) -> np.ndarray:
    """(N,) atomic numbers sorted by element rank, as in the canonical order."""
    z = np.array(sorted(counts), dtype=np.int64)
    z = z[np.argsort(element_rank(z), kind="stable")]
    return np.repeat(z, [counts[int(v)] for v in z])


def _one_hot(numbers: np.ndarray) -> np.ndarray:
    out = np.zeros((len(numbers), NUM_TOKENS), dtype=bool)
    out[np.arange(len(numbers)), numbers] = True
    return out


def _composition(numbers: np.ndarray) -> np.ndarray:
    return np.bincount(numbers, minlength=NUM_TOKENS).astype(np.float64) / max(len(numbers), 1)


def formula_condition(formula: str | dict[int, int] | np.ndarray) -> Condition:
    """Every atom's element from a formula (text, counts, or (N,) atomic numbers)."""
    if isinstance(formula, str):
        numbers = _canonical_numbers(parse_formula(formula))
    elif isinstance(formula, dict):
        numbers = _canonical_numbers(formula)
    else:
        numbers = np.asarray(formula, dtype=np.int64)
    return Condition(num_atoms=len(numbers), allowed=_one_hot(numbers),
                     composition=_composition(numbers),
                     present=np.bincount(numbers, minlength=NUM_TOKENS) > 0)


def parse_elements(text: str, what: str = "--elements") -> list[int]:
    """``"Zn,C,H,O"`` (commas or spaces) -> sorted atomic numbers; one-line error naming
    ``what`` if bad."""
    symbols = [s for s in re.split(r"[,\s]+", text.strip()) if s]
    if not symbols:
        raise ConditionError(f"{what} is empty (use for example Zn,C,H,O)")
    out = set()
    for s in symbols:
        try:
            out.add(symbol_to_z(s[:1].upper() + s[1:].lower()))
        except (KeyError, ValueError):
            raise ConditionError(f"{what}: unknown element {s!r}") from None
    return sorted(out)


def set_condition(num_atoms: int, elements: list[int] | None = None,
                  metal: int | None = None) -> Condition:
    """Exactly the given elements (each must occur), or one given metal with any non-metals."""
    if num_atoms < 1:
        raise ConditionError(f"atom count must be >= 1, got {num_atoms}")
    allowed = np.zeros(NUM_TOKENS, dtype=bool)
    present = np.zeros(NUM_TOKENS, dtype=bool)
    if elements is not None:
        if len(elements) > num_atoms:
            raise ConditionError(f"{len(elements)} elements cannot occur in {num_atoms} atoms")
        allowed[elements] = present[elements] = True
    elif metal is not None:
        if not IS_METAL[metal]:
            raise ConditionError(f"--metal {z_to_symbol(metal)} is not a metal")
        allowed[1:] = ~IS_METAL[1:]
        allowed[metal] = present[metal] = True
    else:
        raise ConditionError("set_condition needs elements or a metal")
    return Condition(num_atoms=num_atoms, allowed=np.repeat(allowed[None], num_atoms, 0),
                     present=present)


def node_labels(numbers: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(N,) uint8: 2 metal, 1 non-metal bonded to a metal, 0 other (``pairs`` (E, 2))."""
    metal = IS_METAL[numbers]
    labels = np.where(metal, 2, 0).astype(np.uint8)
    near_metal = np.zeros(len(numbers), dtype=bool)
    if len(pairs):
        near_metal[pairs[metal[pairs[:, 1]], 0]] = True  # i bonded to a metal j
    labels[(~metal) & near_metal] = 1
    return labels


def keep_selection(spec: str, labels: np.ndarray, frame: CanonicalFrame | None = None
                   ) -> np.ndarray:
    """(N,) bool of the atoms to keep: ``metals``, ``metal-node`` (metals and the atoms bonded
    to them), ``linkers`` (every non-metal) or ``I,J,K`` (indices in the reference file's site
    order, mapped through ``frame.sites`` to canonical indices)."""
    if spec == "metals":
        keep = labels == 2
    elif spec == "metal-node":
        keep = labels >= 1
    elif spec == "linkers":
        keep = labels < 2
    else:
        try:
            sites = [int(s) for s in spec.split(",") if s.strip()]
        except ValueError:
            raise ConditionError(f"--keep {spec!r}: use {', '.join(KEEP_KINDS)} or site "
                                 "indices like 0,5,7") from None
        n_sites = len(frame.sites) if frame is not None else len(labels)
        bad = [s for s in sites if not 0 <= s < n_sites]
        if not sites or bad:
            raise ConditionError(f"--keep {spec!r}: site indices must lie in 0..{n_sites - 1}")
        keep = np.zeros(len(labels), dtype=bool)
        keep[frame.sites[sites] if frame is not None else sites] = True
    if not keep.any():
        raise ConditionError(f"--keep {spec}: the reference has no such atoms")
    return keep


def reference_condition(path: str | Path, *, bonds: bool = False, keep: str | None = None,
                        free_lattice: bool = False) -> tuple[Condition, Any]:
    """The condition a reference CIF gives: its formula, optionally its bonds, optionally kept
    atoms (and its lattice unless ``free_lattice``); and its canonical `Crystal`.

    Raises:
        ConditionError: the file cannot be read or checked (one line naming it and why).
    """
    from mofasa.data.checks import read_checked_cif
    from mofasa.data.errors import CrystalError

    path = Path(path)
    try:
        crystal = read_checked_cif(path.read_text(errors="replace"), id=path.stem)
        canonical, frame = canonicalize_mapped(crystal)
    except OSError as exc:
        raise ConditionError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except CrystalError as exc:
        raise ConditionError(f"{path}: {exc}") from None
    cond = formula_condition(canonical.numbers)
    pairs, _ = bond_edges(canonical.lattice, canonical.frac, canonical.numbers)
    pairs = np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)
    if bonds:
        cond = dataclasses.replace(cond, bonds=pairs)
    if keep is not None:
        mask = keep_selection(keep, node_labels(canonical.numbers, pairs), frame)
        cond = dataclasses.replace(cond, keep=mask, frac=canonical.frac.copy(), frame=frame,
                                   lattice=None if free_lattice else canonical.lattice.copy())
    return cond, canonical


def hop_classes(num_atoms: int, pairs: np.ndarray) -> np.ndarray:
    """(N, N) uint8 bond-graph distance class, 1 + hops: 1 self, 2..MAX_HOPS + 1 bonded at
    1..MAX_HOPS hops, MAX_HOPS + 2 farther or not connected (0 stays free for "no bonds
    given")."""
    hops = np.full((num_atoms, num_atoms), MAX_HOPS + 2, dtype=np.uint8)
    np.fill_diagonal(hops, 1)
    adj = np.zeros((num_atoms, num_atoms), dtype=bool)
    if len(pairs):
        adj[pairs[:, 0], pairs[:, 1]] = adj[pairs[:, 1], pairs[:, 0]] = True
    reach = np.eye(num_atoms, dtype=bool)
    for k in range(1, MAX_HOPS + 1):
        nxt = (reach.astype(np.uint8) @ adj.astype(np.uint8)) > 0  # one more hop
        hops[nxt & ~reach] = k + 1
        reach |= nxt
    return hops


def condition_arrays(conditions: list[Condition | None], n_max: int) -> dict[str, np.ndarray]:
    """Padded arrays of a batch (None rows: unconditional).

    Returns:
        ``allowed`` (B, N, 101) bool, ``has_allowed`` (B,) bool, ``crystal`` (B, 2 * 101)
        float32 (composition fractions, present elements), ``hops`` (B, N, N) uint8 (0 where
        no bonds are given), ``keep`` (B, N) bool, ``frac`` (B, N, 3) float32,
        ``lattice`` (B, 3, 3) float32 and ``has_lattice`` (B,) bool.
    """
    B = len(conditions)
    out = {"allowed": np.zeros((B, n_max, NUM_TOKENS), bool), "has_allowed": np.zeros(B, bool),
           "crystal": np.zeros((B, 2 * NUM_TOKENS), np.float32),
           "hops": np.zeros((B, n_max, n_max), np.uint8), "keep": np.zeros((B, n_max), bool),
           "frac": np.zeros((B, n_max, 3), np.float32),
           "lattice": np.zeros((B, 3, 3), np.float32), "has_lattice": np.zeros(B, bool)}
    for b, c in enumerate(conditions):
        if c is None:
            continue
        n = c.num_atoms
        if c.allowed is not None:
            out["allowed"][b, :n], out["has_allowed"][b] = c.allowed, True
        if c.composition is not None:
            out["crystal"][b, :NUM_TOKENS] = c.composition
        if c.present is not None:
            out["crystal"][b, NUM_TOKENS:] = c.present
        if c.bonds is not None:
            out["hops"][b, :n, :n] = hop_classes(n, c.bonds)
        if c.keep is not None:
            out["keep"][b, :n], out["frac"][b, :n] = c.keep, c.frac
        if c.lattice is not None:
            out["lattice"][b], out["has_lattice"][b] = c.lattice, True
    return out
