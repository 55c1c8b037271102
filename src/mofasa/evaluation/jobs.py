"""Functions that run inside the isolated worker processes (one structure each).

Each takes plain picklable arguments and returns a JSON-like dict. Modules this file imports are
loaded once in the pool's forkserver (see `mofasa.evaluation.pool`), so workers start warm.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from mofasa.data.crystal import Crystal
from mofasa.evaluation import compat, novelty, symmetry, validity

__all__ = ["analysis_job", "pores_job", "relax_job", "topology_job", "validity_job"]

_REFERENCES: dict[tuple[str, str], novelty.ReferenceIndex] = {}
_MATCHER: list[novelty.Matcher] = []


def warm() -> None:
    """Import mofchecker and its tools once (called when the forkserver loads this module)."""
    with contextlib.suppress(compat.EvaluationSetupError):  # reported loudly by the jobs
        compat.import_mofchecker()


@contextlib.contextmanager
def _quiet_fds() -> Iterator[None]:
    """Silence C/C++ output on file descriptors 1 and 2 (Zeo++ prints a lot)."""
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def validity_job(crystal: Crystal, mode: str, screen: bool = False) -> dict[str, Any]:
    """mofchecker verdict in one mode (see `validity.check_validity`)."""
    return validity.check_validity(crystal, mode, screen=screen)


def _reference(spec: tuple[str, str] | None) -> novelty.ReferenceIndex | None:
    if spec is None:
        return None
    if spec not in _REFERENCES:
        _REFERENCES[spec] = novelty.ReferenceIndex.load(*spec)
    return _REFERENCES[spec]


def _matcher() -> novelty.Matcher:
    if not _MATCHER:
        _MATCHER.append(novelty.Matcher())
    return _MATCHER[0]


def analysis_job(crystal: Crystal, reference: tuple[str, str] | None = None) -> dict[str, Any]:
    """Symmetry (spglib 0.01 / 0.1), matcher-reduced size, and novelty against ``reference``.

    Args:
        crystal: the structure.
        reference: (path, split) of the training data, or None to skip novelty.
    """
    out: dict[str, Any] = dict(symmetry.symmetry(crystal))
    ref = _reference(reference)
    if ref is not None:
        matcher = _matcher()
        reduced = matcher.reduce(crystal.to_pymatgen())
        match, fits = ref.find_match(crystal, matcher, reduced)
        out.update(
            prim_atoms=len(reduced), novel=match is None, novel_match=match or "", novelty_fits=fits
        )
    return out


def relax_job(crystal: Crystal, calculator: Any, settings: Any) -> dict[str, Any]:
    """Relax one structure (see `relax.relax_crystal`)."""
    from mofasa.evaluation.relax import relax_crystal

    return relax_crystal(crystal, calculator, settings)


def pores_job(crystal: Crystal) -> dict[str, Any]:
    """Zeo++ pore metrics (see `pores.pore_metrics`), with Zeo++'s console output silenced."""
    from mofasa.evaluation.pores import pore_metrics

    with _quiet_fds():
        return pore_metrics(crystal)


_TOPOLOGY_READY: list[bool] = []


def topology_job(crystal: Crystal, timeout: float) -> dict[str, Any]:
    """RCSR net via moffragmentor + Systre (see `topology.identify_topology`).

    moffragmentor is imported here, not in the forkserver: runs without ``--topology`` should
    not pay for it (0.4 s), and a replacement worker after a timeout imports it again anyway.
    """
    from mofasa.evaluation import topology

    if not _TOPOLOGY_READY:
        compat.import_moffragmentor()
        topology._quiet_loguru_default()  # messages go into the record, not onto the terminal
        _TOPOLOGY_READY.append(True)
    return topology.identify_topology(crystal, timeout)
