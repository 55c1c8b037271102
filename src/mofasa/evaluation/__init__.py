"""mofasa.evaluation: the field's MOF evaluation protocol (see docs/EVALUATION.md).

Validity with mofchecker 0.9.6 (through a compatibility layer for current pymatgen; optionally
screened: stopped at the first failing check), novelty and uniqueness with StructureMatcher,
crystal systems with spglib, relaxation through any ASE calculator (CHGNet by default), optional
Zeo++ pores and RCSR topology (moffragmentor + Systre), and a report. Every check runs in an
isolated worker process with a time limit.

    from mofasa.evaluation import evaluate
    result = evaluate(crystals, reference="prepared/qmof")   # list of Crystal
    result.summary["valid_rate"], result.records[0]["has_lone_molecule"]

Heavy dependencies (mofchecker, pymatgen, torch models) load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from mofasa.evaluation.compat import (
        EvaluationSetupError,
        EvaluationUsageError,
        require_checkers,
    )
    from mofasa.evaluation.novelty import Matcher, ReferenceIndex, uniqueness
    from mofasa.evaluation.relax import RelaxSettings, relax_crystal
    from mofasa.evaluation.runner import (
        EvaluationConfig,
        EvaluationResult,
        evaluate,
        relax_structures,
    )
    from mofasa.evaluation.topology import identify_topology, require_topology
    from mofasa.evaluation.validity import RULE_FLAGS, check_validity

__all__ = [
    "RULE_FLAGS",
    "EvaluationConfig",
    "EvaluationResult",
    "EvaluationSetupError",
    "EvaluationUsageError",
    "Matcher",
    "ReferenceIndex",
    "RelaxSettings",
    "check_validity",
    "evaluate",
    "identify_topology",
    "relax_crystal",
    "relax_structures",
    "require_checkers",
    "require_topology",
    "uniqueness",
]

_WHERE = {
    "EvaluationSetupError": "compat", "EvaluationUsageError": "compat",
    "require_checkers": "compat",
    "Matcher": "novelty", "ReferenceIndex": "novelty", "uniqueness": "novelty",
    "RelaxSettings": "relax", "relax_crystal": "relax",
    "EvaluationConfig": "runner", "EvaluationResult": "runner", "evaluate": "runner",
    "relax_structures": "runner",
    "RULE_FLAGS": "validity", "check_validity": "validity",
    "identify_topology": "topology", "require_topology": "topology",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"mofasa.evaluation.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'mofasa.evaluation' has no attribute {name!r}")
