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

Screening (``screen=True``, for large batches of generated structures): the same checks on the
same mofchecker object, stopped at the first failing one, so the verdict is exactly the full
mode's (a structure is valid only if every check ran and passed, and a failing check fails the
full mode too). Order: composition first (on the input structure, before mofchecker's
constructor builds the bond graph: symmetrisation and primitive reduction keep the set of
elements, so the answer is the same), then the 12 flags cheapest first (`SCREEN_ORDER`,
measured). Flags that were not run are left out of ``flags`` and listed in ``not_computed``;
they are never read as passed. ``has_3d_connected_graph`` (reported, not in the rule) runs only
for structures that passed.

Coincident atoms (two atoms, or an atom and its periodic image, closer than
`COINCIDENT_DISTANCE`), in every mode: mofchecker is not run. Its EQeq charge check (pyeqeq, C++)
segfaults on atoms at 0 Å, and such a pair is an overlap by mofchecker's own rule (a distance
below the smaller covalent radius; the smallest, H's, is 0.31 Å), so the verdict is known:
``has_atomic_overlaps`` is True, the composition flags (read from the element list, safe) are
computed, the other flags are listed in ``not_computed`` and ``skipped`` says why.
"""

from __future__ import annotations

import traceback
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from mofasa.data.crystal import Crystal

__all__ = [
    "COINCIDENT_DISTANCE",
    "COMPOSITION_FLAGS",
    "MODES",
    "REPORTED_FLAGS",
    "RULE_FLAGS",
    "SCREEN_ORDER",
    "check_validity",
]

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

#: the order of the 12 rule flags in screening mode, by expected cost (time per check over the
#: chance that it fails), measured with mofchecker 0.9.6 in the headline mode on 12 generated
#: and 7 real structures (docs/EVALUATION.md): the constructor builds the bond graph (median
#: 0.08 s); after it, the local checks take 0.000-0.012 s each (medians), EQeq charges 0.12 s
#: and the lone-molecule check 1.3 s (up to 3 s), the most by far. On the generated ones,
#: overlaps (0.003 s) fail 8 of 12 and undercoordinated C (0.012 s) 12 of 12, so they go first.
SCREEN_ORDER: tuple[str, ...] = (
    "has_atomic_overlaps",
    "has_undercoordinated_c",
    "has_overcoordinated_c",
    "has_overcoordinated_h",
    "has_overcoordinated_n",
    "has_undercoordinated_n",
    "has_geometrically_exposed_metal",
    "has_undercoordinated_rare_earth",
    "has_undercoordinated_alkali_alkaline",
    "has_suspicicious_terminal_oxo",
    "has_high_charges",
    "has_lone_molecule",
)

#: Å: closer atoms are coincident (see the module docstring); mofchecker is not run on them
COINCIDENT_DISTANCE = 0.1

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


def _read_flag(checks: dict, flag: str) -> tuple[bool | None, str | None]:
    """(value, error) of one flag, read from its check's ``is_ok``."""
    from mofasa.evaluation.compat import EvaluationSetupError

    key, positive = _CHECK_OF_FLAG[flag]
    try:
        ok = checks[key].is_ok
    except EvaluationSetupError:
        raise
    except Exception as exc:
        return None, _short_error(exc)
    if ok is None:
        return None, "check returned None"
    return (bool(ok) if positive else not bool(ok)), None


def _fails(flag: str, value: bool | None) -> bool:
    """True when this flag alone makes the structure invalid (an error or None counts)."""
    if flag in COMPOSITION_FLAGS:
        return value is not True
    return flag in RULE_FLAGS and value is not False


def _composition_first(
    structure: Any, stop: bool = True
) -> tuple[dict[str, bool | None], dict[str, str]]:
    """Composition flags on the input structure (screening: before the bond graph is built);
    ``stop``: at the first failing one."""
    from mofchecker.checks.global_structure import HasCarbon, HasHydrogen, HasMetal

    checks = {"has_c": HasCarbon(structure), "has_h": HasHydrogen(structure),
              "has_metal": HasMetal(structure)}  # fmt: skip
    flags: dict[str, bool | None] = {}
    errors: dict[str, str] = {}
    for flag in COMPOSITION_FLAGS:
        flags[flag], error = _read_flag(checks, flag)
        if error:
            errors[flag] = error
        if stop and _fails(flag, flags[flag]):
            break
    return flags, errors


def _coincident_distance(crystal: Crystal) -> float | None:
    """The shortest periodic distance when below `COINCIDENT_DISTANCE`, else None."""
    from mofasa.data.checks import min_interatomic_distance

    distance = min_interatomic_distance(crystal, COINCIDENT_DISTANCE)
    return distance if distance < COINCIDENT_DISTANCE else None


def _coincident_result(structure: Any, distance: float, screen: bool) -> dict[str, Any]:
    """The verdict on coincident atoms without running mofchecker (module docstring)."""
    flags, errors = _composition_first(structure, stop=screen)
    if not (screen and any(_fails(f, v) for f, v in flags.items())):
        flags["has_atomic_overlaps"] = True
    out = _result(flags, errors, None, screen, partial=True)
    out["skipped"] = (
        f"coincident atoms {distance:.3f} Å apart (< {COINCIDENT_DISTANCE} Å): mofchecker not "
        "run (its EQeq charge check segfaults on them); has_atomic_overlaps by its own rule"
    )
    return out


def check_validity(crystal: Crystal, mode: str = "default", screen: bool = False) -> dict[str, Any]:
    """Run mofchecker 0.9.6 on one structure.

    Args:
        crystal: the structure.
        mode: ``"default"`` (headline, mofchecker's constructor defaults) or ``"strict"``.
        screen: stop at the first failing check (same verdict, fewer checks; module docstring).

    Returns:
        ``{"valid": bool, "flags": {flag: bool | None}, "errors": {flag: message},
        "checked_atoms": int | None, "not_computed": [flag, ...]}``, and with ``screen`` for an
        invalid structure ``"stopped_at"``: the failing flag (or ``"constructor"``).
        ``checked_atoms`` is the atom count mofchecker worked on (the primitive cell in the
        default mode). Any error or None makes ``valid`` False. ``not_computed`` is empty
        unless ``screen`` or coincident atoms (then ``"skipped"`` says why); those flags are
        absent from ``flags``.

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
    checked_atoms = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = crystal.to_pymatgen()
        distance = _coincident_distance(crystal)
        if distance is not None:  # before mofchecker: its charge check would segfault
            return _coincident_result(structure, distance, screen)
        if screen:
            flags, errors = _composition_first(structure)
            if any(_fails(f, v) for f, v in flags.items()):
                return _result(flags, errors, None, screen)
        try:
            checker = MOFChecker(structure, **MODES[mode])
        except EvaluationSetupError:
            raise
        except Exception as exc:  # the constructor builds the bond graph: all flags unknown
            errors["constructor"] = _short_error(exc)
            if not screen:
                flags = dict.fromkeys(_CHECK_OF_FLAG)
            return _result(flags, errors, None, screen)
        checked_atoms = len(checker.structure)
        order = (*SCREEN_ORDER, *REPORTED_FLAGS) if screen else tuple(_CHECK_OF_FLAG)
        for flag in order:
            flags[flag], error = _read_flag(checker.checks, flag)
            if error:
                errors[flag] = error
            if screen and _fails(flag, flags[flag]):
                break
    return _result(flags, errors, checked_atoms, screen)


def _result(
    flags: dict[str, bool | None], errors: dict[str, str], checked_atoms: int | None,
    screen: bool, partial: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """The verdict; ``partial``: some flags were not run although not screening."""
    valid = (
        not errors.keys() - set(REPORTED_FLAGS)
        and all(flags.get(f) is True for f in COMPOSITION_FLAGS)
        and all(flags.get(f) is False for f in RULE_FLAGS)
    )
    out = {
        "valid": bool(valid),
        "flags": flags,
        "errors": errors,
        "checked_atoms": checked_atoms,
        "not_computed": [f for f in _CHECK_OF_FLAG if f not in flags] if screen or partial
        else [],
    }
    if screen and not valid:  # the test that ended the screening
        stops = [f for f, v in flags.items() if _fails(f, v)]
        out["stopped_at"] = stops[0] if stops else "constructor"
    return out
