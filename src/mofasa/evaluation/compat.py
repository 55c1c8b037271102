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
* mofchecker caches element indices keyed by structure equality, which current pymatgen
  computes in O(N^2): the same look-ups keyed by the species sequence (see
  `_patch_index_cache`; speed only, same values).
* The EQeq charge check imports ``pyeqeq``, which imports ``pkg_resources`` (gone in setuptools
  81+). When that import fails, mofchecker warns, the check returns None, and
  ``has_high_charges`` reads ``not None == True`` for EVERY structure (validity 0%). We make that
  failure raise `EvaluationSetupError` instead, and `require_checkers` tests it up front.

moffragmentor 0.0.6 (topology, optional) needs the same pymatgen aliases and two more fixes:

* current networkx (3.6 here) refuses multigraphs in ``weisfeiler_lehman_graph_hash``, which
  moffragmentor calls on every building block's ``MoleculeGraph`` (a MultiDiGraph) to compare
  blocks: every fragmentation fails. Without edge attributes the algorithm reads only each
  node's label and its set of neighbours, so collapsing parallel edges (MultiDiGraph ->
  DiGraph, keeping direction and node labels) changes nothing it reads.
* moffragmentor disables its own loguru logger on import, so its errors (a failed
  fragmentation, a failed net construction, a failed Systre run) vanish and the topology reads
  as merely empty. We enable it; `mofasa.evaluation.topology` records its messages.

`apply()` is idempotent and must run before mofchecker is imported; `import_mofchecker()` does
both, and `import_moffragmentor()` does the same for moffragmentor. Nothing here runs at import
time of this module.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata as md
import warnings
from types import ModuleType
from typing import Any

from mofasa.data.prepare import UsageError

__all__ = [
    "EvaluationSetupError",
    "EvaluationUsageError",
    "apply",
    "checker_versions",
    "import_mofchecker",
    "import_moffragmentor",
    "is_applied",
    "is_moffragmentor_applied",
    "require_checkers",
]

MOFCHECKER_VERSION = "0.9.6"
MOFFRAGMENTOR_VERSION = "0.0.6"
_APPLIED = False

_INSTALL_HINT = "run `bash scripts/install_eval.sh` (see docs/EVALUATION.md)"


class EvaluationSetupError(RuntimeError):
    """The evaluation tools are missing or broken; results would be silently wrong."""


class EvaluationUsageError(UsageError, ValueError):
    """An impossible setting or input of `evaluate` (one line, raised before any work).

    A `mofasa.data.prepare.UsageError` (what `mofasa`'s command line reports as a usage error,
    exit 2) and a ValueError (what the Python API raised for bad settings before). Any other
    exception out of `evaluate` is an internal error, never reported as a usage error.
    """


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

    _patch_index_cache()

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


def _patch_index_cache() -> None:
    """Key mofchecker's element-index cache by the species sequence (speed only).

    mofchecker 0.9.6 caches the indices of C, H, N, O, metal ... atoms in an ``lru_cache``
    keyed by the *structure*, whose equality current pymatgen tests site by site (``all(site in
    other ...)``: O(N^2) ``allclose`` calls). Every look-up with a new but equal structure
    object (each check converts its structure again) pays that comparison: 0.08 s per look-up
    at 30-60 atoms, ~20 look-ups per checker, growing quadratically with size. The indices are a
    function of the species sequence alone (element symbols and element properties), so keying
    the cache by it returns exactly what mofchecker computes, in O(N).
    """
    from mofchecker.checks.utils import get_indices as module

    if getattr(module.get_indices, "_mofasa_compat", False):
        return
    compute = getattr(module._get_indices, "__wrapped__", module._get_indices)
    cache: dict[tuple, dict] = {}

    def get_indices(structure):  # noqa: ANN001
        key = tuple(structure.species)
        indices = cache.get(key)
        if indices is None:
            if len(cache) >= 8:
                cache.clear()
            indices = cache[key] = compute(structure)
        return indices

    get_indices._mofasa_compat = True
    module.get_indices = get_indices  # get_c_indices & co. look it up at call time


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


def _import_pinned(name: str, version: str, purpose: str, pin_reason: str) -> ModuleType:
    """Import distribution/module ``name`` at exactly ``version`` (warnings silenced).

    Raises:
        EvaluationSetupError: missing, another version, or failing on import.
    """
    try:
        found = md.version(name)
    except md.PackageNotFoundError as exc:
        raise EvaluationSetupError(f"{name} is not installed{purpose}; {_INSTALL_HINT}") from exc
    if found != version:
        raise EvaluationSetupError(f"{name} {found} is installed; {pin_reason} {version}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except Exception as exc:
        raise EvaluationSetupError(
            f"{name} cannot be imported ({type(exc).__name__}: {exc}); {_INSTALL_HINT}"
        ) from exc


def import_mofchecker():  # noqa: ANN201
    """Apply the compatibility layer and return the ``mofchecker.MOFChecker`` class.

    Raises:
        EvaluationSetupError: mofchecker is missing, is not version 0.9.6, or cannot import.
    """
    _patch_pymatgen()  # before mofchecker: structuregraph_helpers imports renamed names
    mofchecker = _import_pinned("mofchecker", MOFCHECKER_VERSION, "",
                                "the protocol needs")
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


def _patch_moffragmentor() -> None:
    import networkx as nx
    from loguru import logger
    from moffragmentor.sbu import sbu

    cls = sbu.SBU
    if not getattr(cls.__dict__.get("weisfeiler_lehman_graph_hash"), "_mofasa_compat", False):

        def weisfeiler_lehman_graph_hash(self) -> str:  # noqa: ANN001
            graph = self.molecule_graph.graph
            if graph.is_multigraph():  # current networkx raises on these (see above)
                graph = nx.DiGraph(graph) if graph.is_directed() else nx.Graph(graph)
            with warnings.catch_warnings():  # "directed hashes changed in 3.5": only compared
                warnings.simplefilter("ignore", UserWarning)  # within one run, so harmless
                return nx.weisfeiler_lehman_graph_hash(graph, node_attr="specie")

        prop = functools.cached_property(weisfeiler_lehman_graph_hash)
        prop.__set_name__(cls, "weisfeiler_lehman_graph_hash")
        prop._mofasa_compat = True
        cls.weisfeiler_lehman_graph_hash = prop
    logger.enable("moffragmentor")  # it disables itself on import: errors would be hidden


def import_moffragmentor():  # noqa: ANN201
    """Apply the compatibility layer and return the ``moffragmentor`` module.

    Raises:
        EvaluationSetupError: moffragmentor is missing, is not version 0.0.6, or cannot import.
    """
    _patch_pymatgen()  # before moffragmentor: it calls StructureGraph.with_* and friends
    moffragmentor = _import_pinned("moffragmentor", MOFFRAGMENTOR_VERSION,
                                   " (needed by --topology)", "--topology is tested with")
    _patch_pymatgen()
    _patch_moffragmentor()
    return moffragmentor


def is_moffragmentor_applied() -> bool:
    """True when moffragmentor is imported and its fixes are in place."""
    import sys

    if "moffragmentor" not in sys.modules:
        return False
    from moffragmentor.sbu import sbu
    from pymatgen.analysis import graphs

    prop = sbu.SBU.__dict__.get("weisfeiler_lehman_graph_hash")
    return (
        getattr(prop, "_mofasa_compat", False)
        and hasattr(graphs.StructureGraph, "with_local_env_strategy")
        and hasattr(graphs.MoleculeGraph, "with_edges")
    )


def checker_versions() -> dict[str, str]:
    """Versions of every tool the evaluation may use (missing ones are left out)."""
    names = (
        "mofchecker", "pyeqeq", "libconeangle", "structuregraph-helpers", "pymatgen",
        "pymatgen-core", "spglib", "ase", "networkx", "setuptools", "chgnet", "torch", "pyzeo",
        "moffragmentor", "rdkit", "openbabel-wheel", "mofasa",
    )  # fmt: skip
    out = {}
    for name in names:
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name)
    return out
