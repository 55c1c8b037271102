"""Compatibility layer that lets mofchecker 0.9.6 run correctly on current pymatgen.

mofchecker 0.9.6 (2023) and its helper ``structuregraph_helpers`` call pymatgen names that were
renamed in 2024-2025 releases, and they turn several environment failures into *silent* verdicts:

* ``pymatgen.analysis.local_env.BrunnerNN_relative`` (and ``_real``, ``_reciprocal``) became
  ``BrunnerNNRelative`` ...: without an alias, ``import mofchecker`` fails.
* ``StructureGraph.with_local_env_strategy`` / ``with_edges`` / ``with_empty_graph`` became
  ``from_...`` (same for ``MoleculeGraph``): without aliases, every structure graph fails.
* ``Element.is_rare_earth_metal`` became ``is_rare_earth``: without it, the rare-earth check fails.
* pymatgen >= 2024.6.10 raises ``SymmetryUndeterminedError`` (a ``ValueError``) when spglib finds
  no symmetry, where mofchecker's constructor only catches ``TypeError`` (the old behaviour).
  Unhandled, mofchecker's *default* constructor (``symprec=0.5``) fails structures that the strict
  mode passes. We convert it to ``TypeError`` so mofchecker does what it did when it was
  published: skip the symmetrisation and go on with the structure as given.
* The EQeq charge check imports ``pyeqeq``, which imports ``pkg_resources`` (gone in setuptools
  81+). When that import fails, mofchecker warns, the check returns None, and
  ``has_high_charges`` reads ``not None == True`` for EVERY structure (validity 0%). We make that
  failure raise `EvaluationSetupError` instead, and `require_checkers` tests it up front.

`apply()` is idempotent and must run before mofchecker is imported; `import_mofchecker()` does
both. Nothing here runs at import time of this module.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata as md
import warnings
from typing import Any

__all__ = [
    "EvaluationSetupError",
    "apply",
    "checker_versions",
    "import_mofchecker",
    "is_applied",
    "require_checkers",
]

MOFCHECKER_VERSION = "0.9.6"
_APPLIED = False

_INSTALL_HINT = "run `bash scripts/install_eval.sh` (see docs/EVALUATION.md)"


class EvaluationSetupError(RuntimeError):
    """The evaluation tools are missing or broken; results would be silently wrong."""


def _alias_classmethods(cls: type, renames: dict[str, str]) -> None:
    for old, new in renames.items():
        if hasattr(cls, old) or not hasattr(cls, new):
            continue
        raw = cls.__dict__.get(new)
        if isinstance(raw, classmethod):
            setattr(cls, old, classmethod(raw.__func__))
        elif isinstance(raw, staticmethod):
            setattr(cls, old, staticmethod(raw.__func__))
        else:
            setattr(cls, old, getattr(cls, new))


def _patch_pymatgen() -> None:
    from pymatgen.analysis import graphs, local_env
    from pymatgen.core import periodic_table

    for old, new in (
        ("BrunnerNN_relative", "BrunnerNNRelative"),
        ("BrunnerNN_real", "BrunnerNNReal"),
        ("BrunnerNN_reciprocal", "BrunnerNNReciprocal"),
    ):
        if not hasattr(local_env, old) and hasattr(local_env, new):
            setattr(local_env, old, getattr(local_env, new))
    renames = {
        "with_local_env_strategy": "from_local_env_strategy",
        "with_edges": "from_edges",
        "with_empty_graph": "from_empty_graph",
    }
    _alias_classmethods(graphs.StructureGraph, renames)
    _alias_classmethods(graphs.MoleculeGraph, renames)
    for cls_name in ("Element", "Species", "DummySpecies"):
        cls = getattr(periodic_table, cls_name, None)
        if cls is not None and not hasattr(cls, "is_rare_earth_metal"):
            cls.is_rare_earth_metal = property(lambda self: self.is_rare_earth)


def _patch_mofchecker() -> None:
    import mofchecker
    from mofchecker.checks import charge_check

    try:
        from pymatgen.symmetry.analyzer import SymmetryUndeterminedError
    except ImportError:  # pymatgen < 2024.6.10 raised TypeError itself
        SymmetryUndeterminedError = None

    base = mofchecker.SpacegroupAnalyzer
    if SymmetryUndeterminedError is not None and not getattr(base, "_mofasa_compat", False):

        class _SpacegroupAnalyzer(base):
            """Raises TypeError where pymatgen >= 2024.6.10 raises SymmetryUndeterminedError."""

            _mofasa_compat = True

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                try:
                    super().__init__(*args, **kwargs)
                except SymmetryUndeterminedError as exc:
                    raise TypeError(str(exc)) from exc

            def get_symmetrized_structure(self):
                try:
                    return super().get_symmetrized_structure()
                except SymmetryUndeterminedError as exc:
                    raise TypeError(str(exc)) from exc

        mofchecker.SpacegroupAnalyzer = _SpacegroupAnalyzer

    check = charge_check.ChargeCheck
    if not getattr(check._run_check, "_mofasa_compat", False):
        original = check._run_check

        def _run_check(self):  # noqa: ANN001
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = original(self)
            if result is None:  # pyeqeq failed to import: mofchecker would flag high charges
                _require_eqeq()  # raises with the import error
                raise EvaluationSetupError("EQeq charge check returned None")
            return result

        _run_check._mofasa_compat = True
        check._run_check = _run_check


def apply() -> None:
    """Install the pymatgen aliases and mofchecker fixes (idempotent)."""
    global _APPLIED
    _patch_pymatgen()
    _patch_mofchecker()
    _APPLIED = True


def is_applied() -> bool:
    """True when `apply` has run and its patches are in place."""
    if not _APPLIED:
        return False
    import mofchecker
    from pymatgen.analysis import graphs, local_env
    from pymatgen.core.periodic_table import Element

    return (
        hasattr(local_env, "BrunnerNN_relative")
        and hasattr(graphs.StructureGraph, "with_local_env_strategy")
        and Element("La").is_rare_earth_metal
        and getattr(mofchecker.SpacegroupAnalyzer, "_mofasa_compat", True)
    )


def _require_eqeq() -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module("pyeqeq.main")
    except Exception as exc:
        raise EvaluationSetupError(
            f"pyeqeq (mofchecker's EQeq charge check) cannot be imported: "
            f"{type(exc).__name__}: {exc}. Without it mofchecker silently flags every structure "
            f"as having high charges (validity 0%). pyeqeq needs pkg_resources, i.e. "
            f"setuptools<81 in the same environment; {_INSTALL_HINT}."
        ) from exc


def import_mofchecker():  # noqa: ANN201
    """Apply the compatibility layer and return the ``mofchecker.MOFChecker`` class.

    Raises:
        EvaluationSetupError: mofchecker is missing, is not version 0.9.6, or cannot import.
    """
    _patch_pymatgen()  # before mofchecker: structuregraph_helpers imports renamed names
    try:
        version = md.version("mofchecker")
    except md.PackageNotFoundError as exc:
        raise EvaluationSetupError(f"mofchecker is not installed; {_INSTALL_HINT}") from exc
    if version != MOFCHECKER_VERSION:
        raise EvaluationSetupError(
            f"mofchecker {version} is installed; the protocol needs {MOFCHECKER_VERSION}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import mofchecker
    except Exception as exc:
        raise EvaluationSetupError(
            f"mofchecker cannot be imported ({type(exc).__name__}: {exc}); {_INSTALL_HINT}"
        ) from exc
    apply()
    return mofchecker.MOFChecker


def require_checkers() -> dict[str, str]:
    """Check that the validity tools are importable and patched; return their versions.

    Raises:
        EvaluationSetupError: loudly, for each failure that would otherwise bias validity.
    """
    import_mofchecker()
    _require_eqeq()
    try:
        importlib.import_module("libconeangle")
    except Exception as exc:
        raise EvaluationSetupError(
            f"libconeangle cannot be imported ({type(exc).__name__}: {exc}); {_INSTALL_HINT}"
        ) from exc
    if not is_applied():
        raise EvaluationSetupError("the mofchecker compatibility layer is not active")
    return checker_versions()


def checker_versions() -> dict[str, str]:
    """Versions of every tool the evaluation may use (missing ones are left out)."""
    names = (
        "mofchecker", "pyeqeq", "libconeangle", "structuregraph-helpers", "pymatgen",
        "pymatgen-core", "spglib", "ase", "networkx", "setuptools", "chgnet", "torch", "pyzeo",
        "mofasa",
    )  # fmt: skip
    out = {}
    for name in names:
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name)
    return out
