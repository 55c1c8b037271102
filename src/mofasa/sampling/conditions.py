"""From a run's condition settings to per-structure conditions (`ConditionPlan`).

The plan is built once per run, after the model is loaded: it checks the condition against the
model (trained with conditions; elements in its vocabulary), reads references, and says for
every structure its atom count and its `Condition`. A formula, a bond reference or an
inpainting reference fixes N; ``--elements`` / ``--metal`` draw N per structure from the
model's p(N | condition) (`data.atom_counts.AtomCountModel`), from the structure's own
``(seed, index)`` generator like every other draw.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mofasa.data.atom_counts import AtomCountModel
from mofasa.data.conditions import (
    Condition,
    ConditionError,
    formula_condition,
    formula_string,
    parse_elements,
    reference_condition,
    set_condition,
)
from mofasa.data.elements import z_to_symbol
from mofasa.sampling.settings import SampleSettings, SampleSettingsError

__all__ = ["ConditionPlan", "plan_conditions"]


@dataclass
class ConditionPlan:
    """A run's conditions.

    Attributes:
        name: ``formula``, ``elements``, ``metal``, ``bonds_from``, ``inpaint``.
        fixed: the one condition of every structure (formula, bonds, inpainting).
        elements, metal: the set condition (N drawn per structure).
        size_probs: (M + 1,) p(N | condition) for a set condition.
        reference: the canonical reference crystal (bonds, inpainting).
        metadata: key-value pairs for every row (``condition``, ``requested_formula``,
            ``reference``, ``keep``, ``free_lattice``, ``kept_atoms``, ``reference_frame``,
            ``elements``, ``metal``, ``atom_counts_from``; none of them reserved in ASE).
    """

    name: str
    fixed: Condition | None = None
    elements: list[int] | None = None
    metal: int | None = None
    size_probs: np.ndarray | None = None
    reference: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def conditions(self, sizes: Sequence[int]) -> list[Condition]:
        """One condition per structure of the given atom counts."""
        if self.fixed is not None:
            return [self.fixed] * len(sizes)
        return [set_condition(int(n), self.elements, self.metal) for n in sizes]


def _vocabulary_check(model: Any, numbers: Sequence[int], what: str) -> None:
    seen = set(getattr(model, "data_stats", {}).get("elements_seen", []))
    missing = sorted({int(z) for z in numbers} - seen) if seen else []
    if missing:
        raise SampleSettingsError(
            f"{what}: element(s) {', '.join(z_to_symbol(z) for z in missing)} never occur in "
            "the model's training data")


def plan_conditions(settings: SampleSettings, model: Any) -> ConditionPlan | None:
    """The plan of ``settings``' condition (None without one).

    Raises:
        SampleSettingsError: the model was not trained with conditions, an element is outside
            its vocabulary, or a reference cannot be used (one line each).
    """
    name = settings.condition
    if name is None:
        return None
    flag = "--" + name.replace("_", "-")
    if not getattr(model, "conditional", False):
        raise SampleSettingsError(f"{flag}: this model ({settings.model}) was not trained with "
                                  "conditions")
    try:
        plan = _build(settings, name, model)
    except ConditionError as exc:
        raise SampleSettingsError(str(exc)) from None
    numbers = plan.elements or ([plan.metal] if plan.metal else plan.fixed.elements())
    _vocabulary_check(model, numbers, flag)
    return plan


def _build(settings: SampleSettings, name: str, model: Any) -> ConditionPlan:
    meta: dict[str, Any] = {"condition": name}
    if name == "formula":
        cond = formula_condition(settings.formula)
        meta["requested_formula"] = formula_string(cond.elements())
        return ConditionPlan(name, fixed=cond, metadata=meta)
    if name in ("bonds_from", "inpaint"):
        path = settings.bonds_from if name == "bonds_from" else settings.inpaint
        cond, ref = reference_condition(path, bonds=name == "bonds_from", keep=settings.keep,
                                        free_lattice=settings.free_lattice)
        meta.update(reference=str(path), requested_formula=formula_string(ref.numbers))
        if cond.keep is not None:
            meta.update(keep=settings.keep, free_lattice=bool(settings.free_lattice),
                        kept_atoms=int(cond.keep.sum()),
                        reference_frame=json.dumps(cond.frame.to_dict()))
        return ConditionPlan(name, fixed=cond, reference=ref, metadata=meta)
    stats = getattr(model, "data_stats", {})
    if "atom_counts" not in stats:
        raise SampleSettingsError(f"--{name}: the model stores no p(N | condition)")
    counts = AtomCountModel.from_dict(stats["atom_counts"])
    if name == "elements":
        zs = parse_elements(settings.elements)
        _vocabulary_check(model, zs, "--elements")  # before p(N) warns about a back-off
        probs, level = counts.histogram(elements=zs)
        meta.update(elements=",".join(z_to_symbol(z) for z in zs), atom_counts_from=level)
        return ConditionPlan(name, elements=zs, size_probs=probs, metadata=meta)
    (z,) = parse_elements(settings.metal, "--metal")
    _vocabulary_check(model, [z], "--metal")
    probs, level = counts.histogram(metal=z)
    meta.update(metal=z_to_symbol(z), atom_counts_from=level)
    return ConditionPlan(name, metal=z, size_probs=probs, metadata=meta)
