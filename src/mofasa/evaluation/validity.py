"""MOFChecker validity (mofchecker 0.9.6), exactly as the field's protocol applies it.

Rule (``../shared/docs/protocol.md``): a structure is valid when it has carbon, hydrogen and a
metal and none of the 12 `RULE_FLAGS` is set. ``has_3d_connected_graph`` is reported, never part
of the rule. A flag whose check raises or returns None makes the structure invalid, with the
error recorded (mofchecker's own properties would turn a None into ``True`` or ``False`` by
``not``; we read each check's ``is_ok`` directly so that a None cannot pass unnoticed).

Two modes:
* ``"default"`` (the headline ``valid_rate``): ``MOFChecker(structure)`` with mofchecker's
  constructor defaults (symmetrisation attempt at symprec 0.5, angle tolerance 5, then
  ``get_primitive_structure()`` at its 0.25 Å tolerance), as GLASS's evaluation does.
* ``"strict"``: the structure exactly as given (``symprec=None, angle_tolerance=None,
  primitive=False``).
"""

from __future__ import annotations

import traceback
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from mofasa.data.crystal import Crystal

__all__ = ["COMPOSITION_FLAGS", "MODES", "REPORTED_FLAGS", "RULE_FLAGS", "check_validity"]

#: the 12 flags of the protocol's rule, with mofchecker 0.9.6's spelling (sic "suspicicious")
RULE_FLAGS: tuple[str, ...] = (
    "has_atomic_overlaps",
    "has_overcoordinated_c",
    "has_overcoordinated_n",
    "has_overcoordinated_h",
    "has_undercoordinated_c",
    "has_undercoordinated_n",
    "has_undercoordinated_rare_earth",
    "has_undercoordinated_alkali_alkaline",
    "has_lone_molecule",
    "has_suspicicious_terminal_oxo",
    "has_high_charges",
    "has_geometrically_exposed_metal",
)
#: required to be True
COMPOSITION_FLAGS: tuple[str, ...] = ("has_carbon", "has_hydrogen", "has_metal")
#: reported apart, not in the rule
REPORTED_FLAGS: tuple[str, ...] = ("has_3d_connected_graph",)

#: flag -> (key in ``MOFChecker.checks``, True when the flag is the check's ``is_ok``); the
#: same mapping as mofchecker 0.9.6's properties (``has_x = not checks[key].is_ok``)
_CHECK_OF_FLAG: dict[str, tuple[str, bool]] = {
    "has_carbon": ("has_c", True),
    "has_hydrogen": ("has_h", True),
    "has_metal": ("has_metal", True),
    "has_atomic_overlaps": ("no_atomic_overlaps", False),
    "has_overcoordinated_c": ("no_overcoordinated_carbon", False),
    "has_overcoordinated_n": ("no_overcoordinated_nitrogen", False),
    "has_overcoordinated_h": ("no_overcoordinated_hydrogen", False),
    "has_undercoordinated_c": ("no_undercoordinated_carbon", False),
    "has_undercoordinated_n": ("no_undercoordinated_nitrogen", False),
    "has_undercoordinated_rare_earth": ("no_undercoordinated_rare_earth", False),
    "has_undercoordinated_alkali_alkaline": ("no_undercoordinated_alkali_alkaline", False),
    "has_lone_molecule": ("no_floating_molecule", False),
    "has_suspicicious_terminal_oxo": ("no_false_terminal_oxo", False),
    "has_high_charges": ("no_high_charges", False),
    "has_geometrically_exposed_metal": ("no_geometrically_exposed_metal", False),
    "has_3d_connected_graph": ("has_3d_connected_graph", True),
}

MODES: dict[str, dict[str, Any]] = {
    "default": {},  # mofchecker's constructor defaults: symprec=0.5, angle_tolerance=5, primitive
    "strict": {"symprec": None, "angle_tolerance": None, "primitive": False},
}


def _short_error(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = (
        f" at {tb[-1].name} ({tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
    )
    return f"{type(exc).__name__}: {str(exc)[:200]}{where}"


def check_validity(crystal: Crystal, mode: str = "default") -> dict[str, Any]:
    """Run mofchecker 0.9.6 on one structure.

    Args:
        crystal: the structure.
        mode: ``"default"`` (headline, mofchecker's constructor defaults) or ``"strict"``.

    Returns:
        ``{"valid": bool, "flags": {flag: bool | None}, "errors": {flag: message},
        "checked_atoms": int | None}``. ``checked_atoms`` is the atom count mofchecker worked
        on (the primitive cell in the default mode). Any error or None makes ``valid`` False.

    Raises:
        EvaluationSetupError: the tools are broken (for example pyeqeq cannot import), which
            would bias every structure; never swallowed.
    """
    from mofasa.evaluation.compat import EvaluationSetupError, import_mofchecker

    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, not {mode!r}")
    MOFChecker = import_mofchecker()
    flags: dict[str, bool | None] = {}
    errors: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            checker = MOFChecker(crystal.to_pymatgen(), **MODES[mode])
        except EvaluationSetupError:
            raise
        except Exception as exc:  # the constructor builds the bond graph: all flags unknown
            message = _short_error(exc)
            return {
                "valid": False,
                "flags": dict.fromkeys(_CHECK_OF_FLAG),
                "errors": {"constructor": message},
                "checked_atoms": None,
            }
        for flag, (key, positive) in _CHECK_OF_FLAG.items():
            try:
                ok = checker.checks[key].is_ok
            except EvaluationSetupError:
                raise
            except Exception as exc:
                flags[flag], errors[flag] = None, _short_error(exc)
                continue
            if ok is None:
                flags[flag], errors[flag] = None, "check returned None"
            else:
                flags[flag] = bool(ok) if positive else not bool(ok)
    valid = (
        not errors.keys() - set(REPORTED_FLAGS)
        and all(flags[f] is True for f in COMPOSITION_FLAGS)
        and all(flags[f] is False for f in RULE_FLAGS)
    )
    return {
        "valid": bool(valid),
        "flags": flags,
        "errors": errors,
        "checked_atoms": len(checker.structure),
    }
