"""The harmonic prior of bond-conditioned crystals (`diffusion.priors`) and its use in CoordFlow."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mofasa.data import collate
from mofasa.data.conditions import HOP_BONDED
from mofasa.diffusion.conditions import ConditionBatch, ConditionMix, bond_hops
from mofasa.diffusion.coordflow import CoordFlow, CoordFlowConfig
from mofasa.diffusion.priors import align_translation, harmonic_noise
from mofasa.geometry.lattice_torch import min_image_frac_torch
from mofasa.models.coord_denoiser import CoordDenoiser
from mofasa.training.coordflow import load_coordflow_config


def _bonded_batch(example_crystals, k: int = 2):
    batch = collate(sorted(example_crystals, key=lambda c: c.num_atoms)[:k])
    hops = bond_hops(batch.frac, batch.lattice, batch.atom_types, batch.mask)
    return batch, hops


def _bond_lengths(x: torch.Tensor, lattice: torch.Tensor, bonded: torch.Tensor) -> torch.Tensor:
    """Å lengths of the bonded pairs (i < j) of one crystal at coordinates x (N, 3)."""
    i, j = torch.nonzero(torch.triu(bonded, 1), as_tuple=True)
    return (min_image_frac_torch(x[j] - x[i]) @ lattice).norm(dim=-1)


def test_harmonic_prior_starts_bonded_atoms_near_each_other(example_crystals):
    batch, hops = _bonded_batch(example_crystals)
    bonded = hops == HOP_BONDED
    n = batch.mask.sum(1).float()
    length = np.exp(0.87) * n.pow(1 / 3)
    g = torch.Generator().manual_seed(0)
    ratios_h, ratios_u = [], []
    for _ in range(8):
        u = torch.rand(batch.frac.shape, generator=g)
        x = harmonic_noise(u, bonded, batch.mask, length, sigma=1.0)
        assert x.min() >= 0 and x.max() < 1
        for b in range(2):
            k = int(n[b])
            ref = _bond_lengths(batch.frac[b, :k], batch.lattice[b], bonded[b, :k, :k])
            # measured through the true cell: the prior is drawn in the mean cell's units
            ratios_h.append(_bond_lengths(x[b, :k], batch.lattice[b], bonded[b, :k, :k]) / ref)
            ratios_u.append(_bond_lengths(u[b, :k], batch.lattice[b], bonded[b, :k, :k]) / ref)
    h, u_ = torch.cat(ratios_h).median(), torch.cat(ratios_u).median()
    assert h < 1.3 and u_ > 1.8, (float(h), float(u_))  # small example cells: u_ ~ 2.2


def test_a_single_bond_has_the_prescribed_spread_and_unbonded_rows_stay_uniform():
    # two crystals of 3 atoms: the first bonds atoms 0-1 (atom 2 alone), the second has no bond
    bonded = torch.zeros(2, 3, 3, dtype=torch.bool)
    bonded[0, 0, 1] = bonded[0, 1, 0] = True
    mask = torch.ones(2, 3, dtype=torch.bool)
    g = torch.Generator().manual_seed(1)
    diffs = []
    for _ in range(4000):
        u = torch.rand(2, 3, 3, generator=g, dtype=torch.float64)
        x = harmonic_noise(u, bonded, mask, torch.tensor([10.0, 10.0]), sigma=0.8)
        assert torch.equal(x[1], u[1])  # no bonds: the uniform draw itself
        # atom 2 is a component of its own: placed by a row the bond's modes do not use
        diffs.append(min_image_frac_torch(x[0, 1] - x[0, 0]) * 10.0)
    d = torch.stack(diffs)  # (S, 3) Å
    assert torch.allclose(d.std(0), torch.full((3,), 0.8, dtype=d.dtype), rtol=0.06)
    assert d.mean(0).abs().max() < 0.06


def test_harmonic_prior_is_a_deterministic_map_of_the_uniform_draw(example_crystals):
    batch, hops = _bonded_batch(example_crystals)
    u = torch.rand(batch.frac.shape, generator=torch.Generator().manual_seed(2))
    length = torch.tensor([12.0, 14.0])
    a = harmonic_noise(u, hops == HOP_BONDED, batch.mask, length)
    b = harmonic_noise(u.clone(), hops == HOP_BONDED, batch.mask, length)
    assert torch.equal(a, b)
    assert not torch.allclose(a, harmonic_noise(torch.rand_like(u), hops == HOP_BONDED, batch.mask,
                                                length))


def test_align_translation_is_one_shift_onto_the_target(example_crystals):
    batch, _ = _bonded_batch(example_crystals)
    x0 = torch.rand(batch.frac.shape, generator=torch.Generator().manual_seed(3))
    x0 = x0 * batch.mask.unsqueeze(-1)
    out = align_translation(x0, batch.frac, batch.mask)
    for b in range(2):
        k = int(batch.mask[b].sum())
        shift = min_image_frac_torch(out[b, :k] - x0[b, :k])  # (k, 3): one vector per crystal
        assert torch.allclose(shift, shift[:1].expand_as(shift), atol=1e-5)
        ang = 2 * np.pi * min_image_frac_torch(batch.frac[b, :k] - out[b, :k])
        assert torch.allclose(torch.atan2(ang.sin().sum(0), ang.cos().sum(0)),
                              torch.zeros(3), atol=1e-4)  # no mean displacement left


def _model(prior: str) -> CoordFlow:
    cfg = load_coordflow_config("tiny")
    flow = dataclasses.replace(cfg.flow, bond_prior=prior,
                               mix=ConditionMix(none=0.0, formula=0.0, elements=0.0, metal=0.0,
                                                  bonds=1.0, inpaint=0.0))
    torch.manual_seed(0)
    return CoordFlow(CoordDenoiser(dataclasses.replace(cfg.model, conditional=True)),
                     flow).eval()


def test_coordflow_samples_and_trains_with_the_harmonic_prior(example_crystals):
    batch, hops = _bonded_batch(example_crystals)
    uni, har = _model("uniform"), _model("harmonic")
    har.load_state_dict(uni.state_dict())
    cond = ConditionBatch.null(2, batch.mask.shape[1])
    cond.hops[0] = hops[0]  # crystal 0 bond-conditioned, crystal 1 not
    gen = lambda m, c: m.generate(batch.mask, steps=2, cond=c,  # noqa: E731
                                  generator=torch.Generator().manual_seed(4))
    a, b = gen(uni, cond), gen(har, cond)
    assert torch.equal(a.frac[1], b.frac[1])  # no bonds given: the same noise, the same sample
    assert not torch.allclose(a.frac[0], b.frac[0])
    # unconditional sampling is untouched by the option
    assert torch.equal(gen(uni, None).frac, gen(har, None).frac)
    torch.manual_seed(5)
    loss_u, _ = uni.train()(batch)
    torch.manual_seed(5)
    loss_h, _ = har.train()(batch)
    assert torch.isfinite(loss_h) and not torch.isclose(loss_u, loss_h)


def test_config_rejects_an_unknown_prior():
    with pytest.raises(ValueError, match="bond_prior"):
        CoordFlowConfig(bond_prior="gaussian")
    with pytest.raises(ValueError, match="bond_prior"):
        CoordFlowConfig(bond_prior="harmonic", harmonic_sigma=0.0)
