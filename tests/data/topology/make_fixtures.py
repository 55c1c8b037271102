"""Rebuild the topology fixtures of this folder (run from the repository root).

* ``hkust1_FIQCEN.cif``: HKUST-1, CoRE MOF 2019-ASR ``FIQCEN_clean`` (the `core-mof` wheel,
  module ``CoRE_MOF``), already its 156-atom primitive (rhombohedral) P1 cell; rewritten by our
  CIF writer, positions unchanged.
* ``mof5_primitive.cif``: MOF-5, Zn4O(BDC)3, built here from ideal geometry in the 106-atom
  primitive cell of its Fm-3m cell (a = 25.832 Å; SAHYIK is not in the `core-mof` wheel). Zn4O
  clusters sit on a simple cubic grid of spacing a/2 with alternating orientation (hence the fcc
  lattice); each benzene-1,4-dicarboxylate lies along a cube axis, coplanar with its carboxylates.
  Bond lengths: Zn-O(central) 1.94, Zn-O(carboxylate) 1.92, C-O 1.27 (O-C-O 125 deg),
  C-C(carboxylate-ring) 1.50, aromatic C-C 1.39, C-H 1.08 Å.

    .venv/bin/python tests/data/topology/make_fixtures.py
"""

from __future__ import annotations

import itertools
import tarfile
from pathlib import Path

import numpy as np

from mofasa import Crystal
from mofasa.data import read_cif, write_cif

HERE = Path(__file__).resolve().parent
A_MOF5 = 25.832  # Å, conventional cubic cell


def _zn4o_cluster(orientation: int) -> list[tuple[int, np.ndarray]]:
    """Central O and a Zn tetrahedron; ``orientation`` +1 or -1 picks one of the two."""
    d = 1.94 / np.sqrt(3)
    atoms = [(8, np.zeros(3))]
    for signs in itertools.product((1, -1), repeat=3):
        if np.prod(signs) == orientation:
            atoms.append((30, d * np.array(signs, dtype=float)))
    return atoms


def _half_linker(axis: int, sign: int, orientation: int, spacing: float) -> list:
    """Carboxylate and half of the ring of the linker leaving a cluster along ``sign * axis``.

    The carboxylate O atoms bridge the two Zn atoms on that side of the cluster; the plane of
    the linker is spanned by the axis and the direction between those two Zn atoms.
    """
    e = np.zeros(3)
    e[axis] = sign
    a, b = [k for k in range(3) if k != axis]
    p = np.zeros(3)  # in-plane direction, perpendicular to the axis
    p[a], p[b] = 1.0, sign * orientation  # the two Zn with sign on `axis` differ along (1, s)
    p /= np.linalg.norm(p)
    half = 62.5 * np.pi / 180
    x_c = 3.571  # carboxylate C from the cluster centre: gives Zn-O 1.92 Å
    out = [(6, x_c * e)]
    for s in (1, -1):
        out.append((8, (x_c - 1.27 * np.cos(half)) * e + s * 1.27 * np.sin(half) * p))
    centre = spacing / 2
    out.append((6, (centre - 1.39) * e))  # ipso C
    for s in (1, -1):  # ortho C and H on this half
        c = (centre - 0.695) * e + s * 1.204 * p
        out.append((6, c))
        out.append((1, c + 1.08 * (-0.5 * e + s * 0.866 * p)))
    return out


def mof5() -> Crystal:
    spacing = A_MOF5 / 2
    lattice = spacing * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]], dtype=float)
    atoms: list[tuple[int, np.ndarray]] = []
    for origin, orientation in ((np.zeros(3), 1), (np.array([spacing, 0, 0]), -1)):
        atoms += [(z, origin + x) for z, x in _zn4o_cluster(orientation)]
        for axis, sign in itertools.product(range(3), (1, -1)):
            atoms += [(z, origin + x) for z, x in _half_linker(axis, sign, orientation, spacing)]
    numbers = np.array([z for z, _ in atoms])
    cart = np.array([x for _, x in atoms])
    frac = cart @ np.linalg.inv(lattice)
    crystal = Crystal(numbers, frac, lattice, id="MOF-5")
    assert crystal.num_atoms == 106, crystal.num_atoms
    return crystal


def hkust1() -> Crystal:
    import CoRE_MOF

    archive = Path(CoRE_MOF.__file__).parent / "data" / "2019-ASR.tar.xz"
    with tarfile.open(archive, "r:xz") as tar:
        text = tar.extractfile("FIQCEN_clean.cif").read().decode()
    crystal = read_cif(text, id="HKUST-1", is_text=True)
    assert crystal.num_atoms == 156, crystal.num_atoms
    return crystal


if __name__ == "__main__":
    write_cif(mof5(), HERE / "mof5_primitive.cif")
    write_cif(hkust1(), HERE / "hkust1_FIQCEN.cif")
    print("wrote", sorted(p.name for p in HERE.glob("*.cif")))
