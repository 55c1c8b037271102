"""The bond restraint of bond-conditioned samples (`diffusion.restraint`)."""

from __future__ import annotations

import torch

from mofasa.data import collate
from mofasa.diffusion.conditions import bond_hops
from mofasa.diffusion.restraint import restrain_bonds, restraint_energy


def test_restraint_restores_a_shaken_structure_and_holds_what_it_must(example_crystals):
    batch = collate(sorted(example_crystals, key=lambda c: c.num_atoms)[:2], dtype=torch.float64)
    bonded = bond_hops(batch.frac, batch.lattice, batch.atom_types, batch.mask) == 2
    g = torch.Generator().manual_seed(0)
    kick = torch.randn(batch.frac.shape, generator=g, dtype=torch.float64) * 0.25  # Å
    shaken = (batch.frac + kick @ torch.linalg.inv(batch.lattice)) % 1.0 * \
        batch.mask.unsqueeze(-1)
    none = bonded.clone()
    none[1] = False  # crystal 1: no bond given
    hold = torch.zeros_like(batch.mask)
    hold[0, :2] = True  # two atoms of crystal 0 kept
    out = restrain_bonds(shaken, batch.lattice, batch.atom_types, none, batch.mask, 300,
                         hold=hold)
    e0 = restraint_energy(shaken, batch.lattice, batch.atom_types, none, batch.mask)
    e1 = restraint_energy(out, batch.lattice, batch.atom_types, none, batch.mask)
    assert e1[0] < 0.1 * e0[0], (e0, e1)
    assert torch.equal(out[1], shaken[1])  # no bonds given: untouched
    assert torch.equal(out[0, :2], shaken[0, :2])  # held atoms stay
    # the restrained bond graph is the given one again
    again = bond_hops(out, batch.lattice, batch.atom_types, batch.mask)[0] == 2
    assert (again == bonded[0]).float().mean() > 0.995
    assert torch.equal(restrain_bonds(shaken, batch.lattice, batch.atom_types, none,
                                      batch.mask, 0), shaken)
