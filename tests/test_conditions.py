"""Conditional generation (issue 12): formulas, bonds, inpainting, guidance, p(N | condition)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from mofasa.data import collate
from mofasa.data.atom_counts import AtomCountModel, AtomCountWarning
from mofasa.data.canonical import bond_edges, canonicalize, canonicalize_mapped
from mofasa.data.conditions import (
    HOP_BONDED,
    ConditionError,
    formula_condition,
    formula_string,
    hop_classes,
    parse_formula,
    reference_condition,
)
from mofasa.data.crystal import Crystal
from mofasa.diffusion.conditions import (
    TASKS,
    ConditionBatch,
    ConditionMix,
    bond_hops,
    training_conditions,
)
from mofasa.diffusion.coordflow import CoordFlow
from mofasa.geometry.graphs import nearest_image_graph_batch
from mofasa.models.coord_denoiser import CoordDenoiser
from mofasa.training.coordflow import load_coordflow_config

from .conftest import EXAMPLES


@pytest.fixture(scope="module")
def canonical_examples(example_crystals):
    return sorted((canonicalize(c) for c in example_crystals[:8]), key=lambda c: c.num_atoms)


def _model(seed: int = 0) -> CoordFlow:
    cfg = load_coordflow_config("tiny", ["model.conditional=true"])
    torch.manual_seed(seed)
    model = CoordFlow(CoordDenoiser(cfg.model), cfg.flow).eval()
    for p in model.parameters():  # leave the zero initialisation: conditions must matter
        torch.nn.init.normal_(p, std=0.2) if p.dim() > 1 else None
    return model


def test_formulas_parse_in_any_form_and_bad_ones_are_one_line_errors():
    want = {30: 4, 8: 13, 6: 24, 1: 12}
    for text in ("Zn4O13C24H12", "H12 C24 O13 Zn4", "Zn4O1(C8H4O4)3", "C24H12O13Zn4"):
        assert parse_formula(text) == want
    for bad, why in [("Zn4Xx", "unknown element"), ("", "empty"), ("Zn0.5O", "non-integer"),
                     ("Zn4O)", "cannot be read")]:
        with pytest.raises(ConditionError, match=why) as info:
            parse_formula(bad)
        assert "\n" not in str(info.value)


def test_a_formula_fixes_the_element_at_every_canonical_index(canonical_examples):
    for c in canonical_examples:
        cond = formula_condition(formula_string(c.numbers))
        assert cond.num_atoms == c.num_atoms
        assert np.array_equal(cond.elements(), c.numbers)  # canonical order: element block
        assert cond.kinds == ("formula",)


def test_canonical_site_map_and_frame_recover_the_input(example_crystals):
    c = example_crystals[1]
    n = c.num_atoms
    frac = np.concatenate([c.frac * [0.5, 1, 1], c.frac * [0.5, 1, 1] + [0.5, 0, 0]])
    perm = np.random.default_rng(0).permutation(2 * n)
    sc = Crystal(np.tile(c.numbers, 2)[perm], frac[perm], c.lattice * np.array([[2], [1], [1]]))
    can, frame = canonicalize_mapped(sc)
    assert can.num_atoms == n and len(frame.sites) == 2 * n
    assert np.array_equal(can.numbers[frame.sites], sc.numbers)
    pred = (can.frac[frame.sites] @ can.lattice) @ frame.rotation + frame.origin
    d = (pred - sc.frac @ sc.lattice) @ np.linalg.inv(can.lattice @ frame.rotation)
    assert np.abs(d - np.round(d)).max() < 1e-8
    assert np.allclose(frame.rotation @ frame.rotation.T, np.eye(3))


def test_torch_bond_rule_matches_the_canonical_bond_graph(canonical_examples):
    crystals = canonical_examples[:4]
    batch = collate(crystals, dtype=torch.float64)
    hops = bond_hops(batch.frac, batch.lattice, batch.atom_types, batch.mask)
    for k, c in enumerate(crystals):
        pairs, _ = bond_edges(c.lattice, c.frac, c.numbers)
        want = hop_classes(c.num_atoms, pairs[pairs[:, 0] != pairs[:, 1]])
        assert np.array_equal(hops[k, : c.num_atoms, : c.num_atoms].numpy(), want)
        assert (hops[k, c.num_atoms :] == 0).all()


def test_training_conditions_build_every_task_from_the_structure(canonical_examples):
    batch = collate(canonical_examples[:4])
    for task in TASKS:
        mix = ConditionMix(**{t: float(t == task) for t in TASKS})
        cond, names = training_conditions(batch.atom_types, batch.frac, batch.lattice,
                                          batch.mask, mix, torch.Generator().manual_seed(0))
        assert set(names) == {task}
        flags = cond.features()[:, -4:]  # elements given, bonds, kept, lattice
        assert bool(flags[:, 0].all()) == (task != "none")
        assert bool(flags[:, 1].any()) == (task == "bonds")
        assert bool(flags[:, 2].all()) == (task == "inpaint")
        if task in ("formula", "bonds", "inpaint"):
            assert cond.fixed_types()[batch.mask].all()
            picked = cond.allowed.argmax(-1)[batch.mask]
            assert torch.equal(picked, batch.atom_types[batch.mask])
        if task == "inpaint":  # some atoms kept, never all
            kept = cond.keep.sum(1)
            assert (kept > 0).all() and (kept < batch.num_atoms).all()
            assert torch.equal(cond.frac[cond.keep], batch.frac[cond.keep])


def test_the_conditional_loss_trains_on_every_task(canonical_examples):
    batch = collate(canonical_examples[:3])
    model = _model().train()
    for task in TASKS:
        mix = ConditionMix(**{t: float(t == task) for t in TASKS})
        model.config = dataclasses.replace(model.config, mix=mix)
        loss, metrics = model(batch)
        loss.backward()
        assert torch.isfinite(loss) and all(np.isfinite(v) for v in metrics.values())
    assert model.denoiser.allowed_in.weight.grad.abs().sum() > 0
    assert model.denoiser.hop_bias.weight.grad[1:].abs().sum() > 0


def test_nearest_image_edges_match_a_brute_force_image_search(canonical_examples):
    batch = collate(canonical_examples[:3], dtype=torch.float64)
    hops = bond_hops(batch.frac, batch.lattice, batch.atom_types, batch.mask)
    b, i, j = (hops == HOP_BONDED).nonzero(as_tuple=True)
    graph = nearest_image_graph_batch(batch.frac, batch.lattice, b, i, j)
    n_pad = batch.frac.shape[1]
    assert torch.equal(graph.edge_index, torch.stack([b * n_pad + i, b * n_pad + j]))
    shifts = torch.cartesian_prod(*[torch.arange(-2, 3)] * 3).double()  # (125, 3)
    d = batch.frac[b, j] - batch.frac[b, i]  # (E, 3)
    brute = torch.einsum("eks,est->ekt", d.unsqueeze(1) + shifts, batch.lattice[b])
    assert torch.allclose(graph.distances, brute.norm(dim=-1).min(1).values)
    again = (d + graph.offsets.double()).unsqueeze(1) @ batch.lattice[b]  # (E, 1, 3)
    assert torch.allclose(again.squeeze(1), graph.vectors)
    # every bond lies within the bond rule, so the nearest image is a bond length
    assert float(graph.distances.max()) < 3.5


def test_bond_edges_reach_bonded_partners_and_leave_other_rows_unchanged(canonical_examples):
    crystals = canonical_examples[:2]
    batch = collate(crystals)
    plain = _model()
    cfg = dataclasses.replace(plain.denoiser.config, bond_edges=True)
    edged = CoordFlow(CoordDenoiser(cfg), plain.config).eval()
    edged.load_state_dict(plain.state_dict())  # the same weights: bond edges add none
    assert torch.equal(_generate(plain, batch.mask).frac, _generate(edged, batch.mask).frac)
    conds = [dataclasses.replace(formula_condition(c.numbers),
                                 bonds=np.unique(bond_edges(c.lattice, c.frac, c.numbers)[0],
                                                 axis=0)) for c in crystals]
    conds = [dataclasses.replace(c, bonds=c.bonds[c.bonds[:, 0] != c.bonds[:, 1]])
             for c in conds]
    cond = ConditionBatch.from_conditions(conds, batch.mask.shape[1])
    formula = ConditionBatch.from_conditions([formula_condition(c.numbers) for c in crystals],
                                             batch.mask.shape[1])
    assert torch.equal(_generate(plain, batch.mask, formula).frac,
                       _generate(edged, batch.mask, formula).frac)
    assert not torch.allclose(_generate(plain, batch.mask, cond).frac,
                              _generate(edged, batch.mask, cond).frac)


def test_the_overlap_penalty_is_scaled_on_bond_tasks_only(canonical_examples):
    batch = collate(canonical_examples[:3])
    model = _model().train()
    pens = {}
    for task in ("bonds", "formula"):
        for factor in (1.0, 10.0):
            model.config = dataclasses.replace(
                model.config, mix=ConditionMix(**{t: float(t == task) for t in TASKS}),
                overlap_weight=1.0, overlap_bonds_factor=factor)
            torch.manual_seed(0)
            pens[task, factor] = model(batch)[1]["loss_overlap"]
    assert pens["bonds", 1.0] > 0 and pens["formula", 1.0] > 0
    assert pens["bonds", 10.0] == pytest.approx(10 * pens["bonds", 1.0], rel=1e-5)
    assert pens["formula", 10.0] == pytest.approx(pens["formula", 1.0], rel=1e-6)


def _generate(model, mask, cond=None, guidance=1.0, seed=0):
    return model.generate(mask, steps=3, generator=torch.Generator().manual_seed(seed),
                          cond=cond, guidance=guidance)


def test_conditions_change_the_output_and_full_dropout_is_the_unconditional_path(
        canonical_examples):
    model = _model()
    crystals = canonical_examples[:2]
    batch = collate(crystals)
    free = _generate(model, batch.mask)
    null = _generate(model, batch.mask, ConditionBatch.null(2, batch.mask.shape[1]))
    assert torch.equal(free.frac, null.frac) and torch.equal(free.lattice, null.lattice)
    cond = ConditionBatch.from_conditions([formula_condition(c.numbers) for c in crystals],
                                          batch.mask.shape[1])
    given = _generate(model, batch.mask, cond)
    assert not torch.allclose(given.frac, free.frac)
    # written types are the requested formula by construction
    assert torch.equal(given.atom_types, batch.atom_types)


def test_guidance_one_is_no_guidance_and_other_scales_differ(canonical_examples):
    model = _model()
    crystals = canonical_examples[:2]
    batch = collate(crystals)
    cond = ConditionBatch.from_conditions([formula_condition(c.numbers) for c in crystals],
                                          batch.mask.shape[1])
    once = _generate(model, batch.mask, cond, 1.0)
    twice = _generate(model, batch.mask, cond, 2.0)
    assert not torch.allclose(once.frac, twice.frac)
    state = model.clamp((batch.frac, torch.zeros(2, batch.mask.shape[1], 7),
                         torch.zeros(2, 6)), cond, batch.num_atoms)
    t = torch.full((2,), 0.5)
    single = model.denoise(state, t, batch.mask, cond, 1.0)
    null = model.denoise(state, t, batch.mask, None)
    combined = [u + 1.0 * (v - u) for u, v in zip(null, single, strict=True)]
    for a, b in zip(single, combined, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_inpainting_writes_kept_atoms_and_the_lattice_exactly():
    ref = sorted(EXAMPLES.glob("*.cif"))[1]
    model = _model()
    for keep in ("metals", "metal-node", "linkers", "0,3,5"):
        cond, canonical = reference_condition(ref, keep=keep)
        cb = ConditionBatch.from_conditions([cond], cond.num_atoms)
        out = _generate(model, torch.ones(1, cond.num_atoms, dtype=torch.bool), cb)
        kept = torch.from_numpy(cond.keep)
        assert torch.equal(out.frac[0][kept], cb.frac[0][kept])
        assert torch.allclose(out.lattice[0].double(), torch.from_numpy(canonical.lattice),
                              atol=1e-3)
        assert np.array_equal(out.atom_types[0].numpy(), canonical.numbers)
    cond, _ = reference_condition(ref, keep="metals")
    labels_metal = cond.keep
    assert labels_metal.sum() == int(np.isin(cond.elements(), [29]).sum())  # Cu2Br2N10C18H18
    with pytest.raises(ConditionError, match="site indices"):
        reference_condition(ref, keep="0,9999")


def test_atom_counts_propose_only_seen_counts_and_back_off_with_a_warning():
    structures = [np.array([30] * 2 + [8] * 4 + [6] * 8 + [1] * 4),  # Zn C H O, 18 atoms
                  np.array([30] * 4 + [8] * 8 + [6] * 16 + [1] * 8),  # 36 atoms
                  np.array([29] * 2 + [8] * 8 + [6] * 10)]  # Cu C O, 20 atoms
    model = AtomCountModel.fit(structures)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p, level = model.histogram(elements=[30, 8, 6, 1])
    assert level == "elements" and set(np.flatnonzero(p)) == {18, 36}
    p, level = model.histogram(metal=29)
    assert level == "metal" and set(np.flatnonzero(p)) == {20}
    with pytest.warns(AtomCountWarning, match="metal histogram"):
        p, level = model.histogram(elements=[30, 8, 6])  # never seen: Zn's counts
    assert level == "metal" and set(np.flatnonzero(p)) == {18, 36}
    with pytest.warns(AtomCountWarning, match="global"):
        _, level = model.histogram(metal=26)
    assert level == "global"
    again = AtomCountModel.from_dict(model.to_dict())
    assert again == model
